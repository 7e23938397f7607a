// System calls issued by `syscall` instructions inlined into liveio's own code. No liveio
// mechanism ever routes them through a hook: GOT and inline hooks patch libc's wrappers
// (including syscall(3)), and the syscall rewriter skips liveio's own text. Code that runs
// inside a hooked target (hooks, agent, io_uring engine) uses these instead of libc.
#pragma once

#include <sys/syscall.h>

#include <cstdint>
#include <ctime>

namespace liveio {

// Returns the kernel's result: a value >= 0, or -errno. Never touches errno.
inline long raw_syscall(long nr, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0,
                        long a5 = 0) {
    long ret;
    register long r10 asm("r10") = a3;
    register long r8 asm("r8") = a4;
    register long r9 asm("r9") = a5;
    asm volatile("syscall"
                 : "=a"(ret)
                 : "a"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8), "r"(r9)
                 : "rcx", "r11", "memory");
    return ret;
}

// CLOCK_MONOTONIC in nanoseconds, read with raw_syscall (never through a hooked wrapper).
inline uint64_t raw_monotonic_ns() {
    timespec ts{};
    raw_syscall(SYS_clock_gettime, CLOCK_MONOTONIC, reinterpret_cast<long>(&ts));
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace liveio
