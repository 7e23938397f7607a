// The io_uring backend. Every in-flight op owns a slot (preallocated, index = user_data), so
// the hot path allocates nothing: prepare = pop a free slot + fill an SQE; completions are
// peeked in batches and the CQ head advanced once per batch.
#include <liburing.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <ctime>
#include <deque>

#include <fmt/format.h>

#include "base/fault_points.h"
#include "base/high_fd.h"
#include "uring/internal.h"
#include "uring/ring_setup.h"
#include "uring/sys.h"

namespace liveio::uring {
namespace {

struct AtomicRingFdCounts {
    std::atomic<uint64_t> low{0}, high{0}, unnumbered{0}, unnumbered_refused{0};
    std::atomic<int> last_refusal{0};
};
AtomicRingFdCounts g_ring_fd_counts;

}  // namespace

RingFdCounts ring_fd_counts() {
    RingFdCounts c;
    c.low = g_ring_fd_counts.low.load(std::memory_order_relaxed);
    c.high = g_ring_fd_counts.high.load(std::memory_order_relaxed);
    c.unnumbered = g_ring_fd_counts.unnumbered.load(std::memory_order_relaxed);
    c.unnumbered_refused = g_ring_fd_counts.unnumbered_refused.load(std::memory_order_relaxed);
    c.last_refusal = g_ring_fd_counts.last_refusal.load(std::memory_order_relaxed);
    return c;
}

const char* ring_fd_name(RingFd placement) {
    switch (placement) {
        case RingFd::Low: return "low";
        case RingFd::High: return "high";
        case RingFd::Unnumbered: return "unnumbered";
    }
    return "?";
}

}  // namespace liveio::uring

namespace liveio::uring::detail {
namespace {

void unmap(void* addr, size_t bytes) { sys::call(SYS_munmap, addr, bytes); }

constexpr uint64_t kNoSuchOp = ~0ull;  // user_data that never names a slot (cancel misses)
// IORING_OP_FUTEX_WAIT and its futex2 flags (Linux 6.7 uapi; newer than the build's headers).
constexpr uint8_t kOpFutexWait = 51;
constexpr int kFutex2Size32 = 0x02;
constexpr int kFutex2Private = 128;
constexpr uint64_t kFutexBitsetAny = 0xffffffffu;

struct Slot {
    Op op;
    uint64_t tag = 0;
    uint64_t done = 0;               // bytes already transferred (whole() resubmissions)
    int32_t* sync_result = nullptr;  // run/run_batch/run_chain: where the result goes
    uint32_t eagain_retries = 0;
    bool in_use = false;
    bool in_chain = false;
    bool orphaned = false;           // its result was already reported (engine broken)
    bool emulate_multishot = false;  // kernel refused multishot accept: re-arm single accepts
    int32_t injected_res = 0;  // fault injection: the op was replaced by a NOP completing with this
    __kernel_timespec ts{};
    std::vector<iovec> iov_rest;
};

class UringEngine final : public Engine {
public:
    explicit UringEngine(const Options& options) : options_(options) {}
    ~UringEngine() override {
        // A numbered ring's number may have been closed (and reused) by the process: nothing
        // is unregistered through it, and liburing's queue_exit must not close it.
        const bool numbered = placement_ != RingFd::Unnumbered;
        if (ring_ready_ && numbered && fd_identity(ring_.ring_fd) != ring_identity_) {
            ring_.ring_fd = -1;
            ring_lost_ = true;
        }
        // Another thread's index names another ring (or none) in this thread's table.
        if (ring_ready_ && !numbered && sys::call(SYS_gettid) != unnumbered_.owner_tid)
            ring_lost_ = true;
        for (auto& g : groups_) {
            if (ring_ready_ && !ring_lost_) {
                io_uring_buf_reg reg{};
                reg.bgid = g.info.group;
                reg_call(IORING_UNREGISTER_PBUF_RING, &reg, 1);
            }
            unmap(g.ring, g.ring_bytes);
        }
        if (eventfd_registered_ && !ring_lost_) reg_call(IORING_UNREGISTER_EVENTFD, nullptr, 0);
        if (!ring_ready_) return;
        if (numbered)
            io_uring_queue_exit(&ring_);
        else
            release_unnumbered(unnumbered_);
    }

    RingFd ring_fd_placement() const override { return placement_; }
    int ring_fd() const override { return placement_ == RingFd::Unnumbered ? -1 : ring_.ring_fd; }

    Result<void> init() {
        if (fault::fail_now(fault::Point::RingCreate))
            return make_error(ENOMEM, "io_uring_setup failed: injected fault ring_create");
        unsigned cq = options_.cq_entries ? options_.cq_entries : 2 * options_.sq_entries;
        // Newest flags first, then step down for older kernels (EINVAL = unknown flag):
        //  SINGLE_ISSUER|DEFER_TASKRUN (6.1): completions are processed in our io_uring_enter
        //    instead of by interrupting task work — what fio 3.33 uses; needs the one-thread model.
        //  COOP_TASKRUN|SUBMIT_ALL (5.18/5.19): no IPIs for task work; keep submitting on errors.
        const unsigned attempts[] = {
            IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
                IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
            IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
            0,
        };
        io_uring_params p{};
        int r = -EINVAL;
        // Unnumbered first where asked (each flag set), then numbered rings.
        for (const bool unnumbered : {true, false}) {
            if (unnumbered && options_.ring_fd != RingFd::Unnumbered) continue;
            for (unsigned extra : attempts) {
                if ((extra & IORING_SETUP_DEFER_TASKRUN) &&
                    (options_.sqpoll || !options_.single_issuer))
                    continue;
                p = io_uring_params{};
                p.flags = IORING_SETUP_CQSIZE | extra;
                p.cq_entries = std::max(cq, options_.sq_entries);
                if (options_.sqpoll) {
                    p.flags |= IORING_SETUP_SQPOLL;
                    p.sq_thread_idle = options_.sqpoll_idle_ms;
                }
                r = unnumbered ? setup_unnumbered(options_.sq_entries, p, ring_, unnumbered_)
                               : io_uring_queue_init_params(options_.sq_entries, &ring_, &p);
                if (r != -EINVAL) break;
            }
            if (r >= 0) {
                placement_ = unnumbered ? RingFd::Unnumbered : RingFd::Low;
                break;
            }
            if (unnumbered) {
                g_ring_fd_counts.unnumbered_refused.fetch_add(1, std::memory_order_relaxed);
                g_ring_fd_counts.last_refusal.store(-r, std::memory_order_relaxed);
            }
        }
        if (r < 0)
            return make_error(-r, fmt::format("io_uring_setup failed: {}", std::strerror(-r)));
        ring_ready_ = true;
        if (placement_ == RingFd::Low && options_.ring_fd != RingFd::Low) {
            // The number io_uring_setup took is the lowest free one, owed to the target.
            ring_.ring_fd = ring_.enter_ring_fd = move_high(ring_.ring_fd);
            placement_ = RingFd::High;
        }
        if (placement_ != RingFd::Unnumbered) ring_identity_ = fd_identity(ring_.ring_fd);
        auto& count = placement_ == RingFd::Unnumbered ? g_ring_fd_counts.unnumbered
                      : placement_ == RingFd::High     ? g_ring_fd_counts.high
                                                       : g_ring_fd_counts.low;
        count.fetch_add(1, std::memory_order_relaxed);
        features_.nodrop = p.features & IORING_FEAT_NODROP;
        features_.fast_poll = p.features & IORING_FEAT_FAST_POLL;
        {
            alignas(io_uring_probe) unsigned char
                probe_bytes[sizeof(io_uring_probe) + 256 * sizeof(io_uring_probe_op)] = {};
            auto* probe = reinterpret_cast<io_uring_probe*>(probe_bytes);
            if (reg_call(IORING_REGISTER_PROBE, probe, 256) == 0) {
                // Opcodes newer than the build's headers count too (kOpFutexWait).
                const int last = std::max<int>(IORING_OP_LAST, probe->last_op + 1);
                features_.opcode_supported.assign(static_cast<size_t>(last), false);
                for (int op = 0; op < last; ++op)
                    features_.opcode_supported[op] = io_uring_opcode_supported(probe, op);
                features_.futex = io_uring_opcode_supported(probe, kOpFutexWait);
            }
        }
        unsigned slots = options_.max_inflight ? options_.max_inflight : p.cq_entries;
        slots_.resize(slots);
        free_.reserve(slots);
        for (unsigned i = slots; i-- > 0;) free_.push_back(i);
        last_koverflow_ = *ring_.cq.koverflow;
        return {};
    }

    BackendKind backend() const override { return BackendKind::Uring; }
    int hard_error() const override { return broken_; }
    void get_events() override {
        ++stats_.enters;
        io_uring_get_events(&ring_);
    }
    const Features& features() const override { return features_; }
    unsigned inflight() const override { return async_inflight_ + ready_final_; }

    Result<void> register_files(std::span<const int> fds) override {
        if (files_registered_) reg_call(IORING_UNREGISTER_FILES, nullptr, 0);
        files_registered_ = false;
        if (fds.empty()) return {};
        int r = reg_call(IORING_REGISTER_FILES, fds.data(), static_cast<unsigned>(fds.size()));
        if (r < 0)
            return make_error(-r, fmt::format("io_uring_register_files: {}", std::strerror(-r)));
        files_registered_ = true;
        return {};
    }

    Result<void> register_files_sparse(unsigned count) override {
        if (files_registered_) reg_call(IORING_UNREGISTER_FILES, nullptr, 0);
        files_registered_ = false;
        if (count == 0) return {};
        // IORING_REGISTER_FILES2 directly: liburing's wrapper raises RLIMIT_NOFILE on EMFILE.
        io_uring_rsrc_register reg{};
        reg.flags = IORING_RSRC_REGISTER_SPARSE;
        reg.nr = count;
        const int r = reg_call(IORING_REGISTER_FILES2, &reg, sizeof reg);
        if (r < 0)
            return make_error(-r,
                              fmt::format("io_uring_register_files_sparse: {}", std::strerror(-r)));
        files_registered_ = true;
        return {};
    }

    int register_files_update(unsigned offset, std::span<const int> fds) override {
        if (fds.empty()) return 0;
        io_uring_files_update update{};
        update.offset = offset;
        update.fds = reinterpret_cast<uint64_t>(fds.data());
        return reg_call(IORING_REGISTER_FILES_UPDATE, &update, static_cast<unsigned>(fds.size()));
    }

    Result<void> register_file_alloc_range(unsigned offset, unsigned count) override {
        io_uring_file_index_range range{};
        range.off = offset;
        range.len = count;
        const int r = reg_call(IORING_REGISTER_FILE_ALLOC_RANGE, &range, 0);
        if (r < 0)
            return make_error(
                -r, fmt::format("io_uring_register_file_alloc_range: {}", std::strerror(-r)));
        return {};
    }

    Result<void> register_eventfd(int fd) override {
        if (eventfd_registered_) reg_call(IORING_UNREGISTER_EVENTFD, nullptr, 0);
        eventfd_registered_ = false;
        int r = reg_call(IORING_REGISTER_EVENTFD, &fd, 1);
        if (r < 0)
            return make_error(-r, fmt::format("io_uring_register_eventfd: {}", std::strerror(-r)));
        eventfd_registered_ = true;
        return {};
    }

    Result<void> register_buffers(std::span<const iovec> buffers) override {
        if (buffers_registered_) reg_call(IORING_UNREGISTER_BUFFERS, nullptr, 0);
        buffers_registered_ = false;
        if (buffers.empty()) return {};
        int r = reg_call(IORING_REGISTER_BUFFERS, buffers.data(),
                         static_cast<unsigned>(buffers.size()));
        if (r < 0)
            return make_error(-r, fmt::format("io_uring_register_buffers: {}", std::strerror(-r)));
        buffers_registered_ = true;
        return {};
    }

    Result<void> register_buffer_ring(uint16_t group, unsigned count, uint32_t size) override {
        if (auto r = check_buffer_ring_args(count, size); !r) return r;
        if (find_group(groups_, group) != nullptr)
            return make_error(EEXIST, fmt::format("buffer group {} already registered", group));
        Group g;
        g.ring_bytes = count * sizeof(io_uring_buf);
        // The kernel reads the ring: page-aligned memory it can pin.
        long mapped = sys::call(SYS_mmap, nullptr, g.ring_bytes, PROT_READ | PROT_WRITE,
                                MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
        if (mapped < 0 && mapped > -4096)
            return make_error(static_cast<int>(-mapped), "buffer ring: mmap failed");
        void* mem = reinterpret_cast<void*>(mapped);
        g.ring = static_cast<io_uring_buf_ring*>(mem);
        io_uring_buf_reg reg{};
        reg.ring_addr = reinterpret_cast<uint64_t>(mem);
        reg.ring_entries = count;
        reg.bgid = group;
        int r = reg_call(IORING_REGISTER_PBUF_RING, &reg, 1);
        if (r < 0) {
            unmap(mem, g.ring_bytes);
            return make_error(-r, fmt::format("io_uring_register_buf_ring: {}", std::strerror(-r)));
        }
        g.info =
            BufferGroup{group, count, size, std::vector<char>(static_cast<size_t>(count) * size)};
        io_uring_buf_ring_init(g.ring);
        for (unsigned i = 0; i < count; ++i)
            io_uring_buf_ring_add(g.ring, g.info.at(static_cast<int32_t>(i)).data(), size,
                                  static_cast<uint16_t>(i), io_uring_buf_ring_mask(count),
                                  static_cast<int>(i));
        io_uring_buf_ring_advance(g.ring, static_cast<int>(count));
        groups_.push_back(std::move(g));
        return {};
    }

    std::span<char> buffer(uint16_t group, int32_t id) override {
        auto* g = find_group(groups_, group);
        return g ? g->info.at(id) : std::span<char>{};
    }

    void recycle_buffer(uint16_t group, int32_t id) override {
        Group* g = find_group(groups_, group);
        if (g == nullptr || g->info.at(id).empty()) return;
        io_uring_buf_ring_add(g->ring, g->info.at(id).data(), g->info.size,
                              static_cast<uint16_t>(id), io_uring_buf_ring_mask(g->info.count), 0);
        io_uring_buf_ring_advance(g->ring, 1);
    }

    int prepare(const Op& op, uint64_t tag) override {
        int slot = take_slot(op, tag, nullptr, false);
        if (slot < 0) return slot;
        ++async_inflight_;
        return 0;
    }

    int prepare_linked(std::span<const Op> ops, std::span<const uint64_t> tags,
                       ChainKind kind) override {
        if (ops.size() != tags.size()) return -EINVAL;
        if (ops.empty()) return 0;
        if (broken_) return broken_;
        if (ops.size() > ring_.sq.ring_entries || ops.size() > slots_.size()) return -E2BIG;
        if (free_.size() < ops.size()) return -EBUSY;
        // The chain must reach the kernel in one submission, or the kernel ends it early.
        if (io_uring_sq_space_left(&ring_) < ops.size()) submit_with_retry(0);
        if (broken_) return broken_;
        const uint8_t link = kind == ChainKind::Soft ? IOSQE_IO_LINK : IOSQE_IO_HARDLINK;
        for (size_t i = 0; i < ops.size(); ++i) {
            take_slot(ops[i], tags[i], nullptr, true);
            if (i + 1 < ops.size()) last_sqe_->flags |= link;
            ++async_inflight_;
        }
        return 0;
    }

    int submit() override { return submit_with_retry(0); }

    size_t reap(std::span<Completion> out, unsigned min_complete) override {
        return collect(out, min_complete, false);
    }

    size_t submit_and_reap(std::span<Completion> out, unsigned min_complete) override {
        return collect(out, min_complete, true);
    }

    int32_t run(const Op& op) override {
        int32_t result = 0;
        wait_for_free_slot();
        int slot = take_slot(op, 0, &result, false);
        if (slot < 0) return slot;
        ++sync_pending_;
        wait_sync();
        return result;
    }

    std::vector<int32_t> run_batch(std::span<const Op> ops) override {
        std::vector<int32_t> results(ops.size(), 0);
        for (size_t i = 0; i < ops.size(); ++i) {
            if (free_.empty()) wait_sync();  // more ops than slots: finish what is in flight
            wait_for_free_slot();            // async ops may still hold every slot
            int slot = take_slot(ops[i], 0, &results[i], false);
            if (slot < 0) {
                results[i] = slot;
                continue;
            }
            ++sync_pending_;
        }
        wait_sync();
        return results;
    }

    ChainResult run_chain(std::span<const Op> ops, ChainKind kind) override {
        ChainResult chain;
        chain.results.assign(ops.size(), 0);
        if (ops.empty()) return chain;
        // The chain must reach the kernel in one submission, or the kernel ends it early.
        if (ops.size() > ring_.sq.ring_entries || ops.size() > slots_.size()) {
            std::fill(chain.results.begin(), chain.results.end(), -E2BIG);
            chain.failed_index = 0;
            chain.failed_res = -E2BIG;
            return chain;
        }
        while (!broken_ && free_.size() < ops.size()) wait_one_more();
        if (io_uring_sq_space_left(&ring_) < ops.size()) submit_with_retry(0);
        const uint8_t link = kind == ChainKind::Soft ? IOSQE_IO_LINK : IOSQE_IO_HARDLINK;
        for (size_t i = 0; i < ops.size(); ++i) {
            int slot = take_slot(ops[i], 0, &chain.results[i], true);
            if (slot < 0) {  // cannot happen after the checks above; keep the chain honest anyway
                chain.results[i] = slot;
                continue;
            }
            if (i + 1 < ops.size()) last_sqe_->flags |= link;
            ++sync_pending_;
        }
        wait_sync();
        for (size_t i = 0; i < ops.size(); ++i) {
            if (breaks_chain(ops[i], chain.results[i])) {
                chain.failed_index = static_cast<int>(i);
                chain.failed_res = chain.results[i];
                break;
            }
        }
        return chain;
    }

private:
    // io_uring_register on this ring, through its index when it has no descriptor number.
    int reg_call(unsigned opcode, const void* arg, unsigned nr_args) {
        return register_ring(ring_, placement_ == RingFd::Unnumbered, opcode, arg, nr_args);
    }

    // Pops a slot and fills an SQE for it. Returns the slot index or -errno.
    int take_slot(const Op& op, uint64_t tag, int32_t* sync_result, bool in_chain) {
        if (broken_) return broken_;
        if (free_.empty()) return -EBUSY;
        uint32_t index = free_.back();
        free_.pop_back();
        Slot& s = slots_[index];
        s.op = op;
        s.tag = tag;
        s.done = 0;
        s.sync_result = sync_result;
        s.eagain_retries = 0;
        s.in_use = true;
        s.in_chain = in_chain;
        s.orphaned = false;
        s.emulate_multishot = (op.code == OpCode::AcceptMultishot && multishot_refused_) ||
                              (op.code == OpCode::RecvMultishot && multishot_recv_refused_);
        queue_sqe(index);
        return static_cast<int>(index);
    }

    io_uring_sqe* get_sqe() {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        while (sqe == nullptr) {  // SQ full: hand the queued ones to the kernel first
            submit_with_retry(0);
            sqe = io_uring_get_sqe(&ring_);
        }
        return sqe;
    }

    void queue_sqe(uint32_t index) {
        Slot& s = slots_[index];
        const Op& op = s.op;
        io_uring_sqe* sqe = get_sqe();
        last_sqe_ = sqe;
        if (inject_completion_fault(sqe, s)) {
            if (op.fixed_file && s.injected_res == 0) sqe->flags |= IOSQE_FIXED_FILE;
            io_uring_sqe_set_data64(sqe, index);
            return;
        }
        switch (op.code) {
            case OpCode::Nop: io_uring_prep_nop(sqe); break;
            case OpCode::Read: io_uring_prep_read(sqe, op.fd, op.buf, op.len, op.offset); break;
            case OpCode::Write: io_uring_prep_write(sqe, op.fd, op.buf, op.len, op.offset); break;
            case OpCode::Readv:
                io_uring_prep_readv(sqe, op.fd, static_cast<const iovec*>(op.buf), op.len,
                                    op.offset);
                break;
            case OpCode::Writev:
                io_uring_prep_writev(sqe, op.fd, static_cast<const iovec*>(op.buf), op.len,
                                     op.offset);
                break;
            case OpCode::ReadFixed:
                io_uring_prep_read_fixed(sqe, op.fd, op.buf, op.len, op.offset, op.aux);
                break;
            case OpCode::WriteFixed:
                io_uring_prep_write_fixed(sqe, op.fd, op.buf, op.len, op.offset, op.aux);
                break;
            case OpCode::Fsync: io_uring_prep_fsync(sqe, op.fd, 0); break;
            case OpCode::Fdatasync: io_uring_prep_fsync(sqe, op.fd, IORING_FSYNC_DATASYNC); break;
            case OpCode::Openat:
                if (op.direct)
                    // liburing adds 1 to the index it is given; ALLOC is ~0U in the SQE
                    io_uring_prep_openat_direct(sqe, op.fd, op.path, op.flags, op.aux,
                                                IORING_FILE_INDEX_ALLOC - 1);
                else
                    io_uring_prep_openat(sqe, op.fd, op.path, op.flags, op.aux);
                break;
            case OpCode::Close:
                if (op.direct)
                    io_uring_prep_close_direct(sqe, static_cast<unsigned>(op.fd));
                else
                    io_uring_prep_close(sqe, op.fd);
                break;
            case OpCode::Statx:
                io_uring_prep_statx(sqe, op.fd, op.path, op.flags, op.aux,
                                    static_cast<struct statx*>(op.buf));
                break;
            case OpCode::Fadvise:
                io_uring_prep_fadvise(sqe, op.fd, op.offset, static_cast<off_t>(op.len), op.flags);
                break;
            case OpCode::SyncFileRange:
                io_uring_prep_sync_file_range(sqe, op.fd, static_cast<unsigned>(op.len), op.offset,
                                              op.flags);
                break;
            case OpCode::Send: io_uring_prep_send(sqe, op.fd, op.buf, op.len, op.flags); break;
            case OpCode::Recv: io_uring_prep_recv(sqe, op.fd, op.buf, op.len, op.flags); break;
            case OpCode::Sendmsg:
                io_uring_prep_sendmsg(sqe, op.fd, static_cast<const msghdr*>(op.buf), op.flags);
                break;
            case OpCode::Recvmsg:
                io_uring_prep_recvmsg(sqe, op.fd, static_cast<msghdr*>(op.buf), op.flags);
                break;
            case OpCode::Accept:
                io_uring_prep_accept(sqe, op.fd, static_cast<sockaddr*>(op.buf),
                                     reinterpret_cast<socklen_t*>(op.len), op.flags);
                break;
            case OpCode::AcceptMultishot:
                if (s.emulate_multishot)
                    io_uring_prep_accept(sqe, op.fd, nullptr, nullptr, op.flags);
                else
                    io_uring_prep_multishot_accept(sqe, op.fd, nullptr, nullptr, op.flags);
                break;
            case OpCode::RecvMultishot:
                if (s.emulate_multishot)
                    io_uring_prep_recv(sqe, op.fd, nullptr, 0, op.flags);
                else
                    io_uring_prep_recv_multishot(sqe, op.fd, nullptr, 0, op.flags);
                sqe->flags |= IOSQE_BUFFER_SELECT;
                sqe->buf_group = static_cast<uint16_t>(op.aux);
                break;
            case OpCode::Connect:
                io_uring_prep_connect(sqe, op.fd, static_cast<const sockaddr*>(op.buf),
                                      static_cast<socklen_t>(op.len));
                break;
            case OpCode::Timeout:
                s.ts.tv_sec = static_cast<int64_t>(op.nanoseconds / 1000000000ull);
                s.ts.tv_nsec = static_cast<int64_t>(op.nanoseconds % 1000000000ull);
                io_uring_prep_timeout(sqe, &s.ts, 0, 0);
                break;
            case OpCode::Cancel:
                io_uring_prep_cancel64(sqe, find_async_slot(op.target_tag), 0);
                break;
            case OpCode::FutexWait:
                // liburing 2.3 has no io_uring_prep_futex_wait: fd carries the futex2 flags,
                // off the expected value, addr3 the wake bitset.
                io_uring_prep_rw(kOpFutexWait, sqe, kFutex2Size32 | kFutex2Private, op.buf, 0,
                                 op.aux);
                sqe->addr3 = kFutexBitsetAny;
                break;
        }
        if (op.fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
        io_uring_sqe_set_data64(sqe, index);
    }

    uint64_t find_async_slot(uint64_t tag) const {
        for (size_t i = 0; i < slots_.size(); ++i) {
            const Slot& s = slots_[i];
            if (s.in_use && s.sync_result == nullptr && s.tag == tag && s.op.code != OpCode::Cancel)
                return i;
        }
        return kNoSuchOp;
    }

    // io_uring_submit(_and_wait) with the retries the caller never sees. EBUSY/EAGAIN mean the
    // kernel wants completions reaped before it takes more: drain, then let the caller's loop
    // re-evaluate (its wait may already be satisfied by what was drained).
    int submit_with_retry(unsigned wait_nr) {
        constexpr int kMaxBusyRetries = 1000;
        int busy_retries = 0, nomem_retries = 0;
        for (;;) {
            ++stats_.enters;
            int r = injected_submit_error();
            if (r == 0)
                r = wait_nr ? io_uring_submit_and_wait(&ring_, wait_nr) : io_uring_submit(&ring_);
            if (r >= 0) return r;
            if (r == -EINTR) {
                ++stats_.submit_retries;
                continue;
            }
            // ENOMEM: the kernel could not allocate what the enter needed and submitted
            // nothing; memory is often back a moment later (reclaim, a burst ending). The SQ
            // is retried a bounded number of times, yielding the CPU in between, before the
            // ring counts as broken.
            if (r == -ENOMEM && ++nomem_retries <= kMaxNomemRetries) {
                ++stats_.submit_retries;
                ++stats_.submit_nomem_retries;
                drain_cq();
                if (io_uring_sq_ready(&ring_) == 0) return 0;
                sys::call(SYS_sched_yield);
                continue;
            }
            if (r == -EAGAIN || r == -EBUSY) {
                ++stats_.submit_retries;
                drain_cq();
                // Nothing was submitted: a caller waiting for an op still in the SQ (on the
                // ring's eventfd, say) would wait forever, so the SQ is handed over again,
                // a bounded number of times, before it counts as a hard error.
                if (io_uring_sq_ready(&ring_) == 0) return 0;
                if (++busy_retries < kMaxBusyRetries) {
                    sys::call(SYS_sched_yield);
                    continue;
                }
            }
            // Anything else (-EEXIST: used from a thread that is not the ring's single issuer;
            // -EBADF/-ENXIO: ring gone) leaves SQEs the kernel never consumed. Their slots stay
            // reserved forever and every later call reports the error instead of hanging.
            broken_ = r;
            fail_sync_ops();
            return r;
        }
    }

    static bool regular_file(int fd) {
        struct stat st;
        return sys::call(SYS_fstat, fd, &st) == 0 && S_ISREG(st.st_mode);
    }

    // Fault injection: the error an armed submission fault makes io_uring_enter return before
    // it submits anything, or 0.
    static int injected_submit_error() {
        if (fault::fail_now(fault::Point::SubmitEagain)) return -EAGAIN;
        if (fault::fail_now(fault::Point::SubmitEbusy)) return -EBUSY;
        if (fault::fail_now(fault::Point::SubmitEintr)) return -EINTR;
        if (fault::fail_now(fault::Point::SubmitEnomem)) return -ENOMEM;
        return 0;
    }

    // Fault injection at queueing: a read/write that fails without transferring anything
    // (a NOP stands in for it and its completion carries the error), or a read of a regular
    // file submitted for half its length, which the kernel really answers with a short count
    // (on a pipe or socket a short count is a different, not a failed, answer). True when the
    // SQE was prepared here.
    bool inject_completion_fault(io_uring_sqe* sqe, Slot& s) {
        const Op& op = s.op;
        s.injected_res = 0;
        if (!detail::is_transfer(op.code)) return false;
        if (fault::fail_now(fault::Point::CompleteEio))
            s.injected_res = -EIO;
        else if (fault::fail_now(fault::Point::CompleteEagain))
            s.injected_res = -EAGAIN;
        if (s.injected_res != 0) {
            io_uring_prep_nop(sqe);
            return true;
        }
        if (op.code == OpCode::Read && op.len > 1 && !op.fixed_file &&
            fault::plan().armed(fault::Point::CompleteShort) != 0 && regular_file(op.fd) &&
            fault::fail_now(fault::Point::CompleteShort)) {
            io_uring_prep_read(sqe, op.fd, op.buf, static_cast<unsigned>(op.len / 2), op.offset);
            return true;
        }
        return false;
    }

    // After a hard error every op still owned by a slot completes with it (async ones through
    // reap()); a late CQE for such a slot is ignored.
    void fail_sync_ops() {
        for (Slot& s : slots_) {
            if (!s.in_use || s.orphaned) continue;
            s.orphaned = true;
            if (s.sync_result != nullptr) {
                *s.sync_result = broken_;
                s.sync_result = nullptr;
            } else {
                ready_.push_back(Completion{s.tag, broken_, false, -1});
                ++ready_final_;
                --async_inflight_;
            }
        }
        sync_pending_ = 0;
    }

    // Processes every CQE available now (flushing the kernel's overflow list too).
    unsigned drain_cq() {
        unsigned total = 0;
        for (;;) {
            // Seen before liburing's peek flushes the kernel's overflow list behind our back.
            if (io_uring_cq_has_overflow(&ring_)) ++stats_.cq_overflow_flushes;
            io_uring_cqe* cqes[64];
            unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 64);
            if (n > 0) {
                struct Copy {
                    uint64_t data;
                    int32_t res;
                    uint32_t flags;
                } copy[64];
                for (unsigned i = 0; i < n; ++i)
                    copy[i] = {cqes[i]->user_data, cqes[i]->res, cqes[i]->flags};
                io_uring_cq_advance(&ring_, n);  // free CQ space before handling may resubmit
                for (unsigned i = 0; i < n; ++i) handle(copy[i].data, copy[i].res, copy[i].flags);
                total += n;
                continue;
            }
            if (io_uring_cq_has_overflow(&ring_)) {
                ++stats_.enters;
                io_uring_get_events(&ring_);
                continue;
            }
            break;
        }
        unsigned k = *ring_.cq.koverflow;
        if (k != last_koverflow_) {
            stats_.cq_dropped += k - last_koverflow_;
            last_koverflow_ = k;
        }
        return total;
    }

    void handle(uint64_t data, int32_t res, uint32_t flags) {
        if (data >= slots_.size()) return;  // not ours (cannot happen: every SQE names a slot)
        Slot& s = slots_[data];
        if (s.orphaned) return;
        if (s.injected_res != 0) {
            res = s.injected_res;
            s.injected_res = 0;
        }
        Op& op = s.op;
        if (op.code == OpCode::AcceptMultishot) {
            if (!s.emulate_multishot && res == -EINVAL && !features_.multishot_accept) {
                multishot_refused_ = true;  // probe by trying: kernel lacks multishot accept
                s.emulate_multishot = true;
                queue_sqe(static_cast<uint32_t>(data));
                return;
            }
            if (!s.emulate_multishot && res >= 0) features_.multishot_accept = true;
            bool armed = (flags & IORING_CQE_F_MORE) != 0;
            if (!armed && res >= 0) {  // kernel ended it without an error (or emulation): re-arm
                deliver(s, res, true);
                queue_sqe(static_cast<uint32_t>(data));
                return;
            }
            deliver(s, res, armed);
            if (!armed) release(static_cast<uint32_t>(data));
            return;
        }
        if (op.code == OpCode::RecvMultishot) {
            if (!s.emulate_multishot && res == -EINVAL && !features_.multishot_recv) {
                multishot_recv_refused_ =
                    true;  // kernel lacks multishot recv: re-armed single recvs
                s.emulate_multishot = true;
                queue_sqe(static_cast<uint32_t>(data));
                return;
            }
            if (!s.emulate_multishot && res > 0) features_.multishot_recv = true;
            bool armed = (flags & IORING_CQE_F_MORE) != 0;
            int32_t buffer = (flags & IORING_CQE_F_BUFFER)
                                 ? static_cast<int32_t>(flags >> IORING_CQE_BUFFER_SHIFT)
                                 : -1;
            // Data without F_MORE (emulation, or the kernel stopped for CQ space): re-arm. EOF
            // (0), errors and -ENOBUFS end it, as with a kernel multishot recv.
            bool rearm = !armed && res > 0;
            deliver(s, res, armed || rearm, buffer);
            if (rearm)
                queue_sqe(static_cast<uint32_t>(data));
            else if (!armed)
                release(static_cast<uint32_t>(data));
            return;
        }
        if (!s.in_chain && res == -EAGAIN && is_file_rw(op.code) &&
            s.eagain_retries < kMaxEagainRetries) {
            ++s.eagain_retries;
            ++stats_.eagain_resubmits;
            queue_sqe(static_cast<uint32_t>(data));
            return;
        }
        if (!s.in_chain && op.all && is_byte_stream(op.code) && res > 0 &&
            static_cast<uint64_t>(res) < requested_bytes(op)) {
            s.done += static_cast<uint64_t>(res);
            advance(op, static_cast<uint64_t>(res), s.iov_rest);
            ++stats_.short_resubmits;
            queue_sqe(static_cast<uint32_t>(data));
            return;
        }
        deliver(s, op.all ? whole_result(s.done, res) : res, false);
        release(static_cast<uint32_t>(data));
    }

    void deliver(Slot& s, int32_t res, bool more, int32_t buffer = -1) {
        if (s.sync_result != nullptr) {
            *s.sync_result = res;
            --sync_pending_;
            return;
        }
        Completion c{s.tag, res, more, buffer};
        if (out_n_ < out_.size()) {
            out_[out_n_++] = c;
        } else {
            ready_.push_back(c);
            if (!more) ++ready_final_;
        }
        if (!more) --async_inflight_;
    }

    void release(uint32_t index) {
        Slot& s = slots_[index];
        s.in_use = false;
        if (!s.iov_rest.empty()) s.iov_rest.clear();
        free_.push_back(index);
    }

    // Busy-polls for up to Options::spin_ns: submit + run completions without sleeping
    // (io_uring_enter with GETEVENTS, min_complete 0) until `done()`. Sleeping in the kernel and
    // being woken by the completion costs more than a short I/O on a virtual machine; fio's
    // io_uring engine behaves the same way (it enters with min_complete 0 while it has work).
    template <typename Done>
    void spin(Done done) {
        timespec t{};
        ::clock_gettime(CLOCK_MONOTONIC, &t);
        const int64_t deadline =
            t.tv_sec * 1000000000LL + t.tv_nsec + static_cast<int64_t>(options_.spin_ns);
        for (;;) {
            ++stats_.enters;
            int r = io_uring_submit_and_get_events(&ring_);
            if (r == -EINTR || r == -EAGAIN || r == -EBUSY) {
                ++stats_.submit_retries;
            } else if (r < 0) {
                submit_with_retry(0);  // reports and records the hard error
                return;
            }
            drain_cq();
            if (done()) return;
            ::clock_gettime(CLOCK_MONOTONIC, &t);
            if (t.tv_sec * 1000000000LL + t.tv_nsec >= deadline) return;
        }
    }

    // Waits until every synchronous op has completed.
    void wait_sync() {
        if (options_.spin_ns > 0 && sync_pending_ > 0) spin([&] { return sync_pending_ == 0; });
        while (sync_pending_ > 0) {
            submit_with_retry(1);
            drain_cq();
        }
    }

    // A synchronous call needs a slot: let in-flight ops complete (their completions are kept
    // for reap()) until one is free. Only multishot ops that never end can make this give up.
    void wait_for_free_slot() {
        while (free_.empty() && !broken_ && sync_pending_ + async_inflight_ > 0) {
            size_t before = free_.size();
            wait_one_more();
            if (free_.size() == before) break;
        }
    }

    // Waits for at least one completion (used when slots are exhausted).
    void wait_one_more() {
        size_t before = free_.size();
        while (!broken_ && free_.size() == before && (sync_pending_ || async_inflight_)) {
            submit_with_retry(1);
            drain_cq();
        }
    }

    size_t collect(std::span<Completion> out, unsigned min_complete, bool submit_first) {
        size_t n = 0;
        while (n < out.size() && !ready_.empty()) {
            out[n++] = ready_.front();
            ready_.pop_front();
            if (!out[n - 1].more) --ready_final_;
        }
        out_ = out;
        out_n_ = n;
        // Never wait for more than can still arrive.
        auto missing = [&]() -> unsigned {
            size_t want = std::min<size_t>({min_complete, out.size(), out_n_ + async_inflight_});
            return out_n_ >= want ? 0u : static_cast<unsigned>(want - out_n_);
        };
        if (options_.spin_ns > 0 && missing() > 0) {
            spin([&] { return missing() == 0; });
            submit_first = false;  // the spin submitted everything
        }
        if (submit_first) {
            submit_with_retry(missing());  // one io_uring_enter: submit and wait together
        }
        for (;;) {
            drain_cq();
            unsigned m = missing();
            if (m == 0 || broken_) break;
            submit_with_retry(m);
        }
        // Ops the completions just handled queued again (EAGAIN resubmissions, remainders of
        // short transfers, multishot re-arms) go to the kernel now: a caller may next sleep on
        // the ring's eventfd, which only a submitted op can wake.
        if (!broken_ && io_uring_sq_ready(&ring_) > 0) submit_with_retry(0);
        n = out_n_;
        out_ = {};
        out_n_ = 0;
        return n;
    }

    Options options_;
    io_uring ring_{};
    RingFd placement_ = RingFd::Low;
    UnnumberedRing unnumbered_;  // placement_ == Unnumbered: the ring's index and memory
    FdIdentity ring_identity_;   // otherwise: what ring_.ring_fd named at creation
    bool ring_lost_ = false;     // the process closed that number
    bool ring_ready_ = false;
    bool files_registered_ = false;
    bool buffers_registered_ = false;
    bool eventfd_registered_ = false;
    bool multishot_refused_ = false;
    bool multishot_recv_refused_ = false;
    struct Group {
        BufferGroup info;
        io_uring_buf_ring* ring = nullptr;
        size_t ring_bytes = 0;
    };
    std::vector<Group> groups_;
    Features features_;
    std::vector<Slot> slots_;
    std::vector<uint32_t> free_;
    std::deque<Completion> ready_;  // async completions not yet returned by reap()
    std::span<Completion> out_;     // the current reap()'s output, filled directly
    size_t out_n_ = 0;
    io_uring_sqe* last_sqe_ = nullptr;
    unsigned async_inflight_ = 0;
    unsigned sync_pending_ = 0;
    unsigned last_koverflow_ = 0;
    unsigned ready_final_ =
        0;            // final completions waiting in ready_ (still "in flight" to the caller)
    int broken_ = 0;  // hard io_uring_enter error: the engine refuses further work
};

}  // namespace

Result<std::unique_ptr<Engine>> create_uring_engine(const Options& options) {
    auto engine = std::make_unique<UringEngine>(options);
    if (auto r = engine->init(); !r) return r.error();
    return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace liveio::uring::detail
