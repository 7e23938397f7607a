// The `uring` policy's executor: see uring_redirect.h for the rules this file implements.
#include "policy/uring_redirect.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <ctime>
#include <vector>

#include "base/raw_syscall.h"
#include "policy/uring_aio.h"
#include "uring/engine.h"

namespace liveio::policy {

namespace {

constexpr uint64_t kOpTag = 1;
constexpr uint64_t kCancelTag = 2;
// Linux caps one read/write at MAX_RW_COUNT; io_uring lengths are 32-bit.
constexpr uint64_t kMaxRwCount = INT_MAX & ~4095ull;

// Registry serial numbers: the one per-process object of this file. A thread's cached slot is
// used only when its serial matches the registry it calls, so a registry created later at the
// same address never sees a slot of an earlier one.
std::atomic<uint64_t> g_next_serial{1};

struct ThreadCache {
    uint64_t serial;
    UringRedirect::Slot* slot;  // nullptr: this thread runs natively under that registry
};
__attribute__((tls_model("initial-exec"))) thread_local ThreadCache t_cache{0, nullptr};

enum class Kind : uint8_t { Read, Write, Sync, Recv, Send };

struct Plan {
    uring::Op op;
    Kind kind = Kind::Read;
    bool vectored = false;
    bool positioned = false;  // pread/pwrite/preadv/pwritev
    uint64_t bytes = 0;       // requested (non-vectored); vectored ops sum their iovecs when needed
};

void bump(std::atomic<uint64_t>& counter) {
    counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

// Decides whether `call` is redirected and builds its op; false with `why` otherwise.
bool make_plan(const hook::SyscallCall& call, const UringRedirectOptions& options, Plan& plan,
               FallbackReason& why) {
    const long* a = call.args;
    const int fd = static_cast<int>(a[0]);
    auto rw = [&](Kind kind, bool positioned, bool vectored, int64_t offset) {
        if (!positioned && !options.position_calls) {
            why = FallbackReason::Disabled;
            return false;
        }
        if (positioned && offset < 0) {  // -1 means "file position" to io_uring, EINVAL natively
            why = FallbackReason::Arguments;
            return false;
        }
        const int64_t off = positioned ? offset : -1;
        plan.kind = kind;
        plan.vectored = vectored;
        plan.positioned = positioned;
        if (vectored) {
            const long iovcnt = a[2];
            if (iovcnt <= 0 || iovcnt > IOV_MAX) {
                why = FallbackReason::Arguments;
                return false;
            }
            const auto* iov = reinterpret_cast<const iovec*>(a[1]);
            plan.op = kind == Kind::Read
                          ? uring::Op::readv(fd, iov, static_cast<unsigned>(iovcnt), off)
                          : uring::Op::writev(fd, iov, static_cast<unsigned>(iovcnt), off);
            return true;
        }
        const uint64_t len = static_cast<uint64_t>(a[2]);
        if (len > kMaxRwCount) {
            why = FallbackReason::Arguments;
            return false;
        }
        plan.bytes = len;
        void* buf = reinterpret_cast<void*>(a[1]);
        plan.op = kind == Kind::Read ? uring::Op::read(fd, buf, static_cast<uint32_t>(len), off)
                                     : uring::Op::write(fd, buf, static_cast<uint32_t>(len), off);
        return true;
    };
    switch (call.nr) {
        case SYS_read: return rw(Kind::Read, false, false, -1);
        case SYS_pread64: return rw(Kind::Read, true, false, a[3]);
        case SYS_readv: return rw(Kind::Read, false, true, -1);
        case SYS_preadv:
            return rw(Kind::Read, true, true, a[3]);  // x86-64: pos_l is the whole offset
        case SYS_write: return rw(Kind::Write, false, false, -1);
        case SYS_pwrite64: return rw(Kind::Write, true, false, a[3]);
        case SYS_writev: return rw(Kind::Write, false, true, -1);
        case SYS_pwritev: return rw(Kind::Write, true, true, a[3]);
        case SYS_preadv2:
        case SYS_pwritev2: {
            // Offset -1 is the file position (readv/writev); flags (RWF_*) change semantics
            // (RWF_NOWAIT's EAGAIN, RWF_APPEND, RWF_HIPRI...): those run natively.
            if (a[5] != 0) {
                why = FallbackReason::Flags;
                return false;
            }
            const Kind kind = call.nr == SYS_preadv2 ? Kind::Read : Kind::Write;
            return a[3] == -1 ? rw(kind, false, true, -1) : rw(kind, true, true, a[3]);
        }
        case SYS_fsync:
        case SYS_fdatasync:
            plan.kind = Kind::Sync;
            plan.op = call.nr == SYS_fsync ? uring::Op::fsync(fd) : uring::Op::fdatasync(fd);
            return true;
        case SYS_sendto:
        case SYS_recvfrom: {
            const bool send = call.nr == SYS_sendto;
            const int flags = static_cast<int>(a[3]);
            const uint64_t len = static_cast<uint64_t>(a[2]);
            if (a[4] != 0 || len > kMaxRwCount) {  // an address, or a length io_uring cannot carry
                why = FallbackReason::Arguments;
                return false;
            }
            if (!send && (flags & MSG_WAITALL)) {
                why = FallbackReason::Flags;
                return false;
            }
            plan.kind = send ? Kind::Send : Kind::Recv;
            plan.bytes = len;
            void* buf = reinterpret_cast<void*>(a[1]);
            plan.op = send ? uring::Op::send(fd, buf, static_cast<uint32_t>(len), flags)
                           : uring::Op::recv(fd, buf, static_cast<uint32_t>(len), flags);
            return true;
        }
        case SYS_recvmsg: {
            const int flags = static_cast<int>(a[2]);
            if (flags & MSG_WAITALL) {
                why = FallbackReason::Flags;
                return false;
            }
            plan.kind = Kind::Recv;
            plan.op = uring::Op::recvmsg(fd, reinterpret_cast<msghdr*>(a[1]), flags);
            return true;
        }
        default: why = FallbackReason::NotRedirected; return false;
    }
}

// Whether a positioned call on `fd` means what it means natively: io_uring ignores the offset
// on pipes, sockets and character devices where pread(2) fails with ESPIPE.
bool positions_honoured(int fd) {
    struct stat st;
    if (raw_syscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0) return false;
    return S_ISREG(st.st_mode) || S_ISBLK(st.st_mode) || S_ISDIR(st.st_mode);
}

// Regular files and block devices: their native reads and writes sleep uninterruptibly.
bool uninterruptible(int fd) {
    struct stat st;
    if (raw_syscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0) return false;
    return S_ISREG(st.st_mode) || S_ISBLK(st.st_mode);
}

bool nonblocking(int fd) {
    long flags = raw_syscall(SYS_fcntl, fd, F_GETFL);
    return flags >= 0 && (flags & O_NONBLOCK) != 0;
}

// Whether `fd` is a socket with a receive (or send) timeout set.
bool socket_timeout(int fd, bool send) {
    timeval tv{};
    socklen_t len = sizeof(tv);
    long r = raw_syscall(SYS_getsockopt, fd, SOL_SOCKET, send ? SO_SNDTIMEO : SO_RCVTIMEO,
                         reinterpret_cast<long>(&tv), reinterpret_cast<long>(&len));
    return r == 0 && (tv.tv_sec != 0 || tv.tv_usec != 0);
}

pid_t this_tid() { return static_cast<pid_t>(raw_syscall(SYS_gettid)); }

// Errors of a completed op that the ring's own machinery can produce (io-wq refusing work,
// memory for the request, a cancelled request) or that a device reports: the op transferred
// nothing, so running the call natively gives the native result.
bool ring_may_differ(int32_t res) {
    return res == -EIO || res == -ENOMEM || res == -EAGAIN || res == -ECANCELED;
}

}  // namespace

struct alignas(64) UringRedirect::Slot {
    std::atomic<pid_t> owner{0};      // thread id; 0 = free
    std::atomic<uint32_t> inside{0};  // the owner is inside execute()
    std::atomic<bool> busy{false};    // the owner's op is in flight (re-entry guard)
    bool failed = false;              // ring creation failed: native for this registry's life
    int eventfd = -1;
    std::unique_ptr<uring::Engine> engine;
    std::vector<iovec> iov_rest;  // remainder of a vectored stream write
    // Written by the owner only (a load and a store), read by stats().
    std::atomic<uint64_t> redirected{0};
    std::atomic<uint64_t> nowait{0};
    std::atomic<uint64_t> interrupted{0};
    std::atomic<uint64_t> continuations{0};
    std::atomic<uint64_t> by_reason[static_cast<int>(FallbackReason::Count)] = {};

    void release() {
        engine.reset();
        if (eventfd >= 0) raw_syscall(SYS_close, eventfd);
        eventfd = -1;
        failed = false;
        iov_rest.clear();
        redirected = nowait = interrupted = continuations = 0;
        for (auto& c : by_reason) c = 0;
        owner.store(0, std::memory_order_release);
    }
};

namespace {

struct Cancelled {
    bool won;     // the op was cancelled before it had any effect
    int32_t res;  // its result otherwise
};

// Cancels the in-flight op and waits for it and for the cancel itself (both are prompt: a
// polled op is disarmed, queued work dropped, running work completes on its own).
Cancelled cancel_op(uring::Engine& engine) {
    int32_t op_res = -ECANCELED;
    if (engine.prepare(uring::Op::cancel(kOpTag), kCancelTag) < 0) {
        // No room for the cancel (cannot happen with one op in flight): wait for the op.
        uring::Completion c[1];
        if (engine.reap(c, 1) == 0) return {false, engine.hard_error()};
        return {false, c[0].res};
    }
    bool op_seen = false;
    bool cancel_seen = false;
    while (!op_seen || !cancel_seen) {
        uring::Completion c[2];
        size_t n = engine.submit_and_reap(c, 2);
        for (size_t i = 0; i < n; ++i) {
            if (c[i].tag == kOpTag) {
                op_seen = true;
                op_res = c[i].res;
            } else {
                cancel_seen = true;
            }
        }
        if (n == 0 && engine.hard_error() != 0) break;
    }
    // -EINTR: io-wq work interrupted by the cancel before it transferred anything.
    if (op_res == -ECANCELED || op_res == -EINTR) return {true, 0};
    return {false, op_res};
}

}  // namespace

const char* fallback_reason_name(FallbackReason reason) {
    switch (reason) {
        case FallbackReason::NotRedirected: return "not_redirected";
        case FallbackReason::Disabled: return "disabled";
        case FallbackReason::NoEngine: return "no_engine";
        case FallbackReason::Arguments: return "arguments";
        case FallbackReason::Flags: return "flags";
        case FallbackReason::Nonblocking: return "nonblocking";
        case FallbackReason::SocketTimeout: return "socket_timeout";
        case FallbackReason::Reentrant: return "reentrant";
        case FallbackReason::Forked: return "forked";
        case FallbackReason::Unseekable: return "unseekable";
        case FallbackReason::EngineError: return "engine_error";
        case FallbackReason::CompletionError: return "completion_error";
        case FallbackReason::AioUntracked: return "aio_untracked";
        case FallbackReason::AioIocb: return "aio_iocb";
        case FallbackReason::Count: break;
    }
    return "?";
}

UringRedirect::UringRedirect(const UringRedirectOptions& options) : options_(options) {}

Result<std::unique_ptr<UringRedirect>> UringRedirect::create(const UringRedirectOptions& options) {
    if (options.max_threads == 0 || options.ring_entries < 2)
        return make_error(EINVAL,
                          "uring redirect: max_threads >= 1 and ring_entries >= 2 required");
    std::unique_ptr<UringRedirect> r(new UringRedirect(options));
    r->serial_ = g_next_serial.fetch_add(1, std::memory_order_relaxed);
    r->slots_.reset(new Slot[options.max_threads]);
    long page =
        raw_syscall(SYS_mmap, 0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page < 0 && page > -4096)
        return make_error(static_cast<int>(-page),
                          "uring redirect: mmap of the fork guard page failed");
    long advised = raw_syscall(SYS_madvise, page, 4096, MADV_WIPEONFORK);
    if (advised != 0) {
        raw_syscall(SYS_munmap, page, 4096);
        return make_error(static_cast<int>(-advised),
                          "uring redirect: MADV_WIPEONFORK refused (kernel < 4.14)");
    }
    r->fork_guard_ = reinterpret_cast<volatile uint64_t*>(page);
    *r->fork_guard_ = 1;
    r->aio_ = std::make_unique<AioBridge>();
    return r;
}

UringRedirect::~UringRedirect() {
    shutdown();
    if (fork_guard_ != nullptr) raw_syscall(SYS_munmap, reinterpret_cast<long>(fork_guard_), 4096);
}

bool UringRedirect::fallback(Slot* slot, FallbackReason reason) {
    if (slot != nullptr)
        bump(slot->by_reason[static_cast<int>(reason)]);
    else
        unslotted_fallbacks_[static_cast<int>(reason)].fetch_add(1, std::memory_order_relaxed);
    return false;
}

UringRedirect::Slot* UringRedirect::this_thread_slot() {
    if (t_cache.serial == serial_) return t_cache.slot;
    Slot* slot = claim_slot();
    if (slot != nullptr || !closing_.load(std::memory_order_relaxed)) t_cache = {serial_, slot};
    return slot;
}

UringRedirect::Slot* UringRedirect::claim_slot() {
    std::lock_guard lock(mutex_);
    if (closing_.load(std::memory_order_relaxed)) return nullptr;
    // Rings of exited threads first: memory stays bounded by the live threads. Costs one
    // tgkill per owned slot, once per new thread.
    reclaim_exited_locked();
    Slot* slot = nullptr;
    for (unsigned i = 0; i < options_.max_threads && slot == nullptr; ++i)
        if (slots_[i].owner.load(std::memory_order_relaxed) == 0) slot = &slots_[i];
    if (slot == nullptr) return nullptr;
    slot->owner.store(this_tid(), std::memory_order_release);
    long efd = raw_syscall(SYS_eventfd2, 0, EFD_CLOEXEC);
    uring::Options ring;
    ring.sq_entries = options_.ring_entries;
    // COOP_TASKRUN, not SINGLE_ISSUER|DEFER_TASKRUN: with deferred task work the eventfd
    // notification of a socket completion was lost after the ring had served async file reads
    // (each later wait lasted until an unrelated wake-up, ~16 ms). Task work is queued only for
    // an op in flight, so only while the thread waits inside execute(), in a read(2) the kernel
    // restarts; shutdown() destroys rings from another thread, which needs no single issuer.
    ring.single_issuer = false;
    auto engine =
        efd >= 0
            ? uring::Engine::create(ring)
            : Result<std::unique_ptr<uring::Engine>>(make_error(static_cast<int>(-efd), "eventfd"));
    if (engine.ok() && (*engine)->backend() == uring::BackendKind::Uring &&
        (*engine)->register_eventfd(static_cast<int>(efd)).ok()) {
        slot->engine = std::move(*engine);
        slot->eventfd = static_cast<int>(efd);
        ++retired_.engines_created;
    } else {
        if (efd >= 0) raw_syscall(SYS_close, efd);
        slot->failed = true;
        ++retired_.engine_failures;
    }
    return slot;
}

size_t UringRedirect::reclaim_exited() {
    std::lock_guard lock(mutex_);
    return reclaim_exited_locked();
}

size_t UringRedirect::reclaim_exited_locked() {
    const long tgid = raw_syscall(SYS_getpid);
    size_t reclaimed = 0;
    for (unsigned i = 0; i < options_.max_threads; ++i) {
        Slot& s = slots_[i];
        pid_t owner = s.owner.load(std::memory_order_acquire);
        if (owner == 0 || s.inside.load(std::memory_order_acquire) != 0) continue;
        if (raw_syscall(SYS_tgkill, tgid, owner, 0) != -ESRCH) continue;
        // The owner is gone: nobody else ever touches this slot. Keep its counts.
        retired_.redirected += s.redirected.load(std::memory_order_relaxed);
        retired_.nowait_reads += s.nowait.load(std::memory_order_relaxed);
        retired_.interrupted += s.interrupted.load(std::memory_order_relaxed);
        retired_.write_continuations += s.continuations.load(std::memory_order_relaxed);
        for (int r = 0; r < static_cast<int>(FallbackReason::Count); ++r)
            retired_.by_reason[r] += s.by_reason[r].load(std::memory_order_relaxed);
        if (s.engine) ++retired_.engines_destroyed;
        s.release();
        ++reclaimed;
    }
    return reclaimed;
}

bool UringRedirect::drain_aio(std::chrono::milliseconds timeout) { return aio_->drain(timeout); }

void UringRedirect::shutdown() {
    closing_.store(true, std::memory_order_seq_cst);
    aio_->stop_waiting();
    { std::lock_guard wait_for_claims(mutex_); }  // a slot being claimed has its eventfd set
    // Grace period: every thread that saw closing_ == false has published inside == 1 first
    // (seq_cst on both sides), so once every slot reads 0 no thread can still use a ring.
    for (;;) {
        bool waiting = false;
        for (unsigned i = 0; i < options_.max_threads; ++i) {
            Slot& s = slots_[i];
            if (s.inside.load(std::memory_order_seq_cst) == 0) continue;
            waiting = true;
            if (s.eventfd >= 0) {  // wake a thread sleeping in a redirected call
                uint64_t one = 1;
                raw_syscall(SYS_write, s.eventfd, reinterpret_cast<long>(&one), sizeof(one));
            }
        }
        if (!waiting) break;
        timespec pause{0, 200 * 1000};
        raw_syscall(SYS_nanosleep, reinterpret_cast<long>(&pause), 0);
    }
    std::lock_guard lock(mutex_);
    for (unsigned i = 0; i < options_.max_threads; ++i) {
        Slot& s = slots_[i];
        if (!s.engine) continue;
        s.engine.reset();
        raw_syscall(SYS_close, s.eventfd);
        s.eventfd = -1;
        s.failed = true;  // never reached again: execute() checks closing_ first
        ++retired_.engines_destroyed;
    }
}

UringRedirectStats UringRedirect::stats() const {
    std::lock_guard lock(mutex_);
    UringRedirectStats st = retired_;
    st.engines_live = 0;
    for (unsigned i = 0; i < options_.max_threads; ++i) {
        const Slot& s = slots_[i];
        if (s.owner.load(std::memory_order_acquire) == 0) continue;
        if (s.engine) ++st.engines_live;
        st.redirected += s.redirected.load(std::memory_order_relaxed);
        st.nowait_reads += s.nowait.load(std::memory_order_relaxed);
        st.interrupted += s.interrupted.load(std::memory_order_relaxed);
        st.write_continuations += s.continuations.load(std::memory_order_relaxed);
        for (int r = 0; r < static_cast<int>(FallbackReason::Count); ++r)
            st.by_reason[r] += s.by_reason[r].load(std::memory_order_relaxed);
    }
    st.nowait_reads += unslotted_nowait_.load(std::memory_order_relaxed);
    for (int r = 0; r < static_cast<int>(FallbackReason::Count); ++r) {
        st.by_reason[r] += unslotted_fallbacks_[r].load(std::memory_order_relaxed);
        st.fallbacks += st.by_reason[r];
    }
    const AioStats aio = aio_->stats();
    st.aio_contexts = aio.contexts_tracked + aio.contexts_adopted;
    st.aio_submits = aio.submits;
    st.aio_ops = aio.ops;
    st.aio_events = aio.events;
    st.aio_native_submits = aio.native_submits;
    return st;
}

namespace {

// One redirected call on the calling thread's ring. Returns true with `result`, or false when
// the call must run natively (nothing was transferred) with `why`.
class CallRun {
public:
    CallRun(UringRedirect::Slot& slot, uring::Engine& engine, const Plan& plan,
            const std::atomic<bool>& closing)
        : slot_(slot), engine_(engine), plan_(plan), closing_(closing) {}

    bool run(hook::SyscallResult& result, FallbackReason& why);

private:
    enum class Wait { Done, Native, Partial };
    Wait wait_pending(int32_t& res, FallbackReason& why);
    bool continue_write(int32_t res);
    void repair_short_write_position(uint64_t written);
    bool continue_read(int32_t res);
    void advance_op(Kind kind);
    uint64_t requested() const;

    UringRedirect::Slot& slot_;
    uring::Engine& engine_;
    const Plan& plan_;
    const std::atomic<bool>& closing_;
    uring::Op op_;
    uint64_t done_ = 0;     // bytes written by earlier parts of a stream write
    bool checked_ = false;  // O_NONBLOCK / socket timeout looked at for this call
    bool stream_ = false;   // known to be a blocking pipe/socket/char device write
};

uint64_t CallRun::requested() const {
    if (!plan_.vectored) return plan_.bytes;
    uint64_t total = 0;
    const auto* iov = static_cast<const iovec*>(plan_.op.buf);
    for (uint64_t i = 0; i < plan_.op.len; ++i)
        total += iov[i].iov_len;  // read by the kernel already
    return total;
}

bool CallRun::run(hook::SyscallResult& result, FallbackReason& why) {
    op_ = plan_.op;
    for (;;) {
        if (engine_.prepare(op_, kOpTag) < 0 || engine_.hard_error() != 0) {
            if (done_ == 0) {
                why = FallbackReason::EngineError;
                return false;
            }
            result = static_cast<long>(done_);
            return true;
        }
        uring::Completion c[1];
        int32_t res;
        if (engine_.submit_and_reap(c, 0) == 1) {
            res = c[0].res;
        } else if (engine_.hard_error() != 0) {  // the submission itself failed
            uring::Completion drop[1];
            engine_.reap(drop, 1);  // the op's slot completes with the error
            if (done_ == 0) {
                why = FallbackReason::EngineError;
                return false;
            }
            result = static_cast<long>(done_);
            return true;
        } else {
            switch (wait_pending(res, why)) {
                case Wait::Done: break;
                case Wait::Native: return false;
                case Wait::Partial: result = static_cast<long>(done_); return true;
            }
        }
        if (res < 0 && done_ == 0 && ring_may_differ(res)) {
            why = FallbackReason::CompletionError;
            return false;
        }
        if (continue_write(res) || continue_read(res)) continue;
        if (res >= 0)
            result = static_cast<long>(done_ + static_cast<uint64_t>(res));
        else
            result = done_ > 0 ? static_cast<long>(done_) : res;
        if (plan_.kind == Kind::Write && !plan_.positioned && result > 0 &&
            static_cast<uint64_t>(result) < requested())
            repair_short_write_position(static_cast<uint64_t>(result));
        if (result == -EINTR) bump(slot_.interrupted);
        return true;
    }
}

// A write at the file position (offset -1) to a regular file that came back short: the kernel
// wrote the first part, retried the rest in its worker and, when that retry failed (ENOSPC,
// EFBIG, EDQUOT), completed with the bytes written but without storing the advanced position
// (io_uring only stores it for a successful last attempt), where write(2) leaves the position
// after the bytes written. Such a short write ends where the file now ends; a position that
// is `written` bytes before the end was not advanced: it is moved there. A kernel that stores
// the position leaves it at the end already, and nothing is done.
void CallRun::repair_short_write_position(uint64_t written) {
    const int fd = op_.fd;
    struct stat st;
    if (raw_syscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0 || !S_ISREG(st.st_mode))
        return;
    const long pos = raw_syscall(SYS_lseek, fd, 0, SEEK_CUR);
    if (pos < 0 || static_cast<uint64_t>(pos) + written != static_cast<uint64_t>(st.st_size))
        return;
    raw_syscall(SYS_lseek, fd, st.st_size, SEEK_SET);
}

// A short read of a regular file or block device before its end: set up the remainder and
// return true (the native read returns fewer bytes only at end of file).
bool CallRun::continue_read(int32_t res) {
    if (plan_.kind != Kind::Read || plan_.op.code == uring::OpCode::Recvmsg || res <= 0)
        return false;
    const uint64_t total = done_ + static_cast<uint64_t>(res);
    if (total >= requested() || !uninterruptible(op_.fd)) return false;
    done_ = total;
    advance_op(Kind::Read);
    bump(slot_.continuations);
    return true;
}

// op_ becomes the part of the plan's transfer after its first done_ bytes.
void CallRun::advance_op(Kind kind) {
    const int64_t offset = plan_.positioned ? plan_.op.offset + static_cast<int64_t>(done_) : -1;
    const bool read = kind == Kind::Read;
    if (plan_.vectored) {
        const auto* iov = static_cast<const iovec*>(plan_.op.buf);
        slot_.iov_rest.assign(iov, iov + plan_.op.len);
        uint64_t skip = done_;
        size_t first = 0;
        while (first < slot_.iov_rest.size() && skip >= slot_.iov_rest[first].iov_len)
            skip -= slot_.iov_rest[first++].iov_len;
        slot_.iov_rest.erase(slot_.iov_rest.begin(),
                             slot_.iov_rest.begin() + static_cast<long>(first));
        slot_.iov_rest[0].iov_base = static_cast<char*>(slot_.iov_rest[0].iov_base) + skip;
        slot_.iov_rest[0].iov_len -= skip;
        const auto n = static_cast<unsigned>(slot_.iov_rest.size());
        op_ = read ? uring::Op::readv(op_.fd, slot_.iov_rest.data(), n, offset)
                   : uring::Op::writev(op_.fd, slot_.iov_rest.data(), n, offset);
    } else {
        char* base = static_cast<char*>(plan_.op.buf) + done_;
        const auto rest = static_cast<uint32_t>(requested() - done_);
        if (kind == Kind::Send)
            op_ = uring::Op::send(op_.fd, base, rest, plan_.op.flags);
        else
            op_ = read ? uring::Op::read(op_.fd, base, rest, offset)
                       : uring::Op::write(op_.fd, base, rest, offset);
    }
}

// A write to a pipe or stream socket that came back short where write(2) would have kept
// waiting: set up the remainder and return true.
bool CallRun::continue_write(int32_t res) {
    if (plan_.kind != Kind::Write && plan_.kind != Kind::Send) return false;
    if (res <= 0) return false;
    const uint64_t total = done_ + static_cast<uint64_t>(res);
    const uint64_t want = requested();
    if (total >= want) return false;
    if (!stream_) {
        if (plan_.kind == Kind::Send && (plan_.op.flags & MSG_DONTWAIT)) return false;
        if (uninterruptible(op_.fd) || nonblocking(op_.fd)) return false;
        stream_ = true;
    }
    done_ = total;
    advance_op(plan_.kind);
    bump(slot_.continuations);
    return true;
}

// The op did not complete inside io_uring_enter: it will wait (poll-armed pipe/socket,
// async disk I/O). Decide whether waiting is what the native call would do, then wait.
CallRun::Wait CallRun::wait_pending(int32_t& res, FallbackReason& why) {
    const int fd = op_.fd;
    auto cancel_to = [&](FallbackReason reason) {
        Cancelled c = cancel_op(engine_);
        if (!c.won) {
            res = c.res;
            return Wait::Done;
        }
        if (done_ > 0) return Wait::Partial;
        why = reason;
        return Wait::Native;
    };
    if (!checked_ && plan_.kind != Kind::Sync) {
        checked_ = true;
        if (nonblocking(fd)) return cancel_to(FallbackReason::Nonblocking);
        if (socket_timeout(fd, plan_.kind == Kind::Write || plan_.kind == Kind::Send))
            return cancel_to(FallbackReason::SocketTimeout);
    }
    bool file = false, file_known = false;
    for (;;) {
        uint64_t count = 0;
        long r;
        if (done_ == 0) {
            // read(2) on the eventfd sleeps like the native call: -ERESTARTSYS, so the kernel
            // restarts it after an SA_RESTART handler and returns EINTR otherwise.
            r = raw_syscall(SYS_read, slot_.eventfd, reinterpret_cast<long>(&count), sizeof(count));
        } else {
            // A partial stream write ends at any handled signal (-ERESTARTNOHAND).
            pollfd p{slot_.eventfd, POLLIN, 0};
            r = raw_syscall(SYS_ppoll, reinterpret_cast<long>(&p), 1, 0, 0, 0);
            if (r > 0)
                raw_syscall(SYS_read, slot_.eventfd, reinterpret_cast<long>(&count), sizeof(count));
        }
        engine_.get_events();
        uring::Completion c[1];
        if (engine_.reap(c, 0) == 1) {
            res = c[0].res;
            return Wait::Done;
        }
        if (closing_.load(std::memory_order_seq_cst)) return cancel_to(FallbackReason::Disabled);
        if (r == -EINTR) {
            if (done_ == 0) {
                if (!file_known) {
                    file = uninterruptible(fd);
                    file_known = true;
                }
                if (file) continue;
            }
            Cancelled cancelled = cancel_op(engine_);
            if (!cancelled.won) {
                res = cancelled.res;
                return Wait::Done;
            }
            if (done_ > 0) return Wait::Partial;
            res = -EINTR;
            return Wait::Done;
        }
        if (r < 0 && r != -EAGAIN) {  // the eventfd is unusable: wait inside the ring instead
            while (engine_.reap(c, 1) == 0 && engine_.hard_error() == 0) {
            }
            res = engine_.hard_error() != 0 ? engine_.hard_error() : c[0].res;
            return Wait::Done;
        }
    }
}

}  // namespace

namespace {

// read/pread64 answered from the page cache only: preadv2 with RWF_NOWAIT at the call's
// offset (-1: the file position). The kernel's result: bytes (all of them, or fewer when a
// page further on is not cached or the file ends), or -errno having transferred nothing.
long read_nowait(const Plan& plan) {
    iovec iov{plan.op.buf, plan.bytes};
    const long offset = plan.positioned ? static_cast<long>(plan.op.offset) : -1;
    return raw_syscall(SYS_preadv2, plan.op.fd, reinterpret_cast<long>(&iov), 1, offset, 0,
                       RWF_NOWAIT);
}

// The rest of a read after its first `done` bytes, natively (the second half of what the
// kernel's own read loop does): the native call's total, or `done` when the rest failed.
long read_rest_natively(const Plan& plan, uint64_t done) {
    char* buf = static_cast<char*>(plan.op.buf) + done;
    const long rest = static_cast<long>(plan.bytes - done);
    const long r = plan.positioned
                       ? raw_syscall(SYS_pread64, plan.op.fd, reinterpret_cast<long>(buf), rest,
                                     static_cast<long>(plan.op.offset + static_cast<int64_t>(done)))
                       : raw_syscall(SYS_read, plan.op.fd, reinterpret_cast<long>(buf), rest);
    return static_cast<long>(done) + (r > 0 ? r : 0);
}

}  // namespace

bool UringRedirect::execute(hook::SyscallCall& call, hook::SyscallResult& result) {
    if (AioBridge::is_aio_call(call.nr)) {
        // Not subject to closing_: a context holding translated events must keep being served
        // by the bridge until drain_aio() saw them taken.
        FallbackReason why = FallbackReason::AioUntracked;
        if (aio_->execute(call, result, why)) return true;
        return fallback(nullptr, why);
    }
    Plan plan;
    FallbackReason why = FallbackReason::NotRedirected;
    if (!make_plan(call, options_, plan, why))
        return fallback(t_cache.serial == serial_ ? t_cache.slot : nullptr, why);
    if (closing_.load(std::memory_order_relaxed))
        return fallback(nullptr, FallbackReason::Disabled);
    if (*fork_guard_ == 0) return fallback(nullptr, FallbackReason::Forked);
    // A read of a regular file: the page cache first (uring_redirect.h, "Page-cache hits
    // first"), before the thread's ring is looked up: a thread whose reads all hit the page
    // cache never creates one.
    if (plan.kind == Kind::Read && !plan.vectored && options_.nowait_first &&
        regular_hint_ != nullptr && regular_hint_(regular_context_, plan.op.fd)) {
        const long r = read_nowait(plan);
        if (r >= 0) {
            // All bytes, the end of the file, or a descriptor that is no regular file (block)
            // device any more: the native result. Otherwise the rest as read(2) reads it.
            const bool whole = r == 0 || static_cast<uint64_t>(r) == plan.bytes;
            result = whole || !uninterruptible(plan.op.fd)
                         ? r
                         : read_rest_natively(plan, static_cast<uint64_t>(r));
            if (Slot* own = t_cache.serial == serial_ ? t_cache.slot : nullptr; own != nullptr)
                bump(own->nowait);
            else
                unslotted_nowait_.fetch_add(1, std::memory_order_relaxed);
            return true;
        }
    }
    Slot* slot = this_thread_slot();
    if (slot == nullptr) return fallback(nullptr, FallbackReason::NoEngine);
    if (slot->failed) return fallback(slot, FallbackReason::NoEngine);
    if (plan.positioned && !positions_honoured(plan.op.fd))
        return fallback(slot, FallbackReason::Unseekable);
    if (slot->busy.load(std::memory_order_relaxed))
        return fallback(slot, FallbackReason::Reentrant);
    slot->busy.store(true, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    slot->inside.store(1, std::memory_order_seq_cst);
    bool taken = false;
    if (!closing_.load(std::memory_order_seq_cst)) {
        CallRun run(*slot, *slot->engine, plan, closing_);
        taken = run.run(result, why);
    } else {
        why = FallbackReason::Disabled;
    }
    slot->inside.store(0, std::memory_order_release);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    slot->busy.store(false, std::memory_order_relaxed);
    if (!taken) return fallback(slot, why);
    // io_uring sends always run with MSG_NOSIGNAL: the SIGPIPE that sendto(2) sends the
    // calling thread with EPIPE is ours to send, exactly when the kernel would have.
    if (plan.kind == Kind::Send && result == -EPIPE && (plan.op.flags & MSG_NOSIGNAL) == 0)
        raw_syscall(SYS_tgkill, raw_syscall(SYS_getpid), this_tid(), SIGPIPE);
    bump(slot->redirected);
    return true;
}

}  // namespace liveio::policy
