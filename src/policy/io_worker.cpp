#include "policy/io_worker.h"

#include <fcntl.h>
#include <linux/fadvise.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <vector>

#include "base/raw_syscall.h"
#include "hook/dispatcher.h"
#include "hook/world_stop.h"
#include "policy/file_id.h"
#include "policy/part_prefetch.h"
#include "uring/engine.h"

namespace liveio::policy {
namespace {

constexpr uint64_t kEventTag = ~uint64_t{0};
// Tag bit of a Read's type check (the slot index is in the low bits, as for the read itself).
constexpr uint64_t kCheckTag = uint64_t{1} << 32;
// Ring retirement after a hard engine error: the first pause before a new ring, its cap, and
// how many new rings the worker creates in its life at most.
constexpr uint64_t kFirstRingBackoffNs = 1'000'000;
constexpr uint64_t kMaxRingBackoffNs = 1'000'000'000;
constexpr unsigned kMaxRingRestarts = 16;
// A Read's scratch buffer is aligned for a descriptor opened with O_DIRECT (the read goes
// through the target's own open file description, flags included).
constexpr size_t kReadAlignment = 4096;
// A fill's scratch area: every fill's iovecs name it again and again (the data is never
// read), small enough to stay in the CPU's cache while the kernel copies into it.
constexpr size_t kFillChunk = 256 << 10;
static_assert(kMaxFillBytes / kFillChunk <= 1024, "a fill's iovecs stay within UIO_MAXIOV");
// One fadvise op covers at most this much (its length is 32-bit in the SQE).
constexpr uint64_t kMaxActionBytes = uint64_t{1} << 30;

// Files of filesystems whose read() generates the data per open file description (seq_file
// and kernfs buffers, iterators): a Read through the target's description at another offset
// would make the target's next read regenerate its content instead of continuing the snapshot
// it was reading. Reads are never issued on them.
constexpr unsigned long kConfigfsMagic = 0x62656570;  // not in <linux/magic.h>
bool generated_per_description(int fd) {
    struct statfs fs {};
    if (liveio::raw_syscall(SYS_fstatfs, fd, reinterpret_cast<long>(&fs)) != 0) return true;
    switch (static_cast<unsigned long>(fs.f_type)) {
        case PROC_SUPER_MAGIC:
        case SYSFS_MAGIC:
        case DEBUGFS_MAGIC:
        case TRACEFS_MAGIC:
        case CGROUP_SUPER_MAGIC:
        case CGROUP2_SUPER_MAGIC:
        case SECURITYFS_MAGIC:
        case SELINUX_MAGIC:
        case BPF_FS_MAGIC:
        case kConfigfsMagic:
        case PSTOREFS_MAGIC:
        case EFIVARFS_MAGIC:
        case BINFMTFS_MAGIC: return true;
        default: return false;
    }
}

}  // namespace

struct IoWorker::Slot {
    bool busy = false;
    Action action;
    uint64_t seq = 0;  // submission order, for barrier()
    uint64_t file_id = 0;
    uint64_t start_ns = 0;
    uint64_t bytes = 0;        // counted against the budget
    char* buffer = nullptr;    // Read: scratch
    uint64_t skip = 0;         // Read: bytes of the scratch before the action's offset (O_DIRECT)
    bool file_slot = false;    // Read: the ring's fixed-file slot of this index holds the file
    bool read_queued = false;  // Read: the type check passed, the read itself was prepared
    uint64_t read_start = 0;   // Read: the range read (the action's, aligned for O_DIRECT)
    uint32_t read_len = 0;
    std::vector<iovec> fill;   // Prefetch by fill: the scratch area, named once per chunk
};

Result<std::unique_ptr<IoWorker>> IoWorker::start(const Options& options, WorkerSink& sink) {
    std::unique_ptr<IoWorker> w(new IoWorker(options, sink));
    std::promise<Result<void>> started;
    auto ready = started.get_future();
    // The thread inherits this mask: the application's signals never run on it (only the
    // world stop, which inline patching needs, and faults stay deliverable).
    sigset_t all, old;
    sigfillset(&all);
    for (int s : {hook::world_stop_signal(), SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP})
        sigdelset(&all, s);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    try {
        w->thread_ = std::thread([p = w.get(), &started] { p->run(&started); });
    } catch (const std::exception& e) {
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        return make_error(EAGAIN, std::string("cannot start the liveio-io thread: ") + e.what());
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    auto r = ready.get();
    if (!r) {
        w->thread_.join();
        return r.error();
    }
    return w;
}

IoWorker::IoWorker(const Options& options, WorkerSink& sink)
    : options_(options),
      sink_(sink),
      queue_(options.queue_entries),
      budget_bytes_(options.budget_bytes) {}

IoWorker::~IoWorker() {
    stop_.store(true, std::memory_order_seq_cst);
    wake();
    if (thread_.joinable()) thread_.join();
}

bool IoWorker::push(const Action& action) {
    if (stop_.load(std::memory_order_relaxed) || !queue_.push(action)) return false;
    // Pairs with the worker's store of sleeping_ then re-check of the queue: either it sees
    // this action, or this thread sees it asleep and wakes it.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_relaxed) &&
        sleeping_.exchange(false, std::memory_order_relaxed))
        wake();
    return true;
}

void IoWorker::wake() {
    waker_.wake();
    wakeups_.fetch_add(1, std::memory_order_relaxed);
}

void IoWorker::barrier() {
    // Actions still in the queue count too (the worker pops only as many as it has free
    // slots): the ticket is passed once every action pushed before this call has been popped.
    const uint64_t pushed = queue_.pushed();
    uint64_t seen = barrier_pushed_.load(std::memory_order_relaxed);
    while (seen < pushed &&
           !barrier_pushed_.compare_exchange_weak(seen, pushed, std::memory_order_relaxed)) {
    }
    const uint64_t ticket = barrier_asked_.fetch_add(1, std::memory_order_seq_cst) + 1;
    wake();
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return barrier_done_ >= ticket || !thread_.joinable(); });
}

WorkerStats IoWorker::stats() const {
    std::lock_guard lock(mu_);
    WorkerStats s = stats_;
    s.wakeups = wakeups_.load(std::memory_order_relaxed);
    return s;
}

void IoWorker::run(std::promise<Result<void>>* started) {
    hook::Dispatcher::ScopedInside inside;  // this thread's calls go straight to the kernel
    liveio::raw_syscall(SYS_prctl, PR_SET_NAME, reinterpret_cast<long>("liveio-io"));
    tid_.store(static_cast<pid_t>(liveio::raw_syscall(SYS_gettid)), std::memory_order_release);
    uring::Options eo;
    eo.sq_entries = options_.ring_entries;
    eo.force_fallback = options_.force_fallback;
    // This thread creates, uses and destroys every ring of the worker: the ring can be an
    // index of this thread's registered rings, with no number in the target's table.
    eo.ring_fd = uring::RingFd::Unnumbered;
    auto created = uring::Engine::create(eo);
    if (!created) {
        started->set_value(
            make_error(created.error().code, "liveio-io: " + created.error().message));
        return;
    }
    std::unique_ptr<uring::Engine> engine = std::move(created).value();
    uring_ = engine->backend() == uring::BackendKind::Uring;
    // Producers on any thread wake the worker (ring_waker.h: a futex where the ring can wait on
    // one, so the worker holds no descriptor in the target at all).
    if (const int r = waker_.init(*engine); r < 0) {
        started->set_value(make_error(-r, "cannot create the I/O thread's eventfd"));
        return;
    }
    // The fixed-file table: one slot per action slot (a Read reaches the target's file
    // through it), then options_.direct_file_slots that only the kernel allocates, to the
    // direct opens of Part actions (never an action slot's index). Without at least
    // kDirectFileSlots of them Part actions are dropped.
    bool reads = false, parts_ok = false;
    auto register_tables = [&] {
        const unsigned direct = options_.direct_file_slots;
        reads = engine->register_files_sparse(options_.ring_entries + direct).ok();
        parts_ok = reads && direct >= kDirectFileSlots &&
                   engine->register_file_alloc_range(options_.ring_entries, direct).ok();
    };
    if (uring_) register_tables();
    PartHistory own_history;
    PartPrefetcher parts(options_.part_history != nullptr ? *options_.part_history : own_history);
    started->set_value(Result<void>{});
    uint64_t rings_created = 1, rings_retired = 0, ring_down_drops = 0, quarantined_bytes = 0;
    // A ring that failed for good (engine.h: a hard io_uring_enter error) is retired and a new
    // one created after a pause that doubles with every retirement (bounded); meanwhile the
    // actions are dropped, counted.
    uint64_t retry_at_ns = 0, backoff_ns = kFirstRingBackoffNs;
    unsigned restarts_left = kMaxRingRestarts;

    std::vector<Slot> slots(options_.ring_entries);
    // Released at the end unless a fill may still be in the kernel (see quarantined_bytes).
    std::unique_ptr<char[]> fill_scratch(new char[kFillChunk]);
    std::vector<unsigned> free_slots;
    for (unsigned i = slots.size(); i-- > 0;) free_slots.push_back(i);
    std::vector<uring::Completion> done(options_.ring_entries + 1);
    bool event_armed = false;
    uint64_t next_seq = 0;
    // A barrier waiting for `pending_pops` actions popped, then for the ops before pending_seq.
    constexpr uint64_t kNotYet = ~uint64_t{0};
    uint64_t pending_ticket = 0, pending_seq = 0, pending_pops = 0, popped = 0;
    uint64_t local_stats_submitted = 0, local_completed = 0, budget_drops = 0, not_regular = 0,
             reads_unsupported = 0, prefetch_fills = 0, prefetch_advice = 0;

    auto arm_event = [&] {
        if (event_armed) return;
        if (engine->prepare(waker_.armed_op(), kEventTag) == 0) event_armed = true;
    };
    // Empties the fixed-file slot: it holds a reference to the target's file, which would
    // otherwise stay open after the target closed it (a pipe's reader would never see EOF).
    auto clear_file_slot = [&](unsigned index) {
        Slot& s = slots[index];
        if (!s.file_slot) return;
        const int none = -1;
        engine->register_files_update(index, std::span<const int>(&none, 1));
        s.file_slot = false;
    };
    auto release = [&](unsigned index) {
        Slot& s = slots[index];
        clear_file_slot(index);
        std::free(s.buffer);
        in_flight_bytes_.fetch_sub(s.bytes, std::memory_order_relaxed);
        s = Slot{};
        free_slots.push_back(index);
    };
    // Points fixed-file slot `index` at the target's descriptor a.fd and queues the ring's
    // type check of it (tag kCheckTag | index); the read (a Read's, a fill's) is prepared at
    // the check's completion. False when the slot cannot be updated, when the ring is full, or
    // when a.fd was reused between the fstat and the update for something else than the file
    // checked (`swapped`: known without any I/O; reused and reused back in between is what
    // the ring's check is for). The caller clears the slot.
    auto queue_slot_check = [&](unsigned index, const Action& a, uint64_t file_id,
                                bool& swapped) {
        const int fd = a.fd;
        if (engine->register_files_update(index, std::span<const int>(&fd, 1)) != 1) return false;
        slots[index].file_slot = true;
        swapped = regular_file_id(a.fd) != file_id;
        if (swapped) return false;
        return engine->prepare(uring::Op::sync_file_range(static_cast<int>(index), 0, 0, 0).fixed(),
                               kCheckTag | index) == 0;
    };
    // A Read of the target's descriptor a.fd (a regular file `file_id` when it was checked),
    // prepared in action slot `index`; false when it cannot be (the caller drops it).
    //
    // The file is reached through the ring's fixed-file slot `index`, never through a
    // descriptor of our own: opening one (/proc/self/fd/N, dup) would take the lowest free
    // number in the target's descriptor table, which the target's next open() is owed. The
    // slot update takes a reference to whatever a.fd names at that instant; a.fd may have been
    // closed and its number reused since the fstat, so the ring checks the slot's file first:
    // sync_file_range(0, 0, 0) fails with -ESPIPE on anything but a regular file, block
    // device, directory or symlink. Only once it succeeded is the read prepared: a failed
    // sync_file_range does not cancel an op linked to it (the kernel sets no link failure for
    // it; tests/uring/test_registered_files.cpp), so the two are not linked. Only this thread
    // updates the slot, so the file read is the file checked. The read has an explicit
    // offset: the file position the target shares with us is never used or moved.
    auto prepare_read = [&](unsigned index, const Action& a, uint64_t file_id) {
        Slot& s = slots[index];
        // An O_DIRECT description needs an aligned range: the aligned range around the
        // action's is read and the action's part handed on.
        const long flags = liveio::raw_syscall(SYS_fcntl, a.fd, F_GETFL);
        const bool direct = flags >= 0 && (flags & O_DIRECT) != 0;
        const auto offset = static_cast<uint64_t>(a.offset);
        const uint64_t start = direct ? offset / kReadAlignment * kReadAlignment : offset;
        const uint64_t end =
            direct ? (offset + a.len + kReadAlignment - 1) / kReadAlignment * kReadAlignment
                   : offset + a.len;
        s.skip = offset - start;
        s.read_start = start;
        s.read_len = static_cast<uint32_t>(end - start);
        const size_t size = (end - start + kReadAlignment - 1) / kReadAlignment * kReadAlignment;
        void* buffer = nullptr;
        if (posix_memalign(&buffer, kReadAlignment, size) != 0) return false;
        s.buffer = static_cast<char*>(buffer);
        bool swapped = false;
        const bool queued = queue_slot_check(index, a, file_id, swapped);
        if (swapped) ++not_regular;
        return queued;
    };
    // A Prefetch by fill in action slot `index`: the file reached as for a Read (the fixed-file
    // slot, the identity and type checks); at the check's completion, a READV of the range
    // into the shared scratch area. False when it cannot be (the caller advises instead).
    auto prepare_fill = [&](unsigned index, const Action& a, uint64_t file_id) {
        Slot& s = slots[index];
        if (!fill_scratch) fill_scratch.reset(new char[kFillChunk]);
        s.fill.clear();
        for (uint64_t done = 0; done < a.len; done += kFillChunk)
            s.fill.push_back({fill_scratch.get(), std::min<uint64_t>(kFillChunk, a.len - done)});
        s.read_start = static_cast<uint64_t>(a.offset);
        bool swapped = false;
        if (queue_slot_check(index, a, file_id, swapped)) return true;
        clear_file_slot(index);
        s.fill.clear();
        return false;
    };
    auto drop = [&](const Action& a) { sink_.dropped(a); };
    // A Part action runs here, to its end (its ops are batches of their own on the ring).
    auto prefetch_part = [&](const Action& a) {
        if (!parts_ok) return drop(a);
        const uint64_t start = liveio::raw_monotonic_ns();
        const uint64_t used = in_flight_bytes_.load(std::memory_order_relaxed);
        const uint64_t budget = budget_bytes_.load(std::memory_order_relaxed);
        PartPrefetchResult r;
        const PartRequest request{a.fd, a.cookie, static_cast<uint32_t>(a.offset)};
        const int rc = parts.run(
            *engine, request, budget > used ? budget - used : 0,
            [&](uint64_t file_id, uint64_t bytes) {
                Action child = a;
                child.kind = Action::Kind::Prefetch;
                child.fd = -1;
                child.offset = 0;
                child.len = bytes;
                sink_.issued(child, file_id);
            },
            r);
        if (rc < 0) return drop(a);
        ++local_stats_submitted;
        ++local_completed;
        sink_.completed(a, 0, r.errors > 0 && r.files == 0 ? -EIO : r.files, {},
                        liveio::raw_monotonic_ns() - start);
    };
    // Turns an action into a submitted op, or drops it.
    auto issue = [&](Action a) {
        if (stop_.load(std::memory_order_relaxed) || !sink_.admit(a)) return drop(a);
        if (!engine) {
            ++ring_down_drops;
            return drop(a);
        }
        if (a.kind == Action::Kind::Part) return prefetch_part(a);
        if (a.len == 0 || a.offset < 0 || a.len > kMaxActionBytes ||
            (a.kind == Action::Kind::Read && a.len > (1u << 20)))
            return drop(a);
        if (in_flight_bytes_.load(std::memory_order_relaxed) + a.len >
            budget_bytes_.load(std::memory_order_relaxed)) {
            ++budget_drops;
            return drop(a);
        }
        // Without io_uring nothing can hold the target's file without a descriptor number
        // in its table (see the header): Reads need the ring.
        if (a.kind == Action::Kind::Read && !reads) {
            ++reads_unsupported;
            return drop(a);
        }
        uint64_t size = 0;
        const uint64_t file_id = regular_file_id(a.fd, &size);
        if (file_id == 0 || (a.kind == Action::Kind::Read && generated_per_description(a.fd))) {
            ++not_regular;
            return drop(a);
        }
        // Nothing to read past the end: a prefetch covers what exists now (a file growing
        // later is read by the target's own calls).
        if (a.kind == Action::Kind::Prefetch) {
            if (static_cast<uint64_t>(a.offset) >= size) return drop(a);
            if (a.len > size - static_cast<uint64_t>(a.offset))
                a.len = size - static_cast<uint64_t>(a.offset);
        }
        const unsigned index = free_slots.back();
        Slot& s = slots[index];
        s.action = a;
        s.file_id = file_id;
        bool prepared = false;
        if (a.kind == Action::Kind::Prefetch) {
            // A fill reads through the target's description: never one opened O_DIRECT (the
            // read would bypass the page cache) nor a file whose reads have effects.
            const long status = a.fill ? liveio::raw_syscall(SYS_fcntl, a.fd, F_GETFL) : -1;
            const bool fill = status >= 0 && (status & O_DIRECT) == 0 && reads &&
                              a.len <= kMaxFillBytes && !generated_per_description(a.fd);
            prepared = fill && prepare_fill(index, a, file_id);
            if (prepared) {
                ++prefetch_fills;
            } else {
                prepared = engine->prepare(uring::Op::fadvise(a.fd, a.offset,
                                                              static_cast<uint32_t>(a.len),
                                                              POSIX_FADV_WILLNEED),
                                           index) == 0;
                if (prepared) ++prefetch_advice;
            }
        } else {
            prepared = prepare_read(index, a, file_id);
        }
        if (!prepared) {
            clear_file_slot(index);
            std::free(s.buffer);
            s = Slot{};
            return drop(a);
        }
        free_slots.pop_back();
        s.busy = true;
        s.seq = next_seq++;
        s.bytes = a.len;
        s.start_ns = liveio::raw_monotonic_ns();
        in_flight_bytes_.fetch_add(a.len, std::memory_order_relaxed);
        ++local_stats_submitted;
        sink_.issued(a, file_id);
    };
    auto oldest_outstanding = [&] {
        uint64_t min = next_seq;
        for (const Slot& s : slots)
            if (s.busy && s.seq < min) min = s.seq;
        return min;
    };

    // The next ring is tried after the current pause, which then doubles (up to its cap).
    auto retry_later = [&] {
        retry_at_ns = liveio::raw_monotonic_ns() + backoff_ns;
        backoff_ns = std::min(backoff_ns * 2, kMaxRingBackoffNs);
    };
    // The broken ring has handed back every op (each completed with its error): retire it.
    auto retire_ring = [&] {
        ++rings_retired;
        engine.reset();
        event_armed = false;
        reads = parts_ok = false;
        retry_later();
    };
    auto recreate_ring = [&] {
        if (restarts_left == 0 || liveio::raw_monotonic_ns() < retry_at_ns) return;
        auto again = uring::Engine::create(eo);
        if (again && (*again)->backend() == uring::BackendKind::Uring) {
            --restarts_left;
            ++rings_created;
            engine = std::move(again).value();
            register_tables();
            return;
        }
        retry_later();  // not even a ring: try again later
    };

    for (;;) {
        if (engine && engine->hard_error() != 0 && engine->inflight() == 0) retire_ring();
        if (!engine && uring_) recreate_ring();
        if (engine) arm_event();
        const uint64_t asked = barrier_asked_.load(std::memory_order_acquire);
        Action a;
        // Keep one slot's worth of room: the wake-up wait is always armed beside the actions.
        while (!free_slots.empty() && queue_.pop(a)) {
            ++popped;
            issue(a);
        }
        const bool stopping = stop_.load(std::memory_order_acquire);
        if (stopping)
            while (queue_.pop(a)) {
                ++popped;
                drop(a);
            }
        if (engine) engine->submit();
        if (asked > pending_ticket) {
            pending_ticket = asked;
            pending_pops = barrier_pushed_.load(std::memory_order_relaxed);
            pending_seq = kNotYet;
        }
        if (pending_seq == kNotYet && popped >= pending_pops) pending_seq = next_seq;
        {
            std::lock_guard lock(mu_);
            stats_.submitted = local_stats_submitted;
            stats_.completed = local_completed;
            stats_.budget_drops = budget_drops;
            stats_.not_regular = not_regular;
            stats_.reads_unsupported = reads_unsupported;
            stats_.rings_created = rings_created;
            stats_.rings_retired = rings_retired;
            stats_.ring_down_drops = ring_down_drops;
            stats_.quarantined_bytes = quarantined_bytes;
            stats_.prefetch_fills = prefetch_fills;
            stats_.prefetch_advice = prefetch_advice;
            if (pending_ticket > barrier_done_ && pending_seq != kNotYet &&
                oldest_outstanding() >= pending_seq) {
                barrier_done_ = pending_ticket;
                cv_.notify_all();
            }
        }
        const bool actions_in_flight = free_slots.size() < slots.size();
        if (stopping && !actions_in_flight) break;
        // Sleep unless there is more to do right away.
        bool block = true;
        // Read before the last look at the queue: a wake-up after it changes the word.
        const uint32_t wake_seen = waker_.seen();
        if (!free_slots.empty()) {
            sleeping_.store(true, std::memory_order_seq_cst);
            if (!queue_.empty() || barrier_asked_.load(std::memory_order_seq_cst) != asked ||
                stop_.load(std::memory_order_seq_cst) != stopping) {
                sleeping_.store(false, std::memory_order_relaxed);
                block = false;
            }
        }
        if (!engine) {
            // No ring to sleep in: wait for a wake-up until the next ring is due.
            if (block) {
                const uint64_t now = liveio::raw_monotonic_ns();
                const uint64_t wait = restarts_left == 0
                                          ? kMaxRingBackoffNs
                                          : (retry_at_ns > now ? retry_at_ns - now : 0);
                timespec ts{static_cast<time_t>(wait / 1000000000ull),
                            static_cast<long>(wait % 1000000000ull)};
                waker_.wait(wake_seen, ts);
            }
            sleeping_.store(false, std::memory_order_relaxed);
            continue;
        }
        const size_t n = engine->reap(done, block ? 1 : 0);
        sleeping_.store(false, std::memory_order_relaxed);
        for (size_t i = 0; i < n; ++i) {
            const uring::Completion& c = done[i];
            if (c.tag == kEventTag) {
                event_armed = false;
                continue;
            }
            const auto index = static_cast<unsigned>(c.tag & (kCheckTag - 1));
            Slot& s = slots[index];
            int32_t res = c.res;
            if (c.tag & kCheckTag) {
                if (res == 0) {  // a regular file: now the read
                    res = engine->prepare(
                        s.fill.empty()
                            ? uring::Op::read(static_cast<int>(index), s.buffer, s.read_len,
                                              static_cast<int64_t>(s.read_start))
                                  .fixed()
                            : uring::Op::readv(static_cast<int>(index), s.fill.data(),
                                               static_cast<unsigned>(s.fill.size()),
                                               static_cast<int64_t>(s.read_start))
                                  .fixed(),
                        index);
                    s.read_queued = res == 0;
                    if (s.read_queued) continue;
                } else if (res == -ESPIPE) {
                    // The descriptor named no regular file by the time the slot took it: no
                    // I/O was done. Not an error of the policy's.
                    ++local_completed;
                    ++not_regular;
                    sink_.dropped(s.action);
                    release(index);
                    continue;
                }
            }
            ++local_completed;
            const uint64_t latency = liveio::raw_monotonic_ns() - s.start_ns;
            // The action's bytes: past the alignment head, at most its length.
            size_t got = 0;
            if (s.buffer != nullptr && res > 0 && static_cast<uint64_t>(res) > s.skip)
                got = std::min<uint64_t>(static_cast<uint64_t>(res) - s.skip, s.action.len);
            // A fill reports like the advice it replaces: 0 once the range is read (a short
            // count is the file's end).
            if (res >= 0) res = s.fill.empty() ? static_cast<int32_t>(got) : 0;
            sink_.completed(s.action, s.file_id, res, std::span<const char>(s.buffer + s.skip, got),
                            latency);
            // Completed with the ring's hard error, the read may still be in the kernel (the
            // engine reports every op it holds once the ring fails, submitted or not): its
            // buffer is never freed, as the kernel may yet write into it.
            if (s.read_queued && engine->hard_error() != 0 && res == engine->hard_error()) {
                quarantined_bytes += s.bytes;
                s.buffer = nullptr;
                if (!s.fill.empty()) (void)fill_scratch.release();  // the same: never freed
            }
            release(index);
        }
    }
    // The wake-up wait is still armed: complete it so the ring closes with nothing pending.
    if (engine && event_armed) {
        wake();
        while (engine->inflight() > 0) engine->reap(done, 1);
    }
    std::lock_guard lock(mu_);
    barrier_done_ = barrier_asked_.load();
    cv_.notify_all();
}

}  // namespace liveio::policy
