// liveio-conformance-plugin --elf: every case of the bpf_conformance suite wrapped in the ELF
// object bpf_conformance's own writer produces (program in .text as function "main", a symbol
// table whose names live in .shstrtab, no license), sent hex-encoded as the suite does.
#include <elf.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "ebpf/conformance_suite.h"
#include "ebpf/loader.h"

namespace liveio::ebpf {
namespace {

template <typename T>
void append(std::vector<uint8_t>& out, const T& value) {
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    out.insert(out.end(), p, p + sizeof(T));
}

Elf64_Shdr section_header(uint32_t name, uint32_t type, uint64_t flags, uint64_t offset,
                          uint64_t size, uint32_t link, uint32_t info, uint64_t entsize,
                          uint64_t align) {
    Elf64_Shdr h{};
    h.sh_name = name;
    h.sh_type = type;
    h.sh_flags = flags;
    h.sh_offset = offset;
    h.sh_size = size;
    h.sh_link = link;
    h.sh_info = info;
    h.sh_entsize = entsize;
    h.sh_addralign = align;
    return h;
}

// ELF layout: header, .text, .symtab, .shstrtab (section and symbol names), section headers.
std::vector<uint8_t> conformance_elf(const std::vector<Insn>& insns) {
    const std::string strtab = std::string("\0.text\0.symtab\0.shstrtab\0main\0", 30);
    const uint32_t name_text = 1, name_symtab = 7, name_shstrtab = 15, name_main = 25;
    const size_t text_off = sizeof(Elf64_Ehdr), text_size = insns.size() * sizeof(Insn);
    const size_t sym_off = text_off + text_size, sym_size = 2 * sizeof(Elf64_Sym);
    const size_t str_off = sym_off + sym_size;
    const size_t sh_off = (str_off + strtab.size() + 7) & ~size_t{7};

    std::vector<uint8_t> out;
    Elf64_Ehdr eh{};
    std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_type = ET_REL;
    eh.e_machine = EM_BPF;
    eh.e_version = EV_CURRENT;
    eh.e_shoff = sh_off;
    eh.e_ehsize = sizeof(Elf64_Ehdr);
    eh.e_shentsize = sizeof(Elf64_Shdr);
    eh.e_shnum = 4;
    eh.e_shstrndx = 3;
    append(out, eh);
    out.insert(out.end(), reinterpret_cast<const uint8_t*>(insns.data()),
               reinterpret_cast<const uint8_t*>(insns.data()) + text_size);
    append(out, Elf64_Sym{});
    Elf64_Sym main_sym{};
    main_sym.st_name = name_main;
    main_sym.st_info = ELF64_ST_INFO(STB_GLOBAL, STT_FUNC);
    main_sym.st_shndx = 1;
    main_sym.st_size = text_size;
    append(out, main_sym);
    out.insert(out.end(), strtab.begin(), strtab.end());
    out.resize(sh_off, 0);
    append(out, Elf64_Shdr{});
    append(out, section_header(name_text, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, text_off,
                               text_size, 0, 0, 0, 8));
    append(out, section_header(name_symtab, SHT_SYMTAB, 0, sym_off, sym_size, 3, 1,
                               sizeof(Elf64_Sym), 8));
    append(out, section_header(name_shstrtab, SHT_STRTAB, 0, str_off, strtab.size(), 0, 0, 0, 1));
    return out;
}

std::string to_hex(const std::vector<uint8_t>& bytes) {
    std::string s;
    s.reserve(bytes.size() * 3);
    for (uint8_t b : bytes) s += fmt::format("{:02x} ", b);
    return s;
}

struct Outcome {
    int exit_status = -1;
    std::string stdout_text;
};

// Runs the plugin with `args`, feeding `input` on stdin (through a pipe, from a writer child
// so a large input cannot deadlock against the plugin's output).
Outcome run(const std::filesystem::path& plugin, const std::vector<std::string>& args,
            const std::string& input) {
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0) return {};
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        const int devnull = ::open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 2);
        close(in[0]), close(in[1]), close(out[0]), close(out[1]);
        std::vector<char*> argv{const_cast<char*>(plugin.c_str())};
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        execv(plugin.c_str(), argv.data());
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    const pid_t writer = fork();
    if (writer == 0) {
        close(out[0]);
        size_t done = 0;
        while (done < input.size()) {
            const ssize_t n = write(in[1], input.data() + done, input.size() - done);
            if (n <= 0) break;
            done += static_cast<size_t>(n);
        }
        _exit(0);
    }
    close(in[1]);
    Outcome o;
    char buf[256];
    for (ssize_t n; (n = read(out[0], buf, sizeof(buf))) > 0;)
        o.stdout_text.append(buf, static_cast<size_t>(n));
    close(out[0]);
    int st = 0;
    waitpid(writer, nullptr, 0);
    waitpid(pid, &st, 0);
    o.exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return o;
}

std::filesystem::path plugin() {
    // <build>/tests/ebpf/test_ebpf -> <build>/tools/conformance_plugin/liveio-conformance-plugin
    return std::filesystem::read_symlink("/proc/self/exe")
               .parent_path()
               .parent_path()
               .parent_path() /
           "tools" / "conformance_plugin" / "liveio-conformance-plugin";
}

TEST(LoaderConformanceElf, WriterShapedObjectsLoad) {
    const std::vector<Insn> prog = {make_insn(0xb7, 0, 0, 0, 42), make_insn(0x95)};
    const auto elf = conformance_elf(prog);
    auto strict = Object::open(std::span<const uint8_t>(elf));
    ASSERT_FALSE(strict);
    EXPECT_NE(strict.error().message.find("no license"), std::string::npos);
    OpenOptions lax;
    lax.require_license = false;
    auto obj = Object::open(std::span<const uint8_t>(elf), lax);
    ASSERT_TRUE(obj) << obj.error().message;
    ASSERT_EQ(obj->programs().size(), 1u) << "a .text-only object has its functions as programs";
    auto main_prog = obj->program("main");
    ASSERT_TRUE(main_prog);
    EXPECT_EQ(main_prog.value()->section, ".text");
    ASSERT_EQ(main_prog.value()->insns.size(), 2u);
    EXPECT_EQ(main_prog.value()->insns[0].imm, 42);
}

TEST(LoaderConformanceElf, SuiteThroughPluginElf) {
    const auto p = plugin();
    if (!std::filesystem::exists(p)) GTEST_SKIP() << "plugin not built at " << p;
    const auto dir = testing::conformance_dir();
    if (!std::filesystem::exists(dir / "tests"))
        GTEST_SKIP() << "bpf_conformance suite not found at " << dir;
    const auto cases = testing::load_cases(dir / "tests");
    ASSERT_FALSE(cases.empty());
    for (const char* engine : {"--engine=interp", "--engine=jit"}) {
        int passed = 0, total = 0;
        for (const auto& c : cases) {
            if (c.expect_error || !c.result) continue;
            auto insns = testing::case_program(c);
            ASSERT_TRUE(insns.ok()) << c.file << ": " << insns.error().message;
            ++total;
            std::vector<std::string> args;
            if (!c.mem.empty()) args.push_back(to_hex(c.mem));
            args.push_back(engine);
            args.push_back("--elf");
            const Outcome o = run(p, args, to_hex(conformance_elf(insns.value())) + "\n");
            const std::string want = fmt::format("{:#x}\n", *c.result);
            EXPECT_EQ(o.exit_status, 0) << c.file << " " << engine;
            EXPECT_EQ(o.stdout_text, want) << c.file << " " << engine;
            if (o.exit_status == 0 && o.stdout_text == want) ++passed;
        }
        std::printf("[plugin --elf %s] %d/%d passed\n", engine, passed, total);
    }
}

TEST(LoaderConformanceElf, PluginRejectsBadElf) {
    const auto p = plugin();
    if (!std::filesystem::exists(p)) GTEST_SKIP() << "plugin not built at " << p;
    EXPECT_NE(run(p, {"--elf"}, "7f 45 4c 46 02 01").exit_status, 0);
    EXPECT_NE(run(p, {"--elf"}, "not hex").exit_status, 0);
    const Outcome ok = run(p, {"--elf", "--engine=interp"},
                           to_hex(conformance_elf({make_insn(0xb7, 0, 0, 0, 7), make_insn(0x95)})));
    EXPECT_EQ(ok.exit_status, 0);
    EXPECT_EQ(ok.stdout_text, "0x7\n");
}

}  // namespace
}  // namespace liveio::ebpf
