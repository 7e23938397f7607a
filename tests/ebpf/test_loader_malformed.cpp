// Malformed objects: every truncation, thousands of random corruptions (fixed seeds) and
// hand-crafted defects of real clang-built objects must give a clear Error, never a crash, and
// whatever still loads must be in the linked form program.h promises.
#include <elf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "ebpf/loader.h"
#include "test_loader_objects.h"

namespace liveio::ebpf {
namespace {

using testing::linked_form_violation;
using testing::read_bytes;
using testing::test_object_path;

const char* const kObjects[] = {"counters", "globals", "calls", "ringbuf", "legacy"};

TEST(LoaderMalformed, EveryTruncationIsRejected) {
    for (const char* name : kObjects) {
        const auto full = read_bytes(test_object_path(name));
        ASSERT_GT(full.size(), 1000u) << name;
        for (size_t len = 0; len < full.size(); ++len) {
            std::vector<uint8_t> prefix(full.begin(), full.begin() + len);
            auto obj = Object::open(std::span<const uint8_t>(prefix));
            // Section headers sit at the end of clang's objects: no proper prefix is whole.
            ASSERT_FALSE(obj) << name << " truncated to " << len << " bytes loaded";
            ASSERT_FALSE(obj.error().message.empty());
        }
    }
}

TEST(LoaderMalformed, RandomCorruptionNeverCrashes) {
    size_t loaded = 0, rejected = 0;
    for (const char* name : kObjects) {
        const auto full = read_bytes(test_object_path(name));
        ASSERT_FALSE(full.empty()) << name;
        std::mt19937_64 rng(0x11fe10 + std::strlen(name));
        for (int iter = 0; iter < 800; ++iter) {
            auto bytes = full;
            const int flips = 1 + static_cast<int>(rng() % 8);
            for (int k = 0; k < flips; ++k) {
                const size_t at = rng() % bytes.size();
                // Mix single bit flips, random bytes and "interesting" values (0, 0xff, 0x80).
                switch (rng() % 4) {
                    case 0: bytes[at] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;
                    case 1: bytes[at] = static_cast<uint8_t>(rng()); break;
                    case 2: bytes[at] = 0; break;
                    default: bytes[at] = (rng() & 1) ? 0xff : 0x80; break;
                }
            }
            auto obj = Object::open(std::span<const uint8_t>(bytes));
            if (obj) {
                ++loaded;
                for (const auto& p : obj->programs())
                    ASSERT_EQ(linked_form_violation(*p), "")
                        << name << " iteration " << iter << ": " << p->name;
            } else {
                ++rejected;
                ASSERT_FALSE(obj.error().message.empty());
            }
        }
    }
    // Both outcomes must occur, or the corruption is not exercising the loader.
    EXPECT_GT(loaded, 0u);
    EXPECT_GT(rejected, 0u);
    std::printf("random corruption: %zu loaded, %zu rejected\n", loaded, rejected);
}

// Corruption aimed at what the loader interprets: ELF and section headers, symbols,
// relocations, code, BTF, map definitions (random flips mostly land in debug info).
TEST(LoaderMalformed, TargetedCorruptionNeverCrashes) {
    size_t loaded = 0, rejected = 0;
    for (const char* name : kObjects) {
        const auto full = read_bytes(test_object_path(name));
        ASSERT_GE(full.size(), sizeof(Elf64_Ehdr));
        Elf64_Ehdr eh;
        std::memcpy(&eh, full.data(), sizeof(eh));
        std::vector<std::pair<size_t, size_t>> regions = {
            {0, sizeof(eh)}, {eh.e_shoff, eh.e_shnum * sizeof(Elf64_Shdr)}};
        const auto* sh = reinterpret_cast<const Elf64_Shdr*>(full.data() + eh.e_shoff);
        const char* names =
            reinterpret_cast<const char*>(full.data() + sh[eh.e_shstrndx].sh_offset);
        for (size_t i = 1; i < eh.e_shnum; ++i) {
            const std::string n = names + sh[i].sh_name;
            const bool wanted =
                sh[i].sh_type == SHT_SYMTAB ||
                (sh[i].sh_type == SHT_REL && n.find(".debug") == std::string::npos &&
                 n.find("BTF") == std::string::npos) ||
                (sh[i].sh_flags & SHF_EXECINSTR) || n == ".BTF" || n == ".maps" || n == "maps" ||
                n == "license";
            if (wanted && sh[i].sh_type != SHT_NOBITS && sh[i].sh_size > 0)
                regions.push_back({sh[i].sh_offset, sh[i].sh_size});
        }
        std::mt19937_64 rng(0xc0ffee + std::strlen(name));
        for (int iter = 0; iter < 1000; ++iter) {
            auto bytes = full;
            const int flips = 1 + static_cast<int>(rng() % 4);
            for (int k = 0; k < flips; ++k) {
                const auto& [start, len] = regions[rng() % regions.size()];
                const size_t at = start + rng() % len;
                if (at >= bytes.size()) continue;
                bytes[at] = (rng() & 1) ? static_cast<uint8_t>(rng())
                                        : bytes[at] ^ static_cast<uint8_t>(1u << (rng() % 8));
            }
            auto obj = Object::open(std::span<const uint8_t>(bytes));
            if (obj) {
                ++loaded;
                for (const auto& p : obj->programs())
                    ASSERT_EQ(linked_form_violation(*p), "")
                        << name << " iteration " << iter << ": " << p->name;
            } else {
                ++rejected;
                ASSERT_FALSE(obj.error().message.empty());
            }
        }
    }
    EXPECT_GT(loaded, 0u);
    EXPECT_GT(rejected, 0u);
    std::printf("targeted corruption: %zu loaded, %zu rejected\n", loaded, rejected);
}

// Minimal in-place editor of a 64-bit little-endian ELF image, for hand-crafted defects.
class ElfEdit {
public:
    explicit ElfEdit(std::vector<uint8_t> bytes) : b_(std::move(bytes)) {}
    std::vector<uint8_t>& bytes() { return b_; }
    Elf64_Ehdr& ehdr() { return *reinterpret_cast<Elf64_Ehdr*>(b_.data()); }
    Elf64_Shdr& shdr(size_t i) {
        return *reinterpret_cast<Elf64_Shdr*>(b_.data() + ehdr().e_shoff + i * sizeof(Elf64_Shdr));
    }
    const char* shname(size_t i) {
        return reinterpret_cast<const char*>(b_.data() + shdr(ehdr().e_shstrndx).sh_offset +
                                             shdr(i).sh_name);
    }
    size_t section(const std::string& name) {
        for (size_t i = 1; i < ehdr().e_shnum; ++i)
            if (name == shname(i)) return i;
        ADD_FAILURE() << "no section " << name;
        return 0;
    }
    size_t symbol_count() { return shdr(section(".symtab")).sh_size / sizeof(Elf64_Sym); }
    Elf64_Sym& sym(size_t i) {
        return *reinterpret_cast<Elf64_Sym*>(b_.data() + shdr(section(".symtab")).sh_offset +
                                             i * sizeof(Elf64_Sym));
    }
    const char* symname(size_t i) {
        return reinterpret_cast<const char*>(b_.data() + shdr(section(".strtab")).sh_offset +
                                             sym(i).st_name);
    }
    Elf64_Sym& sym(const std::string& name) {
        for (size_t i = 1; i < symbol_count(); ++i)
            if (name == symname(i)) return sym(i);
        ADD_FAILURE() << "no symbol " << name;
        return sym(0);
    }
    Elf64_Rel* rel(const std::string& section_name, size_t i) {
        const Elf64_Shdr& s = shdr(section(section_name));
        if ((i + 1) * sizeof(Elf64_Rel) > s.sh_size) return nullptr;
        return reinterpret_cast<Elf64_Rel*>(b_.data() + s.sh_offset + i * sizeof(Elf64_Rel));
    }
    // The instruction slot a relocation applies to.
    uint8_t* insn_of(const std::string& prog_section, const Elf64_Rel& r) {
        return b_.data() + shdr(section(prog_section)).sh_offset + r.r_offset;
    }
    std::string open_error() {
        auto obj = Object::open(std::span<const uint8_t>(b_));
        return obj ? std::string("(loaded)") : obj.error().message;
    }

private:
    std::vector<uint8_t> b_;
};

ElfEdit edit(const char* name) { return ElfEdit(read_bytes(test_object_path(name))); }

#define EXPECT_ERROR_HAS(edit_expr, needle)                                       \
    do {                                                                          \
        const std::string _msg = (edit_expr);                                     \
        EXPECT_NE(_msg.find(needle), std::string::npos) << "error was: " << _msg; \
    } while (0)

TEST(LoaderMalformed, NotABpfObject) {
    EXPECT_ERROR_HAS(ElfEdit({}).open_error(), "shorter than an ELF header");
    auto e = edit("counters");
    e.bytes()[0] = 0x7e;
    EXPECT_ERROR_HAS(e.open_error(), "bad magic");
    auto m = edit("counters");
    m.ehdr().e_machine = EM_X86_64;
    EXPECT_ERROR_HAS(m.open_error(), "not BPF");
    auto t = edit("counters");
    t.ehdr().e_type = ET_EXEC;
    EXPECT_ERROR_HAS(t.open_error(), "not a relocatable object");
}

// bpf.load hands the loader any path a client names, on the agent's control thread inside
// the target: a device must not be read until memory runs out, nor a FIFO block the thread.
TEST(LoaderMalformed, PathsThatAreNotRegularFilesAreRefused) {
    auto zero = Object::open("/dev/zero");
    ASSERT_FALSE(zero);
    EXPECT_EQ(zero.error().code, EINVAL);
    EXPECT_NE(zero.error().message.find("not a regular file"), std::string::npos)
        << zero.error().message;

    char dir[] = "/tmp/liveio-loader-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    const std::string fifo = std::string(dir) + "/fifo";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    auto f = Object::open(fifo);  // no writer: a blocking open would never return
    ASSERT_FALSE(f);
    EXPECT_EQ(f.error().code, EINVAL);
    ::unlink(fifo.c_str());
    ::rmdir(dir);

    auto d = Object::open("/tmp");
    ASSERT_FALSE(d);
}

TEST(LoaderMalformed, BadRelocationSymbol) {
    auto e = edit("counters");
    Elf64_Rel* r = e.rel(".relsyscall", 0);
    ASSERT_NE(r, nullptr);
    r->r_info = ELF64_R_INFO(e.symbol_count() + 5, ELF64_R_TYPE(r->r_info));
    EXPECT_ERROR_HAS(e.open_error(), "bad symbol index");
}

TEST(LoaderMalformed, RelocationOnWrongInstruction) {
    auto e = edit("counters");
    Elf64_Rel* r = e.rel(".relsyscall", 0);
    ASSERT_NE(r, nullptr);
    r->r_offset = 0;  // count() starts with a register move, not an lddw
    EXPECT_ERROR_HAS(e.open_error(), "not a call or lddw");
    auto odd = edit("counters");
    odd.rel(".relsyscall", 0)->r_offset += 4;
    EXPECT_ERROR_HAS(odd.open_error(), "is not an instruction");
    auto type = edit("counters");
    Elf64_Rel* t = type.rel(".relsyscall", 0);
    t->r_info = ELF64_R_INFO(ELF64_R_SYM(t->r_info), 77);
    EXPECT_ERROR_HAS(type.open_error(), "unsupported relocation type 77");
}

TEST(LoaderMalformed, RelocationAgainstNonMapData) {
    // Point a map relocation at the license: neither map, global data nor code.
    auto e = edit("counters");
    Elf64_Rel* r = e.rel(".relsyscall", 0);
    ASSERT_NE(r, nullptr);
    size_t license_sym = 0;
    for (size_t i = 1; i < e.symbol_count(); ++i)
        if (std::string(e.symname(i)) == "LICENSE") license_sym = i;
    ASSERT_NE(license_sym, 0u);
    r->r_info = ELF64_R_INFO(license_sym, ELF64_R_TYPE(r->r_info));
    EXPECT_ERROR_HAS(e.open_error(), "not a map, global data or code");
}

TEST(LoaderMalformed, CallToMissingFunction) {
    // The call's symbol becomes undefined, as an extern function would be.
    auto e = edit("calls");
    e.sym("sum_squares").st_shndx = SHN_UNDEF;
    EXPECT_ERROR_HAS(e.open_error(), "undefined symbol 'sum_squares'");
    // A call against .text whose offset runs past every function.
    auto far = edit("calls");
    bool patched = false;
    for (size_t i = 0; Elf64_Rel* r = far.rel(".relsyscall", i); ++i) {
        uint8_t* insn = far.insn_of("syscall", *r);
        if (insn[0] == 0x85 &&
            ELF64_ST_TYPE(far.sym(ELF64_R_SYM(r->r_info)).st_info) == STT_SECTION) {
            const int32_t imm = 100000;
            std::memcpy(insn + 4, &imm, 4);
            patched = true;
            break;
        }
    }
    ASSERT_TRUE(patched) << "calls.bpf.o has a call relocation against .text";
    EXPECT_ERROR_HAS(far.open_error(), "is not inside a function");
}

TEST(LoaderMalformed, LocalCallOutsideSection) {
    // A relocation-free pseudo call (same-section static function) that leaves the section.
    auto e = edit("counters");
    uint8_t* code = e.bytes().data() + e.shdr(e.section("syscall")).sh_offset;
    code[0] = 0x85;
    code[1] = 0x10;  // src = 1: bpf-to-bpf call
    const int32_t imm = -50;
    std::memcpy(code + 4, &imm, 4);
    EXPECT_ERROR_HAS(e.open_error(), "is not inside a function");
}

TEST(LoaderMalformed, UnsupportedMapType) {
    auto obj = Object::open(test_object_path("bad_map_type"));
    ASSERT_FALSE(obj);
    EXPECT_NE(obj.error().message.find("map 'stacks': unsupported map type 7"), std::string::npos)
        << obj.error().message;
    auto legacy = edit("legacy");
    uint8_t* def = legacy.bytes().data() + legacy.shdr(legacy.section("maps")).sh_offset;
    const uint32_t bloom = 30;  // BPF_MAP_TYPE_BLOOM_FILTER
    std::memcpy(def, &bloom, 4);
    EXPECT_ERROR_HAS(legacy.open_error(), "unsupported map type 30");
}

TEST(LoaderMalformed, InvalidMapDefinitions) {
    // A zero-size value reaches create_map, whose error is reported with the map's name.
    auto legacy = edit("legacy");
    uint8_t* def = legacy.bytes().data() + legacy.shdr(legacy.section("maps")).sh_offset;
    const uint32_t zero = 0;
    std::memcpy(def + 8, &zero, 4);  // value_size of the first map
    const std::string msg = legacy.open_error();
    EXPECT_TRUE(msg.find("map 'by_id'") != std::string::npos ||
                msg.find("map 'seen'") != std::string::npos)
        << msg;
    // .maps without BTF to describe it.
    auto nobtf = edit("counters");
    std::memcpy(const_cast<char*>(nobtf.shname(nobtf.section(".BTF"))), ".XTF", 4);
    EXPECT_ERROR_HAS(nobtf.open_error(), "section .maps needs BTF");
}

TEST(LoaderMalformed, ProgramSectionNotMultipleOf8) {
    auto e = edit("counters");
    e.shdr(e.section("syscall")).sh_size -= 4;
    EXPECT_ERROR_HAS(e.open_error(), "is not a multiple of 8");
}

TEST(LoaderMalformed, FunctionOutsideItsSection) {
    auto e = edit("counters");
    e.sym("count").st_size += 4096;
    EXPECT_ERROR_HAS(e.open_error(), "function 'count'");
}

TEST(LoaderMalformed, MissingOrUnterminatedLicense) {
    auto e = edit("counters");
    std::memcpy(const_cast<char*>(e.shname(e.section("license"))), "lisense", 7);
    EXPECT_ERROR_HAS(e.open_error(), "no license section");
    auto u = edit("counters");
    Elf64_Shdr& lic = u.shdr(u.section("license"));
    std::memset(u.bytes().data() + lic.sh_offset, 'A', lic.sh_size);
    EXPECT_ERROR_HAS(u.open_error(), "license is not NUL-terminated");
}

TEST(LoaderMalformed, SectionDataOutsideFile) {
    auto e = edit("counters");
    e.shdr(e.section("syscall")).sh_offset = e.bytes().size() + 100;
    EXPECT_FALSE(e.open_error() == "(loaded)");
}

}  // namespace
}  // namespace liveio::ebpf
