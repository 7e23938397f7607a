// A CallHandler for tests: records every call it sees; can take over one syscall number.
//
// Like liveio's own handlers it never allocates while dispatching: a hooked call may come from
// inside the allocator (syscall rewriting sees the mmap a malloc makes while holding its
// arena or size-class lock), and an allocation there waits for that lock forever. Records go
// into storage reserved beforehand, and take() swaps in a buffer reserved outside the lock (an
// allocation under `mu` would wait for the allocator while a thread inside the allocator waits
// for `mu`).
#pragma once

#include <sys/syscall.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>
#include <utility>
#include <vector>

#include "hook/dispatch.h"

namespace liveio::hook {

struct Seen {
    long nr;
    long args[6];
    long result;
};

class RecordingHandler : public CallHandler {
public:
    long take_nr = -1;
    long take_result = 0;
    char fill = 0;
    std::function<void(const SyscallCall&)> during_enter;  // runs first in every on_enter

    // Records kept between two take() calls; later ones are counted in `dropped`.
    static constexpr size_t kCapacity = 1 << 16;
    RecordingHandler() { seen.reserve(kCapacity); }

    bool on_enter(CallFrame& frame) override {
        const SyscallCall& call = frame.call;
        if (during_enter) during_enter(call);
        if (call.nr != take_nr) return false;
        if (take_result > 0 && call.nr == SYS_read)
            memset(reinterpret_cast<void*>(call.args[1]), fill, static_cast<size_t>(take_result));
        frame.result = take_result;
        return true;
    }
    void on_exit(CallFrame& frame) override {
        Seen s{frame.call.nr, {}, frame.result};
        memcpy(s.args, frame.call.args, sizeof s.args);
        std::lock_guard lock(mu);
        if (seen.size() < seen.capacity())
            seen.push_back(s);
        else
            dropped.fetch_add(1, std::memory_order_relaxed);
    }
    std::vector<Seen> take() {
        std::vector<Seen> fresh;
        fresh.reserve(kCapacity);
        {
            std::lock_guard lock(mu);
            seen.swap(fresh);
        }
        return fresh;
    }
    std::mutex mu;
    std::vector<Seen> seen;
    std::atomic<uint64_t> dropped{0};
};

}  // namespace liveio::hook
