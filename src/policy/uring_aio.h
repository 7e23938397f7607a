// liveio::policy::AioBridge — the Linux AIO calls (io_setup, io_submit, io_getevents,
// io_pgetevents, io_destroy) of the `uring` policy translated to io_uring: the target's iocbs
// run as io_uring ops and the target's io_getevents receives exactly the io_events the kernel's
// AIO would have delivered (data = aio_data, obj = the iocb's address, res = bytes or -errno,
// res2 = 0). ClickHouse reaches these through libc `syscall()` (its direct-I/O path), which
// liveio intercepts like any libc function (GOT/inline) or as a rewritten syscall instruction.
//
// API
// ---
//   AioBridge bridge;                       // no thread until the first io_setup
//   bool taken = bridge.execute(call, result, why);   // call.nr is an AIO syscall
//   bridge.drain(timeout);                  // see "Switching off"
//   bridge.stats();
//
// Which contexts: contexts created (io_setup) while the bridge runs are tracked from birth, so
// every native op on them is known. A context created before (ClickHouse 18.16 keeps one
// process-wide context, AIOContextPool, created at its first direct read) is adopted at its
// first io_submit: native ops submitted before may still complete, so its waits always poll
// the kernel's ring as well (see io_getevents). Other calls on unknown contexts stay native
// (FallbackReason::AioUntracked). io_setup itself runs natively (the context exists in the
// kernel, so io_destroy, io_cancel and every fallback keep working on it).
//
// io_submit on a tracked context is translated when every iocb is an IOCB_CMD_PREAD/PWRITE/
// FSYNC/FDSYNC with no flags (no IOCB_FLAG_RESFD/IOPRIO), no rw_flags, a regular file opened
// for that direction, offset >= 0, length <= MAX_RW_COUNT, a user-space buffer, and the
// context's outstanding ops stay within its io_setup size; anything else runs natively, whole
// (FallbackReason::AioIocb), and the context then holds native ops too (see io_getevents). The
// kernel's own synchronous checks therefore never differ: what would fail at submission is
// submitted natively and fails there. aio_key is set to 0 as the kernel does.
//   Descriptors are resolved at submission, as natively: io_submit returns only once the
//   liveio-aio thread has submitted the ops (the file is then referenced by io_uring), so the
//   target may close the descriptor right after io_submit returns.
//   Buffered (non-O_DIRECT) files: native AIO performs the I/O inside io_submit, so the event
//   is ready when io_submit returns; the translation waits for those ops before returning too.
//   O_DIRECT ops are asynchronous in both.
//
// io_getevents/io_pgetevents: the kernel's argument checks (timeout EFAULT, min_nr/nr EINVAL)
// in its order; events are consumed as they complete, the call returns once min_nr were
// taken, at the timeout (possibly with fewer), or at a handled signal (its count, or -EINTR
// with none). A context that also holds native ops (or may: adopted) takes theirs with a
// non-blocking native io_getevents between waits for its own, in slices from 1 ms doubling
// to 64 ms while nothing arrives (a native event can be seen up to a slice late; a
// translated one wakes the waiter at once). Only while draining, when no new op can be
// translated, does a waiter with nothing translated pending block in the kernel itself. Events go
// to the target's array with process_vm_writev: an unwritable array is -EFAULT (or the count
// written before), the events stay queued, as in the kernel. io_pgetevents applies its signal mask
// around the wait with rt_sigprocmask (not atomically, unlike the kernel).
//
// io_destroy: waits until the context's translated ops have completed (the kernel's
// io_destroy waits for its in-flight I/O too), forgets its undelivered events, then runs
// natively. io_cancel always runs natively: for file reads/writes/fsync the kernel has no
// cancel method and answers -EINVAL (or -EFAULT), which is also right for translated ones.
//
// The liveio-aio thread owns the ring: it submits every op (so io_uring's completion task
// work runs on it, never on a target thread, whose own blocking calls it could interrupt),
// reaps completions into each context's queue and wakes waiters (futex on the context's
// sequence word; the wait uses an absolute timeout so that a handled signal ends it with
// EINTR whatever SA_RESTART says, as io_getevents).
//
// Switching off: drain() stops tracking new contexts and translating new submissions (those
// run natively, contexts become mixed), then waits until every translated op has completed
// and been taken by the target (or its context destroyed). Returns false when that did not
// happen within the timeout: the caller must keep routing AIO calls here (a native
// io_getevents would never see those events).
//
// After fork() the child's calls run natively (its AIO contexts are not inherited anyway).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "hook/dispatch.h"
#include "policy/ring_waker.h"
#include "policy/uring_redirect.h"

namespace liveio::uring {
class Engine;
}

namespace liveio::policy {

struct AioStats {
    uint64_t contexts_tracked = 0;  // io_setup calls whose context the bridge tracks
    uint64_t contexts_adopted = 0;  // contexts created before, tracked from an io_submit on
    uint64_t contexts_live = 0;
    uint64_t submits = 0;         // io_submit calls translated
    uint64_t ops = 0;             // iocbs run through io_uring
    uint64_t events = 0;          // translated events delivered to io_getevents
    uint64_t native_submits = 0;  // io_submit calls on tracked contexts left native
    uint64_t getevents = 0;       // io_getevents/io_pgetevents answered by the bridge
};

class AioBridge {
public:
    AioBridge();
    ~AioBridge();  // drains without limit, stops the thread
    AioBridge(const AioBridge&) = delete;
    AioBridge& operator=(const AioBridge&) = delete;

    // True with `result` (kernel convention) when the bridge performed the call; false: run it
    // natively (`why`).
    bool execute(const hook::SyscallCall& call, hook::SyscallResult& result, FallbackReason& why);
    static bool is_aio_call(long nr);

    // See "Switching off". True when nothing translated is left outstanding.
    bool drain(std::chrono::milliseconds timeout);
    // After drain(): threads waiting in io_getevents on a context with nothing translated left
    // return to run the call natively (so that the caller's redirector slot can empty), and
    // new calls run natively. A waiter that already took some events but fewer than min_nr
    // keeps waiting (natively, inside). The bridge may be destroyed once no thread is inside
    // execute().
    void stop_waiting();
    AioStats stats() const;

    struct Context;
    struct Request;

private:
    std::shared_ptr<Context> find(uint64_t id);
    bool start_thread();
    void run(uring::Engine& engine);
    void enqueue(Request* request);
    long setup(const hook::SyscallCall& call, bool& taken);
    std::shared_ptr<Context> adopt(uint64_t id);
    long submit(Context& ctx, const hook::SyscallCall& call, bool& taken, FallbackReason& why);
    long getevents(Context& ctx, const hook::SyscallCall& call, bool with_sigmask, bool& taken);
    long destroy(const std::shared_ptr<Context>& ctx, uint64_t id);

    mutable std::mutex mu_;  // contexts_, queue_, thread start
    std::unordered_map<uint64_t, std::shared_ptr<Context>> contexts_;
    Request* queue_head_ = nullptr;  // requests for the liveio-aio thread, newest first
    std::atomic<bool> draining_{false};
    std::atomic<bool> closing_{false};  // stop_waiting()
    std::atomic<bool> stop_{false};
    std::atomic<bool> thread_failed_{false};
    std::atomic<uint32_t> outstanding_{0};  // translated ops not yet taken by the target
    RingWaker waker_;  // set up by the liveio-aio thread before start_thread() returns
    uint32_t ring_entries_ = 256;
    std::thread thread_;
    volatile uint64_t* fork_guard_ = nullptr;  // MADV_WIPEONFORK: 0 in a fork child
    std::atomic<uint64_t> stat_adopted_{0}, stat_tracked_{0}, stat_submits_{0}, stat_ops_{0},
        stat_events_{0}, stat_native_submits_{0}, stat_getevents_{0};
};

}  // namespace liveio::policy
