// Stopping every other thread of this process while code is patched in place.
//
// Each other thread (from /proc/self/task) gets a real-time signal whose handler parks it
// until the patch is done; before it returns, its saved context is passed through a fixup
// (e.g. "if inside the bytes just replaced, continue at the same instruction in the
// trampoline"), so no thread ever resumes in the middle of a rewritten instruction sequence.
// The fixup runs in the thread's own signal handler: async-signal-safe code only.
// The ptrace-based attach does the same from outside; this is the in-process equivalent.
//
// Cost to the application: one signal per thread; blocking calls restart (SA_RESTART) except
// those the kernel never restarts (epoll_wait, nanosleep...), which return EINTR as on any
// signal. A thread blocking the signal makes stop() fail after a timeout, reported clearly.
#pragma once

#include <ucontext.h>

#include <cstdint>

#include "base/result.h"

namespace liveio::hook {

// Edits the interrupted context of one parked thread (registers in uc->uc_mcontext).
using ContextFixup = void (*)(void* context, ucontext_t* uc);

class WorldStop {
public:
    // Parks every other thread. Only one WorldStop may exist at a time (serialized inside).
    static Result<WorldStop*> stop();
    // Releases the threads; each first passes its interrupted context through `fixup`.
    // Returns once every parked thread has applied it (so `context` may then die).
    void resume(ContextFixup fixup, void* context);
};

// The signal used to park threads (a real-time signal above the ones glibc reserves).
int world_stop_signal();

}  // namespace liveio::hook
