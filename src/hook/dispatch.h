// The one dispatcher every hooked call reaches, whatever the interception mechanism
// (GOT/PLT slot, inline function hook, rewritten syscall instruction).
#pragma once

#include <cstdint>

namespace liveio::hook {

// A call as the kernel would see it: syscall number and raw arguments. libc-level hooks
// (GOT, inline) translate their function into the syscall it performs (pread -> pread64, ...).
struct SyscallCall {
    long nr;
    long args[6];
};

// Raw kernel convention: a value >= 0, or -errno. The mechanism converts back to the
// caller's convention (libc: -1 and errno; syscall instruction: rax) and preserves errno
// exactly when the call is passed through.
using SyscallResult = long;

// One intercepted call, on the dispatcher's stack from the call's entry to its exit: the
// handler sees the same frame at both edges (nested calls -- a signal handler's I/O during a
// hooked call -- get frames of their own).
struct CallFrame {
    SyscallCall call;
    // Kernel convention. Set by on_enter when the handler takes the call over, otherwise by
    // the dispatcher after the original call; on_exit sees the call's final result.
    SyscallResult result = 0;
    // CLOCK_MONOTONIC ns at entry when the handler wants_start_time(), else 0 (a handler may
    // record a start time of its own here at on_enter).
    uint64_t start_ns = 0;
    // The handler's, from on_enter to on_exit; 0 at entry.
    uint64_t word = 0;
};

// Decides what happens to each intercepted call. Handlers run on the application's thread,
// must be re-entrant, and never see liveio's own I/O (the dispatcher marks its thread while a
// handler runs, and calls made then go straight to the kernel).
class CallHandler {
public:
    virtual ~CallHandler() = default;
    // Before the call. Return true and set `frame.result` to take the call over (e.g. perform
    // it through io_uring); return false to let the original call run.
    virtual bool on_enter(CallFrame& frame) = 0;
    // After the call (original or taken over), with its result in `frame.result`.
    virtual void on_exit(CallFrame& frame) = 0;
    // Whether on_enter needs frame.start_ns. Reading the clock is most of a hook's cost, so
    // handlers that ignore it say so and receive start_ns == 0. Read once, when the
    // interceptor is installed.
    virtual bool wants_start_time() const { return true; }
};

}  // namespace liveio::hook
