#include "agent/bpf_host_clock.h"

#include <cpuid.h>
#include <time.h>

namespace liveio::agent {
namespace {

bool invariant_tsc() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0x80000000u, &a, &b, &c, &d) || a < 0x80000007u) return false;
    if (!__get_cpuid(0x80000007u, &a, &b, &c, &d)) return false;
    return (d & (1u << 8)) != 0;
}

}  // namespace

uint64_t EdgeClock::monotonic_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  // vDSO: no syscall, so nothing to intercept
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

EdgeClock::EdgeClock() {
    if (!invariant_tsc()) return;
    const uint64_t n0 = monotonic_ns();
    const uint64_t t0 = __builtin_ia32_rdtsc();
    uint64_t n1, t1;
    do {
        n1 = monotonic_ns();
        t1 = __builtin_ia32_rdtsc();
    } while (n1 - n0 < 2'000'000);
    if (t1 <= t0) return;
    mult_ = static_cast<uint64_t>((static_cast<unsigned __int128>(n1 - n0) << 32) / (t1 - t0));
    if (mult_ == 0) return;
    refresh_ticks_ =
        static_cast<uint64_t>((static_cast<unsigned __int128>(100'000'000) << 32) / mult_);
    base_tsc_.store(t1, std::memory_order_relaxed);
    base_ns_.store(n1, std::memory_order_relaxed);
    tsc_ = true;
}

uint64_t EdgeClock::reanchor() {
    const uint64_t ns = monotonic_ns();
    const uint64_t tsc = __builtin_ia32_rdtsc();
    uint32_t seq = seq_.load(std::memory_order_relaxed);
    // One writer at a time; a thread that loses the race just uses its own clock reading.
    if ((seq & 1) == 0 && seq_.compare_exchange_strong(seq, seq + 1, std::memory_order_acquire)) {
        base_tsc_.store(tsc, std::memory_order_relaxed);
        base_ns_.store(ns, std::memory_order_relaxed);
        seq_.store(seq + 2, std::memory_order_release);
    }
    return ns;
}

}  // namespace liveio::agent
