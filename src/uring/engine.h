// liveio::uring — one small interface for file and socket I/O on io_uring, with a synchronous
// fallback backend that produces identical results with plain system calls.
//
// Model
// -----
// * An Engine owns one ring (or, in fallback mode, a queue executed with raw syscalls).
// * Threading: an Engine is NOT internally locked. The model is one Engine per thread (a ring
//   per thread): no shared submission lock, no cross-thread completion hand-off, each thread's
//   completions land in its own CQ. An Engine may be handed to another thread only while no op
//   is in flight, and only if created with Options::single_issuer = false (by default the ring
//   is bound to its creating thread, IORING_SETUP_SINGLE_ISSUER). `liveio bench uring` measures
//   this model at 1, 2 and 8 threads.
// * Ops are plain values (`Op`) built by the factory functions below. Every op completes with
//   the kernel's result: bytes transferred / new fd / 0, or -errno. Buffers, paths, iovecs,
//   msghdrs and sockaddrs are owned by the caller and must stay valid until the op completes.
// * Three ways to run ops:
//     run(op)          synchronous: submit one op and wait for *its* completion (one
//                      io_uring_enter in the common case). Completions of other async ops seen
//                      meanwhile are kept and returned by a later reap().
//     run_batch(ops)   many independent ops, one io_uring_enter (per SQ-full), results in order.
//     run_chain(ops)   ops linked with IOSQE_IO_LINK (or IOSQE_IO_HARDLINK): executed in order;
//                      with a soft link, the first op that fails (res < 0, or a short
//                      read/write) cancels the rest with -ECANCELED; ChainResult names the op.
//     prepare()+submit()+reap()   asynchronous, tagged: for queue depths > 1 (the benchmark).
// * Retries the caller never sees: EINTR/EAGAIN/EBUSY from io_uring_enter are retried (EBUSY
//   after draining the CQ); -EAGAIN completions of file reads/writes are resubmitted (bounded by
//   kMaxEagainRetries, then reported); `Op::whole()` resubmits short reads/writes/sends/recvs
//   for the remainder (the result is the total, or the error if nothing was transferred). Ops
//   inside a chain are never resubmitted: the kernel already cancelled their successors.
// * CQ overflow: by default max_inflight equals the CQ size, so the engine never has more
//   completions outstanding than the CQ holds (multishot ops aside). When the kernel does park
//   completions in its overflow list (IORING_SQ_CQ_OVERFLOW, NODROP kernels) the engine flushes
//   them (io_uring_get_events) and counts it in Stats::cq_overflow_flushes; none is lost. A
//   pre-5.5 kernel without NODROP that drops CQEs is detected via koverflow (Stats::cq_dropped).
// * Latency: by default a waiting call sleeps in io_uring_enter. Options::spin_ns makes it first
//   busy-poll (submit + reap without blocking) for that long — fio's io_uring engine effectively
//   does this, and on a virtual machine a sleep/wake-up costs more than a fast I/O.
// * Multishot: accept_multishot and recv_multishot (into provided buffer rings) are used when the
//   kernel accepts them; a kernel that answers -EINVAL gets re-armed single-shot ops instead
//   (probed by trying, recorded in Features). The fallback emulates both.
// * A hard io_uring_enter error (e.g. -EEXIST: a single-issuer ring used from a thread that did
//   not create it) completes every outstanding op with that error and the engine refuses further
//   work with it — reported, never a hang.
// * Fallback: chosen when io_uring cannot be used (io_uring_disabled sysctl, seccomp, ring
//   creation failure) or forced by Options::force_fallback or env LIVEIO_URING_FALLBACK=1.
//   File ops and connect run at submit time; recv/recvmsg/accept/send/sendmsg (and reads/writes
//   that hit -EAGAIN on an O_NONBLOCK pipe — io_uring waits for those too) wait for readiness
//   with ppoll() inside reap()/run(); timeouts expire inside reap(); cancel finds pending ops.
// * Called from inside hooked processes: all I/O uses liburing or raw syscall(2) numbers, never
//   the libc wrappers (pread, recv, ...) that liveio's interceptor may redirect to us.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "base/result.h"

struct statx;

namespace liveio::uring {

enum class OpCode : uint8_t {
    Nop,
    Read,
    Write,
    Readv,
    Writev,
    ReadFixed,   // into a registered buffer
    WriteFixed,  // from a registered buffer
    Fsync,
    Fdatasync,
    Openat,
    Close,
    Statx,
    Fadvise,
    SyncFileRange,
    Send,
    Recv,
    Sendmsg,
    Recvmsg,
    Accept,
    AcceptMultishot,  // one completion per accepted connection, Completion::more while armed
    RecvMultishot,    // one completion per received chunk, data in a provided buffer
    Connect,
    Timeout,    // completes with -ETIME after `nanoseconds`
    Cancel,     // cancels the in-flight op carrying `target_tag`: 0, -ENOENT or -EALREADY
    FutexWait,  // completes once the 32-bit word at `buf` is woken (futex FUTEX_WAKE_PRIVATE)
};

const char* op_name(OpCode code);

// One operation. Build with the factories; fields are public so tests can inspect them.
struct Op {
    OpCode code = OpCode::Nop;
    bool fixed_file = false;  // `fd` is an index into register_files()
    // Openat: into a free slot of the registered-file table (the result is the slot), not the
    // process's descriptor table; Close: `fd` is such a slot. See openat_direct().
    bool direct = false;
    bool all = false;  // resubmit short reads/writes/sends/recvs for the remainder
    int fd = -1;
    void* buf = nullptr;  // data buffer | iovec* | msghdr* | statx* | sockaddr*
    uint64_t len = 0;     // bytes | iovec count | fadvise length | socklen_t* (accept)
    int64_t offset = -1;  // file offset; -1 = the file position (read/write/readv/writev)
    int flags = 0;  // open flags | msg flags | statx flags | fadvise advice | sync_file_range flags
    uint32_t aux = 0;  // open mode | statx mask | registered buffer index
    const char* path = nullptr;
    uint64_t target_tag = 0;   // Cancel: tag of the op to cancel
    uint64_t nanoseconds = 0;  // Timeout

    Op& fixed() {
        fixed_file = true;
        return *this;
    }  // fd is a registered-file index
    Op& whole() {
        all = true;
        return *this;
    }  // "all of it": retry short transfers

    static Op nop() { return Op{}; }
    static Op read(int fd, void* buf, uint32_t len, int64_t offset = -1);
    static Op write(int fd, const void* buf, uint32_t len, int64_t offset = -1);
    static Op readv(int fd, const iovec* iov, unsigned iovcnt, int64_t offset = -1);
    static Op writev(int fd, const iovec* iov, unsigned iovcnt, int64_t offset = -1);
    static Op read_fixed(int fd, void* buf, uint32_t len, int64_t offset, unsigned buf_index);
    static Op write_fixed(int fd, const void* buf, uint32_t len, int64_t offset,
                          unsigned buf_index);
    static Op fsync(int fd);
    static Op fdatasync(int fd);
    static Op openat(int dirfd, const char* path, int flags, mode_t mode = 0);
    static Op close(int fd);
    // A descriptor that never appears in the process's table (io_uring direct descriptors,
    // Linux 5.19): the kernel opens `path` into a free slot of the table register_files()
    // set up (entries -1 are free) and completes with the slot, or -ENFILE when none is free.
    // Ops name it with .fixed(); close_direct() frees it. The fallback backend answers
    // -EOPNOTSUPP (it has no such table). O_CLOEXEC is refused (-EINVAL): no exec can see it.
    static Op openat_direct(int dirfd, const char* path, int flags, mode_t mode = 0);
    static Op close_direct(unsigned slot);
    static Op statx(int dirfd, const char* path, int flags, unsigned mask, struct ::statx* out);
    static Op fadvise(int fd, int64_t offset, uint32_t len, int advice);
    // sync_file_range(2). With nbytes 0 and flags 0 it writes and waits for nothing: it only
    // fails with -ESPIPE unless `fd` is a regular file, block device, directory or symlink,
    // which makes it a type check of a fixed-file slot. Not in front of a linked op: the
    // kernel does not fail a link when sync_file_range (or fsync, fallocate) fails; the
    // linked op runs anyway (see breaks_chain in internal.h).
    static Op sync_file_range(int fd, int64_t offset, uint32_t nbytes, unsigned flags);
    static Op send(int fd, const void* buf, uint32_t len, int msg_flags = 0);
    static Op recv(int fd, void* buf, uint32_t len, int msg_flags = 0);
    static Op sendmsg(int fd, const msghdr* msg, int msg_flags = 0);
    static Op recvmsg(int fd, msghdr* msg, int msg_flags = 0);
    static Op accept(int fd, sockaddr* addr = nullptr, socklen_t* addrlen = nullptr, int flags = 0);
    static Op accept_multishot(int fd, int flags = 0);
    // Data lands in a buffer of `group` (register_buffer_ring); Completion::buffer names it and
    // the caller hands it back with recycle_buffer(). Ends (more == false) on EOF (res 0), on an
    // error, or with -ENOBUFS when every buffer of the group is in the caller's hands.
    static Op recv_multishot(int fd, uint16_t group, int msg_flags = 0);
    static Op connect(int fd, const sockaddr* addr, socklen_t addrlen);
    static Op timeout(uint64_t nanoseconds);
    static Op cancel(uint64_t target_tag);
    // IORING_OP_FUTEX_WAIT (Linux 6.7; Features::futex): completes with 0 when another thread
    // wakes the process-private futex `word` (FUTEX_WAKE_PRIVATE), or at once with -EAGAIN
    // when *word != expected. A wake-up source that needs no descriptor. The fallback backend
    // answers -EOPNOTSUPP.
    static Op futex_wait(const uint32_t* word, uint32_t expected);
};

struct Completion {
    uint64_t tag = 0;     // the tag given to prepare()
    int32_t res = 0;      // bytes / fd / 0, or -errno
    bool more = false;    // multishot: the op stays armed and will complete again
    int32_t buffer = -1;  // recv_multishot: id of the provided buffer holding the data
};

struct ChainResult {
    std::vector<int32_t> results;  // one per op, in order
    int failed_index = -1;         // first op whose failure broke the chain, -1 if none
    int32_t failed_res = 0;        // its result (-errno, or the short byte count)
};

enum class ChainKind { Soft, Hard };  // IOSQE_IO_LINK vs IOSQE_IO_HARDLINK

// Where a ring's descriptor lives in the process's table (inside a target, that table is the
// target's: POSIX owes its open() the lowest free number).
enum class RingFd : uint8_t {
    Low,   // io_uring_setup's own number: the lowest free one, as any open()
    High,  // moved to a number >= high_fd_base() (base/high_fd.h); CLOEXEC like every ring fd
    // No number at all (IORING_SETUP_REGISTERED_FD_ONLY|NO_MMAP, Linux 6.5; ring_setup.h):
    // the ring is an index of the creating thread's registered ring table. Only that thread
    // may use it, register resources on it or destroy it (destroyed from another thread the
    // kernel keeps it until the creating thread exits). A kernel that refuses gets High
    // instead, counted in RingFdCounts::unnumbered_refused.
    Unnumbered,
};
const char* ring_fd_name(RingFd placement);

struct Options {
    unsigned sq_entries = 64;
    unsigned cq_entries = 0;    // 0: 2 * sq_entries (kernel rounds up to a power of two)
    unsigned max_inflight = 0;  // 0: cq size. Larger lets a burst overflow the CQ (tests)
    bool sqpoll = false;        // IORING_SETUP_SQPOLL: a kernel thread polls the SQ
    unsigned sqpoll_idle_ms = 1000;
    bool force_fallback = false;  // also: environment LIVEIO_URING_FALLBACK=1
    // IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN where the kernel has them (not with sqpoll):
    // fastest, but then only the thread that created the Engine may use it. Set false to be
    // allowed to hand an idle Engine to another thread.
    bool single_issuer = true;
    // Before sleeping for completions, busy-poll this long (submit + reap without blocking).
    // Trades CPU for latency: a sleep/wake-up round trip costs more than a fast device's I/O.
    // 0 = always sleep (`liveio bench uring` has a row that spins).
    uint64_t spin_ns = 0;
    RingFd ring_fd = RingFd::High;
};

enum class BackendKind { Uring, Fallback };

// io_uring_enter failing with ENOMEM is retried this many times per submission before the
// ring counts as broken (its thread then runs natively).
inline constexpr int kMaxNomemRetries = 64;

struct Stats {
    uint64_t enters = 0;                // io_uring_enter calls (submit and/or wait)
    uint64_t submit_retries = 0;        // EINTR/EAGAIN/EBUSY/ENOMEM on submit, retried
    uint64_t submit_nomem_retries = 0;  // of which ENOMEM (at most kMaxNomemRetries per submit)
    uint64_t eagain_resubmits = 0;      // -EAGAIN completions resubmitted
    uint64_t short_resubmits = 0;       // short transfers resubmitted for the remainder
    uint64_t cq_overflow_flushes =
        0;                    // drains that found completions parked in the kernel overflow list
    uint64_t cq_dropped = 0;  // completions the kernel dropped (never on NODROP kernels)
};

struct Features {
    bool nodrop = false;                 // IORING_FEAT_NODROP
    bool fast_poll = false;              // IORING_FEAT_FAST_POLL
    bool multishot_accept = false;       // learned at run time: true once the kernel accepted one
    bool multishot_recv = false;         // learned at run time, likewise
    bool futex = false;                  // IORING_OP_FUTEX_WAIT is supported
    std::vector<bool> opcode_supported;  // by kernel IORING_OP_* number (io_uring_get_probe)
};

constexpr int kMaxEagainRetries = 64;

class Engine {
public:
    // Creates an io_uring engine, or the fallback when io_uring is unusable or forced.
    // `why_fallback()` says why the fallback was chosen.
    static Result<std::unique_ptr<Engine>> create(const Options& options = {});

    virtual ~Engine() = default;
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    virtual BackendKind backend() const = 0;
    // The hard io_uring_enter error that stopped the engine (see above), or 0.
    virtual int hard_error() const = 0;
    const std::string& why_fallback() const { return why_fallback_; }
    // Where this ring's descriptor is (Options::ring_fd, or High where Unnumbered was refused)
    // and its number (-1: Unnumbered, or the fallback backend).
    virtual RingFd ring_fd_placement() const = 0;
    virtual int ring_fd() const = 0;
    virtual const Features& features() const = 0;
    const Stats& stats() const { return stats_; }

    // Fixed files/buffers. Ops with .fixed() use indexes into `fds`; *_fixed ops use indexes
    // into `buffers`. Registering again replaces the previous set.
    virtual Result<void> register_files(std::span<const int> fds) = 0;
    // A fixed-file table of `count` empty slots (io_uring_register_files_sparse), filled later
    // with register_files_update(). Replaces a previous set. The table counts against
    // RLIMIT_NOFILE (EMFILE when larger); unlike liburing, the limit is never raised: that
    // would change the process's own limit.
    virtual Result<void> register_files_sparse(unsigned count) = 0;
    // Puts the open file of descriptor fds[i] into slot offset + i, or empties the slot for
    // -1 (io_uring_register_files_update). io_uring keeps a reference to the open file
    // description itself: the descriptor may be closed or its number reused afterwards, the
    // slot still names the same file (and keeps it open) until it is updated again, and no
    // descriptor number is taken. Returns the number of slots updated, or -errno (-EBADF: a
    // descriptor that is not open, or an io_uring). The fallback backend records descriptor
    // numbers instead: its ops use whatever the number refers to when they run.
    virtual int register_files_update(unsigned offset, std::span<const int> fds) = 0;
    // The slots the kernel may pick when it allocates one itself (IORING_FILE_INDEX_ALLOC,
    // io_uring direct descriptors): [offset, offset + count) of the table; the other slots
    // stay the caller's (io_uring_register_file_alloc_range). The fallback: ENOTSUP.
    virtual Result<void> register_file_alloc_range(unsigned offset, unsigned count) = 0;
    virtual Result<void> register_buffers(std::span<const iovec> buffers) = 0;
    // Provided buffers for recv_multishot: `count` (a power of two, <= 32768) buffers of `size`
    // bytes owned by the engine, in group `group`. buffer() gives the bytes of a completion;
    // recycle_buffer() returns the buffer to the kernel once the caller is done with it.
    virtual Result<void> register_buffer_ring(uint16_t group, unsigned count, uint32_t size) = 0;
    virtual std::span<char> buffer(uint16_t group, int32_t id) = 0;
    virtual void recycle_buffer(uint16_t group, int32_t id) = 0;
    // Completion notification (io_uring_register_eventfd): the kernel adds 1 to eventfd `fd`
    // whenever it posts a completion, so a caller can sleep in read(2) on the eventfd, whose
    // signal semantics are those of an ordinary blocking call (-ERESTARTSYS: restarted under
    // SA_RESTART, EINTR otherwise), and then reap(…, 0). The caller keeps ownership of `fd`.
    // The fallback backend has no kernel completions: ENOTSUP.
    virtual Result<void> register_eventfd(int fd) = 0;
    // Runs the completion work the kernel deferred to this thread (DEFER_TASKRUN rings post
    // completions only from inside io_uring_enter) without waiting; reap(…, 0) then sees them.
    virtual void get_events() = 0;

    // Synchronous: submit and wait for this op's own completion.
    virtual int32_t run(const Op& op) = 0;
    // Independent ops, submitted together; results in order.
    virtual std::vector<int32_t> run_batch(std::span<const Op> ops) = 0;
    // Linked ops; see ChainResult.
    virtual ChainResult run_chain(std::span<const Op> ops, ChainKind kind = ChainKind::Soft) = 0;

    // Asynchronous. prepare() queues (and submits when the SQ is full); -EBUSY if max_inflight
    // ops are already in flight (reap first). submit() hands queued ops to the kernel.
    // reap() waits until at least `min_complete` completions (capped by what is in flight) and
    // returns how many were stored into `out`. submit_and_reap() does both in one enter.
    virtual int prepare(const Op& op, uint64_t tag) = 0;
    // Asynchronous chain: ops[i] tagged tags[i], linked like run_chain's (a failed op cancels
    // the rest with -ECANCELED, as far as the kernel fails links for that op: see
    // sync_file_range; each op still completes once). All or nothing:
    // -EBUSY when fewer than ops.size() ops may still be put in flight, -E2BIG when the chain
    // is longer than the SQ. The fallback runs a chain's ops one after another at submit().
    virtual int prepare_linked(std::span<const Op> ops, std::span<const uint64_t> tags,
                               ChainKind kind = ChainKind::Soft) = 0;
    virtual int submit() = 0;
    virtual size_t reap(std::span<Completion> out, unsigned min_complete) = 0;
    virtual size_t submit_and_reap(std::span<Completion> out, unsigned min_complete) = 0;
    // Async ops prepared whose final completion reap() has not returned yet.
    virtual unsigned inflight() const = 0;

protected:
    Engine() = default;
    Stats stats_;
    std::string why_fallback_;
};

// Rings created in this process since it started, by where their descriptor went.
struct RingFdCounts {
    uint64_t low = 0;
    uint64_t high = 0;
    uint64_t unnumbered = 0;
    uint64_t unnumbered_refused = 0;  // asked for Unnumbered, got High (old kernel, ENOMEM...)
    int last_refusal = 0;             // the errno of the latest refusal
};
RingFdCounts ring_fd_counts();

// True when $LIVEIO_URING_FALLBACK is "1" (tests force the fallback with it).
bool fallback_forced_by_env();

}  // namespace liveio::uring
