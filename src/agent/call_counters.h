// The agent's per-syscall counters (calls, bytes transferred, errors), an observer of the call
// pipeline (call_pipeline.h), so `liveio status` shows live activity.
//
// Each thread counts into a block of its own (claimed on its first call, kept by a later
// thread once it exits), with single-instruction adds that only that thread makes: no
// locked instruction and no shared cache line on the hooked path. Counts are exact (an add
// is one instruction, so a signal handler's nested call cannot lose one) and never go
// backwards between two snapshots (blocks are never dropped, only summed).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/call_pipeline.h"
#include "base/thread_slots.h"

namespace liveio::agent {

class CallCounters final : public CallObserver {
public:
    // Syscall numbers at or above this (only reachable through syscall(2)) share one bucket.
    static constexpr int kTracked = 512;
    // Threads with a block of their own; later ones (while that many live) share one block
    // with atomic adds.
    static constexpr size_t kThreadBlocks = 1024;

    CallCounters();
    ~CallCounters() override;
    CallCounters(const CallCounters&) = delete;
    CallCounters& operator=(const CallCounters&) = delete;

    void enter(CallFrame&) override {}
    void exit(CallFrame& frame) override;

    // {"pread64": {"calls": N, "bytes": N, "errors": N}, ...} for every syscall seen, plus
    // "total" over all of them.
    nlohmann::json snapshot() const;
    uint64_t total_calls() const;

    struct Counter {
        uint64_t calls, bytes, errors;
    };
    struct Block {
        Counter counters[kTracked + 1];
    };

private:
    struct alignas(64) ThreadBlock {
        ThreadSlotOwner owner;
        std::atomic<Block*> block{nullptr};  // mapped on the owner's first call, kept
    };
    // The calling thread's block (slow path: claim a slot, map its block); nullptr: none.
    Block* claim_block();
    void count_shared(long nr, long result);

    const uint64_t id_;  // tells this instance's thread-local cache from another's
    std::unique_ptr<ThreadBlock[]> threads_;
    Block shared_{};  // atomic adds, for threads without a block
};

}  // namespace liveio::agent
