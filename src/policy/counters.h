// Per-policy counters: what `liveio policy PID list`, `status` and `top` show, and what
// liveio_policy_feedback hands to the policy's own programs.
#pragma once

#include <atomic>
#include <cstdint>

#include <nlohmann/json.hpp>

namespace liveio::policy {

struct Counters {
    std::atomic<uint64_t> actions{0};       // actions queued by the policy's programs
    std::atomic<uint64_t> issued_bytes{0};  // prefetch bytes handed to the kernel
    std::atomic<uint64_t> used_bytes{0};    // of those, read by the target afterwards
    std::atomic<uint64_t> wasted_bytes{0};  // of those, forgotten without being read
    // Of the wasted bytes, those still in the page cache when given up (they may serve a
    // later read, natively); the rest was evicted or never arrived.
    std::atomic<uint64_t> wasted_resident_bytes{0};
    std::atomic<uint64_t> inflight{0};     // queued or submitted, not completed
    std::atomic<uint64_t> drops{0};        // queue full, budget exhausted, policy off
    std::atomic<uint64_t> errors{0};       // failed in the kernel (or fd no longer valid)
    std::atomic<uint64_t> fallbacks{0};    // redirect asked for but the call ran natively
    std::atomic<uint64_t> completions{0};  // completion-edge programs run
    std::atomic<uint64_t> latency_ns_sum{0};
    std::atomic<uint64_t> latency_count{0};
    // Exponentially weighted mean (weight 1/8) of the latest completions' latency: what
    // liveio_policy_feedback reports, so a program sees the latency of now, not of its history.
    std::atomic<uint64_t> latency_recent_ns{0};

    void add(std::atomic<uint64_t>& c, uint64_t n = 1) {
        c.fetch_add(n, std::memory_order_relaxed);
    }
    static uint64_t get(const std::atomic<uint64_t>& c) {
        return c.load(std::memory_order_relaxed);
    }
    uint64_t latency_avg_ns() const {
        const uint64_t n = get(latency_count);
        return n == 0 ? 0 : get(latency_ns_sum) / n;
    }
    nlohmann::json to_json() const {
        return {{"actions", get(actions)},
                {"issued_bytes", get(issued_bytes)},
                {"used_bytes", get(used_bytes)},
                {"wasted_bytes", get(wasted_bytes)},
                {"wasted_resident_bytes", get(wasted_resident_bytes)},
                {"inflight", get(inflight)},
                {"drops", get(drops)},
                {"errors", get(errors)},
                {"fallbacks", get(fallbacks)},
                {"completions", get(completions)},
                {"latency_avg_ns", latency_avg_ns()},
                {"latency_recent_ns", get(latency_recent_ns)}};
    }
};

}  // namespace liveio::policy
