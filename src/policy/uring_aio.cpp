// Linux AIO translated to io_uring: see uring_aio.h for the rules this file implements.
#include "policy/uring_aio.h"

#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <climits>
#include <ctime>
#include <deque>
#include <vector>

#include "base/raw_syscall.h"
#include "hook/dispatcher.h"
#include "hook/world_stop.h"
#include "uring/engine.h"

namespace liveio::policy {

namespace {

constexpr uint64_t kWakeTag = ~uint64_t{0};
constexpr uint64_t kMaxRwCount = INT_MAX & ~4095ull;
// Highest user-space address on x86-64 (TASK_SIZE_MAX with 4-level page tables): a buffer
// beyond it fails access_ok() at submission natively, but only at completion in io_uring.
constexpr uint64_t kUserTop = (uint64_t{1} << 47) - 4096;
// A mixed context (native ops too) waits for its own events in slices, polling the kernel's
// ring between them: from 1 ms, doubling while nothing arrives, up to 64 ms.
constexpr int64_t kMinSliceNs = 1000000;
constexpr int64_t kMaxSliceNs = 64000000;
// The kernel's AIO ring header, mapped at the context id (fs/aio.c struct aio_ring).
struct KernelAioRing {
    unsigned id, nr, head, tail, magic;
};
constexpr unsigned kAioRingMagic = 0xa10a10a1;

int64_t mono_ns() {
    timespec ts{};
    raw_syscall(SYS_clock_gettime, CLOCK_MONOTONIC, reinterpret_cast<long>(&ts));
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Copies between our own address space and user pointers the target handed in, without
// faulting on a bad one (process_vm_* reports it instead).
bool read_user(void* dst, long src, size_t len) {
    if (len == 0) return true;
    iovec local{dst, len};
    iovec remote{reinterpret_cast<void*>(src), len};
    return raw_syscall(SYS_process_vm_readv, raw_syscall(SYS_getpid),
                       reinterpret_cast<long>(&local), 1, reinterpret_cast<long>(&remote), 1,
                       0) == static_cast<long>(len);
}

bool write_user(long dst, const void* src, size_t len) {
    if (len == 0) return true;
    iovec local{const_cast<void*>(src), len};
    iovec remote{reinterpret_cast<void*>(dst), len};
    return raw_syscall(SYS_process_vm_writev, raw_syscall(SYS_getpid),
                       reinterpret_cast<long>(&local), 1, reinterpret_cast<long>(&remote), 1,
                       0) == static_cast<long>(len);
}

long futex(std::atomic<uint32_t>* word, int op, uint32_t value, const timespec* ts = nullptr,
           uint32_t mask = 0) {
    return raw_syscall(SYS_futex, reinterpret_cast<long>(word), op, value,
                       reinterpret_cast<long>(ts), 0, mask);
}

void wake_all(std::atomic<uint32_t>* word) { futex(word, FUTEX_WAKE_PRIVATE, INT_MAX); }

// Waits while *word == value, uninterruptibly for the caller (a handled signal's EINTR is
// retried): for waits that natively happen inside a non-interruptible kernel path.
void wait_while(std::atomic<uint32_t>& word, uint32_t value) {
    while (word.load(std::memory_order_acquire) == value) futex(&word, FUTEX_WAIT_PRIVATE, value);
}

// Waits while *word == value until CLOCK_MONOTONIC `deadline_ns` (< 0: none). -EINTR when a
// handled signal ended the wait (an absolute timeout makes the kernel return
// -ERESTART_RESTARTBLOCK, i.e. EINTR after any handler, as io_getevents), else 0.
long wait_until(std::atomic<uint32_t>& word, uint32_t value, int64_t deadline_ns) {
    // Without a deadline: ten years, still an absolute timeout for the signal semantics.
    const int64_t at = deadline_ns >= 0 ? deadline_ns : mono_ns() + int64_t{315360000} * 1000000000;
    timespec ts{static_cast<time_t>(at / 1000000000), static_cast<long>(at % 1000000000)};
    long r = futex(&word, FUTEX_WAIT_BITSET_PRIVATE, value, &ts, FUTEX_BITSET_MATCH_ANY);
    return r == -EINTR ? -EINTR : 0;
}

}  // namespace

struct AioBridge::Context {
    uint64_t id = 0;
    long nr_events = 0;  // as given to io_setup
    std::mutex mu;
    std::deque<io_event> done;    // completed, not yet taken by the target
    long pending = 0;             // submitted to io_uring (or about to be), not completed
    long native_outstanding = 0;  // native ops submitted on this context, not yet taken
    // Adopted: created before the policy was on, so native ops submitted before may still
    // complete: its waits always poll the kernel's ring too.
    bool adopted = false;
    std::atomic<uint32_t> seq{0};  // futex word: bumped at every completion
};

struct AioBridge::Request {
    struct Item {
        uring::Op op;
        io_event event{};   // data and obj; res at completion
        bool wait = false;  // buffered: io_submit returns after it completed
    };
    std::shared_ptr<Context> ctx;
    std::vector<Item> items;
    std::atomic<uint32_t> state{0};    // 0 queued, 1 submitted, 2 refused
    std::atomic<uint32_t> waiting{0};  // buffered items not completed yet
    Request* next = nullptr;
};

bool AioBridge::is_aio_call(long nr) {
    return nr == SYS_io_setup || nr == SYS_io_submit || nr == SYS_io_getevents ||
           nr == SYS_io_pgetevents || nr == SYS_io_destroy;
}

AioBridge::AioBridge() {
    long page =
        raw_syscall(SYS_mmap, 0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page < 0 && page > -4096) return;
    if (raw_syscall(SYS_madvise, page, 4096, MADV_WIPEONFORK) != 0) {
        raw_syscall(SYS_munmap, page, 4096);
        return;
    }
    fork_guard_ = reinterpret_cast<volatile uint64_t*>(page);
    *fork_guard_ = 1;
}

AioBridge::~AioBridge() {
    // In-flight ops complete first (their buffers are the target's); undelivered events of a
    // bridge destroyed without drain() are lost (see "Switching off").
    stop_.store(true, std::memory_order_seq_cst);
    if (thread_.joinable()) {
        waker_.wake();
        thread_.join();
    }
    if (fork_guard_ != nullptr) raw_syscall(SYS_munmap, reinterpret_cast<long>(fork_guard_), 4096);
}

std::shared_ptr<AioBridge::Context> AioBridge::find(uint64_t id) {
    std::lock_guard lock(mu_);
    auto it = contexts_.find(id);
    return it == contexts_.end() ? nullptr : it->second;
}

bool AioBridge::execute(const hook::SyscallCall& call, hook::SyscallResult& result,
                        FallbackReason& why) {
    why = FallbackReason::AioUntracked;
    if (fork_guard_ == nullptr || *fork_guard_ == 0 || !is_aio_call(call.nr)) return false;
    if (call.nr == SYS_io_setup) {
        bool taken = false;
        result = setup(call, taken);
        return taken;
    }
    const uint64_t id = static_cast<uint64_t>(call.args[0]);
    std::shared_ptr<Context> ctx = find(id);
    if (!ctx && call.nr == SYS_io_submit) ctx = adopt(id);
    if (!ctx || closing_.load(std::memory_order_seq_cst)) return false;
    bool taken = true;
    switch (call.nr) {
        case SYS_io_submit: result = submit(*ctx, call, taken, why); break;
        case SYS_io_getevents: result = getevents(*ctx, call, false, taken); break;
        case SYS_io_pgetevents: result = getevents(*ctx, call, true, taken); break;
        case SYS_io_destroy: result = destroy(ctx, id); break;
        default: return false;
    }
    if (taken && (call.nr == SYS_io_getevents || call.nr == SYS_io_pgetevents))
        stat_getevents_.fetch_add(1, std::memory_order_relaxed);
    return taken;
}

// A context created before the bridge ran (ClickHouse keeps one for the process), seen at an
// io_submit: tracked from now on, its earlier native ops unknown (Context::adopted). Its
// capacity is read from the kernel's ring header: the ring holds at least twice the io_setup
// size, so half of it is within what the kernel accepts.
std::shared_ptr<AioBridge::Context> AioBridge::adopt(uint64_t id) {
    if (draining_.load(std::memory_order_acquire) || !start_thread()) return nullptr;
    KernelAioRing ring{};
    if (!read_user(&ring, static_cast<long>(id), sizeof ring) || ring.magic != kAioRingMagic ||
        ring.nr < 2)
        return nullptr;
    auto ctx = std::make_shared<Context>();
    ctx->id = id;
    ctx->nr_events = ring.nr / 2;
    ctx->adopted = true;
    std::lock_guard lock(mu_);
    if (draining_.load(std::memory_order_acquire)) return nullptr;
    auto [it, fresh] = contexts_.emplace(id, ctx);
    if (fresh) stat_adopted_.fetch_add(1, std::memory_order_relaxed);
    return it->second;
}

long AioBridge::setup(const hook::SyscallCall& call, bool& taken) {
    if (draining_.load(std::memory_order_acquire) || !start_thread()) return 0;
    const long r = raw_syscall(SYS_io_setup, call.args[0], call.args[1]);
    taken = true;
    aio_context_t id = 0;
    if (r != 0 || !read_user(&id, call.args[1], sizeof id)) return r;
    auto ctx = std::make_shared<Context>();
    ctx->id = id;
    ctx->nr_events = static_cast<unsigned>(call.args[0]);
    std::lock_guard lock(mu_);
    if (draining_.load(std::memory_order_acquire)) return r;  // stays native: nothing of ours in it
    contexts_[id] = std::move(ctx);
    stat_tracked_.fetch_add(1, std::memory_order_relaxed);
    return r;
}

bool AioBridge::start_thread() {
    std::lock_guard lock(mu_);
    if (thread_failed_.load(std::memory_order_relaxed)) return false;
    if (thread_.joinable()) return true;
    // The thread takes no signal meant for the target (the world-stop and fault signals stay).
    sigset_t all, old;
    sigfillset(&all);
    for (int s : {hook::world_stop_signal(), SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP})
        sigdelset(&all, s);
    raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&all),
                reinterpret_cast<long>(&old), 8);
    std::atomic<uint32_t> ready{0};
    try {
        thread_ = std::thread([this, &ready] {
            hook::Dispatcher::ScopedInside inside;
            raw_syscall(SYS_prctl, PR_SET_NAME, reinterpret_cast<long>("liveio-aio"));
            // Created, used and destroyed on this thread: no descriptor number needed.
            auto engine = uring::Engine::create(
                {.sq_entries = ring_entries_, .ring_fd = uring::RingFd::Unnumbered});
            // Target threads wake this one (ring_waker.h: a futex where the ring can wait on
            // one, so nothing the target closes can leave an io_submit waiting for us).
            const bool ok = engine.ok() && (*engine)->backend() == uring::BackendKind::Uring &&
                            waker_.init(**engine) == 0;
            if (!ok) thread_failed_.store(true);
            ready.store(ok ? 1 : 2, std::memory_order_release);
            wake_all(&ready);
            if (ok) run(**engine);
        });
    } catch (...) {
        thread_failed_.store(true);
    }
    raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&old), 0, 8);
    if (thread_failed_.load()) {
        if (thread_.joinable()) thread_.join();
        return false;
    }
    wait_while(ready, 0);
    if (ready.load() != 1) {
        thread_.join();
        return false;
    }
    return true;
}

void AioBridge::enqueue(Request* request) {
    {
        std::lock_guard lock(mu_);
        request->next = queue_head_;
        queue_head_ = request;
    }
    waker_.wake();
}

// The liveio-aio thread: submits queued requests, reaps completions into their contexts.
void AioBridge::run(uring::Engine& engine) {
    struct Slot {
        std::shared_ptr<Context> ctx;
        io_event event{};
        Request* waiter = nullptr;  // buffered item: its request waits for the completion
    };
    std::vector<Slot> slots(ring_entries_);
    std::vector<unsigned> free_slots;
    for (unsigned i = ring_entries_; i-- > 0;) free_slots.push_back(i);
    bool wake_armed = false;
    std::vector<uring::Completion> done(ring_entries_ + 1);
    for (;;) {
        if (!wake_armed && engine.prepare(waker_.armed_op(), kWakeTag) == 0) wake_armed = true;
        Request* list;
        {
            std::lock_guard lock(mu_);
            list = queue_head_;
            queue_head_ = nullptr;
        }
        std::vector<Request*> fifo;
        for (; list != nullptr; list = list->next) fifo.insert(fifo.begin(), list);
        std::vector<Request*> accepted;
        for (Request* req : fifo) {
            if (free_slots.size() < req->items.size() || engine.hard_error() != 0) {
                req->state.store(2, std::memory_order_release);
                wake_all(&req->state);
                continue;
            }
            for (Request::Item& item : req->items) {
                const unsigned index = free_slots.back();
                free_slots.pop_back();
                slots[index] = Slot{req->ctx, item.event, item.wait ? req : nullptr};
                engine.prepare(item.op, index);
            }
            accepted.push_back(req);
        }
        if (!accepted.empty()) engine.submit();
        // The kernel has taken the ops (and referenced their files): the callers may return.
        for (Request* req : accepted) {
            req->state.store(1, std::memory_order_release);
            wake_all(&req->state);
        }
        if (stop_.load(std::memory_order_acquire) && free_slots.size() == ring_entries_) break;
        const size_t n = engine.reap(done, 1);
        for (size_t i = 0; i < n; ++i) {
            if (done[i].tag == kWakeTag) {
                wake_armed = false;
                continue;
            }
            Slot& s = slots[done[i].tag];
            s.event.res = done[i].res;
            s.event.res2 = 0;
            {
                std::lock_guard lock(s.ctx->mu);
                --s.ctx->pending;
                s.ctx->done.push_back(s.event);
            }
            s.ctx->seq.fetch_add(1, std::memory_order_release);
            wake_all(&s.ctx->seq);
            if (s.waiter != nullptr &&
                s.waiter->waiting.fetch_sub(1, std::memory_order_acq_rel) == 1)
                wake_all(&s.waiter->waiting);
            s = Slot{};
            free_slots.push_back(static_cast<unsigned>(done[i].tag));
        }
        if (n == 0 && engine.hard_error() != 0 && free_slots.size() == ring_entries_ &&
            stop_.load())
            break;
    }
    // The armed wake-up wait completes when the ring is destroyed with the engine.
}

long AioBridge::submit(Context& ctx, const hook::SyscallCall& call, bool& taken,
                       FallbackReason& why) {
    const long nr = call.args[1];
    const long iocbpp = call.args[2];
    auto native = [&] {
        const long r = raw_syscall(SYS_io_submit, call.args[0], nr, iocbpp);
        if (r > 0) {
            std::lock_guard lock(ctx.mu);
            ctx.native_outstanding += r;
        }
        stat_native_submits_.fetch_add(1, std::memory_order_relaxed);
        why = FallbackReason::AioIocb;
        taken = true;  // performed natively here, so that the context's native count is known
        return r;
    };
    if (nr <= 0 || nr > ctx.nr_events || draining_.load(std::memory_order_acquire)) return native();
    Request req;
    req.items.resize(static_cast<size_t>(nr));
    std::vector<long> ptrs(static_cast<size_t>(nr));
    if (!read_user(ptrs.data(), iocbpp, sizeof(long) * ptrs.size())) return native();
    rlimit64 fsize{RLIM_INFINITY, RLIM_INFINITY};
    bool fsize_known = false;
    long waiting = 0;
    for (long i = 0; i < nr; ++i) {
        iocb cb{};
        if (!read_user(&cb, ptrs[i], sizeof cb)) return native();
        if (cb.aio_reserved2 != 0 || cb.aio_flags != 0 || cb.aio_rw_flags != 0) return native();
        const int fd = static_cast<int>(cb.aio_fildes);
        const long fl = raw_syscall(SYS_fcntl, fd, F_GETFL);
        struct stat st {};
        if (fl < 0 || (fl & O_PATH) ||
            raw_syscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0 || !S_ISREG(st.st_mode))
            return native();
        const int acc = static_cast<int>(fl & O_ACCMODE);
        Request::Item& item = req.items[static_cast<size_t>(i)];
        item.event.data = cb.aio_data;
        item.event.obj = static_cast<uint64_t>(ptrs[i]);
        item.wait = (fl & O_DIRECT) == 0;
        switch (cb.aio_lio_opcode) {
            case IOCB_CMD_PREAD:
            case IOCB_CMD_PWRITE: {
                const bool write = cb.aio_lio_opcode == IOCB_CMD_PWRITE;
                if (write ? acc == O_RDONLY : acc == O_WRONLY) return native();
                if (cb.aio_nbytes > kMaxRwCount || cb.aio_offset < 0 ||
                    static_cast<uint64_t>(cb.aio_offset) >
                        static_cast<uint64_t>(LLONG_MAX) - cb.aio_nbytes ||
                    cb.aio_buf > kUserTop || cb.aio_nbytes > kUserTop - cb.aio_buf)
                    return native();
                if (write) {
                    // Past RLIMIT_FSIZE the kernel signals SIGXFSZ to the writing thread: the
                    // target's natively, the liveio-aio thread's here.
                    if (!fsize_known) {
                        raw_syscall(SYS_prlimit64, 0, RLIMIT_FSIZE, 0,
                                    reinterpret_cast<long>(&fsize));
                        fsize_known = true;
                    }
                    if (fsize.rlim_cur != RLIM_INFINITY) return native();
                }
                void* buf = reinterpret_cast<void*>(cb.aio_buf);
                const auto len = static_cast<uint32_t>(cb.aio_nbytes);
                item.op = write ? uring::Op::write(fd, buf, len, cb.aio_offset)
                                : uring::Op::read(fd, buf, len, cb.aio_offset);
                break;
            }
            case IOCB_CMD_FSYNC:
            case IOCB_CMD_FDSYNC:
                if (cb.aio_buf != 0 || cb.aio_offset != 0 || cb.aio_nbytes != 0) return native();
                item.op = cb.aio_lio_opcode == IOCB_CMD_FSYNC ? uring::Op::fsync(fd)
                                                              : uring::Op::fdatasync(fd);
                break;
            default: return native();
        }
        waiting += item.wait ? 1 : 0;
    }
    // The kernel writes aio_key = KIOCB_KEY (0) into every iocb it accepts.
    const uint32_t key = 0;
    for (long i = 0; i < nr; ++i)
        if (!write_user(ptrs[i] + static_cast<long>(offsetof(iocb, aio_key)), &key, sizeof key))
            return native();
    {
        std::lock_guard lock(ctx.mu);
        const long in_use =
            ctx.pending + static_cast<long>(ctx.done.size()) + ctx.native_outstanding;
        if (in_use + nr > ctx.nr_events) {
            // The kernel's own limit is at least nr_events: whether it would refuse is its call.
            return native();
        }
        ctx.pending += nr;
    }
    req.ctx = find(ctx.id);
    if (!req.ctx) {  // destroyed meanwhile
        std::lock_guard lock(ctx.mu);
        ctx.pending -= nr;
        return native();
    }
    outstanding_.fetch_add(static_cast<uint32_t>(nr), std::memory_order_acq_rel);
    req.waiting.store(static_cast<uint32_t>(waiting), std::memory_order_relaxed);
    enqueue(&req);
    wait_while(req.state, 0);
    if (req.state.load(std::memory_order_acquire) == 2) {
        {
            std::lock_guard lock(ctx.mu);
            ctx.pending -= nr;
        }
        outstanding_.fetch_sub(static_cast<uint32_t>(nr), std::memory_order_acq_rel);
        ctx.seq.fetch_add(1, std::memory_order_release);
        wake_all(&ctx.seq);
        return native();
    }
    // Native AIO on a buffered file performs the I/O inside io_submit.
    for (uint32_t w; (w = req.waiting.load(std::memory_order_acquire)) != 0;)
        wait_while(req.waiting, w);
    stat_submits_.fetch_add(1, std::memory_order_relaxed);
    stat_ops_.fetch_add(static_cast<uint64_t>(nr), std::memory_order_relaxed);
    taken = true;
    return nr;
}

long AioBridge::getevents(Context& ctx, const hook::SyscallCall& call, bool with_sigmask,
                          bool& taken) {
    const long min_nr = call.args[1];
    const long nr = call.args[2];
    const long events = call.args[3];
    const long timeout = call.args[4];
    struct {
        long sigmask;
        unsigned long sigsetsize;
    } usig{};
    if (with_sigmask && call.args[5] != 0 && !read_user(&usig, call.args[5], sizeof usig))
        return -EFAULT;
    timespec ts{};
    if (timeout != 0 && !read_user(&ts, timeout, sizeof ts)) return -EFAULT;
    sigset_t mask{}, old{};
    const bool masked = with_sigmask && usig.sigmask != 0;
    if (masked) {
        if (usig.sigsetsize != 8) return -EINVAL;
        if (!read_user(&mask, usig.sigmask, 8)) return -EFAULT;
    }
    if (min_nr < 0 || nr < min_nr) return -EINVAL;
    int64_t deadline = -1;  // none
    bool once = false;
    if (timeout != 0) {
        const int64_t ns = ts.tv_sec > INT64_MAX / 1000000000 - 1
                               ? INT64_MAX / 2
                               : static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
        if (ns <= 0)
            once = true;
        else
            deadline = mono_ns() + ns;
    }
    if (masked)
        raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&mask),
                    reinterpret_cast<long>(&old), 8);
    long count = 0;
    long count_before = 0;
    int64_t slice = kMinSliceNs;
    long result = 0;
    std::vector<io_event> batch;
    for (;;) {
        const uint32_t seen = ctx.seq.load(std::memory_order_acquire);
        long pending, native_out;
        {
            std::lock_guard lock(ctx.mu);
            if (closing_.load(std::memory_order_seq_cst) && count == 0 && ctx.pending == 0 &&
                ctx.done.empty()) {
                taken = false;  // only native ops can complete: the caller runs the call natively
                break;
            }
            const size_t take = std::min<size_t>(ctx.done.size(), static_cast<size_t>(nr - count));
            batch.assign(ctx.done.begin(), ctx.done.begin() + static_cast<long>(take));
            ctx.done.erase(ctx.done.begin(), ctx.done.begin() + static_cast<long>(take));
            pending = ctx.pending;
            native_out = ctx.native_outstanding + (ctx.adopted ? 1 : 0);
        }
        if (!batch.empty()) {
            const long at = events + count * static_cast<long>(sizeof(io_event));
            if (!write_user(at, batch.data(), batch.size() * sizeof(io_event))) {
                std::lock_guard lock(ctx.mu);
                ctx.done.insert(ctx.done.begin(), batch.begin(), batch.end());
                result = count > 0 ? count : -EFAULT;
                break;
            }
            count += static_cast<long>(batch.size());
            outstanding_.fetch_sub(static_cast<uint32_t>(batch.size()), std::memory_order_acq_rel);
            stat_events_.fetch_add(batch.size(), std::memory_order_relaxed);
        }
        if (native_out > 0 && count < nr) {
            timespec zero{0, 0};
            const long r = raw_syscall(SYS_io_getevents, ctx.id, 0, nr - count,
                                       events + count * static_cast<long>(sizeof(io_event)),
                                       reinterpret_cast<long>(&zero));
            if (r > 0) {
                std::lock_guard lock(ctx.mu);
                ctx.native_outstanding =
                    std::max(0l, ctx.native_outstanding - r);  // adopted: earlier ops too
                count += r;
            } else if (r < 0 && count == 0) {
                result = r;
                break;
            }
        }
        result = count;
        if (count >= min_nr || once) break;
        const int64_t now = mono_ns();
        if (deadline >= 0 && now >= deadline) break;
        // Only native ops can complete, and no new op can be translated (draining): wait for
        // them in the kernel, with what is left of the timeout.
        if (pending == 0 && native_out > 0 && draining_.load(std::memory_order_acquire)) {
            timespec left{};
            if (deadline >= 0)
                left = {static_cast<time_t>((deadline - now) / 1000000000),
                        static_cast<long>((deadline - now) % 1000000000)};
            const long r = raw_syscall(SYS_io_getevents, ctx.id, min_nr - count, nr - count,
                                       events + count * static_cast<long>(sizeof(io_event)),
                                       deadline >= 0 ? reinterpret_cast<long>(&left) : 0);
            if (r > 0) {
                std::lock_guard lock(ctx.mu);
                ctx.native_outstanding = std::max(0l, ctx.native_outstanding - r);
                count += r;
                result = count;
                break;
            }
            if (r == 0) continue;  // timed out: the deadline check ends the loop
            result = count > 0 ? count : r;
            break;
        }
        if (count != count_before) slice = kMinSliceNs;
        count_before = count;
        int64_t until = deadline;
        if (native_out > 0) {
            until = deadline >= 0 ? std::min(deadline, now + slice) : now + slice;
            slice = std::min(slice * 2, kMaxSliceNs);
        }
        if (wait_until(ctx.seq, seen, until) == -EINTR) {
            // A handled signal: what is there now, or EINTR.
            std::lock_guard lock(ctx.mu);
            if (ctx.done.empty() || count >= nr) {
                result = count > 0 ? count : -EINTR;
                break;
            }
            // Events arrived together with the signal: take them (the loop's next pass), then
            // return whatever min_nr says; the signal is still pending for the caller.
            once = true;
        }
    }
    if (masked) raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&old), 0, 8);
    return result;
}

long AioBridge::destroy(const std::shared_ptr<Context>& ctx, uint64_t id) {
    {
        std::lock_guard lock(mu_);
        contexts_.erase(id);
    }
    // The kernel's io_destroy waits for the context's in-flight I/O.
    for (;;) {
        const uint32_t seen = ctx->seq.load(std::memory_order_acquire);
        {
            std::lock_guard lock(ctx->mu);
            if (ctx->pending == 0) {
                outstanding_.fetch_sub(static_cast<uint32_t>(ctx->done.size()),
                                       std::memory_order_acq_rel);
                ctx->done.clear();
                break;
            }
        }
        wait_while(ctx->seq, seen);
    }
    return raw_syscall(SYS_io_destroy, id);
}

bool AioBridge::drain(std::chrono::milliseconds timeout) {
    draining_.store(true, std::memory_order_seq_cst);
    const int64_t limit = timeout == std::chrono::milliseconds::max()
                              ? -1
                              : mono_ns() + static_cast<int64_t>(timeout.count()) * 1000000;
    while (outstanding_.load(std::memory_order_acquire) != 0) {
        if (limit >= 0 && mono_ns() >= limit) return false;
        timespec pause{0, 1000000};
        raw_syscall(SYS_nanosleep, reinterpret_cast<long>(&pause), 0);
    }
    return true;
}

void AioBridge::stop_waiting() {
    closing_.store(true, std::memory_order_seq_cst);
    std::lock_guard lock(mu_);
    for (auto& [id, ctx] : contexts_) {
        ctx->seq.fetch_add(1, std::memory_order_release);
        wake_all(&ctx->seq);
    }
}

AioStats AioBridge::stats() const {
    AioStats s;
    s.contexts_tracked = stat_tracked_.load(std::memory_order_relaxed);
    s.contexts_adopted = stat_adopted_.load(std::memory_order_relaxed);
    {
        std::lock_guard lock(mu_);
        s.contexts_live = contexts_.size();
    }
    s.submits = stat_submits_.load(std::memory_order_relaxed);
    s.ops = stat_ops_.load(std::memory_order_relaxed);
    s.events = stat_events_.load(std::memory_order_relaxed);
    s.native_submits = stat_native_submits_.load(std::memory_order_relaxed);
    s.getevents = stat_getevents_.load(std::memory_order_relaxed);
    return s;
}

}  // namespace liveio::policy
