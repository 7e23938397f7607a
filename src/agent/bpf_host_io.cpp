#include "agent/bpf_host_io.h"

#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <algorithm>

#include "hook/dispatcher.h"

namespace liveio::agent {
namespace {

constexpr long kMaxIov = 1024;

IoShape transfer(uint32_t dir, IoShape::Count count, int8_t count_arg, int8_t offset_arg = -1) {
    IoShape s;
    s.io = true;
    s.fd_arg = 0;
    s.direction = dir;
    s.count = count;
    s.count_arg = count_arg;
    s.offset_arg = offset_arg;
    return s;
}

IoShape fd_only(bool io, bool fd_event, int8_t fd_arg = 0, int8_t offset_arg = -1) {
    IoShape s;
    s.io = io;
    s.fd_event = fd_event;
    s.fd_arg = fd_arg;
    s.offset_arg = offset_arg;
    return s;
}

}  // namespace

IoShape io_shape(long nr) {
    constexpr uint32_t R = LIVEIO_IO_READ, W = LIVEIO_IO_WRITE;
    switch (nr) {
        case SYS_read: return transfer(R, IoShape::kCountArg, 2);
        case SYS_write: return transfer(W, IoShape::kCountArg, 2);
        case SYS_pread64: return transfer(R, IoShape::kCountArg, 2, 3);
        case SYS_pwrite64: return transfer(W, IoShape::kCountArg, 2, 3);
        case SYS_readv: return transfer(R, IoShape::kCountIov, 2);
        case SYS_writev: return transfer(W, IoShape::kCountIov, 2);
        case SYS_preadv:
        case SYS_preadv2: return transfer(R, IoShape::kCountIov, 2, 3);
        case SYS_pwritev:
        case SYS_pwritev2: return transfer(W, IoShape::kCountIov, 2, 3);
        case SYS_recvfrom: return transfer(R, IoShape::kCountArg, 2);
        case SYS_sendto: return transfer(W, IoShape::kCountArg, 2);
        case SYS_recvmsg: return transfer(R, IoShape::kCountMsg, 1);
        case SYS_sendmsg: return transfer(W, IoShape::kCountMsg, 1);
        case SYS_sendfile: return transfer(W, IoShape::kCountArg, 3);
        case SYS_copy_file_range: return transfer(W, IoShape::kCountArg, 4);
        case SYS_splice: return transfer(W, IoShape::kCountArg, 4);
        case SYS_lseek: return fd_only(true, false, 0, 1);
        case SYS_fsync:
        case SYS_fdatasync:
        case SYS_ftruncate: return fd_only(true, false);
        case SYS_fallocate: return fd_only(true, false, 0, 2);
        case SYS_close: return fd_only(true, true);
        case SYS_connect: return fd_only(true, false);
        case SYS_accept:
        case SYS_accept4: return fd_only(true, true);
        case SYS_open:
        case SYS_openat:
        case SYS_openat2:
        case SYS_creat: return fd_only(true, true, -1);
        // Linux AIO: the descriptors are inside the iocbs; the context id is no descriptor.
        case SYS_io_setup:
        case SYS_io_submit:
        case SYS_io_getevents:
        case SYS_io_pgetevents:
        case SYS_io_destroy:
        case SYS_io_cancel: return fd_only(true, false, -1);
        case SYS_dup:
        case SYS_dup2:
        case SYS_dup3:
        case SYS_fcntl: return fd_only(false, true);
        case SYS_socket:
        case SYS_socketpair:
        case SYS_pipe:
        case SYS_pipe2:
        case SYS_eventfd2:
        case SYS_memfd_create:
        case SYS_epoll_create1: return fd_only(false, true, -1);
        default: return {};
    }
}

uint64_t iovec_bytes(long iov, long count) {
    const auto* v = reinterpret_cast<const iovec*>(iov);
    uint64_t sum = 0;
    for (long i = 0; v != nullptr && i < std::min(count, kMaxIov); ++i) sum += v[i].iov_len;
    return sum;
}

uint64_t iovec_bytes_checked(long iov, long count) {
    if (iov == 0 || count <= 0) return 0;
    iovec copy[64];
    uint64_t sum = 0;
    const long n = std::min(count, kMaxIov);
    for (long done = 0; done < n;) {
        const long chunk = std::min<long>(n - done, 64);
        iovec local{copy, sizeof(iovec) * static_cast<size_t>(chunk)};
        iovec remote{reinterpret_cast<iovec*>(iov) + done, local.iov_len};
        // process_vm_readv reports an unmapped source as an error instead of faulting.
        if (hook::raw_syscall(SYS_process_vm_readv, hook::raw_syscall(SYS_getpid),
                              reinterpret_cast<long>(&local), 1, reinterpret_cast<long>(&remote), 1,
                              0) != static_cast<long>(local.iov_len))
            return sum;
        for (long i = 0; i < chunk; ++i) sum += copy[i].iov_len;
        done += chunk;
    }
    return sum;
}

}  // namespace liveio::agent
