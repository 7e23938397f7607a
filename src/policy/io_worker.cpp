#include "policy/io_worker.h"

#include <fcntl.h>
#include <linux/fadvise.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
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
// One fadvise op covers at most this much (its length is 32-bit in the SQE).
constexpr uint64_t kMaxActionBytes = uint64_t{1} << 30;

uint64_t now_ns() {
    timespec ts{};
    liveio::raw_syscall(SYS_clock_gettime, CLOCK_MONOTONIC, reinterpret_cast<long>(&ts));
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace

struct IoWorker::Slot {
    bool busy = false;
    Action action;
    uint64_t seq = 0;  // submission order, for barrier()
    uint64_t file_id = 0;
    uint64_t start_ns = 0;
    uint64_t bytes = 0;      // counted against the budget
    int own_fd = -1;         // Read: the worker's descriptor of the file
    char* buffer = nullptr;  // Read: scratch
};

Result<std::unique_ptr<IoWorker>> IoWorker::start(const Options& options, WorkerSink& sink) {
    std::unique_ptr<IoWorker> w(new IoWorker(options, sink));
    w->event_fd_ =
        static_cast<int>(liveio::raw_syscall(SYS_eventfd2, 0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (w->event_fd_ < 0)
        return make_error(static_cast<int>(-w->event_fd_),
                          "cannot create the I/O thread's eventfd");
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
    if (event_fd_ >= 0) liveio::raw_syscall(SYS_close, event_fd_);
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
    const uint64_t one = 1;
    liveio::raw_syscall(SYS_write, event_fd_, reinterpret_cast<long>(&one), sizeof one);
    wakeups_.fetch_add(1, std::memory_order_relaxed);
}

void IoWorker::barrier() {
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
    auto created = uring::Engine::create(eo);
    if (!created) {
        started->set_value(
            make_error(created.error().code, "liveio-io: " + created.error().message));
        return;
    }
    std::unique_ptr<uring::Engine> engine = std::move(created).value();
    uring_ = engine->backend() == uring::BackendKind::Uring;
    // A free registered-file table for the direct descriptors of Part actions (when the
    // kernel refuses it, their opens fail and the actions count errors).
    if (uring_) (void)engine->register_files(std::vector<int>(kDirectFileSlots, -1));
    PartPrefetcher parts;
    started->set_value(Result<void>{});

    std::vector<Slot> slots(options_.ring_entries);
    std::vector<unsigned> free_slots;
    for (unsigned i = slots.size(); i-- > 0;) free_slots.push_back(i);
    std::vector<uring::Completion> done(options_.ring_entries + 1);
    uint64_t event_value = 0;
    bool event_armed = false;
    uint64_t next_seq = 0;
    uint64_t pending_ticket = 0, pending_seq = 0;  // a barrier waiting for ops before pending_seq
    uint64_t local_stats_submitted = 0, local_completed = 0, budget_drops = 0, not_regular = 0;

    auto arm_event = [&] {
        if (event_armed) return;
        if (engine->prepare(uring::Op::read(event_fd_, &event_value, sizeof event_value),
                            kEventTag) == 0)
            event_armed = true;
    };
    auto release = [&](unsigned index) {
        Slot& s = slots[index];
        if (s.own_fd >= 0) liveio::raw_syscall(SYS_close, s.own_fd);
        std::free(s.buffer);
        in_flight_bytes_.fetch_sub(s.bytes, std::memory_order_relaxed);
        s = Slot{};
        free_slots.push_back(index);
    };
    auto drop = [&](const Action& a) { sink_.dropped(a); };
    // A Part action runs here, to its end (its ops are batches of their own on the ring).
    auto prefetch_part = [&](const Action& a) {
        const uint64_t start = now_ns();
        const uint64_t used = in_flight_bytes_.load(std::memory_order_relaxed);
        const uint64_t budget = budget_bytes_.load(std::memory_order_relaxed);
        PartPrefetchResult r;
        const int rc = parts.run(
            *engine, a.fd, budget > used ? budget - used : 0,
            [&](uint64_t file_id, uint64_t bytes) {
                Action child = a;
                child.kind = Action::Kind::Prefetch;
                child.fd = -1;
                child.offset = 0;
                child.len = bytes;
                sink_.issued(child, file_id);
            },
            r);
        if (rc < 0 || r.skipped) return drop(a);
        ++local_stats_submitted;
        ++local_completed;
        sink_.completed(a, 0, r.errors > 0 && r.files == 0 ? -EIO : r.files, {}, now_ns() - start);
    };
    // Turns an action into a submitted op, or drops it.
    auto issue = [&](Action a) {
        if (stop_.load(std::memory_order_relaxed) || !sink_.admit(a)) return drop(a);
        if (a.kind == Action::Kind::Part) return prefetch_part(a);
        if (a.len == 0 || a.offset < 0 || a.len > kMaxActionBytes ||
            (a.kind == Action::Kind::Read && a.len > (1u << 20)))
            return drop(a);
        if (in_flight_bytes_.load(std::memory_order_relaxed) + a.len >
            budget_bytes_.load(std::memory_order_relaxed)) {
            ++budget_drops;
            return drop(a);
        }
        uint64_t size = 0;
        const uint64_t file_id = regular_file_id(a.fd, &size);
        if (file_id == 0) {
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
        uring::Op op;
        if (a.kind == Action::Kind::Prefetch) {
            op = uring::Op::fadvise(a.fd, a.offset, static_cast<uint32_t>(a.len),
                                    POSIX_FADV_WILLNEED);
        } else {
            // Our own descriptor: reading through the target's would race with its reuse
            // (a socket or pipe read consumes data), and checking the file is regular first
            // keeps open() away from devices and FIFOs.
            char path[40];
            std::snprintf(path, sizeof path, "/proc/self/fd/%d", a.fd);
            const long own = liveio::raw_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path),
                                                 O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
            if (own < 0) return drop(a);
            s.own_fd = static_cast<int>(own);
            if (regular_file_id(s.own_fd) != file_id) {
                liveio::raw_syscall(SYS_close, s.own_fd);
                s = Slot{};
                ++not_regular;
                return drop(a);
            }
            s.buffer = static_cast<char*>(std::malloc(a.len));
            if (s.buffer == nullptr) {
                liveio::raw_syscall(SYS_close, s.own_fd);
                s = Slot{};
                return drop(a);
            }
            op = uring::Op::read(s.own_fd, s.buffer, static_cast<uint32_t>(a.len), a.offset);
        }
        if (engine->prepare(op, index) != 0) {
            if (s.own_fd >= 0) liveio::raw_syscall(SYS_close, s.own_fd);
            std::free(s.buffer);
            s = Slot{};
            return drop(a);
        }
        free_slots.pop_back();
        s.busy = true;
        s.seq = next_seq++;
        s.bytes = a.len;
        s.start_ns = now_ns();
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

    for (;;) {
        arm_event();
        const uint64_t asked = barrier_asked_.load(std::memory_order_acquire);
        Action a;
        // Keep one slot's worth of room: the eventfd read is always armed beside the actions.
        while (!free_slots.empty() && queue_.pop(a)) issue(a);
        const bool stopping = stop_.load(std::memory_order_acquire);
        if (stopping)
            while (queue_.pop(a)) drop(a);
        engine->submit();
        if (asked > pending_ticket) {
            pending_ticket = asked;
            pending_seq = next_seq;
        }
        {
            std::lock_guard lock(mu_);
            stats_.submitted = local_stats_submitted;
            stats_.completed = local_completed;
            stats_.budget_drops = budget_drops;
            stats_.not_regular = not_regular;
            if (pending_ticket > barrier_done_ && oldest_outstanding() >= pending_seq) {
                barrier_done_ = pending_ticket;
                cv_.notify_all();
            }
        }
        const bool actions_in_flight = free_slots.size() < slots.size();
        if (stopping && !actions_in_flight) break;
        // Sleep unless there is more to do right away.
        bool block = true;
        if (!free_slots.empty()) {
            sleeping_.store(true, std::memory_order_seq_cst);
            if (!queue_.empty() || barrier_asked_.load(std::memory_order_seq_cst) != asked ||
                stop_.load(std::memory_order_seq_cst) != stopping) {
                sleeping_.store(false, std::memory_order_relaxed);
                block = false;
            }
        }
        const size_t n = engine->reap(done, block ? 1 : 0);
        sleeping_.store(false, std::memory_order_relaxed);
        for (size_t i = 0; i < n; ++i) {
            const uring::Completion& c = done[i];
            if (c.tag == kEventTag) {
                event_armed = false;
                continue;
            }
            const auto index = static_cast<unsigned>(c.tag);
            Slot& s = slots[index];
            ++local_completed;
            const uint64_t latency = now_ns() - s.start_ns;
            const size_t got = s.buffer != nullptr && c.res > 0 ? static_cast<size_t>(c.res) : 0;
            sink_.completed(s.action, s.file_id, c.res, std::span<const char>(s.buffer, got),
                            latency);
            release(index);
        }
    }
    // The eventfd read is still armed: complete it so the ring closes with nothing pending.
    if (event_armed) {
        const uint64_t one = 1;
        liveio::raw_syscall(SYS_write, event_fd_, reinterpret_cast<long>(&one), sizeof one);
        while (engine->inflight() > 0) engine->reap(done, 1);
    }
    std::lock_guard lock(mu_);
    barrier_done_ = barrier_asked_.load();
    cv_.notify_all();
}

}  // namespace liveio::policy
