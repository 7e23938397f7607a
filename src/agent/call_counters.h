// The agent's default CallHandler: counts calls, bytes transferred and errors per syscall so
// `liveio status` shows live activity. Never takes a call over.
#pragma once

#include <atomic>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "hook/dispatch.h"

namespace liveio::agent {

class CallCounters final : public hook::CallHandler {
public:
    // Syscall numbers at or above this (only reachable through syscall(2)) share one bucket.
    static constexpr int kTracked = 512;

    bool on_enter(hook::SyscallCall&, hook::SyscallResult&) override { return false; }
    void on_exit(const hook::SyscallCall& call, hook::SyscallResult result, uint64_t) override;
    bool wants_start_time() const override { return false; }

    // {"pread64": {"calls": N, "bytes": N, "errors": N}, ...} for every syscall seen, plus
    // "total" over all of them.
    nlohmann::json snapshot() const;
    uint64_t total_calls() const;

private:
    // Relaxed atomic adds: exact counts, and a counter never goes backwards between two
    // `status` requests (which the tests rely on).
    struct Counter {
        std::atomic<uint64_t> calls{0}, bytes{0}, errors{0};
    };
    Counter counters_[kTracked + 1];
};

// "pread64" for SYS_pread64; "syscall_<nr>" for numbers without a name here.
std::string syscall_name(long nr);

}  // namespace liveio::agent
