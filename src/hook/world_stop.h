// Stopping every other thread of this process while code is patched in place.
//
// Each other thread (from /proc/self/task) gets a real-time signal whose handler parks it
// until the patch is done; before it returns, its saved instruction pointer is passed through
// a fixup (e.g. "if inside the bytes just replaced, continue at the same instruction in the
// trampoline"), so no thread ever resumes in the middle of a rewritten instruction sequence.
// The ptrace-based attach does the same from outside; this is the in-process equivalent.
//
// Cost to the application: one signal per thread; blocking calls restart (SA_RESTART) except
// those the kernel never restarts (epoll_wait, nanosleep...), which return EINTR as on any
// signal. A thread blocking the signal makes stop() fail after a timeout, reported clearly.
#pragma once

#include <cstdint>

#include "base/result.h"

namespace liveio::hook {

using IpFixup = uintptr_t (*)(void* context, uintptr_t ip);

class WorldStop {
public:
    // Parks every other thread. Only one WorldStop may exist at a time (serialized inside).
    static Result<WorldStop*> stop();
    // Releases the threads; each first maps its instruction pointer through `fixup`.
    // Returns once every parked thread has applied it (so `context` may then die).
    void resume(IpFixup fixup, void* context);
};

// The signal used to park threads (a real-time signal above the ones glibc reserves).
int world_stop_signal();

}  // namespace liveio::hook
