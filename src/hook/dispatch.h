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

// Decides what happens to each intercepted call. Handlers run on the application's thread,
// must be re-entrant, and never see liveio's own I/O (the dispatcher marks its thread while a
// handler runs, and calls made then go straight to the kernel).
class CallHandler {
public:
    virtual ~CallHandler() = default;
    // Before the call. Return true and set `result` to take the call over (e.g. perform it
    // through io_uring); return false to let the original call run.
    virtual bool on_enter(SyscallCall& call, SyscallResult& result) = 0;
    // After the call (original or taken over), with its result and start time.
    virtual void on_exit(const SyscallCall& call, SyscallResult result, uint64_t start_ns) = 0;
    // Whether on_exit needs start_ns. Reading the clock is most of a hook's cost (~20 ns
    // through the vDSO), so handlers that ignore it say so and receive start_ns == 0. Read
    // once, when the interceptor is installed.
    virtual bool wants_start_time() const { return true; }
};

}  // namespace liveio::hook
