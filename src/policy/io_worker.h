// liveio's I/O thread in the target ("liveio-io"): the one owner of the policy io_uring ring.
//
// Target threads never block on it. They push Actions into a bounded lock-free queue and
// wake it only when the worker sleeps; a full queue refuses the action (the caller counts a
// drop). The worker pops actions, asks its Sink whether each is still wanted (the
// policy may have been switched off meanwhile), submits them, reaps completions and hands
// each to the Sink, which runs the completion edge. The worker sleeps in io_uring_enter on
// a wait it keeps armed in the ring, so new actions and completions wake the same wait: a
// futex wait (IORING_OP_FUTEX_WAIT, Linux 6.7) producers wake with FUTEX_WAKE, or else the
// read of an eventfd producers write. The worker's ring has no descriptor number in the
// target (uring::RingFd::Unnumbered), nor, with the futex, anything else.
//
// Actions:
//   Prefetch  the range read into the page cache, one of two ways:
//             - fill (Action::fill, the policies' knob `fill`): a buffered IORING_OP_READV of
//             the range through the fixed-file slot, exactly as a Read below reaches the file
//             (type check first, explicit offset), into one scratch area every fill shares
//             and nobody reads (an iovec array that names it again and again). The kernel
//             serves it with its own readahead, which fills the page cache in large folios;
//             the copy into the scratch area stays in the cache. A quarter to a third of the
//             CPU of the advice below (which the kernel serves in 4 KiB folios), but the read
//             goes through the target's open file description and moves its readahead state
//             (docs/POLICIES.md, "How a prefetch reaches the page cache", measured both).
//             Ranges longer than kMaxFillBytes, O_DIRECT descriptors and files of proc, sysfs
//             and the like take the advice;
//             - advice: IORING_OP_FADVISE(POSIX_FADV_WILLNEED) on the target's descriptor: the
//             kernel starts reading the range into the page cache. No buffer, no file
//             position, no data consumed: whatever the descriptor refers to by then (closed,
//             reused for a socket or pipe), the op cannot change what the target's own calls
//             return; the worst case is I/O wasted on another regular file.
//             Either way the target's calls and its file position are untouched; a fill moves
//             the description's readahead state (its last position), as any pread would.
//   Read      IORING_OP_READ at an explicit offset into a scratch buffer, through a slot of
//             the ring's fixed-file table that the worker points at the target's descriptor
//             N for the read (IORING_REGISTER_FILES_UPDATE): a reference to the target's own
//             open file description, no descriptor number of ours in the target's table
//             (the target's next open() gets the lowest free number, as POSIX says) and no
//             open() of whatever N names. A sync_file_range(0, 0, 0) on the slot runs first
//             and fails with -ESPIPE unless the file is regular (or a block device or
//             directory); the read is prepared only after it succeeded, so N reused for a
//             pipe, socket or device meanwhile loses no byte. The explicit offset leaves the
//             shared file position alone; an O_DIRECT description gets an aligned range.
//             Files of proc, sysfs and the like are never read: their reads keep state in
//             the open file description besides the position (seq_file). The
//             data reaches the Sink (completion edge) and the page cache. Scratch memory
//             counts against the budget.
//   Part      the table part of the target's descriptor: its files looked up and its index
//             files advised, by path, through io_uring direct descriptors (part_prefetch.h)
//             in the kernel-allocated slots after the Reads' (register_file_alloc_range);
//             run on the worker as a few batches, each advised file reported to the Sink as
//             an issued Prefetch of fd -1.
//             Without io_uring (the engine's fallback) Reads are dropped, counted in
//             reads_unsupported: no system call can hold the target's file without a
//             descriptor number in its shared table (open, dup, pidfd_getfd all take one; a
//             high dup can be overwritten by the target's dup2 to that number, and our close
//             would then close the target's descriptor), and a pread on N itself races with
//             N's reuse by a character device whose reads have effects (/dev/kmsg, say).
//
// A failed ring: the engine's hard error (engine.h) completes every op the ring held with
// that error; the worker then retires the ring and creates a new one after a pause that
// doubles from 1 ms up to 1 s, at most 16 times in its life (then actions are dropped,
// counted). Actions arriving while there is no ring are dropped, counted.
//
// Budget: bytes in flight (prefetch ranges and scratch buffers). An action that does not fit
// is dropped, never delayed. Memory is freed when the action's completion has been handled.
//
// Thread safety: push() from any thread; barrier() and the destructor from a thread other
// than the worker (they wait for it).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>

#include "base/result.h"
#include "policy/action_queue.h"
#include "policy/part_prefetch.h"
#include "policy/ring_waker.h"

namespace liveio::policy {

struct Action {
    enum class Kind : uint8_t { Prefetch, Read, Part };
    Kind kind = Kind::Prefetch;
    uint8_t slot = 0;         // the policy that asked (Runtime's slot index)
    uint32_t generation = 0;  // the slot's generation when queued: stale after `off`
    int32_t fd = -1;
    int64_t offset = 0;
    uint64_t len = 0;
    uint64_t cookie = 0;  // Read: handed to the completion edge
    bool fill = false;    // Prefetch: read the range through the page cache, not advise it
};

// The longest Prefetch a fill reads in one op; longer ones are advised.
inline constexpr uint64_t kMaxFillBytes = uint64_t{32} << 20;

// What the worker reports to its owner. Called on the worker thread only.
class WorkerSink {
public:
    virtual ~WorkerSink() = default;
    // Whether the action is still wanted (its policy is on, same generation).
    virtual bool admit(const Action& action) = 0;
    // The action was not executed: unwanted, over budget, not a regular file... Also after
    // issued() for a Read the ring cancelled before any I/O (its descriptor had been reused
    // for something that is not a regular file).
    virtual void dropped(const Action& action) = 0;
    // The kernel accepted the action on the file `file_id` (st_dev << 32 ^ st_ino).
    virtual void issued(const Action& action, uint64_t file_id) = 0;
    // The action completed with `res` (bytes or -errno); Read: `data` holds what was read.
    virtual void completed(const Action& action, uint64_t file_id, int32_t res,
                           std::span<const char> data, uint64_t latency_ns) = 0;
};

struct WorkerStats {
    uint64_t submitted = 0;
    uint64_t completed = 0;
    uint64_t wakeups = 0;  // wake-ups by producers (futex wakes or eventfd writes)
    uint64_t budget_drops = 0;
    // The descriptor did not refer to a regular file (Read: or to one of a filesystem whose
    // reads keep state in the open file description: proc, sysfs...).
    uint64_t not_regular = 0;
    uint64_t reads_unsupported = 0;  // Reads dropped: no io_uring (see Read above)
    uint64_t rings_created = 0;      // the first ring and those replacing retired ones
    uint64_t rings_retired = 0;      // rings given up after a hard engine error
    uint64_t ring_down_drops = 0;    // actions dropped while no ring was usable
    uint64_t quarantined_bytes = 0;  // scratch never freed: its read may outlive its ring
    uint64_t prefetch_fills = 0;     // Prefetches read through the page cache (fill)
    uint64_t prefetch_advice = 0;    // Prefetches advised (WILLNEED)
};

class IoWorker {
public:
    struct Options {
        unsigned queue_entries = 1024;
        unsigned ring_entries = 128;
        uint64_t budget_bytes = uint64_t{256} << 20;
        bool force_fallback = false;  // the engine's synchronous backend (tests)
        // Registered-file slots after the Reads' own (one per ring entry) that the kernel
        // may allocate for direct descriptors (Op::openat_direct style opens by path): Part
        // actions need at least kDirectFileSlots (part_prefetch.h).
        unsigned direct_file_slots = kDirectFileSlots;
        // The Part actions' history of readers, kept by the caller beyond this worker (which
        // stops with the last policy); null: the worker's own.
        PartHistory* part_history = nullptr;
    };

    // Starts the thread and its ring; fails if either cannot be created.
    static Result<std::unique_ptr<IoWorker>> start(const Options& options, WorkerSink& sink);
    // Stops accepting, drains what is in flight, joins the thread: nothing is left behind.
    ~IoWorker();
    IoWorker(const IoWorker&) = delete;
    IoWorker& operator=(const IoWorker&) = delete;

    // Any thread, never blocks: false when the queue is full or the worker is stopping.
    bool push(const Action& action);
    // Returns once every action pushed before the call has been admitted or dropped and
    // every admitted one has completed and been handed to the sink.
    void barrier();

    void set_budget(uint64_t bytes) { budget_bytes_.store(bytes, std::memory_order_relaxed); }
    uint64_t budget() const { return budget_bytes_.load(std::memory_order_relaxed); }
    uint64_t bytes_in_flight() const { return in_flight_bytes_.load(std::memory_order_relaxed); }
    WorkerStats stats() const;
    bool uses_io_uring() const { return uring_; }
    pid_t tid() const { return tid_.load(std::memory_order_acquire); }

private:
    struct Slot;  // one submitted action
    IoWorker(const Options& options, WorkerSink& sink);
    void run(std::promise<Result<void>>* started);
    void wake();

    Options options_;
    WorkerSink& sink_;
    ActionQueue<Action> queue_;
    RingWaker waker_;  // set up by the worker thread before start() returns
    bool uring_ = false;
    std::atomic<uint64_t> budget_bytes_;
    std::atomic<uint64_t> in_flight_bytes_{0};
    std::atomic<bool> sleeping_{false};
    std::atomic<bool> stop_{false};
    std::atomic<pid_t> tid_{0};
    std::atomic<uint64_t> wakeups_{0};
    // barrier(): tickets pushed by callers, the ticket the worker has passed, and how many
    // actions the worker must have popped before (the queue's pushed() of the latest caller).
    std::atomic<uint64_t> barrier_asked_{0};
    std::atomic<uint64_t> barrier_pushed_{0};
    mutable std::mutex mu_;
    std::condition_variable cv_;
    uint64_t barrier_done_ = 0;
    WorkerStats stats_;  // under mu_ (copied out by stats())
    std::thread thread_;
};

}  // namespace liveio::policy
