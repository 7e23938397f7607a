// The per-process dispatcher behind every interception mechanism, and the raw syscall path
// liveio's own code uses so that it is never intercepted by itself.
//
// This is liveio's one deliberate global: a hook reached from a GOT slot, an inline jump or a
// rewritten `syscall` instruction carries no context pointer, so the handler it must call has
// to be found from a fixed place. There is one slot per Mechanism; each holds the installed
// CallHandler, and uninstall waits until no thread still runs hook code that could reach a
// dead handler.
//
// "Inside a mechanism's hooks" is a flat read section of that mechanism's channel in the
// dispatcher's ReadSections (base/read_sections.h): plain stores into the thread's own slot,
// no locked instruction on the hot path. Uninstall clears the handler and then waits until
// the channel is idle; its barrier guarantees that a thread either saw the cleared handler
// or is visibly inside.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <ctime>

#include "base/raw_syscall.h"
#include "base/read_sections.h"
#include "base/result.h"
#include "hook/dispatch.h"
#include "hook/interceptor.h"

namespace liveio::hook {

// liveio's own, never-intercepted syscalls (base/raw_syscall.h), also for a whole call.
using liveio::raw_syscall;

inline long raw_syscall(const SyscallCall& c) {
    return raw_syscall(c.nr, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4], c.args[5]);
}

class Dispatcher {
public:
    static Dispatcher& instance();

    // Makes `handler` the target of `mechanism`'s hooks. Fails with EBUSY when that mechanism
    // already has a handler (one interceptor per mechanism per process).
    Result<void> attach(Mechanism mechanism, CallHandler* handler);
    // Stops routing to the handler and waits until no thread is inside the mechanism's hooks;
    // afterwards the handler may be destroyed.
    void detach(Mechanism mechanism);
    // The two halves of detach(), for an uninstall that must act on the threads it waits for
    // (syscall rewriting evacuates threads sleeping in the kernel on its behalf): stop routing
    // to the handler, then read how many threads are still inside the mechanism's hooks.
    void clear_handler(Mechanism mechanism);
    uint64_t in_flight(Mechanism mechanism) const;
    // This thread leaves the call it was dispatching without finishing it (its handler's
    // on_exit never runs): only from a signal handler that moved the thread out of the hook.
    void abandon_call(Mechanism mechanism) {
        inside_ = false;
        sections_.exit_flat(record_, index(mechanism));
    }

    // True while this thread runs liveio code (a handler or the dispatcher itself): hooks then
    // pass calls straight through, so handler I/O is never intercepted.
    static bool inside() { return inside_; }

    // Marks this thread as running liveio code for a scope (nestable).
    class ScopedInside {
    public:
        ScopedInside() : was_(inside_) { inside_ = true; }
        ~ScopedInside() { inside_ = was_; }
        ScopedInside(const ScopedInside&) = delete;
        ScopedInside& operator=(const ScopedInside&) = delete;

    private:
        bool was_;
    };

    // Calls routed to a handler (approximate under concurrency, see count_call).
    uint64_t calls(Mechanism mechanism) const {
        return slots_[index(mechanism)].calls.load(std::memory_order_relaxed);
    }

    // The two halves of a hooked libc-level call around the original function, which the
    // hook's own code calls (libc_hooks.cpp: its return path must be one the detach can
    // redirect). begin_handler_call marks the thread inside `mechanism` and returns the handler,
    // or nullptr (thread not marked: liveio's own call, or no handler); `start_ns`, when given,
    // receives the start time the handler wants. end_handler_call undoes a non-null begin.
    CallHandler* begin_handler_call(Mechanism mechanism, uint64_t* start_ns) {
        Slot& slot = slots_[index(mechanism)];
        if (inside_) return nullptr;
        // Enter before reading the handler: detach() clears the handler, then waits until no
        // thread is inside, so a thread that saw a handler keeps it alive until it leaves.
        Sections::Slot* record = sections_.enter_flat(record_, index(mechanism));
        CallHandler* handler = slot.handler.load(std::memory_order_seq_cst);
        if (handler == nullptr) {
            sections_.exit_flat(record, index(mechanism));
            return nullptr;
        }
        inside_ = true;
        if (start_ns != nullptr) {
            count_call(slot);
            *start_ns = slot.timed.load(std::memory_order_relaxed) ? now_ns() : 0;
        }
        return handler;
    }
    void end_handler_call(Mechanism mechanism) {
        inside_ = false;
        sections_.exit_flat(record_, index(mechanism));
    }
    // Changes at every attach: a call begun under one handler never ends in another.
    uint32_t epoch(Mechanism mechanism) const {
        return slots_[index(mechanism)].epoch.load(std::memory_order_relaxed);
    }
    // This thread's record index (stable while the thread lives), or kThreadRecords when it
    // has none yet (or none was free).
    static constexpr size_t kThreadRecords = 1024;
    static size_t thread_index() { return instance().sections_.index_of(record_); }

    // A hooked call at the syscall level (rewritten `syscall` instruction, agent-originated
    // calls): returns the kernel convention (-errno) and never touches errno.
    long call_raw(Mechanism mechanism, SyscallCall call) {
        Slot& slot = slots_[index(mechanism)];
        if (inside_) return raw_syscall(call);
        Sections::Slot* record = sections_.enter_flat(record_, index(mechanism));
        CallHandler* handler = slot.handler.load(std::memory_order_seq_cst);
        if (handler == nullptr) {
            sections_.exit_flat(record, index(mechanism));
            return raw_syscall(call);
        }
        inside_ = true;
        count_call(slot);
        const int saved_errno = errno;  // the handler's own libc calls must not leak errno
        CallFrame frame{call, 0, slot.timed.load(std::memory_order_relaxed) ? now_ns() : 0, 0};
        if (!handler->on_enter(frame)) frame.result = raw_syscall(frame.call);
        handler->on_exit(frame);
        errno = saved_errno;
        inside_ = false;
        sections_.exit_flat(record, index(mechanism));
        return frame.result;
    }

    static uint64_t now_ns() {
        timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);  // vDSO: no syscall, so nothing to intercept
        return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
    }

private:
    // Enter before reading the handler, leave after the handler returned: one channel of
    // sections_ per mechanism.
    using Sections = ReadSections<kThreadRecords, 3>;
    struct alignas(64) Slot {
        std::atomic<CallHandler*> handler{nullptr};
        std::atomic<bool> timed{true};
        std::atomic<uint64_t> calls{0};
        std::atomic<uint32_t> epoch{0};
    };
    // A statistic, not an exact count: a load and a store rather than a locked add, so
    // increments racing on two CPUs may be lost.
    static void count_call(Slot& slot) {
        slot.calls.store(slot.calls.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    static constexpr int index(Mechanism m) { return static_cast<int>(m); }

    Slot slots_[3];
    Sections sections_;
    // Defined here, constinit: every translation unit then reaches them directly instead of
    // through the TLS wrapper function a thread_local defined in another file needs (a test
    // of the weak TLS init function per access). That wrapper also broke UBSan: GCC checks
    // the wrapper's reference for null with `add x@gottpoff(%rip), %reg; je`, and when the
    // code is linked into an executable ld relaxes that initial-exec add to
    // `lea x@tpoff(%reg), %reg`, which sets no flags, so the je tested stale flags and
    // reported a "store to null pointer" for a thread_local's address, which is never null.
    static constinit inline thread_local bool inside_ = false;
    static constinit inline thread_local Sections::Slot* record_ =
        nullptr;  // this thread's slot of sections_
};

}  // namespace liveio::hook
