#include "ebpf/conformance_suite.h"

#include <cstdlib>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "ebpf/assembler.h"

namespace liveio::ebpf::testing {

std::filesystem::path conformance_dir() {
    // LIVEIO_CONFORMANCE_DIR (as scripts/fuzz.sh), else <root>/../shared (__FILE__ is
    // <root>/tests/ebpf/conformance_suite.cpp), else one level further up for a worktree at
    // <checkout>/../wt/NAME.
    if (const char* env = std::getenv("LIVEIO_CONFORMANCE_DIR"); env && *env) return env;
    const auto parent =
        std::filesystem::path(__FILE__).parent_path().parent_path().parent_path().parent_path();
    const auto beside = parent / "shared" / "bpf-conformance";
    const auto above = parent.parent_path() / "shared" / "bpf-conformance";
    return std::filesystem::exists(beside) || !std::filesystem::exists(above) ? beside : above;
}

namespace {

std::vector<uint8_t> parse_hex_bytes(const std::string& text) {
    std::vector<uint8_t> out;
    std::istringstream in(text);
    std::string tok;
    while (in >> tok) out.push_back(static_cast<uint8_t>(std::stoul(tok, nullptr, 16)));
    return out;
}

ConformanceCase parse_case(const std::filesystem::path& file) {
    ConformanceCase c;
    c.file = file;
    std::ifstream in(file);
    std::string line, section, result_text;
    while (std::getline(in, line)) {
        if (line.rfind("-- ", 0) == 0) {
            section = line.substr(3);
            if (section == "error") c.expect_error = true;
            continue;
        }
        if (section.empty() || (!line.empty() && line[0] == '#' && section != "asm")) continue;
        if (section == "asm")
            c.asm_text += line + "\n";
        else if (section == "raw")
            c.raw_text += line + "\n";
        else if (section == "mem") {
            auto bytes = parse_hex_bytes(line);
            c.mem.insert(c.mem.end(), bytes.begin(), bytes.end());
        } else if (section == "result")
            result_text += line;
    }
    auto first = result_text.find_first_not_of(" \t");
    if (first != std::string::npos) c.result = std::stoull(result_text.substr(first), nullptr, 16);
    return c;
}

}  // namespace

std::vector<ConformanceCase> load_cases(const std::filesystem::path& dir) {
    std::vector<ConformanceCase> cases;
    for (const auto& e : std::filesystem::directory_iterator(dir))
        if (e.path().extension() == ".data") cases.push_back(parse_case(e.path()));
    std::sort(cases.begin(), cases.end(),
              [](const auto& a, const auto& b) { return a.file < b.file; });
    return cases;
}

Result<std::vector<Insn>> case_program(const ConformanceCase& c) {
    if (!c.raw_text.empty()) {
        // Either space-separated bytes ("07 00 01 ...") or one 64-bit word per line
        // ("0x5566778800000018"), the instruction read as a little-endian integer.
        std::vector<uint8_t> bytes;
        std::istringstream in(c.raw_text);
        std::string tok;
        while (in >> tok) {
            const uint64_t v = std::stoull(tok, nullptr, 16);
            const size_t n = tok.rfind("0x", 0) == 0 ? 8 : 1;
            for (size_t i = 0; i < n; ++i) bytes.push_back(static_cast<uint8_t>(v >> (8 * i)));
        }
        if (bytes.size() % sizeof(Insn) != 0)
            return make_error(
                EINVAL,
                fmt::format("raw program of {} bytes is not whole instructions", bytes.size()));
        std::vector<Insn> insns(bytes.size() / sizeof(Insn));
        std::memcpy(insns.data(), bytes.data(), bytes.size());
        return insns;
    }
    if (c.asm_text.empty()) return make_error(EINVAL, "case has no program");
    return assemble(c.asm_text);
}

namespace {
// Helper 5 in the suite (call_unwind_fail, callx) must simply return; the ubpf plugin's
// "unwind" helper stops the program only when r1 == 0.
uint64_t conformance_helper5(uint64_t r1, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    return r1;
}
}  // namespace

HelperTable conformance_helpers() {
    HelperTable t;
    HelperProto p;
    p.name = "conformance_helper5";
    p.fn = conformance_helper5;
    p.args = {ArgType::Anything, ArgType::None, ArgType::None, ArgType::None, ArgType::None};
    t.add(5, p);
    return t;
}

}  // namespace liveio::ebpf::testing
