// `liveio bench vm`: the BPF engines on a suite of small programs, against the same logic
// compiled natively (-O2). Programs are written in the bpf_conformance assembler syntax and
// operate on a scratch buffer passed as r1 (r2 = its length).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <bpf/bpf.h>
#include <unistd.h>

#include "bench.h"
#include "ebpf/assembler.h"
#include "ebpf/vm.h"

namespace liveio::bench {
namespace {

using namespace liveio::ebpf;

constexpr size_t kBufferSize = 16384;

struct Case {
    const char* name;
    const char* asm_text;
    // The same logic in C; noinline and fed through the buffer so the compiler cannot
    // constant-fold the work away.
    uint64_t (*native)(uint8_t* buf, size_t len);
    void (*prepare)(uint8_t* buf);  // input data, rewritten before every timed batch
    // The program for the kernel's JIT (XDP, input = the first packet bytes), when the logic
    // fits what the kernel verifier accepts; otherwise why not.
    const char* kernel_asm;
    const char* kernel_why_not;
};

constexpr const char* kNoKernel =
    "needs variable-offset access to >4 KiB of memory (XDP test data is < 4 KiB) and loops the kernel "
    "verifier would unroll beyond its 1M-insn budget";

// ---- prime sieve: count primes below 2000 with a byte array in the buffer ----
const char* kSieveAsm = R"(
    mov %r3, 0
clear:
    mov %r4, %r1
    add %r4, %r3
    stb [%r4+0], 0
    add %r3, 1
    jlt %r3, 2000, clear
    mov %r0, 0
    mov %r3, 2
outer:
    mov %r4, %r1
    add %r4, %r3
    ldxb %r5, [%r4+0]
    jne %r5, 0, next
    add %r0, 1
    mov %r5, %r3
    mul %r5, %r3
mark:
    jge %r5, 2000, next
    mov %r4, %r1
    add %r4, %r5
    stb [%r4+0], 1
    add %r5, %r3
    ja mark
next:
    add %r3, 1
    jlt %r3, 2000, outer
    exit
)";
__attribute__((noinline)) uint64_t sieve_native(uint8_t* buf, size_t) {
    for (uint64_t i = 0; i < 2000; ++i) buf[i] = 0;
    uint64_t count = 0;
    for (uint64_t i = 2; i < 2000; ++i) {
        if (buf[i]) continue;
        ++count;
        for (uint64_t j = i * i; j < 2000; j += i) buf[j] = 1;
    }
    return count;
}

// ---- memcpy loop: 4 KiB, 8 bytes at a time ----
const char* kMemcpyAsm = R"(
    mov %r3, 0
loop:
    mov %r4, %r1
    add %r4, %r3
    ldxdw %r5, [%r4+0]
    stxdw [%r4+4096], %r5
    add %r3, 8
    jlt %r3, 4096, loop
    mov %r0, %r3
    exit
)";
__attribute__((noinline)) uint64_t memcpy_native(uint8_t* buf, size_t) {
    uint64_t i = 0;
    for (; i < 4096; i += 8) {
        uint64_t v;
        std::memcpy(&v, buf + i, 8);
        std::memcpy(buf + 4096 + i, &v, 8);
    }
    return i;
}

// ---- strcmp: two 300-byte strings that differ in the last byte ----
const char* kStrcmpAsm = R"(
    mov %r3, 0
loop:
    mov %r4, %r1
    add %r4, %r3
    ldxb %r5, [%r4+0]
    ldxb %r0, [%r4+512]
    jne %r5, %r0, diff
    jeq %r5, 0, same
    add %r3, 1
    jlt %r3, 512, loop
same:
    mov %r0, 0
    exit
diff:
    sub %r5, %r0
    mov %r0, %r5
    exit
)";
__attribute__((noinline)) uint64_t strcmp_native(uint8_t* buf, size_t) {
    for (uint64_t i = 0; i < 512; ++i) {
        const uint8_t a = buf[i], b = buf[512 + i];
        if (a != b) return static_cast<uint64_t>(static_cast<int64_t>(a) - b);
        if (a == 0) return 0;
    }
    return 0;
}
void strcmp_prepare(uint8_t* buf) {
    for (int i = 0; i < 300; ++i) buf[i] = buf[512 + i] = static_cast<uint8_t>('a' + i % 26);
    buf[299] = 'x';
    buf[300] = buf[812] = 0;
}

// ---- switch: 1000 iterations over an 8-way switch ----
// The loop, shared by the user-space and kernel variants; r0 holds the start value.
const std::string kSwitchLoop = R"(
    mov %r3, 0
loop:
    mov %r4, %r3
    and %r4, 7
    jeq %r4, 0, c0
    jeq %r4, 1, c1
    jeq %r4, 2, c2
    jeq %r4, 3, c3
    jeq %r4, 4, c4
    jeq %r4, 5, c5
    jeq %r4, 6, c6
    or %r0, 1
    ja next
c0:
    add %r0, 3
    ja next
c1:
    xor %r0, 0x55
    ja next
c2:
    lsh %r0, 1
    ja next
c3:
    sub %r0, %r3
    ja next
c4:
    mul %r0, 7
    ja next
c5:
    rsh %r0, 3
    ja next
c6:
    add %r0, %r3
next:
    add %r3, 1
    jlt %r3, 1000, loop
    exit
)";
const std::string kSwitchAsm = "ldxdw %r0, [%r1+0]\n" + kSwitchLoop;
// Kernel variant: read the start value from the packet after a bounds check.
const std::string kSwitchKernelAsm = R"(
    ldxw %r2, [%r1+0]
    ldxw %r3, [%r1+4]
    mov %r4, %r2
    add %r4, 8
    jgt %r4, %r3, out
    ldxdw %r0, [%r2+0]
)" + kSwitchLoop + R"(
out:
    mov %r0, 0
    exit
)";
__attribute__((noinline)) uint64_t switch_native(uint8_t* buf, size_t) {
    uint64_t r0;
    std::memcpy(&r0, buf, 8);
    for (uint64_t i = 0; i < 1000; ++i) {
        switch (i & 7) {
        case 0: r0 += 3; break;
        case 1: r0 ^= 0x55; break;
        case 2: r0 <<= 1; break;
        case 3: r0 -= i; break;
        case 4: r0 *= 7; break;
        case 5: r0 >>= 3; break;
        case 6: r0 += i; break;
        default: r0 |= 1; break;
        }
    }
    return r0;
}

// ---- log2 histogram: 1024 u32 values into 32 u64 buckets ----
const char* kHistAsm = R"(
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
    jlt %r5, 0x10, s2
    rsh %r5, 4
    add %r0, 4
s2:
    jlt %r5, 4, s1
    rsh %r5, 2
    add %r0, 2
s1:
    jlt %r5, 2, done
    add %r0, 1
done:
    lsh %r0, 3
    add %r0, %r1
    ldxdw %r5, [%r0+4096]
    add %r5, 1
    stxdw [%r0+4096], %r5
    add %r3, 4
    jlt %r3, 4096, loop
    mov %r0, 0
    exit
)";
__attribute__((noinline)) uint64_t hist_native(uint8_t* buf, size_t) {
    for (uint64_t i = 0; i < 4096; i += 4) {
        uint32_t v;
        std::memcpy(&v, buf + i, 4);
        uint64_t l = 0;
        if (v >= 0x10000) { v >>= 16; l += 16; }
        if (v >= 0x100) { v >>= 8; l += 8; }
        if (v >= 0x10) { v >>= 4; l += 4; }
        if (v >= 4) { v >>= 2; l += 2; }
        if (v >= 2) l += 1;
        uint64_t c;
        std::memcpy(&c, buf + 4096 + l * 8, 8);
        ++c;
        std::memcpy(buf + 4096 + l * 8, &c, 8);
    }
    return 0;
}
void random_prepare(uint8_t* buf) {
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < 4096; i += 4) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        const uint32_t v = static_cast<uint32_t>(x) >> (x % 32);
        std::memcpy(buf + i, &v, 4);
    }
}

const std::vector<Case> cases() {
    return {
    {"prime_sieve", kSieveAsm, sieve_native, nullptr, nullptr, kNoKernel},
    {"memcpy_loop", kMemcpyAsm, memcpy_native, random_prepare, nullptr, kNoKernel},
    {"strcmp", kStrcmpAsm, strcmp_native, strcmp_prepare, nullptr, kNoKernel},
    {"switch", kSwitchAsm.c_str(), switch_native, random_prepare, kSwitchKernelAsm.c_str(), nullptr},
    {"log2_hist", kHistAsm, hist_native, random_prepare, nullptr, kNoKernel},
    };
}

struct Config {
    double seconds = 0.3;  // per engine per case
    int rounds = 3;
};

// Best-of-rounds mean nanoseconds per call of `fn`, each round running ~seconds/rounds.
double measure(const std::function<uint64_t()>& fn, const Config& cfg, uint64_t* sink) {
    using Clock = std::chrono::steady_clock;
    // Calibrate a batch size that runs ~10 ms.
    uint64_t batch = 1;
    while (true) {
        const auto t0 = Clock::now();
        for (uint64_t i = 0; i < batch; ++i) *sink += fn();
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        if (s > 0.01 || batch > (1ull << 30)) break;
        batch *= 2;
    }
    double best = 1e300;
    for (int r = 0; r < cfg.rounds; ++r) {
        const auto t0 = Clock::now();
        uint64_t n = 0;
        double s = 0;
        do {
            for (uint64_t i = 0; i < batch; ++i) *sink += fn();
            n += batch;
            s = std::chrono::duration<double>(Clock::now() - t0).count();
        } while (s < cfg.seconds / cfg.rounds);
        best = std::min(best, s * 1e9 / static_cast<double>(n));
    }
    return best;
}

// The kernel's JIT through BPF_PROG_TEST_RUN: loads `text` as XDP and runs it on `packet`.
// Returns the kernel-measured mean ns per run, or an Error saying why it could not run.
Result<double> kernel_ns(const char* text, const uint8_t* packet, size_t len, double seconds,
                         uint64_t expect_low32) {
    auto insns = assemble(text);
    if (!insns) return insns.error();
    const auto* bpf_insns = reinterpret_cast<const bpf_insn*>(insns->data());
    const int fd = bpf_prog_load(BPF_PROG_TYPE_XDP, "liveio_bench", "GPL", bpf_insns, insns->size(), nullptr);
    if (fd < 0) {
        const int err = errno;
        // Load again with the verifier log to say why (the log's tail holds the reason).
        std::string log(1 << 22, '\0');
        LIBBPF_OPTS(bpf_prog_load_opts, opts, .log_level = 1, .log_size = static_cast<__u32>(log.size()),
                    .log_buf = log.data());
        const int again = bpf_prog_load(BPF_PROG_TYPE_XDP, "liveio_bench", "GPL", bpf_insns, insns->size(), &opts);
        if (again >= 0) close(again);
        log.resize(log.find('\0'));
        return make_error(err, fmt::format("kernel rejected the program: {}: {}", std::strerror(err),
                                           log.substr(log.size() > 300 ? log.size() - 300 : 0)));
    }
    std::vector<uint8_t> data(packet, packet + len);
    auto run = [&](int repeat) -> Result<std::pair<uint32_t, uint32_t>> {
        LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = data.data(), .data_size_in = static_cast<__u32>(data.size()),
                    .repeat = repeat);
        if (bpf_prog_test_run_opts(fd, &opts) != 0)
            return make_error(errno, fmt::format("BPF_PROG_TEST_RUN: {}", std::strerror(errno)));
        return std::make_pair(opts.retval, opts.duration);
    };
    auto first = run(1);
    if (!first) {
        close(fd);
        return first.error();
    }
    if (first->first != static_cast<uint32_t>(expect_low32)) {
        close(fd);
        return make_error(EINVAL, fmt::format("kernel result {:#x} differs from native {:#x}", first->first,
                                              static_cast<uint32_t>(expect_low32)));
    }
    // Repeat count for ~seconds of work, from a first estimate.
    auto probe = run(1000);
    double best = 1e300;
    if (probe) {
        const int repeat = static_cast<int>(std::clamp(seconds * 1e9 / std::max<double>(probe->second, 1) / 3, 1000.0, 1e7));
        for (int r = 0; r < 3; ++r) {
            auto m = run(repeat);
            if (!m) {
                probe = m;
                break;
            }
            best = std::min(best, static_cast<double>(m->second));
        }
    }
    close(fd);
    if (!probe) return probe.error();
    return best;
}

double geomean(const std::vector<double>& v) {
    double log_sum = 0;
    for (double x : v) log_sum += std::log(x);
    return v.empty() ? 0 : std::exp(log_sum / static_cast<double>(v.size()));
}

int run_vm_bench(const Config& cfg) {
    std::vector<uint8_t> buffer(kBufferSize);
    uint64_t sink = 0;
    std::vector<double> jit_vs_native, jit_vs_interp;
    std::vector<std::string> notes;
    fmt::print("{:<14} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}\n", "program", "interp ns", "jit ns",
               "native ns", "kernel ns", "jit/native", "interp/jit", "jit/kernel");
    for (const Case& c : cases()) {
        auto insns = assemble(c.asm_text);
        if (!insns) {
            fmt::print(stderr, "{}: {}\n", c.name, insns.error().message);
            return 1;
        }
        auto program = std::make_shared<Program>();
        program->name = c.name;
        program->insns = std::move(insns.value());
        program->context.size = kBufferSize;
        program->context.writable = true;
        const HelperTable helpers;
        auto interp = Executable::load(program, helpers, Engine::Interpreter);
        auto jit = Executable::load(program, helpers, Engine::Jit);
        if (!interp || !jit) {
            fmt::print(stderr, "{}: load failed: {}\n", c.name, (!interp ? interp.error() : jit.error()).message);
            return 1;
        }
        // Every engine must compute what the native code computes.
        uint64_t expect[3];
        for (int e = 0; e < 3; ++e) {
            std::fill(buffer.begin(), buffer.end(), 0);
            if (c.prepare) c.prepare(buffer.data());
            expect[e] = e == 0   ? c.native(buffer.data(), buffer.size())
                        : e == 1 ? interp.value()->run(buffer.data(), buffer.size())
                                 : jit.value()->run(buffer.data(), buffer.size());
        }
        if (expect[0] != expect[1] || expect[0] != expect[2]) {
            fmt::print(stderr, "{}: results differ: native {:#x}, interp {:#x}, jit {:#x}\n", c.name, expect[0],
                       expect[1], expect[2]);
            return 1;
        }
        if (c.prepare) c.prepare(buffer.data());
        uint8_t* buf = buffer.data();
        const size_t len = buffer.size();
        const Executable* ie = interp.value().get();
        const Executable* je = jit.value().get();
        const double t_interp = measure([&] { return ie->run(buf, len); }, cfg, &sink);
        const double t_jit = measure([&] { return je->run(buf, len); }, cfg, &sink);
        const double t_native = measure([&] { return c.native(buf, len); }, cfg, &sink);
        jit_vs_native.push_back(t_jit / t_native);
        jit_vs_interp.push_back(t_interp / t_jit);
        std::string kernel_col = "n/a", kernel_ratio = "n/a";
        if (!c.kernel_asm) {
            notes.push_back(fmt::format("{}: kernel not measured: {}", c.name, c.kernel_why_not));
        } else {
            auto k = kernel_ns(c.kernel_asm, buf, 64, cfg.seconds, expect[0]);
            if (!k) {
                notes.push_back(fmt::format("{}: kernel not measured: {}", c.name, k.error().message));
            } else {
                kernel_col = fmt::format("{:.1f}", *k);
                kernel_ratio = fmt::format("{:.2f}x", t_jit / *k);
                notes.push_back(fmt::format("{}: kernel ns is BPF_PROG_TEST_RUN's own per-run mean (XDP, "
                                            "includes its per-run packet setup)", c.name));
            }
        }
        fmt::print("{:<14} {:>12.1f} {:>12.1f} {:>12.1f} {:>12} {:>11.2f}x {:>11.2f}x {:>12}\n", c.name, t_interp,
                   t_jit, t_native, kernel_col, t_jit / t_native, t_interp / t_jit, kernel_ratio);
    }
    for (const auto& n : notes) fmt::print("  {}\n", n);
    // What a hook pays per invocation before doing any work: a program that reads one ctx
    // word and returns (not part of the geomeans, which compare code quality).
    {
        auto program = std::make_shared<Program>();
        program->name = "ctx_read";
        program->insns = {make_insn(op::kClassLdx | op::kModeMem | op::kSizeDW, 0, 1, 0, 0),
                          make_insn(op::kClassJmp | op::kExit)};
        auto interp = Executable::load(program, HelperTable{}, Engine::Interpreter);
        auto jit = Executable::load(program, HelperTable{}, Engine::Jit);
        if (interp && jit) {
            uint8_t* buf = buffer.data();
            const Executable* ie = interp.value().get();
            const Executable* je = jit.value().get();
            auto native = [](uint8_t* b) __attribute__((noinline)) {
                uint64_t v;
                std::memcpy(&v, b, 8);
                return v;
            };
            const double ti = measure([&] { return ie->run(buf, 8); }, cfg, &sink);
            const double tj = measure([&] { return je->run(buf, 8); }, cfg, &sink);
            const double tn = measure([&] { return native(buf); }, cfg, &sink);
            fmt::print("per-run overhead (ldxdw r0,[r1]; exit): interp {:.1f} ns, jit {:.1f} ns, native call {:.1f} ns\n",
                       ti, tj, tn);
        }
    }
    fmt::print("(sink {})\n", sink & 1);
    fmt::print("map rows (hash lookup+update, array update, ringbuf output) not run: the tree has no map or "
               "helper implementation yet (ebpf/map.h create_map, HelperTable::standard)\n");
    fmt::print("metric: jit_vs_native_geomean {:.3f}\n", geomean(jit_vs_native));
    fmt::print("metric: jit_vs_interp_geomean {:.3f}\n", geomean(jit_vs_interp));
    return 0;
}

}  // namespace

void add_vm_bench(CLI::App& bench) {
    auto cfg = std::make_shared<Config>();
    auto* cmd = bench.add_subcommand("vm", "BPF interpreter and JIT vs the same programs compiled natively");
    cmd->add_option("--seconds", cfg->seconds, "Measured seconds per engine per program")->check(CLI::Range(0.01, 30.0));
    cmd->add_option("--rounds", cfg->rounds, "Rounds per measurement (best kept)")->check(CLI::Range(1, 20));
    cmd->callback([cfg] {
        int rc = run_vm_bench(*cfg);
        if (rc != 0) throw CLI::RuntimeError(rc);
    });
}

}  // namespace liveio::bench
