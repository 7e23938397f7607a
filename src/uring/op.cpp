#include <cstdlib>
#include <cstring>

#include "uring/internal.h"

namespace liveio::uring {

const char* op_name(OpCode code) {
    switch (code) {
        case OpCode::Nop: return "nop";
        case OpCode::Read: return "read";
        case OpCode::Write: return "write";
        case OpCode::Readv: return "readv";
        case OpCode::Writev: return "writev";
        case OpCode::ReadFixed: return "read_fixed";
        case OpCode::WriteFixed: return "write_fixed";
        case OpCode::Fsync: return "fsync";
        case OpCode::Fdatasync: return "fdatasync";
        case OpCode::Openat: return "openat";
        case OpCode::Close: return "close";
        case OpCode::Statx: return "statx";
        case OpCode::Fadvise: return "fadvise";
        case OpCode::SyncFileRange: return "sync_file_range";
        case OpCode::Send: return "send";
        case OpCode::Recv: return "recv";
        case OpCode::Sendmsg: return "sendmsg";
        case OpCode::Recvmsg: return "recvmsg";
        case OpCode::Accept: return "accept";
        case OpCode::AcceptMultishot: return "accept_multishot";
        case OpCode::RecvMultishot: return "recv_multishot";
        case OpCode::Connect: return "connect";
        case OpCode::Timeout: return "timeout";
        case OpCode::Cancel: return "cancel";
        case OpCode::FutexWait: return "futex_wait";
    }
    return "?";
}

namespace {
Op make(OpCode code, int fd) {
    Op op;
    op.code = code;
    op.fd = fd;
    return op;
}
Op transfer(OpCode code, int fd, const void* buf, uint64_t len, int64_t offset) {
    Op op = make(code, fd);
    op.buf = const_cast<void*>(buf);
    op.len = len;
    op.offset = offset;
    return op;
}
}  // namespace

Op Op::read(int fd, void* buf, uint32_t len, int64_t offset) {
    return transfer(OpCode::Read, fd, buf, len, offset);
}
Op Op::write(int fd, const void* buf, uint32_t len, int64_t offset) {
    return transfer(OpCode::Write, fd, buf, len, offset);
}
Op Op::readv(int fd, const iovec* iov, unsigned iovcnt, int64_t offset) {
    return transfer(OpCode::Readv, fd, iov, iovcnt, offset);
}
Op Op::writev(int fd, const iovec* iov, unsigned iovcnt, int64_t offset) {
    return transfer(OpCode::Writev, fd, iov, iovcnt, offset);
}
Op Op::read_fixed(int fd, void* buf, uint32_t len, int64_t offset, unsigned buf_index) {
    Op op = transfer(OpCode::ReadFixed, fd, buf, len, offset);
    op.aux = buf_index;
    return op;
}
Op Op::write_fixed(int fd, const void* buf, uint32_t len, int64_t offset, unsigned buf_index) {
    Op op = transfer(OpCode::WriteFixed, fd, buf, len, offset);
    op.aux = buf_index;
    return op;
}
Op Op::fsync(int fd) { return make(OpCode::Fsync, fd); }
Op Op::fdatasync(int fd) { return make(OpCode::Fdatasync, fd); }
Op Op::openat(int dirfd, const char* path, int flags, mode_t mode) {
    Op op = make(OpCode::Openat, dirfd);
    op.path = path;
    op.flags = flags;
    op.aux = mode;
    return op;
}
Op Op::close(int fd) { return make(OpCode::Close, fd); }
Op Op::openat_direct(int dirfd, const char* path, int flags, mode_t mode) {
    Op op = openat(dirfd, path, flags, mode);
    op.direct = true;
    return op;
}
Op Op::close_direct(unsigned slot) {
    Op op = make(OpCode::Close, static_cast<int>(slot));
    op.direct = true;
    return op;
}
Op Op::statx(int dirfd, const char* path, int flags, unsigned mask, struct ::statx* out) {
    Op op = make(OpCode::Statx, dirfd);
    op.path = path;
    op.flags = flags;
    op.aux = mask;
    op.buf = out;
    return op;
}
Op Op::fadvise(int fd, int64_t offset, uint32_t len, int advice) {
    Op op = make(OpCode::Fadvise, fd);
    op.offset = offset;
    op.len = len;
    op.flags = advice;
    return op;
}
Op Op::sync_file_range(int fd, int64_t offset, uint32_t nbytes, unsigned flags) {
    Op op = make(OpCode::SyncFileRange, fd);
    op.offset = offset;
    op.len = nbytes;
    op.flags = static_cast<int>(flags);
    return op;
}
Op Op::send(int fd, const void* buf, uint32_t len, int msg_flags) {
    Op op = transfer(OpCode::Send, fd, buf, len, -1);
    op.flags = msg_flags;
    return op;
}
Op Op::recv(int fd, void* buf, uint32_t len, int msg_flags) {
    Op op = transfer(OpCode::Recv, fd, buf, len, -1);
    op.flags = msg_flags;
    return op;
}
Op Op::sendmsg(int fd, const msghdr* msg, int msg_flags) {
    Op op = make(OpCode::Sendmsg, fd);
    op.buf = const_cast<msghdr*>(msg);
    op.flags = msg_flags;
    return op;
}
Op Op::recvmsg(int fd, msghdr* msg, int msg_flags) {
    Op op = make(OpCode::Recvmsg, fd);
    op.buf = msg;
    op.flags = msg_flags;
    return op;
}
Op Op::accept(int fd, sockaddr* addr, socklen_t* addrlen, int flags) {
    Op op = make(OpCode::Accept, fd);
    op.buf = addr;
    op.len = reinterpret_cast<uint64_t>(addrlen);
    op.flags = flags;
    return op;
}
Op Op::accept_multishot(int fd, int flags) {
    Op op = make(OpCode::AcceptMultishot, fd);
    op.flags = flags;
    return op;
}
Op Op::recv_multishot(int fd, uint16_t group, int msg_flags) {
    Op op = make(OpCode::RecvMultishot, fd);
    op.aux = group;
    op.flags = msg_flags;
    return op;
}
Op Op::connect(int fd, const sockaddr* addr, socklen_t addrlen) {
    Op op = make(OpCode::Connect, fd);
    op.buf = const_cast<sockaddr*>(addr);
    op.len = addrlen;
    return op;
}
Op Op::timeout(uint64_t nanoseconds) {
    Op op;
    op.code = OpCode::Timeout;
    op.nanoseconds = nanoseconds;
    return op;
}
Op Op::cancel(uint64_t target_tag) {
    Op op;
    op.code = OpCode::Cancel;
    op.target_tag = target_tag;
    return op;
}

Op Op::futex_wait(const uint32_t* word, uint32_t expected) {
    Op op;
    op.code = OpCode::FutexWait;
    op.buf = const_cast<uint32_t*>(word);
    op.aux = expected;
    return op;
}

bool fallback_forced_by_env() {
    const char* v = std::getenv("LIVEIO_URING_FALLBACK");
    return v != nullptr && std::strcmp(v, "1") == 0;
}

Result<std::unique_ptr<Engine>> Engine::create(const Options& options) {
    if (options.force_fallback)
        return detail::create_fallback_engine(options, "forced by Options::force_fallback");
    if (fallback_forced_by_env())
        return detail::create_fallback_engine(options, "forced by LIVEIO_URING_FALLBACK=1");
    if (options.sq_entries == 0 || options.sq_entries > 32768)
        return make_error(EINVAL, "uring engine: sq_entries must be 1..32768");
    auto engine = detail::create_uring_engine(options);
    if (engine.ok()) return engine;
    // io_uring is unusable here (sysctl, seccomp, old kernel, resource limits): same API, syscalls.
    return detail::create_fallback_engine(options, engine.error().message);
}

namespace detail {

bool is_transfer(OpCode code) {
    switch (code) {
        case OpCode::Read:
        case OpCode::Write:
        case OpCode::Readv:
        case OpCode::Writev:
        case OpCode::ReadFixed:
        case OpCode::WriteFixed: return true;
        default: return false;
    }
}

bool is_file_rw(OpCode code) { return is_transfer(code); }

bool is_byte_stream(OpCode code) {
    return is_transfer(code) || code == OpCode::Send || code == OpCode::Recv;
}

bool is_vectored(OpCode code) { return code == OpCode::Readv || code == OpCode::Writev; }

uint64_t requested_bytes(const Op& op) {
    if (!is_vectored(op.code)) return op.len;
    const auto* iov = static_cast<const iovec*>(op.buf);
    uint64_t total = 0;
    for (uint64_t i = 0; i < op.len; ++i) total += iov[i].iov_len;
    return total;
}

void advance(Op& op, uint64_t done, std::vector<iovec>& iov_storage) {
    if (op.offset >= 0) op.offset += static_cast<int64_t>(done);
    if (!is_vectored(op.code)) {
        op.buf = static_cast<char*>(op.buf) + done;
        op.len -= done;
        return;
    }
    const auto* iov = static_cast<const iovec*>(op.buf);
    std::vector<iovec> rest;
    for (uint64_t i = 0; i < op.len; ++i) {
        if (done >= iov[i].iov_len) {
            done -= iov[i].iov_len;
            continue;
        }
        rest.push_back({static_cast<char*>(iov[i].iov_base) + done, iov[i].iov_len - done});
        done = 0;
    }
    iov_storage = std::move(rest);  // may alias op.buf's old storage: copied out above first
    op.buf = iov_storage.data();
    op.len = iov_storage.size();
}

Result<void> check_buffer_ring_args(unsigned count, uint32_t size) {
    if (count == 0 || count > 32768 || (count & (count - 1)) != 0)
        return make_error(EINVAL, "buffer ring: count must be a power of two in 1..32768");
    if (size == 0) return make_error(EINVAL, "buffer ring: buffer size must be > 0");
    return {};
}

bool breaks_chain(const Op& op, int32_t res) {
    // The kernel fails the link only for ops whose handler marks the failure: fsync,
    // fdatasync and sync_file_range do not (a descriptor that does not resolve still does,
    // before the op runs).
    if (res < 0 && (op.code == OpCode::Fsync || op.code == OpCode::Fdatasync ||
                    op.code == OpCode::SyncFileRange))
        return res == -EBADF;
    if (res < 0) return true;
    return is_transfer(op.code) && static_cast<uint64_t>(res) < requested_bytes(op);
}

}  // namespace detail
}  // namespace liveio::uring
