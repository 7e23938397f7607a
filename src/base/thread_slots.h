// Per-thread slots in a fixed table: a thread claims one on its first use and keeps it while
// it lives; a slot whose thread has exited is taken over by a later thread of the same
// process. Used where a hooked call needs state of its own thread without allocating and
// without a locked instruction (grace-period read marks, per-thread counters).
//
// Claiming uses raw syscalls only (it may run inside a hooked malloc). Slots are claimed in
// index order, so a scan may stop at the first never-used slot.
#pragma once

#include <sys/syscall.h>
#include <sys/types.h>

#include <atomic>
#include <cerrno>
#include <cstddef>

#include "base/raw_syscall.h"

namespace liveio {

// The owner of a slot: embedded as `owner` in every slot type used with claim_thread_slot.
struct ThreadSlotOwner {
    std::atomic<pid_t> tid{0};   // kernel thread id, 0 = never used
    std::atomic<pid_t> tgid{0};  // the owner's process (a fork child never takes over its
                                 // parent's slots, whose copies it inherited)
};

// Claims a slot of `slots[0..n)` for the calling thread: a never-used one, else one it owns
// already, else one whose owner thread (of this process) has exited and for which
// `idle(slot)` holds. nullptr when
// every slot belongs to a live thread.
template <typename Slot, typename Idle>
Slot* claim_thread_slot(Slot* slots, size_t n, Idle&& idle) {
    const auto tid = static_cast<pid_t>(raw_syscall(SYS_gettid));
    const auto tgid = static_cast<pid_t>(raw_syscall(SYS_getpid));
    for (size_t i = 0; i < n; ++i) {
        ThreadSlotOwner& o = slots[i].owner;
        pid_t expected = 0;
        if (o.tid.load(std::memory_order_relaxed) == 0 &&
            o.tid.compare_exchange_strong(expected, tid, std::memory_order_acq_rel)) {
            o.tgid.store(tgid, std::memory_order_release);
            return &slots[i];
        }
    }
    for (size_t i = 0; i < n; ++i) {
        ThreadSlotOwner& o = slots[i].owner;
        pid_t owner = o.tid.load(std::memory_order_acquire);
        if (o.tgid.load(std::memory_order_acquire) != tgid) continue;
        if (owner == tid) return &slots[i];  // its own: the caller lost its cached pointer
        if (!idle(slots[i])) continue;
        // tgkill with signal 0 probes a thread without signalling it.
        if (raw_syscall(SYS_tgkill, tgid, owner, 0) != -ESRCH) continue;
        if (o.tid.compare_exchange_strong(owner, tid, std::memory_order_acq_rel)) return &slots[i];
    }
    return nullptr;
}

}  // namespace liveio
