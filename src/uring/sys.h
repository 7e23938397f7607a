// Raw system calls for the engine. liveio's interceptor redirects libc's I/O wrappers (pread,
// recv, ...) into this engine; calling those wrappers from here would recurse, so every I/O
// system call goes through syscall(2) with its number. Results: value, or -errno.
#pragma once

#include <cerrno>
#include <cstdint>

#include <sys/syscall.h>
#include <unistd.h>

namespace liveio::uring::sys {

template <typename... Args>
inline int64_t call(long number, Args... args) {
    long r = ::syscall(number, args...);
    return r < 0 ? -static_cast<int64_t>(errno) : r;
}

// Retries EINTR: a signal interrupting a blocking call is not the caller's error.
template <typename... Args>
inline int64_t call_restart(long number, Args... args) {
    int64_t r;
    do {
        r = call(number, args...);
    } while (r == -EINTR);
    return r;
}

}  // namespace liveio::uring::sys
