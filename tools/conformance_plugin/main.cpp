// liveio-conformance-plugin: the plugin protocol of bpf_conformance.
//   stdin:        the program as hex bytes (whitespace ignored); with --elf, a BPF ELF object
//                 as hex (what bpf_conformance sends) or raw; its only program (or "main") runs
//   first arg:    input memory as hex (optional); r1 = its address, r2 = its length
//   --engine=interp|jit   (default jit), accepted anywhere among the arguments
//   stdout:       r0 as "0x<hex>"
// The program must pass the verifier before it runs; a rejected program (bad hex, decode or
// verification error) makes the plugin print the reason on stderr and exit with status 1.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "ebpf/loader.h"
#include "ebpf/vm.h"

namespace {

using namespace liveio;
using namespace liveio::ebpf;

Result<std::vector<uint8_t>> parse_hex(const std::string& text, const char* what) {
    std::vector<uint8_t> out;
    int high = -1;
    for (char ch : text) {
        if (std::isspace(static_cast<unsigned char>(ch))) continue;
        int v = std::isdigit(static_cast<unsigned char>(ch)) ? ch - '0'
                : (ch >= 'a' && ch <= 'f')                   ? ch - 'a' + 10
                : (ch >= 'A' && ch <= 'F')                   ? ch - 'A' + 10
                                                             : -1;
        if (v < 0) return make_error(EINVAL, fmt::format("{}: invalid hex character '{}'", what, ch));
        if (high < 0) {
            high = v;
        } else {
            out.push_back(static_cast<uint8_t>(high << 4 | v));
            high = -1;
        }
    }
    if (high >= 0) return make_error(EINVAL, fmt::format("{}: odd number of hex digits", what));
    return out;
}

// Helper 5 as the suite uses it (call_unwind_fail, callx): returns r1.
uint64_t conformance_helper5(uint64_t r1, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv*) { return r1; }

// --elf: the object's only program, or its "main" (the bpf_conformance writer's name). A copy,
// because the conformance context (the input memory) replaces the section's.
Result<std::shared_ptr<Program>> load_elf_program(const std::string& input) {
    std::vector<uint8_t> bytes;
    if (input.size() >= 4 && input.compare(0, 4, "\x7f" "ELF") == 0) {
        bytes.assign(input.begin(), input.end());
    } else {
        auto hex = parse_hex(input, "ELF object");
        if (!hex) return hex.error();
        bytes = std::move(hex.value());
    }
    OpenOptions options;
    options.require_license = false;
    auto object = Object::open(std::span<const uint8_t>(bytes), options);
    if (!object) return object.error();
    const auto& programs = object->programs();
    if (programs.empty()) return make_error(ENOENT, "ELF object holds no program");
    std::shared_ptr<const Program> chosen = programs.front();
    if (programs.size() > 1) {
        auto main_program = object->program("main");
        if (!main_program)
            return make_error(EINVAL, fmt::format("ELF object holds {} programs and none is named 'main'", programs.size()));
        chosen = main_program.value();
    }
    return std::make_shared<Program>(*chosen);
}

int fail(const std::string& message) {
    std::fprintf(stderr, "liveio-conformance-plugin: %s\n", message.c_str());
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    Engine engine = Engine::Jit;
    bool elf = false;
    std::string memory_hex;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--engine=interp") engine = Engine::Interpreter;
        else if (arg == "--engine=jit") engine = Engine::Jit;
        else if (arg == "--elf") elf = true;
        else if (arg.rfind("--", 0) == 0) return fail(fmt::format("unknown option '{}'", arg));
        else if (memory_hex.empty()) memory_hex = arg;
        else return fail(fmt::format("unexpected argument '{}'", arg));
    }
    std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    auto memory = parse_hex(memory_hex, "memory");
    if (!memory) return fail(memory.error().message);

    std::shared_ptr<Program> program;
    if (elf) {
        auto loaded = load_elf_program(input);
        if (!loaded) return fail(loaded.error().message);
        program = std::move(loaded.value());
    } else {
        auto bytes = parse_hex(input, "program");
        if (!bytes) return fail(bytes.error().message);
        if (bytes->empty() || bytes->size() % sizeof(Insn) != 0)
            return fail(fmt::format("program of {} bytes is not a whole number of instructions", bytes->size()));
        program = std::make_shared<Program>();
        program->name = "conformance";
        program->insns.resize(bytes->size() / sizeof(Insn));
        std::memcpy(program->insns.data(), bytes->data(), bytes->size());
    }
    program->context.size = static_cast<uint32_t>(memory->size());
    program->context.writable = true;

    HelperTable helpers;
    HelperProto helper5;
    helper5.name = "conformance_helper5";
    helper5.fn = conformance_helper5;
    helper5.args = {ArgType::Anything, ArgType::None, ArgType::None, ArgType::None, ArgType::None};
    helpers.add(5, helper5);

    auto exe = Executable::load(program, helpers, engine);
    if (!exe) return fail(exe.error().message);
    ExecEnv env;
    const uint64_t r0 =
        exe.value()->run(env, reinterpret_cast<uint64_t>(memory->empty() ? nullptr : memory->data()), memory->size());
    if (env.fault) return fail(fmt::format("run-time fault: {}", env.fault));
    std::printf("0x%llx\n", static_cast<unsigned long long>(r0));
    return 0;
}
