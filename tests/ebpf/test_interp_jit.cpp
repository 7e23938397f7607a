// The JIT against the interpreter (the reference semantics): random programs with a fixed
// seed, plus calls, callbacks and tail calls that the conformance suite does not cover.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include <fmt/format.h>

#include "ebpf/assembler.h"
#include "ebpf/jit.h"
#include "ebpf/vm.h"
#include "ebpf/vm_internal.h"

namespace liveio::ebpf {
namespace {

constexpr auto make = make_insn;

// Mixes its arguments so a wrong register assignment changes the result.
uint64_t mix_helper(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e, ExecEnv* env) {
    return (a * 31 + b) ^ (c << 7) ^ (d * 0x9e3779b97f4a7c15ull) ^ (e >> 3) ^ (env ? 1 : 0);
}
constexpr int32_t kMixHelper = helper_id::kLiveioBase + 1;

HelperTable test_helpers() {
    HelperTable t;
    HelperProto p;
    p.name = "mix";
    p.fn = mix_helper;
    p.args = {ArgType::Scalar, ArgType::Scalar, ArgType::Scalar, ArgType::Scalar, ArgType::Scalar};
    t.add(kMixHelper, p);
    return t;
}

// A random terminating program: r9 = ctx (output buffer, never a destination), r0..r8 random,
// forward jumps only, loads/stores/atomics on the stack, helper calls; at the end every
// register and the stack are written to the ctx buffer.
std::vector<Insn> random_program(std::mt19937_64& rng, int length) {
    std::vector<Insn> p;
    auto rnd = [&](uint64_t n) { return static_cast<uint64_t>(rng() % n); };
    auto imm = [&]() -> int32_t {
        switch (rnd(4)) {
            case 0: return static_cast<int32_t>(rnd(16)) - 8;
            case 1: return static_cast<int32_t>(rng());
            case 2: return INT32_MIN;
            default: return -1;
        }
    };
    p.push_back(make(op::kClassAlu64 | op::kMov | op::kSrcX, 9, 1, 0, 0));
    for (uint8_t r = 0; r <= 8; ++r) {
        const uint64_t v = rnd(3) == 0 ? rnd(100) : rng();
        p.push_back(make(op::kLddw, r, 0, 0, static_cast<int32_t>(v)));
        p.push_back(make(0, 0, 0, 0, static_cast<int32_t>(v >> 32)));
    }
    for (int slot = 1; slot <= 8; ++slot)  // initialize the stack slots used below
        p.push_back(make(op::kClassStx | op::kModeMem | op::kSizeDW, 10,
                         static_cast<uint8_t>(slot % 9), -8 * slot, 0));

    const uint8_t alu_ops[] = {op::kAdd, op::kSub, op::kMul,  op::kDiv, op::kOr,
                               op::kAnd, op::kLsh, op::kRsh,  op::kNeg, op::kMod,
                               op::kXor, op::kMov, op::kArsh, op::kEnd};
    const uint8_t jmp_ops[] = {op::kJeq,  op::kJgt, op::kJge, op::kJset, op::kJne, op::kJsgt,
                               op::kJsge, op::kJlt, op::kJle, op::kJslt, op::kJsle};
    const uint8_t sizes[] = {op::kSizeB, op::kSizeH, op::kSizeW, op::kSizeDW};
    const int body_start = static_cast<int>(p.size());
    const int end = body_start + length;
    while (static_cast<int>(p.size()) < end) {
        const int here = static_cast<int>(p.size());
        const uint8_t dst = static_cast<uint8_t>(rnd(9)), src = static_cast<uint8_t>(rnd(9));
        const uint64_t kind = rnd(20);
        if (kind < 10) {
            const bool w = rnd(2);
            const uint8_t code = alu_ops[rnd(sizeof(alu_ops))];
            const uint8_t cls = w ? op::kClassAlu64 : op::kClassAlu;
            if (code == op::kEnd) {
                const int32_t width = 16 << rnd(3);
                const uint8_t variant = static_cast<uint8_t>(rnd(3));  // le, be, bswap
                p.push_back(make(variant == 2
                                     ? (op::kClassAlu64 | op::kEnd)
                                     : (op::kClassAlu | op::kEnd | (variant ? op::kSrcX : 0)),
                                 dst, 0, 0, width));
            } else if (code == op::kNeg) {
                p.push_back(make(cls | code, dst, 0, 0, 0));
            } else {
                int16_t off = 0;
                if ((code == op::kDiv || code == op::kMod) && rnd(2)) off = 1;
                if (code == op::kMov && rnd(3) == 0)
                    off = static_cast<int16_t>(8 << rnd(w ? 3 : 2));
                const bool x = rnd(2) || off >= 8;
                p.push_back(
                    make(cls | code | (x ? op::kSrcX : 0), dst, x ? src : 0, off, x ? 0 : imm()));
            }
        } else if (kind < 14) {
            const int remaining = end - here - 1;
            const int16_t off =
                static_cast<int16_t>(remaining > 0 ? rnd(std::min(remaining, 12)) : 0);
            const bool w32 = rnd(2);
            const uint8_t code = jmp_ops[rnd(sizeof(jmp_ops))];
            const bool x = rnd(2);
            p.push_back(make((w32 ? op::kClassJmp32 : op::kClassJmp) | code | (x ? op::kSrcX : 0),
                             dst, x ? src : 0, off, x ? 0 : imm()));
        } else if (kind < 17) {
            const uint8_t size = sizes[rnd(4)];
            const int16_t off =
                static_cast<int16_t>(-8 * (1 + rnd(8)) + (size == op::kSizeDW ? 0 : rnd(4)));
            switch (rnd(4)) {
                case 0:
                    p.push_back(make(op::kClassLdx | op::kModeMem | size, dst, 10, off, 0));
                    break;
                case 1:
                    p.push_back(make(op::kClassLdx |
                                         (size == op::kSizeDW ? op::kModeMem : op::kModeMemSx) |
                                         size,
                                     dst, 10, off, 0));
                    break;
                case 2:
                    p.push_back(make(op::kClassStx | op::kModeMem | size, 10, src, off, 0));
                    break;
                default:
                    p.push_back(make(op::kClassSt | op::kModeMem | size, 10, 0, off, imm()));
                    break;
            }
        } else if (kind < 19) {
            const bool w = rnd(2);
            const int32_t ops[] = {op::kAdd, op::kOr,         op::kAnd,
                                   op::kXor, op::kAtomicXchg, op::kAtomicCmpXchg};
            int32_t a = ops[rnd(6)];
            if (a < op::kAtomicXchg && rnd(2)) a |= op::kAtomicFetch;
            p.push_back(make(op::kClassStx | op::kModeAtomic | (w ? op::kSizeDW : op::kSizeW), 10,
                             src, static_cast<int16_t>(-8 * (1 + rnd(8))), a));
        } else {
            p.push_back(make(op::kClassJmp | op::kCall, 0, 0, 0, kMixHelper));
            for (uint8_t r = 1; r <= 5; ++r)  // r1..r5 are clobbered by calls
                p.push_back(make(op::kClassAlu64 | op::kMov, r, 0, 0, imm()));
        }
    }
    for (uint8_t r = 0; r <= 8; ++r)
        p.push_back(make(op::kClassStx | op::kModeMem | op::kSizeDW, 9, r, 8 * r, 0));
    for (int slot = 1; slot <= 8; ++slot) {
        p.push_back(make(op::kClassLdx | op::kModeMem | op::kSizeDW, 1, 10, -8 * slot, 0));
        p.push_back(make(op::kClassStx | op::kModeMem | op::kSizeDW, 9, 1, 64 + 8 * slot, 0));
    }
    p.push_back(make(op::kClassJmp | op::kExit, 0, 0, 0, 0));
    return p;
}

TEST(InterpJit, RandomProgramsAgree) {
    std::mt19937_64 rng(20261125);
    const HelperTable helpers = test_helpers();
    for (int i = 0; i < 3000; ++i) {
        auto program = std::make_shared<Program>();
        program->insns = random_program(rng, 20 + static_cast<int>(rng() % 200));
        // Random programs are not verifiable (wild pointers in r0..r8); they compare engines.
        auto interp = internal::load_unverified(program, helpers, Engine::Interpreter);
        auto jit = internal::load_unverified(program, helpers, Engine::Jit);
        ASSERT_TRUE(interp.ok()) << interp.error().message;
        ASSERT_TRUE(jit.ok()) << jit.error().message;
        ASSERT_EQ(jit.value()->engine(), Engine::Jit);
        uint8_t out_interp[160] = {}, out_jit[160] = {};
        const uint64_t r_interp = interp.value()->run(out_interp, sizeof(out_interp));
        const uint64_t r_jit = jit.value()->run(out_jit, sizeof(out_jit));
        ASSERT_EQ(r_interp, r_jit) << "program " << i;
        for (size_t b = 0; b < sizeof(out_interp); b += 8) {
            uint64_t a, j;
            std::memcpy(&a, out_interp + b, 8);
            std::memcpy(&j, out_jit + b, 8);
            ASSERT_EQ(a, j) << "program " << i
                            << (b < 72 ? fmt::format(" r{}", b / 8)
                                       : fmt::format(" stack slot {}", (b - 64) / 8));
        }
    }
}

// Atomics with every operation and width through pointer and value registers the JIT treats
// specially (r0 = rax is cmpxchg's implicit operand, r3/r4 = rdx/rcx), agreeing across engines.
TEST(InterpJit, AtomicsThroughSpecialRegisters) {
    const int32_t ops[] = {op::kAdd,
                           op::kOr,
                           op::kAnd,
                           op::kXor,
                           op::kAdd | op::kAtomicFetch,
                           op::kOr | op::kAtomicFetch,
                           op::kAnd | op::kAtomicFetch,
                           op::kXor | op::kAtomicFetch,
                           op::kAtomicXchg,
                           op::kAtomicCmpXchg};
    const uint64_t memory_value = 0xf0f0f0f0a5a5a5a5ull;
    int checked = 0;
    for (int32_t aop : ops) {
        for (uint8_t size : {op::kSizeW, op::kSizeDW}) {
            for (uint8_t base : {0, 3, 4, 5}) {
                for (uint8_t src : {0, 1, 3, 4, 5}) {
                    if (src == base) continue;
                    for (uint64_t r0 : {memory_value, uint64_t{0x1234}}) {  // cmpxchg hit and miss
                        std::vector<Insn> p;
                        auto lddw = [&](uint8_t reg, uint64_t v) {
                            p.push_back(make(op::kLddw, reg, 0, 0, static_cast<int32_t>(v)));
                            p.push_back(make(0, 0, 0, 0, static_cast<int32_t>(v >> 32)));
                        };
                        p.push_back(make(op::kClassAlu64 | op::kMov | op::kSrcX, 9, 1, 0, 0));
                        lddw(0, r0);
                        lddw(src, 0x0ff00ff01234abcdull);
                        p.push_back(make(op::kClassAlu64 | op::kMov | op::kSrcX, base, 9, 0, 0));
                        p.push_back(
                            make(op::kClassStx | op::kModeAtomic | size, base, src, 8, aop));
                        p.push_back(
                            make(op::kClassStx | op::kModeMem | op::kSizeDW, 9, src, 16, 0));
                        p.push_back(make(op::kClassStx | op::kModeMem | op::kSizeDW, 9, 0, 24, 0));
                        p.push_back(
                            make(op::kClassStx | op::kModeMem | op::kSizeDW, 9, base, 32, 0));
                        p.push_back(make(op::kClassJmp | op::kExit, 0, 0, 0, 0));
                        auto program = std::make_shared<Program>();
                        program->insns = p;
                        // One buffer for both engines, so pointer values left in registers match.
                        uint64_t buffer[5];
                        uint64_t out[2][5];
                        uint64_t r[2];
                        for (int e = 0; e < 2; ++e) {
                            // cmpxchg through r0 as base: engine register mapping, beyond
                            // what the verifier admits (r0 must be a scalar there).
                            auto exe = internal::load_unverified(
                                program, HelperTable{}, e ? Engine::Jit : Engine::Interpreter);
                            ASSERT_TRUE(exe.ok()) << exe.error().message;
                            std::memset(buffer, 0, sizeof(buffer));
                            buffer[1] = memory_value;
                            r[e] = exe.value()->run(buffer, sizeof(buffer));
                            std::memcpy(out[e], buffer, sizeof(buffer));
                        }
                        const std::string what =
                            fmt::format("op {:#x} size {:#x} base r{} src r{} r0 {:#x}", aop, size,
                                        base, src, r0);
                        EXPECT_EQ(r[0], r[1]) << what;
                        for (int i = 1; i < 5; ++i)
                            EXPECT_EQ(out[0][i], out[1][i]) << what << " word " << i;
                        ++checked;
                    }
                }
            }
        }
    }
    EXPECT_EQ(checked, 10 * 2 * 4 * 4 * 2);
}

std::shared_ptr<Program> assembled(const char* text) {
    auto insns = assemble(text);
    EXPECT_TRUE(insns.ok()) << insns.error().message;
    auto p = std::make_shared<Program>();
    if (insns.ok()) p->insns = std::move(insns.value());
    return p;
}

class BothEngines : public ::testing::TestWithParam<Engine> {};

// A callee has its own frame and cannot disturb r6..r9 or the caller's stack.
TEST_P(BothEngines, BpfToBpfCallsPreserveCalleeSavedAndFrames) {
    auto p = assembled(R"(
        mov %r6, 6
        mov %r7, 7
        mov %r8, 8
        mov %r9, 9
        stdw [%r10-8], 100
        mov %r1, 3
        call local f
        ldxdw %r1, [%r10-8]
        add %r0, %r1
        add %r0, %r6
        add %r0, %r7
        add %r0, %r8
        add %r0, %r9
        exit
    f:
        stdw [%r10-8], 5000
        mov %r6, 1000
        mov %r7, 1000
        mov %r8, 1000
        mov %r9, 1000
        mov %r0, %r1
        add %r0, %r6
        call local g
        exit
    g:
        mov %r6, 77
        add %r0, 1
        exit
    )");
    // g reads the r0 f left (engines keep r0 across calls; the verifier, as the kernel's,
    // treats it as unset in a callee), so this engine test loads unverified.
    auto exe = internal::load_unverified(p, HelperTable{}, GetParam());
    ASSERT_TRUE(exe.ok()) << exe.error().message;
    EXPECT_EQ(exe.value()->run(nullptr, 0), 3u + 1000 + 1 + 100 + 6 + 7 + 8 + 9);
}

// A bpf_loop-like helper calling back into the program through ExecEnv::invoke_callback.
uint64_t loop_helper(uint64_t n, uint64_t fn, uint64_t ctx, uint64_t, uint64_t, ExecEnv* env) {
    uint64_t i = 0;
    for (; i < n; ++i)
        if (env->invoke_callback(env, fn, i, ctx, 0, 0, 0) != 0) break;
    return i;
}

TEST_P(BothEngines, CallbacksRunThroughTheEngineInvoker) {
    auto p = assembled(R"(
        stdw [%r10-8], 0
        mov %r1, 10
        lddw %r2, 0
        mov %r3, %r10
        add %r3, -8
        call 181
        ldxdw %r1, [%r10-8]
        lsh %r0, 32
        or %r0, %r1
        exit
    cb:
        add %r1, 1
        ldxdw %r3, [%r2]
        add %r3, %r1
        stxdw [%r2], %r3
        mov %r0, 0
        exit
    )");
    // Point the lddw at `cb` (src = pseudo func, imm relative to the next insn).
    p->insns[2].src = op::kPseudoFunc;
    p->insns[2].imm = 11 - 3;
    HelperTable helpers;
    HelperProto loop;
    loop.name = "loop";
    loop.fn = loop_helper;
    helpers.add(helper_id::kLoop, loop);
    auto exe = Executable::load(p, helpers, GetParam());
    ASSERT_TRUE(exe.ok()) << exe.error().message;
    EXPECT_EQ(exe.value()->run(nullptr, 0), (uint64_t{10} << 32) | 55);
}

// Tail calls replace the running program; the chain stops at kMaxTailCalls.
TEST_P(BothEngines, TailCallsChainUpToTheLimit) {
    auto p = assembled(R"(
        ldxdw %r0, [%r1]
        add %r0, 1
        stxdw [%r1], %r0
        mov %r2, 0
        mov %r3, 0
        call 12
        mov %r0, 1000
        exit
    )");
    // The resolver ignores the map, so r2 is 0 instead of a program array the verifier
    // would demand: an engine test, loaded unverified.
    auto exe = internal::load_unverified(p, HelperTable{}, GetParam());
    ASSERT_TRUE(exe.ok()) << exe.error().message;
    const Executable* self = exe.value().get();
    struct Registry {
        const Executable* target;
    } registry{self};
    auto resolver = [](void* services, Map*, uint32_t) -> const Executable* {
        return static_cast<Registry*>(services)->target;
    };
    uint64_t counter = 0;
    EXPECT_EQ(self->run(&counter, sizeof(counter), &registry, resolver), 1000u);
    EXPECT_EQ(counter, 1u + kMaxTailCalls);  // the first run plus 33 tail calls
    counter = 0;
    EXPECT_EQ(self->run(&counter, sizeof(counter), nullptr, nullptr),
              1000u);  // no resolver: falls through
    EXPECT_EQ(counter, 1u);
}

INSTANTIATE_TEST_SUITE_P(Engines, BothEngines, ::testing::Values(Engine::Interpreter, Engine::Jit),
                         [](const auto& info) { return std::string(engine_name(info.param)); });

}  // namespace
}  // namespace liveio::ebpf
