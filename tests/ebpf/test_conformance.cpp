// Runs the bpf_conformance suite through every engine and compares r0 with `-- result`.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "ebpf/conformance_suite.h"
#include "ebpf/vm.h"

namespace liveio::ebpf {
namespace {

using testing::ConformanceCase;

struct Outcome {
    bool rejected = false;  // assembly, decode, verification or load failed
    std::string why;
    uint64_t r0 = 0;
    bool fell_back = false;  // asked for the JIT, ran on the interpreter (see jit_supports)
};

Outcome run_case(const ConformanceCase& c, Engine engine) {
    Outcome o;
    auto insns = testing::case_program(c);
    if (!insns) return {true, "assemble: " + insns.error().message};
    auto program = std::make_shared<Program>();
    program->name = c.file.stem();
    program->insns = std::move(insns.value());
    program->context.size = static_cast<uint32_t>(c.mem.size());
    program->context.writable = true;  // the suite's programs may store into their memory
    auto exe = Executable::load(program, testing::conformance_helpers(), engine);
    if (!exe) return {true, "load: " + exe.error().message};
    o.fell_back = exe.value()->engine() != engine;
    std::vector<uint8_t> mem = c.mem;
    ExecEnv env;
    o.r0 = exe.value()->run(env, reinterpret_cast<uint64_t>(mem.empty() ? nullptr : mem.data()),
                            mem.size());
    if (env.fault) return {true, std::string("run-time fault: ") + env.fault};
    return o;
}

void run_suite(Engine engine) {
    const auto dir = testing::conformance_dir();
    if (!std::filesystem::exists(dir / "tests"))
        GTEST_SKIP() << "bpf_conformance suite not found at " << dir;
    int passed = 0, total = 0;
    std::vector<std::string> failures, fallbacks;
    for (const ConformanceCase& c : testing::load_cases(dir / "tests")) {
        ++total;
        const Outcome o = run_case(c, engine);
        if (o.fell_back) fallbacks.push_back(c.file.filename().string());
        std::string problem;
        if (c.expect_error) {
            if (!o.rejected) problem = fmt::format("expected rejection, ran to r0={:#x}", o.r0);
        } else if (o.rejected) {
            problem = o.why;
        } else if (!c.result) {
            problem = "case has no -- result";
        } else if (o.r0 != *c.result) {
            problem = fmt::format("r0={:#x}, expected {:#x}", o.r0, *c.result);
        }
        if (problem.empty())
            ++passed;
        else
            failures.push_back(fmt::format("{}: {}", c.file.filename().string(), problem));
    }
    std::cout << fmt::format("[{}] conformance: {}/{} passed\n", engine_name(engine), passed,
                             total);
    for (const auto& f : fallbacks)
        std::cout << fmt::format("[{}] ran on the interpreter: {}\n", engine_name(engine), f);
    for (const auto& f : failures) ADD_FAILURE() << f;
    EXPECT_GT(total, 0);
}

// Negative cases are malformed on purpose: each must be rejected somewhere (assembly, decode,
// verification) or produce something other than its stated result.
void run_negative(Engine engine) {
    const auto dir = testing::conformance_dir();
    if (!std::filesystem::exists(dir / "negative"))
        GTEST_SKIP() << "bpf_conformance suite not found at " << dir;
    int total = 0;
    for (const ConformanceCase& c : testing::load_cases(dir / "negative")) {
        ++total;
        const Outcome o = run_case(c, engine);
        const bool harness_would_pass =
            !o.rejected && !c.expect_error && c.result && o.r0 == *c.result;
        EXPECT_FALSE(harness_would_pass)
            << c.file.filename() << " passed although it is a negative case";
        EXPECT_FALSE(c.expect_error && !o.rejected)
            << c.file.filename() << ": expected rejection, ran to r0=" << o.r0;
    }
    EXPECT_GT(total, 0);
}

TEST(Conformance, Interpreter) { run_suite(Engine::Interpreter); }
TEST(Conformance, InterpreterNegative) { run_negative(Engine::Interpreter); }
TEST(Conformance, Jit) { run_suite(Engine::Jit); }
TEST(Conformance, JitNegative) { run_negative(Engine::Jit); }

}  // namespace
}  // namespace liveio::ebpf
