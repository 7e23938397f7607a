// Descriptors liveio must hold inside a target, kept out of the target's way.
//
// POSIX gives open(), socket(), pipe()... the lowest free number. A descriptor of ours at a
// low number shifts every number the target gets afterwards and can push a select()-based
// target past FD_SETSIZE. move_high() moves a fresh descriptor to the lowest free number at or
// above high_fd_base(), with FD_CLOEXEC (an exec in the target never inherits it), and closes
// the low one. Where nothing can be moved (the table is full up there) the descriptor stays
// where it is, still CLOEXEC. Raw system calls only: this runs inside hooked processes.
#pragma once

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <cstdint>

#include "base/raw_syscall.h"

namespace liveio {

// FD_SETSIZE of glibc: the numbers a select()-based program can use.
inline constexpr long kSelectLimit = 1024;
// With a soft RLIMIT_NOFILE of at most 2 * kSelectLimit, ours take the top of the table.
inline constexpr long kHighFdReserve = 32;

// The first number liveio's descriptors take: kSelectLimit when the soft RLIMIT_NOFILE leaves
// room above it (the table then grows to 2048 entries at most, whatever the limit: a base near
// a limit of a million would make the kernel allocate a table that large), else the top
// kHighFdReserve numbers below the limit (a target near its limit reaches EMFILE with or
// without ours: every descriptor counts, wherever it sits).
inline long high_fd_base() {
    rlimit64 lim{};
    if (raw_syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, 0, reinterpret_cast<long>(&lim)) != 0)
        return kSelectLimit;
    const auto soft = static_cast<long>(lim.rlim_cur > (1ul << 30) ? (1ul << 30) : lim.rlim_cur);
    if (soft >= 2 * kSelectLimit) return kSelectLimit;
    return soft - kHighFdReserve > 3 ? soft - kHighFdReserve : 3;
}

// Moves `fd` (>= 0) to a number >= high_fd_base() with FD_CLOEXEC and closes `fd`; returns the
// new number, or `fd` itself (made CLOEXEC) when it is already high or no number up there is
// free. Never closes a descriptor it did not replace.
inline int move_high(int fd) {
    if (fd < 0) return fd;
    const long base = high_fd_base();
    if (fd >= base) {
        raw_syscall(SYS_fcntl, fd, F_SETFD, FD_CLOEXEC);
        return fd;
    }
    const long high = raw_syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, base);
    if (high < 0) {
        raw_syscall(SYS_fcntl, fd, F_SETFD, FD_CLOEXEC);
        return fd;
    }
    raw_syscall(SYS_close, fd);
    return static_cast<int>(high);
}

// What a descriptor number names (st_dev, st_ino), to tell later whether the number still names
// that file. A target may close our descriptors (close_range(3, ~0U) before an exec, a loop over
// /proc/self/fd) and its next open() may take the number: closing "ours" then would close the
// target's file. Anonymous inodes shared by all files of a kind (eventfds) tell only the kind.
struct FdIdentity {
    uint64_t dev = 0;
    uint64_t ino = 0;
    bool operator==(const FdIdentity&) const = default;
};

inline FdIdentity fd_identity(int fd) {
    struct stat st {};
    if (fd < 0 || raw_syscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0) return {};
    return {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

// Closes `fd` only while it still names the file `id` was taken from; true when closed.
inline bool close_if_same(int fd, const FdIdentity& id) {
    if (fd < 0 || id == FdIdentity{} || fd_identity(fd) != id) return false;
    return raw_syscall(SYS_close, fd) == 0;
}

}  // namespace liveio
