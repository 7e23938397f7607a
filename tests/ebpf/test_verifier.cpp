// The verifier's unsafe corpus (one small program per rule, each asserting the instruction
// index and the reason) and what it must accept: the range tracking idioms clang emits, and
// every BPF object the build produces.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "agent/bpf_host_socket.h"
#include "ebpf/assembler.h"
#include "ebpf/conformance_suite.h"
#include "ebpf/loader.h"
#include "ebpf/verifier.h"
#include "ebpf/vm.h"
#include "policy/runtime.h"
#include "test_loader_objects.h"
#include "verifier_corpus.h"

namespace liveio::ebpf {
namespace {

using namespace corpus;

// ---- structure --------------------------------------------------------------------------

TEST(VerifierCorpus, InvalidOpcode) {
    Program p = make_program("mov %r0, 0\nexit");
    p.insns.insert(p.insns.begin() + 1,
                   make_insn(0x8f /* ALU64 with operation 0x80|X: neg with src bit */, 0, 1));
    expect_rejected(p, 1, "reserved field of neg");
}

TEST(VerifierCorpus, InvalidRegister) {
    Program p = make_program("mov %r0, 0\nexit");
    p.insns[0].dst = 11;
    expect_rejected(p, 0, "register number above r10");
}

TEST(VerifierCorpus, JumpOutOfRange) {
    Program p = make_program("mov %r0, 0\nja +5\nexit");
    expect_rejected(p, 1, "jump to insn 7 outside the program");
}

TEST(VerifierCorpus, JumpIntoLddw) {
    Program p = make_program("mov %r0, 0\nja +1\nlddw %r1, 0x100000000\nexit");
    expect_rejected(p, 1, "middle of the lddw at insn 2");
}

TEST(VerifierCorpus, FallsOffTheEnd) {
    expect_rejected(make_program("mov %r0, 0\nexit\nmov %r0, 1"), 2, "falls off the end");
    expect_rejected(make_program("mov %r0, 0\nexit\njeq %r0, 0, -2"), 2, "falls off the end");
}

TEST(VerifierCorpus, SizeLimit) {
    VerifierOptions options;
    options.max_insns = 4;
    expect_rejected(make_program("mov %r0, 0\nmov %r0, 0\nmov %r0, 0\nmov %r0, 0\nexit"), 4,
                    "5 instructions, more than the limit of 4", options);
}

TEST(VerifierCorpus, WriteToR10) {
    expect_rejected(make_program("mov %r0, 0\nadd %r10, 8\nexit"), 1, "r10 is read-only");
    expect_rejected(
        make_program("mov %r0, 0\nstdw [%r10-8], 0\nlock fetch add [%r10-8], %r10\nexit"), 2,
        "r10 is read-only");
}

TEST(VerifierCorpus, UnknownHelper) {
    expect_rejected(make_program("call 9999\nmov %r0, 0\nexit"), 0, "unknown helper 9999");
    // Unreachable, but the engines resolve it when they load (fuzz.jit_diff found the mismatch).
    expect_rejected(make_program("mov %r0, 0\nja +1\ncall 0\nexit"), 2, "unknown helper 0");
}

// The JIT emits a prologue where each function starts: falling or jumping into one from
// another function would run it in the wrong frame (fuzz.jit_diff: a wild jump).
TEST(VerifierCorpus, FunctionsAreEnteredOnlyByCalls) {
    expect_rejected(make_program("mov %r0, 0\nlddw %r2, " + func(4) + "\nmov %r0, 0\nexit"), 3,
                    "falls through into the function at insn 4");
    expect_rejected(make_program("mov %r0, 0\njeq %r1, 0, +3\nlddw %r2, " + func(5) +
                                 "\nexit\nmov %r0, 1\nexit"),
                    1, "jump to insn 5 leaves the function at insn 0 for the function at insn 5");
    expect_accepted(
        make_program("mov %r0, 0\nlddw %r2, " + func(5) + "\nja +0\nexit\nmov %r0, 1\nexit"));
}

// Map references are resolved by the engines at load time, reachable or not (fuzz.verifier);
// a direct value address exists only for plain arrays (a hash value may be freed).
TEST(VerifierCorpus, MapReferencesCheckedEverywhere) {
    expect_rejected(make_program("mov %r0, 0\nja +2\nlddw %r1, " + map(12288) + "\nexit"), 2,
                    "map index 12288 out of range");
    expect_rejected(make_program("lddw %r2, " + map_value(0) + "\nmov %r0, 0\nexit"), 0,
                    "direct value access to map 'map1', which is not a non-empty array");
}

// callx with its register in imm (older assemblers): beyond r10 the engines would index past
// their register file (fuzz.verifier, UBSan).
TEST(VerifierCorpus, CallxRegisterOutOfRange) {
    Program p = make_program("mov %r0, 0\nexit");
    p.insns.insert(p.insns.begin() + 1,
                   Insn{static_cast<uint8_t>(op::kClassJmp | op::kCall | op::kSrcX), 0, 0, 0, 12});
    auto r = check(p);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("callx register in imm is not r0..r10"), std::string::npos)
        << r.error().message;
}

// ---- initialization ---------------------------------------------------------------------

TEST(VerifierCorpus, UninitializedRegister) {
    expect_rejected(make_program("mov %r0, 0\nadd %r0, %r3\nexit"), 1,
                    "r3 read before it is written");
    expect_rejected(make_program("exit"), 0, "r0 read before it is written");
    // Calls clobber r1-r5.
    expect_rejected(make_program("call 5\nmov %r0, %r1\nexit"), 1, "r1 read before it is written");
}

TEST(VerifierCorpus, UninitializedStack) {
    expect_rejected(make_program("stw [%r10-8], 1\nldxdw %r0, [%r10-8]\nexit"), 1,
                    "read of uninitialized stack at offset -4");
}

TEST(VerifierCorpus, UninitializedOnOnePathOnly) {
    expect_rejected(make_program(R"(
        ldxw %r1, [%r1]
        jeq %r1, 0, +1
        mov %r0, 1
        exit
    )"),
                    3, "r0 read before it is written");
}

// ---- memory -----------------------------------------------------------------------------

TEST(VerifierCorpus, StackOutOfBounds) {
    expect_rejected(make_program("mov %r0, 0\nstdw [%r10-520], 1\nexit"), 1,
                    "out-of-bounds stack write");
    expect_rejected(make_program("mov %r0, 0\nstdw [%r10], 1\nexit"), 1,
                    "out-of-bounds stack write");
}

TEST(VerifierCorpus, StackMisaligned) {
    expect_rejected(make_program("mov %r0, 0\nstdw [%r10-12], 1\nexit"), 1,
                    "misaligned stack access");
}

TEST(VerifierCorpus, ContextOutOfBounds) {
    expect_rejected(make_program("ldxdw %r0, [%r1+12]\nexit", 16), 0, "out-of-bounds context read");
}

TEST(VerifierCorpus, ContextWriteWhenReadOnly) {
    expect_rejected(make_program("mov %r0, 0\nstw [%r1], 1\nexit", 16, false), 1,
                    "read-only context");
    expect_accepted(make_program("mov %r0, 0\nstw [%r1], 1\nexit", 16, true));
}

TEST(VerifierCorpus, MapValueOutOfBounds) {
    expect_rejected(make_program(R"(
        stw [%r10-4], 0
        lddw %r1, )" + map(0) + R"(
        mov %r2, %r10
        add %r2, -4
        call 1
        jeq %r0, 0, +1
        ldxdw %r0, [%r0+12]
        exit
    )"),
                    7, "out-of-bounds map value read");
}

TEST(VerifierCorpus, ReadOnlyMapWrite) {
    expect_rejected(make_program("lddw %r1, " + map_value(3) + "\nstdw [%r1], 1\nmov %r0, 0\nexit"),
                    2, "read-only map");
}

TEST(VerifierCorpus, MapValueUsedBeforeNullCheck) {
    expect_rejected(make_program(R"(
        stw [%r10-4], 0
        lddw %r1, )" + map(0) + R"(
        mov %r2, %r10
        add %r2, -4
        call 1
        ldxdw %r0, [%r0]
        exit
    )"),
                    6, "null-check it before use");
}

TEST(VerifierCorpus, ScalarDereference) {
    expect_rejected(make_program("mov %r2, 4096\nldxdw %r0, [%r2]\nexit"), 1,
                    "r2, a scalar, not a pointer");
}

TEST(VerifierCorpus, PointerArithmeticEscapes) {
    // An unbounded index added to a pointer.
    expect_rejected(make_program(R"(
        ldxdw %r2, [%r1]
        mov %r3, %r10
        add %r3, %r2
        mov %r0, 0
        exit
    )"),
                    2, "pointer arithmetic escapes its region");
    // A bound that is one too large.
    expect_rejected(make_program(R"(
        ldxdw %r2, [%r1]
        stdw [%r10-8], 0
        jgt %r2, 8, +4
        mov %r3, %r10
        add %r3, -8
        add %r3, %r2
        ldxb %r0, [%r3]
        mov %r0, 0
        exit
    )"),
                    6, "out-of-bounds stack read");
}

TEST(VerifierAccepts, BoundedIndexIntoStack) {
    // `if (i < N) p += i` with i read from the context, the branch narrowing a copy of i.
    expect_accepted(make_program(R"(
        ldxdw %r2, [%r1]
        stdw [%r10-8], 0
        mov %r4, %r2
        jge %r4, 8, +4
        mov %r3, %r10
        add %r3, -8
        add %r3, %r2
        ldxb %r0, [%r3]
        mov %r0, 0
        exit
    )"));
}

// ---- helpers ----------------------------------------------------------------------------

TEST(VerifierCorpus, HelperWrongArgumentType) {
    expect_rejected(make_program(R"(
        mov %r1, 1
        mov %r2, 0
        call 1
        mov %r0, 0
        exit
    )"),
                    2, "argument 1 of map_lookup_elem must be a map");
}

TEST(VerifierCorpus, HelperKeyNotInitialized) {
    expect_rejected(make_program(R"(
        lddw %r1, )" + map(0) + R"(
        mov %r2, %r10
        add %r2, -4
        call 1
        mov %r0, 0
        exit
    )"),
                    4, "read of uninitialized stack");
}

TEST(VerifierCorpus, HelperSizeUnbounded) {
    expect_rejected(make_program(R"(
        ldxdw %r2, [%r1]
        mov %r1, %r10
        add %r1, -16
        mov %r3, 0
        call 4
        mov %r0, 0
        exit
    )"),
                    4, "size that is not bounded");
}

TEST(VerifierCorpus, HelperSizeBeyondBuffer) {
    expect_rejected(make_program(R"(
        mov %r1, %r10
        add %r1, -16
        mov %r2, 17
        mov %r3, 0
        call 4
        mov %r0, 0
        exit
    )"),
                    4, "out-of-bounds stack write");
}

TEST(VerifierAccepts, HelperFillsStack) {
    expect_accepted(make_program(R"(
        mov %r1, %r10
        add %r1, -16
        mov %r2, 16
        call 16
        ldxdw %r0, [%r10-16]
        ldxdw %r0, [%r10-8]
        exit
    )"));
}

TEST(VerifierCorpus, RingbufRecordNotReleased) {
    expect_rejected(make_program(R"(
        lddw %r1, )" + map(1) + R"(
        mov %r2, 16
        mov %r3, 0
        call 131
        jeq %r0, 0, +1
        stdw [%r0], 1
        mov %r0, 0
        exit
    )"),
                    8, "reserved at insn 4 is neither submitted nor discarded");
}

TEST(VerifierCorpus, RingbufRecordOutOfBounds) {
    expect_rejected(make_program(R"(
        lddw %r1, )" + map(1) + R"(
        mov %r2, 16
        mov %r3, 0
        call 131
        jeq %r0, 0, +4
        stdw [%r0+16], 1
        mov %r1, %r0
        mov %r2, 0
        call 132
        mov %r0, 0
        exit
    )"),
                    6, "out-of-bounds ring buffer record write");
}

TEST(VerifierCorpus, RingbufRecordUsedAfterSubmit) {
    expect_rejected(make_program(R"(
        lddw %r1, )" + map(1) + R"(
        mov %r2, 16
        mov %r3, 0
        call 131
        jeq %r0, 0, +5
        mov %r6, %r0
        mov %r1, %r0
        mov %r2, 0
        call 132
        stdw [%r6], 1
        mov %r0, 0
        exit
    )"),
                    10, "r6 read before it is written");
}

TEST(VerifierAccepts, RingbufReserveSubmitDiscard) {
    expect_accepted(make_program(R"(
        mov %r6, %r1
        lddw %r1, )" + map(1) + R"(
        mov %r2, 16
        mov %r3, 0
        call 131
        jeq %r0, 0, +9
        stdw [%r0], 1
        stdw [%r0+8], 2
        mov %r1, %r0
        mov %r2, 0
        ldxw %r3, [%r6]
        jeq %r3, 0, +2
        call 133
        ja +1
        call 132
        mov %r0, 0
        exit
    )"));
}

// ---- loops and calls --------------------------------------------------------------------

TEST(VerifierCorpus, InfiniteLoop) {
    expect_rejected(make_program("mov %r0, 0\nja -1\nexit"), 1, "infinite loop");
}

TEST(VerifierCorpus, UnboundedLoop) {
    // Counts up to a bound read from the context: not provable within the budget.
    VerifierOptions options;
    options.max_explored_insns = 10'000;
    expect_rejected(make_program(R"(
        ldxdw %r2, [%r1]
        mov %r0, 0
        add %r0, 1
        jlt %r0, %r2, -2
        exit
    )"),
                    2, "program too complex", options);
}

TEST(VerifierAccepts, BoundedLoop) {
    auto r = check(make_program(R"(
        mov %r0, 0
        mov %r1, 0
        add %r0, %r1
        add %r1, 1
        jlt %r1, 100, -3
        exit
    )"));
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_GT(r->explored_insns, 300u);  // the loop was followed to its end
}

TEST(VerifierCorpus, CallDepth) {
    // Unbounded recursion exceeds the frame limit.
    expect_rejected(make_program("call local f\nexit\nf:\ncall local f\nmov %r0, 0\nexit"), 2,
                    "call depth exceeds 8 frames");
}

TEST(VerifierCorpus, CalleeReturnsItsStack) {
    expect_rejected(make_program("call local f\nmov %r0, 0\nexit\nf:\nmov %r0, %r10\nexit"), 4,
                    "returns a pointer to its own stack");
}

TEST(VerifierAccepts, CalleeWritesCallerStack) {
    expect_accepted(make_program(R"(
        mov %r1, %r10
        add %r1, -8
        call local f
        ldxdw %r0, [%r10-8]
        exit
    f:
        stdw [%r1], 7
        mov %r0, 0
        exit
    )"));
}

TEST(VerifierCorpus, CallbackReturnsPointer) {
    expect_rejected(make_program(R"(
        mov %r1, 10
        lddw %r2, )" + func(7) + R"(
        mov %r3, 0
        mov %r4, 0
        call 181
        exit
        lddw %r0, )" + map(0) + R"(
        exit
    )"),
                    9, "callback must return a scalar");
}

TEST(VerifierCorpus, CallbackSecondIterationSeesTheFirstsWrites) {
    // The first iteration finds a pointer in the context slot and replaces it with a number;
    // the second would dereference that number.
    expect_rejected(make_program(R"(
        lddw %r1, )" + map_value(2) +
                                 R"(
        stxdw [%r10-8], %r1
        mov %r1, 10
        lddw %r2, )" + func(11) + R"(
        mov %r3, %r10
        add %r3, -8
        mov %r4, 0
        call 181
        exit
        ldxdw %r1, [%r2]
        ldxdw %r0, [%r1]
        stdw [%r2], 0
        mov %r0, 0
        exit
    )"),
                    12, "memory access through r1, a scalar");
}

// 1024 iterations whose branches leave r0 at 32 different offsets, all dead at the loop head
// (r0 is written before it is read again): with register liveness the iterations converge
// to a few states instead of 32 per iteration.
TEST(VerifierAccepts, LoopWhoseBranchesDifferOnlyInDeadRegisters) {
    expect_accepted(make_program(R"(
        mov %r3, 0
    loop:
        mov %r4, %r1
        add %r4, %r3
        ldxw %r5, [%r4+0]
        mov %r0, 0
        jlt %r5, 0x10000, s8
        rsh %r5, 16
        add %r0, 16
    s8:
        jlt %r5, 0x100, s4
        rsh %r5, 8
        add %r0, 8
    s4:
        jlt %r5, 0x10, s1
        rsh %r5, 4
        add %r0, 4
    s1:
        lsh %r0, 3
        add %r0, %r1
        ldxdw %r5, [%r0+4096]
        add %r5, 1
        stxdw [%r0+4096], %r5
        add %r3, 4
        jlt %r3, 4096, loop
        mov %r0, 0
        exit
    )",
                                 4096 + 256, true));
}

// Liveness forgets only what is never read again: a register read after the loop keeps its
// value through the prune points, and a bad use of it is still found.
TEST(VerifierCorpus, LiveRegisterKeptAcrossPrunePoints) {
    expect_rejected(make_program(R"(
        mov %r6, %r1
        ldxdw %r2, [%r1+0]
        jgt %r2, 5, big
        mov %r6, 0
    big:
        mov %r3, 0
    loop:
        add %r3, 1
        jlt %r3, 4, loop
        ldxdw %r0, [%r6+0]
        exit
    )"),
                    7, "memory access through r6, a scalar");
}

TEST(VerifierAccepts, CallbackWithContextPointer) {
    expect_accepted(make_program(R"(
        stdw [%r10-8], 0
        mov %r1, 10
        lddw %r2, )" + func(9) + R"(
        mov %r3, %r10
        add %r3, -8
        mov %r4, 0
        call 181
        exit
        ldxdw %r0, [%r2]
        add %r0, 1
        stxdw [%r2], %r0
        mov %r0, 0
        exit
    )"));
}

TEST(VerifierCorpus, TailCallNeedsProgramArray) {
    expect_rejected(make_program(R"(
        lddw %r2, )" + map(0) + R"(
        mov %r3, 0
        call 12
        mov %r0, 0
        exit
    )"),
                    3, "program array");
}

TEST(VerifierAccepts, TailCall) {
    expect_accepted(make_program(R"(
        lddw %r2, )" + map(4) + R"(
        mov %r3, 0
        call 12
        mov %r0, 0
        exit
    )"));
}

// ---- mandatory --------------------------------------------------------------------------

TEST(Verifier, ExecutableLoadRefusesUnverifiedPrograms) {
    auto p = std::make_shared<Program>(make_program("add %r0, 1\nexit"));
    for (Engine engine : {Engine::Interpreter, Engine::Jit}) {
        auto exe = Executable::load(p, corpus_helpers(), engine);
        ASSERT_FALSE(exe.ok());
        EXPECT_NE(exe.error().message.find("insn 0: r0 read before it is written"),
                  std::string::npos)
            << exe.error().message;
    }
}

// ---- real programs ----------------------------------------------------------------------

// Every program of the bpf_conformance suite verifies on its own (the suite's run through the
// engines is test_conformance.cpp); prints the verify time of the largest (no timed assert).
TEST(VerifierAccepts, EveryConformanceProgram) {
    const auto dir = testing::conformance_dir();
    if (!std::filesystem::exists(dir / "tests"))
        GTEST_SKIP() << "bpf_conformance suite not found at " << dir;
    size_t largest = 0;
    std::string largest_name;
    double largest_us = 0;
    uint64_t largest_explored = 0;
    int verified = 0;
    for (const auto& c : testing::load_cases(dir / "tests")) {
        auto insns = testing::case_program(c);
        ASSERT_TRUE(insns.ok()) << c.file << ": " << insns.error().message;
        Program p;
        p.name = c.file.stem();
        p.insns = std::move(insns.value());
        p.context = {static_cast<uint32_t>(c.mem.size()), true};
        const auto start = std::chrono::steady_clock::now();
        auto r = verify(p, testing::conformance_helpers());
        const double us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                .count();
        if (c.expect_error) continue;
        EXPECT_TRUE(r.ok()) << c.file.filename() << ": " << r.error().message;
        if (!r.ok()) continue;
        ++verified;
        if (p.insns.size() > largest) {
            largest = p.insns.size();
            largest_name = c.file.filename().string();
            largest_us = us;
            largest_explored = r->explored_insns;
        }
    }
    std::cout << fmt::format(
        "verified {} conformance programs; largest {} ({} insns): {:.1f} us, {} insns explored\n",
        verified, largest_name, largest, largest_us, largest_explored);
    EXPECT_GT(verified, 0);
}

// Every program of every object the build compiles (shipped bpf/ and the test objects)
// verifies against the standard helpers, plus the liveio helpers the agent registers: the
// policies' (liveio/policy.h) and the socket edge's (liveio/net_stats.h).
TEST(VerifierAccepts, EveryBuiltObject) {
    HelperTable helpers = HelperTable::standard();
    ASSERT_TRUE(policy::Runtime::add_helpers(helpers));
    ASSERT_TRUE(agent::add_socket_helpers(helpers));
    int verified = 0;
    std::set<std::filesystem::path> seen;  // the test directory may lie inside the shipped one
    for (const char* dir : {LIVEIO_BPF_DIR, LIVEIO_TEST_BPF_DIR}) {
        if (!std::filesystem::exists(dir)) continue;
        for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
            const std::string path = entry.path().string();
            if (!path.ends_with(".bpf.o") ||
                !seen.insert(std::filesystem::canonical(entry.path())).second)
                continue;
            auto object = Object::open(path);
            if (!object) continue;  // objects built to be refused by the loader (bad_map_type)
            // The agent tests' and the policy tests' verifier-rejected programs.
            const bool refused_by_design = entry.path().filename() == "rejected.bpf.o" ||
                                           entry.path().filename() == "policy_bad.bpf.o";
            for (const auto& program : object->programs()) {
                auto r = verify(*program, helpers);
                if (refused_by_design) {
                    EXPECT_FALSE(r.ok())
                        << path << " " << program->name << " was built to be refused";
                    continue;
                }
                if (program->context.size == 0 && !r.ok() &&
                    r.error().message.find("context") != std::string::npos) {
                    // Attached in the kernel only (e.g. tracepoint/block/*): liveio has no
                    // userspace context for the section, so its context reads are refused.
                    std::cout << fmt::format("kernel-only {} {}: {}\n",
                                             entry.path().filename().string(), program->name,
                                             r.error().message);
                    continue;
                }
                EXPECT_TRUE(r.ok()) << path << " " << program->name << ": " << r.error().message;
                if (r.ok()) {
                    ++verified;
                    std::cout << fmt::format("verified {} {}: {} insns, {} explored, {} states\n",
                                             entry.path().filename().string(), program->name,
                                             program->insns.size(), r->explored_insns,
                                             r->stored_states);
                }
            }
        }
    }
    EXPECT_GT(verified, 0) << "no BPF object found in " << LIVEIO_BPF_DIR << " or "
                           << LIVEIO_TEST_BPF_DIR;
}

}  // namespace
}  // namespace liveio::ebpf
