// liveio::policy::UringRedirect — the `uring` policy's executor: a hooked blocking I/O call is
// performed through an io_uring ring owned by the calling thread, and the caller sees exactly
// what the native call would have returned; where that cannot be guaranteed the call is left to
// run natively (execute() returns false) and the reason is counted.
//
// API
// ---
//   auto redirect = UringRedirect::create(options);        // Result<unique_ptr<UringRedirect>>
//   bool taken = redirect->execute(frame);                 // from a Redirector::redirect(frame)
//   bool taken = redirect->execute(call, result);          // or with the bare call and result
//   redirect->stats();                                     // redirected / fallbacks by reason
//   redirect->shutdown();  (or destroy it)                 // no thread inside afterwards
// execute() takes the kernel's view of a call (hook::SyscallCall: syscall number + raw
// arguments) and sets `result` to a value >= 0 or -errno. It never blocks the target beyond what
// the native call would, never crashes on an argument the kernel would reject (the kernel reads
// every user pointer, with the native call's EFAULT), and never re-enters liveio's interception
// (raw syscalls only, base/raw_syscall.h; liburing issues its own syscall instructions).
//
// Calls redirected (kernel names; libc's send/recv are sendto/recvfrom)
//   read pread64 readv preadv write pwrite64 writev pwritev fsync fdatasync
//   preadv2 pwritev2 with flags 0 (offset -1: the file position, as readv/writev)
//   sendto recvfrom (without an address) recvmsg
//   io_setup io_submit io_getevents io_pgetevents io_destroy: Linux AIO translated to
//     io_uring by policy::AioBridge (uring_aio.h), its own rules and thread
// Everything else returns false (FallbackReason::NotRedirected), e.g. sendmsg.
//
// Per-thread engines (ThreadRegistry below)
//   One ring per thread, created on the thread's first redirected call, submitted to only by
//   that thread. Slots live in a fixed array sized by Options::max_threads; a thread finds its
//   slot through one initial-exec TLS word pair checked against the registry's serial number,
//   so a destroyed registry's slot is never reached. Before a new thread claims a slot, slots
//   of exited threads (tgkill(tgid, tid, 0) == -ESRCH) are reclaimed, so the rings in memory
//   are those of live threads (plus ones that exited since); reclaim_exited() does it on demand.
//   A thread whose ring cannot be created (io_uring disabled, ENOMEM, limits) runs natively for
//   the registry's lifetime (FallbackReason::NoEngine). shutdown() refuses new calls, wakes
//   threads sleeping in a redirected call (they cancel their op and finish natively), waits
//   until no thread is inside execute() (each thread publishes "inside" with a seq_cst store
//   before it reads `closing`: Dekker's pattern), then destroys every ring.
//   After fork() the child's copies of the rings are never used: the registry keeps a word in a
//   MADV_WIPEONFORK page that reads 0 in a child (FallbackReason::Forked).
//
// Exactness rules (each one verified by tests/policy against the native call)
//   File position: read/readv/write/writev use the offset -1 ops, which read f_pos at issue
//     and store the new position at completion; pread/pwrite/preadv/pwritev never touch it.
//     O_APPEND writes append and leave f_pos at the end, pwrite on O_APPEND appends (Linux).
//     Unlike read(2), io_uring does not hold the file's f_pos_lock: two threads using ONE
//     open file description's position at the same time may both read the same bytes.
//     Options::position_calls = false keeps read/readv/write/writev native for that reason.
//   Positioned calls: io_uring ignores the offset on pipes, sockets and character devices
//     where pread(2) fails with ESPIPE (it would even wait on an empty pipe), so pread/pwrite/
//     preadv/pwritev are redirected only on regular files, block devices and directories, by
//     one fstat per call (FallbackReason::Unseekable). Left: a regular file opened with
//     nonseekable_open (some procfs/tracefs stream files) would read instead of ESPIPE.
//   Arguments the kernel rejects differently through io_uring fall back: negative offsets
//     (pread64(…, -1) is EINVAL natively but "current position" to io_uring), lengths above
//     MAX_RW_COUNT (io_uring lengths are 32-bit), iovcnt outside 1..IOV_MAX. Bad descriptors,
//     EFAULT buffers, EISDIR, EINVAL (e.g. O_DIRECT misalignment), EBADF on a write-only fd:
//     io_uring runs the same kernel paths and returns the same -errno.
//   Non-blocking descriptors: io_uring WAITS on an O_NONBLOCK pipe or socket (it polls
//     instead of returning EAGAIN). When an op has not completed by the time io_uring_enter
//     returns, the executor reads F_GETFL; with O_NONBLOCK it cancels the op and, when the
//     cancel won, runs the call natively (FallbackReason::Nonblocking). MSG_DONTWAIT is
//     honoured by io_uring itself (-EAGAIN).
//   Socket timeouts: io_uring ignores SO_RCVTIMEO/SO_SNDTIMEO. A pending op on a socket with
//     the relevant timeout set is cancelled and run natively (FallbackReason::SocketTimeout).
//   Blocking writes to pipes and stream sockets: io_uring returns a short count where write(2)
//     would keep waiting, so the executor submits the remainder until all is written, an error
//     occurs, or a signal handler runs (then the partial count, as write(2) returns it). Short
//     writes to regular files are returned as they are (a second attempt could raise SIGXFSZ).
//   Signals: the thread sleeps in read(2) on an eventfd the ring signals, so the kernel itself
//     applies SA_RESTART exactly as for the native call (-ERESTARTSYS). When it returns EINTR:
//     regular files and block devices keep waiting (their native reads and writes are not
//     interruptible by non-fatal signals); anything else cancels the op and returns -EINTR, or
//     the op's result when it completed first. While a partial stream write continues, the
//     wait is a ppoll (-ERESTARTNOHAND): any handled signal ends the write with the partial
//     count. Differences left: a stop signal (SIGSTOP) in the middle of a partial stream write
//     does not end it; pthread_cancel does not act on a thread waiting in a redirected call
//     (raw syscalls are no cancellation points).
//   Ring teardown: when a ring is destroyed (shutdown(), or reclaiming an exited thread's) the
//     kernel queues task work with TIF_NOTIFY_SIGNAL to every live thread that used it. A
//     thread sleeping at that moment in a call that returns EINTR directly instead of
//     restarting (epoll_wait, a socket call with SO_RCVTIMEO/SO_SNDTIMEO) sees one EINTR, as
//     if a signal with a handler had arrived; restartable calls are restarted by the kernel.
//     While a ring lives, its task work (COOP_TASKRUN) is queued only for an op in flight,
//     i.e. while its thread waits inside execute(), in a read(2) the kernel then restarts.
//   SIGPIPE: io_uring runs every send with MSG_NOSIGNAL, so a redirected sendto without it
//     that fails with EPIPE is followed by a SIGPIPE sent to the calling thread (tgkill), as
//     sendto(2) does. write/writev on a socket or pipe raise it in the kernel themselves.
//   MSG_* flags pass to the kernel unchanged, except MSG_WAITALL (native semantics under
//     signals differ: FallbackReason::Flags). recvfrom with an address and sendto with a
//     destination fall back (FallbackReason::Arguments): the address length is an in/out user
//     pointer the kernel must read. Zero-length calls go through (same kernel paths: a zero-
//     length recv on TCP waits for data, as natively).
//   Re-entry (a signal handler doing I/O on a thread already inside execute()) runs natively
//   (FallbackReason::Reentrant). Any engine error before the op was submitted falls back
//   (FallbackReason::EngineError). An op that failed with EIO, ENOMEM, EAGAIN or ECANCELED
//   transferred nothing (the kernel reports an error only then) and may have failed in the
//   ring's machinery (io-wq, memory for the request) where the native call would not: it runs
//   natively (FallbackReason::CompletionError), which for a real device error returns the
//   native call's own error.
//   Short reads of regular files and block devices: the native read returns fewer bytes only
//   at end of file, so a short completion is continued for the remainder (as the kernel's own
//   read loop does) until the count is complete, end of file or an error (then the partial
//   count).
//   Page-cache hits first (UringRedirectOptions::nowait_first, set_regular_hint): a read or
//   pread of a descriptor the caller's cache knows as a regular file is first made as
//   preadv2(RWF_NOWAIT) (offset -1 for read: the file position, under f_pos_lock as read(2)
//   holds it), the ring is not used (counted as `nowait_reads`; a thread whose reads all hit
//   creates no ring). The kernel answers it from
//   the page cache only: all bytes, or the end of the file, is exactly the native result;
//   -EAGAIN (nothing cached at the offset), -EOPNOTSUPP (the filesystem cannot tell) or any
//   other error transferred nothing, and the call continues as above (errors are then the
//   ring's or the native call's own). A short count (a page further on not cached) is
//   completed by a native read of the rest, as the kernel's own read loop would, after fstat
//   confirmed a regular file or block device. A descriptor number the hint still knows as a
//   file but that was reused (through a call liveio did not see) for a pipe returns the short
//   count, as read(2) on a pipe does; for a socket with SO_RCVLOWAT above the count it got,
//   read(2) would have waited for more.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>

#include "base/result.h"
#include "hook/dispatch.h"

namespace liveio::uring {
class Engine;
}
namespace liveio::policy {
class AioBridge;
struct AioStats;
}  // namespace liveio::policy

namespace liveio::policy {

enum class FallbackReason : uint8_t {
    NotRedirected,  // a call this executor does not redirect
    Disabled,       // Options::position_calls = false, or the registry is shutting down
    NoEngine,       // this thread's ring could not be created, or no slot was free
    Arguments,  // arguments whose io_uring meaning differs (negative offset, huge length, address)
    Flags,      // MSG_WAITALL, preadv2/pwritev2 with RWF_* flags
    Nonblocking,    // O_NONBLOCK descriptor whose op would have waited
    SocketTimeout,  // SO_RCVTIMEO / SO_SNDTIMEO set on a socket whose op would have waited
    Reentrant,      // the thread is already inside execute() (signal handler)
    Forked,         // a fork child reaching its parent's rings
    Unseekable,     // a positioned call on a descriptor that is not a regular file, block device or
                    // directory
    EngineError,    // the ring refused the submission
    CompletionError,  // the op failed with an error the ring can cause where the native call need
                      // not
    AioUntracked,  // an AIO call on a context created before the policy was on (or while draining)
    AioIocb,       // io_submit with an iocb the translation does not take: run natively, counted
    Count,
};

const char* fallback_reason_name(FallbackReason reason);

struct UringRedirectOptions {
    unsigned ring_entries = 8;    // SQ entries per thread ring (one op in flight, plus its cancel)
    unsigned max_threads = 1024;  // engine slots; more threads run natively
    bool position_calls = true;   // redirect read/readv/write/writev (see the f_pos_lock rule)
    bool nowait_first = true;     // page-cache hits of read/pread answered by RWF_NOWAIT
};

struct UringRedirectStats {
    uint64_t redirected = 0;  // calls answered through io_uring
    uint64_t fallbacks = 0;   // sum of by_reason
    uint64_t by_reason[static_cast<int>(FallbackReason::Count)] = {};
    uint64_t nowait_reads = 0;         // reads answered by preadv2(RWF_NOWAIT) from the page cache
    uint64_t interrupted = 0;          // redirected calls that returned -EINTR
    uint64_t write_continuations = 0;  // remainders submitted for short stream writes
    uint64_t engines_created = 0;
    uint64_t engine_failures = 0;    // threads left native because their ring failed
    uint64_t engines_destroyed = 0;  // rings of exited threads reclaimed, and all at shutdown
    uint64_t engines_live = 0;
    // Linux AIO translated to io_uring (uring_aio.h)
    uint64_t aio_contexts = 0;        // contexts tracked since the start (created or adopted)
    uint64_t aio_submits = 0;         // io_submit calls translated
    uint64_t aio_ops = 0;             // iocbs run through io_uring
    uint64_t aio_events = 0;          // their events delivered by io_getevents
    uint64_t aio_native_submits = 0;  // io_submit calls on tracked contexts left native
};

class UringRedirect {
public:
    static Result<std::unique_ptr<UringRedirect>> create(const UringRedirectOptions& options = {});
    ~UringRedirect();
    UringRedirect(const UringRedirect&) = delete;
    UringRedirect& operator=(const UringRedirect&) = delete;

    // Which descriptors are regular files, from a cache the caller keeps (no syscall; it may
    // be stale, see "Page-cache hits first"): only their reads try RWF_NOWAIT first. Set
    // before the first execute(); without one nothing is tried.
    using RegularHint = bool (*)(const void* context, int fd);
    void set_regular_hint(RegularHint hint, const void* context) {
        regular_hint_ = hint;
        regular_context_ = context;
    }

    // Performs `call` through the calling thread's ring and stores the kernel-convention result;
    // false: the native call must run (the reason is counted).
    bool execute(hook::SyscallCall& call, hook::SyscallResult& result);
    // The same for the agent's call pipeline (hook::CallFrame, agent/call_pipeline.h): a
    // Redirector's redirect(frame) is `return executor.execute(frame);`. frame.word is unused.
    bool execute(hook::CallFrame& frame) { return execute(frame.call, frame.result); }

    // Stops translating new AIO submissions and waits until every translated op's event has
    // been taken by the target (or its context destroyed); false after `timeout` with some
    // left: AIO calls must keep reaching execute() (a native io_getevents would wait forever).
    bool drain_aio(std::chrono::milliseconds timeout);

    // Destroys the rings of threads that have exited; returns how many.
    size_t reclaim_exited();
    // Refuses new calls, moves sleeping threads out, waits until no thread is inside execute(),
    // destroys every ring. Idempotent; the destructor calls it.
    void shutdown();

    UringRedirectStats stats() const;

    struct Slot;  // one thread's ring and counters (uring_redirect.cpp)

private:
    explicit UringRedirect(const UringRedirectOptions& options);
    Slot* this_thread_slot();
    Slot* claim_slot();
    size_t reclaim_exited_locked();
    bool fallback(Slot* slot, FallbackReason reason);

    UringRedirectOptions options_;
    RegularHint regular_hint_ = nullptr;
    const void* regular_context_ = nullptr;
    uint64_t serial_ = 0;  // distinguishes this registry from earlier ones at the same address
    std::unique_ptr<Slot[]> slots_;
    std::atomic<bool> closing_{false};
    volatile uint64_t* fork_guard_ = nullptr;  // MADV_WIPEONFORK page: 0 in a fork child
    mutable std::mutex mutex_;    // claiming and reclaiming slots, stats of reclaimed slots
    UringRedirectStats retired_;  // counters of reclaimed slots
    std::unique_ptr<AioBridge> aio_;
    std::atomic<uint64_t> unslotted_fallbacks_[static_cast<int>(FallbackReason::Count)] = {};
    std::atomic<uint64_t> unslotted_nowait_{0};  // nowait reads of threads without a ring
};

}  // namespace liveio::policy
