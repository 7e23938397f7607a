#include "hook/dispatcher.h"

#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>

namespace liveio::hook {

thread_local bool Dispatcher::inside_ = false;
thread_local Dispatcher::ThreadRecord* Dispatcher::record_ = nullptr;

Dispatcher& Dispatcher::instance() {
    // Constant-initialized (no dynamic init), so hooks may run before main or after exit.
    static constinit Dispatcher dispatcher;
    return dispatcher;
}

Result<void> Dispatcher::attach(Mechanism mechanism, CallHandler* handler) {
    if (handler == nullptr) return make_error(EINVAL, "interceptor needs a CallHandler");
    // Before any thread can see the handler, so every entry made with plain stores is
    // covered by the barrier detach will run. Registration is per process and permanent.
    if (!membarrier_.load(std::memory_order_relaxed) &&
        raw_syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
        membarrier_.store(true, std::memory_order_seq_cst);
    slots_[index(mechanism)].timed.store(handler->wants_start_time(), std::memory_order_relaxed);
    slots_[index(mechanism)].epoch.fetch_add(1, std::memory_order_relaxed);
    CallHandler* expected = nullptr;
    if (!slots_[index(mechanism)].handler.compare_exchange_strong(expected, handler))
        return make_error(EBUSY, "an interceptor with this mechanism is already installed");
    return {};
}

void Dispatcher::detach(Mechanism mechanism) {
    clear_handler(mechanism);
    // Threads inside a hook finish a syscall at most; blocking ones (read on an idle socket)
    // may take long, and uninstall must wait for them, so yield rather than spin hot.
    while (in_flight(mechanism) != 0) sched_yield();
}

void Dispatcher::clear_handler(Mechanism mechanism) {
    slots_[index(mechanism)].handler.store(nullptr, std::memory_order_seq_cst);
    // Every thread that entered with a plain store is now visible, or will see the null.
    if (membarrier_.load(std::memory_order_relaxed))
        (void)raw_syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
}

uint64_t Dispatcher::in_flight(Mechanism mechanism) const {
    uint64_t n = slots_[index(mechanism)].in_flight.load(std::memory_order_acquire);
    for (const ThreadRecord& r : records_) {
        if (r.owner.load(std::memory_order_acquire) == 0) break;  // claimed in order
        n += r.inside[index(mechanism)].load(std::memory_order_acquire);
    }
    return n;
}

// Raw syscalls only: runs on a thread's first hooked call, possibly inside the allocator.
Dispatcher::ThreadRecord* Dispatcher::claim_record() {
    const auto tid = static_cast<pid_t>(raw_syscall(SYS_gettid));
    const auto tgid = static_cast<pid_t>(raw_syscall(SYS_getpid));
    // Never-used records first (claimed in index order, so in_flight() can stop at the first).
    for (ThreadRecord& r : records_) {
        pid_t expected = 0;
        if (r.owner.load(std::memory_order_relaxed) == 0 &&
            r.owner.compare_exchange_strong(expected, tid, std::memory_order_acq_rel)) {
            r.tgid.store(tgid, std::memory_order_relaxed);
            return &r;
        }
    }
    // Then records of threads of this process that have exited, not inside any hook.
    for (ThreadRecord& r : records_) {
        pid_t owner = r.owner.load(std::memory_order_acquire);
        if (r.tgid.load(std::memory_order_relaxed) != tgid) continue;
        if (r.inside[0].load() || r.inside[1].load() || r.inside[2].load()) continue;
        if (raw_syscall(SYS_tgkill, tgid, owner, 0) != -ESRCH) continue;
        if (r.owner.compare_exchange_strong(owner, tid, std::memory_order_acq_rel)) return &r;
    }
    return nullptr;
}

}  // namespace liveio::hook
