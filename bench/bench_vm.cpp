// `liveio bench vm`: the BPF engines on a suite of small programs, against the same logic
// compiled natively (-O2), then map helper programs (hash, array, ring buffer) against the
// same map code called from C and the kernel's maps. Programs are written in the bpf_conformance
// assembler syntax and operate on a scratch buffer passed as r1 (r2 = its length).
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
#include <bpf/libbpf.h>
#include <unistd.h>

#include "bench.h"
#include "ebpf/assembler.h"
#include "ebpf/map.h"
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
    "needs variable-offset access to >4 KiB of memory (XDP test data is < 4 KiB) and loops the "
    "kernel "
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
        if (v >= 0x10000) {
            v >>= 16;
            l += 16;
        }
        if (v >= 0x100) {
            v >>= 8;
            l += 8;
        }
        if (v >= 0x10) {
            v >>= 4;
            l += 4;
        }
        if (v >= 4) {
            v >>= 2;
            l += 2;
        }
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
        {"switch", kSwitchAsm.c_str(), switch_native, random_prepare, kSwitchKernelAsm.c_str(),
         nullptr},
        {"log2_hist", kHistAsm, hist_native, random_prepare, nullptr, kNoKernel},
    };
}

struct Config {
    double seconds = 0.3;  // per engine per case
    int rounds = 3;
    std::vector<std::string> only;  // program names to run; empty = all

    bool selected(const char* name) const {
        return only.empty() || std::find(only.begin(), only.end(), name) != only.end();
    }
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

struct KernelRunOptions {
    int max_repeat = 10'000'000;             // runs per BPF_PROG_TEST_RUN call
    std::function<void()> before_each_call;  // e.g. drain a ring buffer the program fills
};

// The kernel's JIT through BPF_PROG_TEST_RUN: loads `insns` as XDP and runs it on `packet`.
// Returns the kernel-measured mean ns per run, or an Error saying why it could not run. Every
// call's result must equal `expect_low32` (a program that reports its own failures, e.g. a
// full ring, is therefore not timed on its failure path).
Result<double> kernel_ns(const std::vector<Insn>& insns, const uint8_t* packet, size_t len,
                         double seconds, uint64_t expect_low32,
                         const KernelRunOptions& options = {}) {
    const auto* bpf_insns = reinterpret_cast<const bpf_insn*>(insns.data());
    const int fd =
        bpf_prog_load(BPF_PROG_TYPE_XDP, "liveio_bench", "GPL", bpf_insns, insns.size(), nullptr);
    if (fd < 0) {
        const int err = errno;
        // Load again with the verifier log to say why (the log's tail holds the reason).
        std::string log(1 << 22, '\0');
        LIBBPF_OPTS(bpf_prog_load_opts, opts, .log_level = 1,
                    .log_size = static_cast<__u32>(log.size()), .log_buf = log.data());
        const int again =
            bpf_prog_load(BPF_PROG_TYPE_XDP, "liveio_bench", "GPL", bpf_insns, insns.size(), &opts);
        if (again >= 0) close(again);
        log.resize(log.find('\0'));
        return make_error(err,
                          fmt::format("kernel rejected the program: {}: {}", std::strerror(err),
                                      log.substr(log.size() > 300 ? log.size() - 300 : 0)));
    }
    std::vector<uint8_t> data(packet, packet + len);
    auto run = [&](int repeat) -> Result<std::pair<uint32_t, uint32_t>> {
        if (options.before_each_call) options.before_each_call();
        LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = data.data(),
                    .data_size_in = static_cast<__u32>(data.size()), .repeat = repeat);
        if (bpf_prog_test_run_opts(fd, &opts) != 0)
            return make_error(errno, fmt::format("BPF_PROG_TEST_RUN: {}", std::strerror(errno)));
        if (opts.retval != static_cast<uint32_t>(expect_low32))
            return make_error(
                EINVAL, fmt::format("kernel result {:#x} differs from native {:#x}", opts.retval,
                                    static_cast<uint32_t>(expect_low32)));
        return std::make_pair(opts.retval, opts.duration);
    };
    auto first = run(1);
    if (!first) {
        close(fd);
        return first.error();
    }
    // Repeat count for ~seconds of work, from a first estimate.
    auto probe = run(std::min(1000, options.max_repeat));
    double best = 1e300;
    if (probe) {
        const int repeat =
            static_cast<int>(std::clamp(seconds * 1e9 / std::max<double>(probe->second, 1) / 3,
                                        1000.0, static_cast<double>(options.max_repeat)));
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

// ---- map programs: kMapOpsPerRun helper calls per run; figures are per call ----
// The same map code serves every column but the kernel's: the BPF programs call it through
// the helpers, the native C calls the Map methods directly; the kernel runs the same
// instructions on its own maps of the same spec.
constexpr int kMapOpsPerRun = 64;

// The loop around each map program's body: r6 = i counts 0..kMapOpsPerRun-1, r7 counts the
// helper calls that succeeded (a body jumps to `next` to skip the count); r0 = r7.
std::string map_loop(const char* body) {
    return fmt::format(
        "mov %r6, 0\nmov %r7, 0\nloop:\n{}\n    add %r7, 1\nnext:\n    add %r6, 1\n"
        "    jlt %r6, {}, loop\n    mov %r0, %r7\n    exit\n",
        body, kMapOpsPerRun);
}

// Hash (1024 u32 keys, all present): lookup, then an atomic add into the value, as a counter
// update does.
const char* kHashAsmBody = R"(
    mov %r1, %r6
    mul %r1, 13
    and %r1, 1023
    stxw [%r10-4], %r1
    lddw %r1, MAP
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, next
    lock add [%r0+0], %r6
)";
__attribute__((noinline)) uint64_t hash_native(Map& map) {
    uint64_t found = 0;
    for (uint64_t i = 0; i < kMapOpsPerRun; ++i) {
        const uint32_t key = static_cast<uint32_t>(i * 13) & 1023;
        if (auto* v = static_cast<uint64_t*>(map.lookup(&key))) {
            __atomic_fetch_add(v, i, __ATOMIC_SEQ_CST);
            ++found;
        }
    }
    return found;
}

// Array (256 u64): map_update_elem(BPF_ANY) of every slot in turn.
const char* kArrayAsmBody = R"(
    mov %r1, %r6
    and %r1, 255
    stxw [%r10-4], %r1
    stxdw [%r10-16], %r6
    lddw %r1, MAP
    mov %r2, %r10
    add %r2, -4
    mov %r3, %r10
    add %r3, -16
    mov %r4, 0
    call 2
    jne %r0, 0, next
)";
__attribute__((noinline)) uint64_t array_native(Map& map) {
    uint64_t ok = 0;
    for (uint64_t i = 0; i < kMapOpsPerRun; ++i) {
        const uint32_t key = static_cast<uint32_t>(i) & 255;
        if (map.update(&key, &i, kUpdateAny) == 0) ++ok;
    }
    return ok;
}

// Ring buffer: bpf_ringbuf_output of a 16-byte record from the stack.
const char* kRingbufAsmBody = R"(
    stxdw [%r10-16], %r6
    stxdw [%r10-8], %r7
    lddw %r1, MAP
    mov %r2, %r10
    add %r2, -16
    mov %r3, 16
    mov %r4, 0
    call 130
    jne %r0, 0, next
)";
__attribute__((noinline)) uint64_t ringbuf_native(Map& map) {
    auto& rb = static_cast<RingBuffer&>(map);
    uint64_t ok = 0;
    for (uint64_t i = 0; i < kMapOpsPerRun; ++i) {
        const uint64_t rec[2] = {i, ok};
        if (rb.output(rec, sizeof(rec)) == 0) ++ok;
    }
    return ok;
}

// Small enough to stay in cache: a consumer that keeps up reads records while they are hot.
constexpr uint32_t kRingBytes = 1u << 20;

struct MapCase {
    const char* name;
    const char* metric;  // metric line name, per call from the JIT
    std::string asm_text;
    MapSpec spec;
    uint64_t (*native)(Map& map);
};

std::vector<MapCase> map_cases() {
    return {
        {"hash_lookup", "hash_lookup_ns", map_loop(kHashAsmBody),
         MapSpec{"bench_hash", MapType::Hash, 4, 8, 1024, 0}, hash_native},
        {"array_update", "array_update_ns", map_loop(kArrayAsmBody),
         MapSpec{"bench_array", MapType::Array, 4, 8, 256, 0}, array_native},
        {"ringbuf_output", "ringbuf_output_ns", map_loop(kRingbufAsmBody),
         MapSpec{"bench_rb", MapType::RingBuf, 0, 0, kRingBytes, 0}, ringbuf_native},
    };
}

// `lddw %rN, MAP` -> program.maps[0] for our engines (kernel_fd < 0) or the kernel map `kernel_fd`.
Result<std::vector<Insn>> assemble_with_map(const std::string& text, int kernel_fd) {
    constexpr uint64_t kMarker = 0x4c4d415000000000ull;
    std::string t(text);
    for (size_t at; (at = t.find(" MAP\n")) != std::string::npos;)
        t.replace(at + 1, 3, fmt::format("{:#x}", kMarker));
    auto insns = assemble(t);
    if (!insns) return insns.error();
    auto& v = insns.value();
    for (size_t i = 0; i + 1 < v.size(); ++i) {
        if (v[i].opcode != op::kLddw) continue;
        if ((static_cast<uint32_t>(v[i].imm) |
             (uint64_t{static_cast<uint32_t>(v[i + 1].imm)} << 32)) == kMarker) {
            v[i].src = kernel_fd < 0 ? op::kPseudoMapIdx : op::kPseudoMapFd;
            v[i].imm = kernel_fd < 0 ? 0 : kernel_fd;
            v[i + 1].imm = 0;
        }
        ++i;
    }
    return insns;
}

// A kernel map of `spec` filled as ours (hash: every key present), closed on destruction.
class KernelMap {
public:
    explicit KernelMap(const MapSpec& spec) {
        fd_ = bpf_map_create(static_cast<bpf_map_type>(spec.type), spec.name.c_str(), spec.key_size,
                             spec.value_size, spec.max_entries, nullptr);
        if (fd_ < 0) {
            error_ = fmt::format("creating the kernel map: {}", std::strerror(errno));
            return;
        }
        if (spec.type == MapType::Hash) {
            for (uint32_t k = 0; k < spec.max_entries; ++k) {
                const uint64_t zero = 0;
                bpf_map_update_elem(fd_, &k, &zero, BPF_ANY);
            }
        }
        if (spec.type == MapType::RingBuf) {
            rb_ = ring_buffer__new(
                fd_, [](void*, void*, size_t) { return 0; }, nullptr, nullptr);
            if (!rb_) error_ = fmt::format("ring_buffer__new: {}", std::strerror(errno));
        }
    }
    ~KernelMap() {
        if (rb_) ring_buffer__free(rb_);
        if (fd_ >= 0) close(fd_);
    }
    KernelMap(const KernelMap&) = delete;
    KernelMap& operator=(const KernelMap&) = delete;
    int fd() const { return error_.empty() ? fd_ : -1; }
    const std::string& error() const { return error_; }
    void drain() {
        if (rb_) ring_buffer__consume(rb_);
    }

private:
    int fd_ = -1;
    ring_buffer* rb_ = nullptr;
    std::string error_;
};

struct Ratios {
    std::vector<double>& jit_vs_native;
    std::vector<double>& jit_vs_interp;
    std::vector<std::string>& notes;
    std::vector<std::pair<std::string, double>>& metrics;
};

// One map row: per-call ns on every engine. Returns false on a setup or correctness failure.
bool run_map_row(const MapCase& c, const Config& cfg, uint8_t* buf, uint64_t* sink, Ratios& out) {
    auto map = create_map(c.spec);
    if (!map) {
        fmt::print(stderr, "{}: {}\n", c.name, map.error().message);
        return false;
    }
    Map& m = *map.value();
    if (c.spec.type == MapType::Hash) {
        for (uint32_t k = 0; k < c.spec.max_entries; ++k) {
            const uint64_t zero = 0;
            m.update(&k, &zero, kUpdateAny);
        }
    }
    auto insns = assemble_with_map(c.asm_text, -1);
    if (!insns) {
        fmt::print(stderr, "{}: {}\n", c.name, insns.error().message);
        return false;
    }
    auto program = std::make_shared<Program>();
    program->name = c.name;
    program->insns = std::move(insns.value());
    program->maps = {map.value()};
    program->context.size = kBufferSize;
    const HelperTable helpers = HelperTable::standard();
    auto interp = Executable::load(program, helpers, Engine::Interpreter);
    auto jit = Executable::load(program, helpers, Engine::Jit);
    if (!interp || !jit) {
        fmt::print(stderr, "{}: load failed: {}\n", c.name,
                   (!interp ? interp.error() : jit.error()).message);
        return false;
    }
    // A ring buffer is drained whenever half full, inside the timed loop (the drain's cost is
    // in every column but the kernel's, whose ring is drained between test runs).
    auto* rb = c.spec.type == MapType::RingBuf ? static_cast<RingBuffer*>(&m) : nullptr;
    auto drain = [rb] {
        if (rb && rb->query(0) > kRingBytes / 2) rb->consume([](const void*, uint32_t) {});
    };
    const Executable* ie = interp.value().get();
    const Executable* je = jit.value().get();
    const std::function<uint64_t()> runs[3] = {
        [&] { return drain(), ie->run(buf, kBufferSize); },
        [&] { return drain(), je->run(buf, kBufferSize); },
        [&] { return drain(), c.native(m); },
    };
    for (int e = 0; e < 3; ++e) {
        if (const uint64_t r = runs[e](); r != kMapOpsPerRun) {
            fmt::print(stderr, "{}: {} of {} helper calls succeeded on {}\n", c.name, r,
                       kMapOpsPerRun,
                       e == 0   ? "interp"
                       : e == 1 ? "jit"
                                : "native");
            return false;
        }
    }
    const double t_interp = measure(runs[0], cfg, sink) / kMapOpsPerRun;
    const double t_jit = measure(runs[1], cfg, sink) / kMapOpsPerRun;
    const double t_native = measure(runs[2], cfg, sink) / kMapOpsPerRun;
    if (rb && rb->dropped() != 0)
        out.notes.push_back(
            fmt::format("{}: {} records dropped (ring full): figures include failed outputs",
                        c.name, rb->dropped()));
    if (rb) {
        // What the in-loop draining adds per record: fill half the ring untimed, time the drain.
        rb->consume([](const void*, uint32_t) {});
        const uint64_t records = kRingBytes / 2 / 24;
        for (uint64_t i = 0; i < records / kMapOpsPerRun; ++i) *sink += c.native(m);
        const auto t0 = std::chrono::steady_clock::now();
        const size_t drained = rb->consume([](const void*, uint32_t) {});
        const double ns =
            std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
        out.notes.push_back(
            fmt::format("{}: draining costs {:.1f} ns per record (in our three columns)", c.name,
                        ns / static_cast<double>(std::max<size_t>(drained, 1))));
    }
    out.jit_vs_native.push_back(t_jit / t_native);
    out.jit_vs_interp.push_back(t_interp / t_jit);
    out.metrics.emplace_back(c.metric, t_jit);

    std::string kernel_col = "n/a", kernel_ratio = "n/a";
    KernelMap kmap(c.spec);
    if (kmap.fd() < 0) {
        out.notes.push_back(fmt::format("{}: kernel not measured: {}", c.name, kmap.error()));
    } else {
        auto kinsns = assemble_with_map(c.asm_text, kmap.fd());
        KernelRunOptions options;
        // Keep each test run's records well inside the ring: 64 records of 24 bytes per run.
        options.max_repeat = static_cast<int>(kRingBytes / 2 / (kMapOpsPerRun * 24));
        options.before_each_call = [&kmap] { kmap.drain(); };
        auto k = kinsns ? kernel_ns(kinsns.value(), buf, 64, cfg.seconds, kMapOpsPerRun, options)
                        : Result<double>(kinsns.error());
        if (!k) {
            out.notes.push_back(
                fmt::format("{}: kernel not measured: {}", c.name, k.error().message));
        } else {
            kernel_col = fmt::format("{:.1f}", *k / kMapOpsPerRun);
            kernel_ratio = fmt::format("{:.2f}x", t_jit / (*k / kMapOpsPerRun));
        }
    }
    fmt::print("{:<14} {:>12.1f} {:>12.1f} {:>12.1f} {:>12} {:>11.2f}x {:>11.2f}x {:>12}\n", c.name,
               t_interp, t_jit, t_native, kernel_col, t_jit / t_native, t_interp / t_jit,
               kernel_ratio);
    return true;
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
    fmt::print("{:<14} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}\n", "program", "interp ns",
               "jit ns", "native ns", "kernel ns", "jit/native", "interp/jit", "jit/kernel");
    for (const Case& c : cases()) {
        if (!cfg.selected(c.name)) continue;
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
            // Shown, not fatal: the rest of the suite still measures (the geomeans then lack it).
            fmt::print("{:<14} not loaded (see notes)\n", c.name);
            notes.push_back(fmt::format("{}: load failed: {}", c.name,
                                        (!interp ? interp.error() : jit.error()).message));
            continue;
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
            fmt::print(stderr, "{}: results differ: native {:#x}, interp {:#x}, jit {:#x}\n",
                       c.name, expect[0], expect[1], expect[2]);
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
            auto kinsns = assemble(c.kernel_asm);
            auto k = kinsns ? kernel_ns(kinsns.value(), buf, 64, cfg.seconds, expect[0])
                            : Result<double>(kinsns.error());
            if (!k) {
                notes.push_back(
                    fmt::format("{}: kernel not measured: {}", c.name, k.error().message));
            } else {
                kernel_col = fmt::format("{:.1f}", *k);
                kernel_ratio = fmt::format("{:.2f}x", t_jit / *k);
                notes.push_back(
                    fmt::format("{}: kernel ns is BPF_PROG_TEST_RUN's own per-run mean (XDP, "
                                "includes its per-run packet setup)",
                                c.name));
            }
        }
        fmt::print("{:<14} {:>12.1f} {:>12.1f} {:>12.1f} {:>12} {:>11.2f}x {:>11.2f}x {:>12}\n",
                   c.name, t_interp, t_jit, t_native, kernel_col, t_jit / t_native,
                   t_interp / t_jit, kernel_ratio);
    }
    for (const auto& n : notes) fmt::print("  {}\n", n);

    // Map helpers: the same columns, per helper call (kMapOpsPerRun calls per run, loop included).
    fmt::print("\n{:<14} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}\n", "map (per call)",
               "interp ns", "jit ns", "native ns", "kernel ns", "jit/native", "interp/jit",
               "jit/kernel");
    std::vector<std::string> map_notes;
    std::vector<std::pair<std::string, double>> map_metrics;
    Ratios ratios{jit_vs_native, jit_vs_interp, map_notes, map_metrics};
    for (const MapCase& c : map_cases()) {
        if (!cfg.selected(c.name)) continue;
        if (!run_map_row(c, cfg, buffer.data(), &sink, ratios)) return 1;
    }
    map_notes.push_back(
        fmt::format("{} helper calls per run, loop included; native = the same Map methods called "
                    "from C; kernel = BPF_PROG_TEST_RUN (XDP) on kernel maps of the same spec",
                    kMapOpsPerRun));
    map_notes.push_back(
        "ringbuf: our columns include draining the ring when half full; the kernel's ring is "
        "drained between test runs");
    for (const auto& n : map_notes) fmt::print("  {}\n", n);
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
            auto native = [](uint8_t * b) __attribute__((noinline)) {
                uint64_t v;
                std::memcpy(&v, b, 8);
                return v;
            };
            const double ti = measure([&] { return ie->run(buf, 8); }, cfg, &sink);
            const double tj = measure([&] { return je->run(buf, 8); }, cfg, &sink);
            const double tn = measure([&] { return native(buf); }, cfg, &sink);
            fmt::print(
                "per-run overhead (ldxdw r0,[r1]; exit): interp {:.1f} ns, jit {:.1f} ns, native "
                "call {:.1f} ns\n",
                ti, tj, tn);
        }
    }
    fmt::print("(sink {})\n", sink & 1);
    fmt::print("metric: jit_vs_native_geomean {:.3f}\n", geomean(jit_vs_native));
    fmt::print("metric: jit_vs_interp_geomean {:.3f}\n", geomean(jit_vs_interp));
    for (const auto& [name, ns] : map_metrics) fmt::print("metric: {} {:.1f}\n", name, ns);
    return 0;
}

}  // namespace

void add_vm_bench(CLI::App& bench) {
    auto cfg = std::make_shared<Config>();
    auto* cmd = bench.add_subcommand(
        "vm", "BPF interpreter and JIT vs the same programs compiled natively");
    cmd->add_option("--seconds", cfg->seconds, "Measured seconds per engine per program")
        ->check(CLI::Range(0.01, 30.0));
    cmd->add_option("--rounds", cfg->rounds, "Rounds per measurement (best kept)")
        ->check(CLI::Range(1, 20));
    cmd->add_option("--program", cfg->only,
                    "Run only these programs (repeatable; e.g. hash_lookup)");
    cmd->callback([cfg] {
        int rc = run_vm_bench(*cfg);
        if (rc != 0) throw CLI::RuntimeError(rc);
    });
}

}  // namespace liveio::bench
