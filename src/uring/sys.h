// Raw system calls for the engine. liveio's interceptor redirects libc's I/O wrappers (pread,
// recv, ...) and syscall(3) into this engine; calling those from here would recurse, so every
// system call is an inline `syscall` instruction (base/raw_syscall.h). Results: value, or -errno.
#pragma once

#include <cerrno>
#include <cstdint>

#include <sys/syscall.h>

#include "base/raw_syscall.h"

namespace liveio::uring::sys {

template <typename... Args>
inline int64_t call(long number, Args... args) {
    static_assert(sizeof...(Args) <= 6, "a syscall takes at most six arguments");
    return liveio::raw_syscall(number, (long)(args)...);
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
