// CLOCK_MONOTONIC nanoseconds from the CPU's time-stamp counter, for the I/O edge's start
// time and latency: the edge reads the clock twice per call, and clock_gettime, even through
// the vDSO, reads the TSC too and then adds a sequence-lock retry loop and a conversion
// (figures: docs/ARCHITECTURE.md, "Measured costs").
//
// The TSC is used only when it is invariant (CPUID 0x80000007 EDX bit 8: constant rate in
// every power state, synchronized across cores); otherwise every read is clock_gettime. The
// rate is calibrated against CLOCK_MONOTONIC at construction (2 ms), and the anchor
// (tsc, ns) is refreshed from clock_gettime once it is older than 100 ms, so the value never
// strays from CLOCK_MONOTONIC (which NTP slews by up to 500 ppm) by more than ~50 us plus
// the calibration error over 100 ms -- values remain comparable with bpf_ktime_get_ns().
#pragma once

#include <atomic>
#include <cstdint>

namespace liveio::agent {

class EdgeClock {
public:
    EdgeClock();
    uint64_t now_ns() {
        if (!tsc_) [[unlikely]]
            return monotonic_ns();
        const uint64_t t = __builtin_ia32_rdtsc();
        const uint32_t seq = seq_.load(std::memory_order_acquire);
        const uint64_t base_tsc = base_tsc_.load(std::memory_order_relaxed);
        const uint64_t base_ns = base_ns_.load(std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_acquire);
        const uint64_t delta = t - base_tsc;
        if ((seq & 1) != 0 || seq_.load(std::memory_order_relaxed) != seq || delta > refresh_ticks_)
            [[unlikely]]
            return reanchor();
        return base_ns +
               static_cast<uint64_t>((static_cast<unsigned __int128>(delta) * mult_) >> 32);
    }
    bool uses_tsc() const { return tsc_; }
    static uint64_t monotonic_ns();

private:
    uint64_t reanchor();

    bool tsc_ = false;
    uint64_t mult_ = 0;             // ns per tick, 32.32 fixed point
    uint64_t refresh_ticks_ = 0;    // anchor age that triggers a refresh
    std::atomic<uint32_t> seq_{0};  // odd while a thread writes the anchor
    std::atomic<uint64_t> base_tsc_{0}, base_ns_{0};
};

}  // namespace liveio::agent
