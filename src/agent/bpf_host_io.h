// The liveio/io_enter and liveio/io_exit edge: which syscalls it covers and how each one's
// arguments fill struct liveio_io_ctx (bpf/include/liveio/io_edge.h).
#pragma once

#include <cstdint>

#include "hook/dispatch.h"
#include "liveio/io_edge.h"

namespace liveio::agent {

// How a syscall's arguments map onto the I/O context.
struct IoShape {
    enum Count : uint8_t { kNoCount, kCountArg, kCountIov, kCountMsg };
    bool io = false;         // the liveio/io_* programs run on this syscall
    bool fd_event = false;   // it closes or creates a descriptor (the fd class cache forgets)
    int8_t fd_arg = -1;      // argument holding the descriptor, -1 none
    int8_t offset_arg = -1;  // argument holding an explicit offset, -1 none
    int8_t count_arg = -1;   // argument holding the byte count (or iovec count / msghdr)
    Count count = kNoCount;
    uint32_t direction = LIVEIO_IO_OTHER;
};

// I/O syscalls: read, write, pread64, pwrite64, readv, writev, preadv, pwritev, preadv2,
// pwritev2, sendto, recvfrom, sendmsg, recvmsg, sendfile, copy_file_range, splice, lseek,
// fsync, fdatasync, ftruncate, fallocate, open, openat, openat2, creat, close, accept,
// accept4, connect. Descriptor events additionally: dup, dup2, dup3, socket, socketpair,
// pipe, pipe2, eventfd2, memfd_create, epoll_create1, fcntl.
IoShape io_shape(long nr);

// Sum of the iovec lengths, reading the array directly: only called on calls that succeeded
// (the kernel read the same array, so it is mapped), at most 1024 entries.
uint64_t iovec_bytes(long iov, long count);
// The same through a fault-safe copy (for calls not yet performed: the array may be bad).
uint64_t iovec_bytes_checked(long iov, long count);

}  // namespace liveio::agent
