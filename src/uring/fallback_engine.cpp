// The synchronous fallback: the same API and results as the io_uring backend, with plain
// system calls (raw syscall(2), never the interceptable libc wrappers). File ops, connect and
// the like run when submitted; ops that would block on a socket (recv, recvmsg, accept, send,
// sendmsg, and reads/writes that hit -EAGAIN on a non-blocking fd) and timeouts stay pending and
// complete inside reap()/run() once poll() says the socket is ready or the deadline passed — so
// cancel and timeouts behave as with io_uring.
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <deque>

#include "uring/internal.h"
#include "uring/sys.h"

namespace liveio::uring::detail {
namespace {

int64_t now_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

struct Pending {
    Op op;
    uint64_t tag = 0;
    int32_t* sync_result = nullptr;  // run/run_batch: where the result goes
    int64_t deadline_ns = 0;         // Timeout
    uint64_t done = 0;               // .whole(): bytes already transferred while parked
    std::shared_ptr<std::vector<iovec>> iov_rest;  // .whole() vectored remainder
    bool link_next = false;  // prepare_linked: the next queued op is linked to this one
    ChainKind chain_kind = ChainKind::Soft;
};

class FallbackEngine final : public Engine {
public:
    FallbackEngine(const Options& options, std::string why) {
        why_fallback_ = std::move(why);
        unsigned cq = options.cq_entries ? options.cq_entries : 2 * options.sq_entries;
        max_inflight_ =
            options.max_inflight ? options.max_inflight : std::max(cq, options.sq_entries);
    }

    BackendKind backend() const override { return BackendKind::Fallback; }
    RingFd ring_fd_placement() const override { return RingFd::Low; }
    int ring_fd() const override { return -1; }
    const Features& features() const override { return features_; }
    unsigned inflight() const override { return async_inflight_ + ready_final_; }

    Result<void> register_files(std::span<const int> fds) override {
        files_.assign(fds.begin(), fds.end());
        return {};
    }
    Result<void> register_files_sparse(unsigned count) override {
        files_.assign(count, -1);
        return {};
    }

    // Descriptor numbers, checked open now as the kernel checks them (see engine.h).
    int register_files_update(unsigned offset, std::span<const int> fds) override {
        if (offset > files_.size() || fds.size() > files_.size() - offset) return -EINVAL;
        for (int fd : fds)
            if (fd >= 0 && sys::call(SYS_fcntl, fd, F_GETFD) < 0) return -EBADF;
        std::copy(fds.begin(), fds.end(), files_.begin() + offset);
        return static_cast<int>(fds.size());
    }

    Result<void> register_file_alloc_range(unsigned, unsigned) override {
        return make_error(ENOTSUP, "the fallback backend allocates no registered files");
    }

    int hard_error() const override { return 0; }
    void get_events() override {}

    Result<void> register_eventfd(int) override {
        return make_error(ENOTSUP, "the fallback backend posts no kernel completions");
    }

    Result<void> register_buffers(std::span<const iovec> buffers) override {
        buffers_.assign(buffers.begin(), buffers.end());
        return {};
    }

    Result<void> register_buffer_ring(uint16_t group, unsigned count, uint32_t size) override {
        if (auto r = check_buffer_ring_args(count, size); !r) return r;
        if (find_group(groups_, group) != nullptr)
            return make_error(EEXIST, "buffer group already registered");
        Group g;
        g.info =
            BufferGroup{group, count, size, std::vector<char>(static_cast<size_t>(count) * size)};
        for (unsigned i = 0; i < count; ++i)
            g.free.push_back(static_cast<int32_t>(i));  // kernel ring order
        groups_.push_back(std::move(g));
        return {};
    }

    std::span<char> buffer(uint16_t group, int32_t id) override {
        auto* g = find_group(groups_, group);
        return g ? g->info.at(id) : std::span<char>{};
    }

    void recycle_buffer(uint16_t group, int32_t id) override {
        Group* g = find_group(groups_, group);
        if (g != nullptr && !g->info.at(id).empty()) g->free.push_back(id);
    }

    int prepare(const Op& op, uint64_t tag) override {
        if (async_inflight_ >= max_inflight_) return -EBUSY;
        queued_.push_back(Pending{op, tag, nullptr, 0});
        ++async_inflight_;
        return 0;
    }

    int prepare_linked(std::span<const Op> ops, std::span<const uint64_t> tags,
                       ChainKind kind) override {
        if (ops.size() != tags.size()) return -EINVAL;
        if (ops.size() > max_inflight_) return -E2BIG;
        if (async_inflight_ + ops.size() > max_inflight_) return -EBUSY;
        for (size_t i = 0; i < ops.size(); ++i) {
            Pending p{ops[i], tags[i], nullptr, 0};
            p.link_next = i + 1 < ops.size();
            p.chain_kind = kind;
            queued_.push_back(p);
            ++async_inflight_;
        }
        return 0;
    }

    int submit() override {
        int n = static_cast<int>(queued_.size());
        while (!queued_.empty()) {
            Pending p = queued_.front();
            queued_.pop_front();
            if (p.link_next)
                run_linked(p);
            else
                start(p);
        }
        return n;
    }

    size_t reap(std::span<Completion> out, unsigned min_complete) override {
        size_t n = 0;
        for (;;) {
            while (n < out.size() && !ready_.empty()) {
                out[n++] = ready_.front();
                ready_.pop_front();
                if (!out[n - 1].more) --ready_final_;
            }
            size_t want = std::min<size_t>({min_complete, out.size(), n + async_inflight_});
            if (n >= want) break;
            if (!queued_.empty()) {  // like io_uring_enter: waiting submits what is queued
                submit();
                continue;
            }
            if (pending_.empty()) break;
            poll_pending(true);
        }
        return n;
    }

    size_t submit_and_reap(std::span<Completion> out, unsigned min_complete) override {
        submit();
        return reap(out, min_complete);
    }

    int32_t run(const Op& op) override {
        int32_t result = 0;
        bool done = false;
        start(Pending{op, 0, &result, 0}, &done);
        while (!done) poll_pending(true);
        return result;
    }

    std::vector<int32_t> run_batch(std::span<const Op> ops) override {
        std::vector<int32_t> results(ops.size(), 0);
        for (size_t i = 0; i < ops.size(); ++i) results[i] = run(ops[i]);
        return results;
    }

    ChainResult run_chain(std::span<const Op> ops, ChainKind kind) override {
        ChainResult chain;
        chain.results.assign(ops.size(), 0);
        for (size_t i = 0; i < ops.size(); ++i) {
            if (chain.failed_index >= 0 && kind == ChainKind::Soft) {
                chain.results[i] = -ECANCELED;
                continue;
            }
            Op op = ops[i];
            op.all = false;  // as with io_uring: chained ops are not resubmitted
            chain.results[i] = run(op);
            if (chain.failed_index < 0 && breaks_chain(op, chain.results[i])) {
                chain.failed_index = static_cast<int>(i);
                chain.failed_res = chain.results[i];
            }
        }
        return chain;
    }

private:
    // A chain queued by prepare_linked, `first` and the queued ops linked behind it: run one
    // after another (each waits for its socket as run() does); under a soft link the first
    // failure cancels the rest, as the kernel does.
    void run_linked(Pending first) {
        bool failed = false;
        for (Pending p = first;;) {
            const bool more = p.link_next;
            Op op = p.op;
            op.all = false;  // as with io_uring: chained ops are not resubmitted
            int32_t res = -ECANCELED;
            if (!failed || p.chain_kind == ChainKind::Hard) res = run(op);
            if (breaks_chain(op, res)) failed = true;
            complete(p, res, false);
            if (!more || queued_.empty()) break;
            p = queued_.front();
            queued_.pop_front();
        }
    }

    static bool waits_for_socket(const Op& op) {
        switch (op.code) {
            case OpCode::Recv:
            case OpCode::Recvmsg:
            case OpCode::Send:
            case OpCode::Sendmsg: return (op.flags & MSG_DONTWAIT) == 0;
            case OpCode::Accept:
            case OpCode::AcceptMultishot:
            case OpCode::RecvMultishot: return true;
            default: return false;
        }
    }

    // Runs the op now, or parks it until its socket is ready / its deadline passes.
    void start(Pending p, bool* done = nullptr) {
        if (done != nullptr) sync_done_ = done;
        if (p.op.code == OpCode::Timeout) {
            p.deadline_ns = now_ns() + static_cast<int64_t>(p.op.nanoseconds);
            pending_.push_back(p);
            return;
        }
        if (p.op.code == OpCode::Cancel) {
            complete(p, cancel(p.op.target_tag), false);
            return;
        }
        if (waits_for_socket(p.op) && resolve_fd(p.op) >= 0) {
            pending_.push_back(p);
            return;
        }
        int32_t res = execute(p.op);
        // io_uring does not hand -EAGAIN back for a pipe/socket read or write, even on an
        // O_NONBLOCK file: it arms poll and completes when the fd is ready. Do the same.
        if (res == -EAGAIN && is_transfer(p.op.code) && resolve_fd(p.op) >= 0) {
            pending_.push_back(p);
            return;
        }
        complete(p, res, false);
    }

    int32_t cancel(uint64_t tag) {
        for (auto it = pending_.begin(); it != pending_.end(); ++it) {
            if (it->sync_result == nullptr && it->tag == tag) {
                Pending victim = *it;
                pending_.erase(it);
                complete(victim, -ECANCELED, false);
                return 0;
            }
        }
        return -ENOENT;
    }

    void complete(const Pending& p, int32_t res, bool more, int32_t buffer = -1) {
        if (p.sync_result != nullptr) {
            *p.sync_result = res;
            if (sync_done_ != nullptr) *sync_done_ = true;
            sync_done_ = nullptr;
            return;
        }
        ready_.push_back(Completion{p.tag, res, more, buffer});
        if (!more) ++ready_final_;
        if (!more) --async_inflight_;
    }

    // One poll() over the parked ops; completes the ready ones. Blocks until something is ready
    // or the nearest timeout expires.
    void poll_pending(bool block) {
        std::vector<pollfd> fds;
        std::vector<size_t> index;  // pending_ position of each pollfd
        int64_t nearest = -1;
        for (size_t i = 0; i < pending_.size(); ++i) {
            const Op& op = pending_[i].op;
            if (op.code == OpCode::Timeout) {
                if (nearest < 0 || pending_[i].deadline_ns < nearest)
                    nearest = pending_[i].deadline_ns;
                continue;
            }
            bool out = op.code == OpCode::Send || op.code == OpCode::Sendmsg ||
                       op.code == OpCode::Write || op.code == OpCode::Writev ||
                       op.code == OpCode::WriteFixed;
            fds.push_back(pollfd{resolve_fd(op), static_cast<short>(out ? POLLOUT : POLLIN), 0});
            index.push_back(i);
        }
        timespec ts{};
        timespec* tsp = nullptr;
        if (!block) {
            tsp = &ts;
        } else if (nearest >= 0) {
            int64_t left = std::max<int64_t>(0, nearest - now_ns());
            ts.tv_sec = left / 1000000000LL;
            ts.tv_nsec = left % 1000000000LL;
            tsp = &ts;
        }
        int64_t r = sys::call(SYS_ppoll, fds.data(), fds.size(), tsp, nullptr, 0);
        if (r < 0 && r != -EINTR) return;
        // Collect finished ops first, then erase from the back so indexes stay valid.
        std::vector<size_t> finished;
        std::vector<std::pair<Pending, int32_t>> results;
        std::vector<std::pair<Pending, int32_t>> multishot;
        struct Received {
            Pending p;
            int32_t res;
            int32_t buffer;
        };
        std::vector<Received> received;
        for (size_t k = 0; k < fds.size() && r > 0; ++k) {
            if (fds[k].revents == 0) continue;
            Pending& p = pending_[index[k]];
            Op op = p.op;
            // poll said ready; never block on a spurious wakeup. A .whole() op makes one
            // non-blocking step per readiness and stays parked until it has everything.
            if (op.code == OpCode::Recv || op.code == OpCode::Recvmsg || op.code == OpCode::Send ||
                op.code == OpCode::Sendmsg)
                op.flags |= MSG_DONTWAIT;
            op.all = false;
            int32_t res = execute(op);
            if (res == -EAGAIN && !(p.op.flags & MSG_DONTWAIT)) continue;  // still not ready
            if (p.op.all && is_byte_stream(p.op.code)) {
                if (res > 0 && static_cast<uint64_t>(res) < requested_bytes(p.op)) {
                    p.done += static_cast<uint64_t>(res);
                    if (!p.iov_rest) p.iov_rest = std::make_shared<std::vector<iovec>>();
                    advance(p.op, static_cast<uint64_t>(res), *p.iov_rest);
                    ++stats_.short_resubmits;
                    continue;
                }
                res = whole_result(p.done, res);
            }
            if (p.op.code == OpCode::RecvMultishot) {
                // Like the kernel: take the next provided buffer, receive into it, stay armed;
                // EOF, errors and an empty group (-ENOBUFS) end the op.
                Group* g = find_group(groups_, static_cast<uint16_t>(p.op.aux));
                if (g == nullptr || g->free.empty()) {
                    finished.push_back(index[k]);
                    results.emplace_back(p, -ENOBUFS);
                    continue;
                }
                int32_t id = g->free.front();
                std::span<char> b = g->info.at(id);
                int64_t n = sys::call_restart(SYS_recvfrom, resolve_fd(p.op), b.data(), b.size(),
                                              p.op.flags | MSG_DONTWAIT, nullptr, nullptr);
                if (n == -EAGAIN) continue;
                if (n > 0) {
                    g->free.pop_front();
                    received.push_back({p, static_cast<int32_t>(n), id});
                    continue;
                }
                finished.push_back(index[k]);
                results.emplace_back(p, static_cast<int32_t>(n));
                continue;
            }
            if (p.op.code == OpCode::AcceptMultishot && res >= 0) {
                multishot.emplace_back(p, res);
                continue;
            }
            finished.push_back(index[k]);
            results.emplace_back(p, res);
        }
        // Expired timeouts complete in deadline order, as io_uring's do, also when several
        // expired while this thread was not running (submission order may differ).
        int64_t now = now_ns();
        std::vector<size_t> expired;
        for (size_t i = 0; i < pending_.size(); ++i)
            if (pending_[i].op.code == OpCode::Timeout && pending_[i].deadline_ns <= now)
                expired.push_back(i);
        std::stable_sort(expired.begin(), expired.end(), [&](size_t a, size_t b) {
            return pending_[a].deadline_ns < pending_[b].deadline_ns;
        });
        for (size_t i : expired) {
            finished.push_back(i);
            results.emplace_back(pending_[i], -ETIME);
        }
        std::sort(finished.begin(), finished.end());
        for (size_t k = finished.size(); k-- > 0;)
            pending_.erase(pending_.begin() + static_cast<long>(finished[k]));
        for (auto& [p, res] : multishot) complete(p, res, true);
        for (auto& r : received) complete(r.p, r.res, true, r.buffer);
        for (auto& [p, res] : results) complete(p, res, false);
    }

    int resolve_fd(const Op& op) const {
        if (!op.fixed_file) return op.fd;
        if (op.fd < 0 || static_cast<size_t>(op.fd) >= files_.size()) return -1;
        return files_[op.fd];
    }

    // Blocking execution with raw syscalls; honours .whole().
    int32_t execute(const Op& op_in) {
        Op op = op_in;
        if (op.direct) return -EOPNOTSUPP;  // no registered-file table to open into
        if (op.fixed_file) {
            if (op.fd < 0 || static_cast<size_t>(op.fd) >= files_.size()) return -EBADF;
            op.fd = files_[op.fd];
            op.fixed_file = false;
        }
        if (op.code == OpCode::ReadFixed || op.code == OpCode::WriteFixed) {
            if (op.aux >= buffers_.size()) return -EFAULT;
            const iovec& b = buffers_[op.aux];
            auto* base = static_cast<char*>(b.iov_base);
            auto* p = static_cast<char*>(op.buf);
            if (p < base || p + op.len > base + b.iov_len) return -EFAULT;
        }
        if (!op.all || !is_byte_stream(op.code)) return execute_once(op);
        uint64_t done = 0;
        std::vector<iovec> storage;
        uint64_t want = requested_bytes(op);
        for (;;) {
            int32_t res = execute_once(op);
            if (res <= 0 || done + static_cast<uint64_t>(res) >= want)
                return whole_result(done, res);
            done += static_cast<uint64_t>(res);
            ++stats_.short_resubmits;
            advance(op, static_cast<uint64_t>(res), storage);
        }
    }

    static int32_t execute_once(const Op& op) {
        auto iov = static_cast<const iovec*>(op.buf);
        int64_t r = 0;
        switch (op.code) {
            case OpCode::Nop: return 0;
            case OpCode::Read:
            case OpCode::ReadFixed:
                r = op.offset < 0
                        ? sys::call_restart(SYS_read, op.fd, op.buf, op.len)
                        : sys::call_restart(SYS_pread64, op.fd, op.buf, op.len, op.offset);
                break;
            case OpCode::Write:
            case OpCode::WriteFixed:
                r = op.offset < 0
                        ? sys::call_restart(SYS_write, op.fd, op.buf, op.len)
                        : sys::call_restart(SYS_pwrite64, op.fd, op.buf, op.len, op.offset);
                break;
            case OpCode::Readv:
                r = op.offset < 0 ? sys::call_restart(SYS_readv, op.fd, iov, op.len)
                                  : sys::call_restart(SYS_preadv, op.fd, iov, op.len, op.offset, 0);
                break;
            case OpCode::Writev:
                r = op.offset < 0
                        ? sys::call_restart(SYS_writev, op.fd, iov, op.len)
                        : sys::call_restart(SYS_pwritev, op.fd, iov, op.len, op.offset, 0);
                break;
            case OpCode::Fsync: r = sys::call_restart(SYS_fsync, op.fd); break;
            case OpCode::Fdatasync: r = sys::call_restart(SYS_fdatasync, op.fd); break;
            case OpCode::Openat:
                r = sys::call_restart(SYS_openat, op.fd, op.path, op.flags, op.aux);
                break;
            case OpCode::Close: r = sys::call(SYS_close, op.fd); break;
            case OpCode::Statx:
                r = sys::call(SYS_statx, op.fd, op.path, op.flags, op.aux, op.buf);
                break;
            case OpCode::Fadvise:
                r = sys::call(SYS_fadvise64, op.fd, op.offset, op.len, op.flags);
                break;
            case OpCode::SyncFileRange:
                r = sys::call(SYS_sync_file_range, op.fd, op.offset, op.len, op.flags);
                break;
            case OpCode::Send:
                r = sys::call_restart(SYS_sendto, op.fd, op.buf, op.len, op.flags | MSG_NOSIGNAL,
                                      nullptr, 0);
                break;
            case OpCode::Recv:
                r = sys::call_restart(SYS_recvfrom, op.fd, op.buf, op.len, op.flags, nullptr,
                                      nullptr);
                break;
            case OpCode::Sendmsg:
                r = sys::call_restart(SYS_sendmsg, op.fd, op.buf, op.flags | MSG_NOSIGNAL);
                break;
            case OpCode::Recvmsg:
                r = sys::call_restart(SYS_recvmsg, op.fd, op.buf, op.flags);
                break;
            case OpCode::Accept:
                r = sys::call_restart(SYS_accept4, op.fd, op.buf,
                                      reinterpret_cast<socklen_t*>(op.len), op.flags);
                break;
            case OpCode::AcceptMultishot:
                r = sys::call_restart(SYS_accept4, op.fd, nullptr, nullptr, op.flags);
                break;
            case OpCode::RecvMultishot: return -EINVAL;  // only ever run from the poll loop
            case OpCode::Connect: r = sys::call_restart(SYS_connect, op.fd, op.buf, op.len); break;
            case OpCode::Timeout: {
                timespec ts{static_cast<time_t>(op.nanoseconds / 1000000000ull),
                            static_cast<long>(op.nanoseconds % 1000000000ull)};
                sys::call_restart(SYS_nanosleep, &ts, &ts);
                return -ETIME;
            }
            case OpCode::Cancel: return -ENOENT;
            case OpCode::FutexWait: return -EOPNOTSUPP;
        }
        return static_cast<int32_t>(r);
    }

    struct Group {
        BufferGroup info;
        std::deque<int32_t> free;  // buffers the "kernel" may fill, in ring order
    };

    Features features_;
    std::vector<Group> groups_;
    unsigned max_inflight_ = 0;
    unsigned async_inflight_ = 0;  // prepared async ops not yet completed (incl. queued)
    unsigned ready_final_ = 0;     // final completions waiting in ready_
    bool* sync_done_ = nullptr;    // run()'s completion flag while its op is parked
    std::vector<int> files_;
    std::vector<iovec> buffers_;
    std::deque<Pending> queued_;   // prepared, not yet submitted
    std::deque<Pending> pending_;  // submitted, waiting for readiness or a deadline
    std::deque<Completion> ready_;
};

}  // namespace

std::unique_ptr<Engine> create_fallback_engine(const Options& options, std::string why) {
    return std::make_unique<FallbackEngine>(options, std::move(why));
}

}  // namespace liveio::uring::detail
