// Loading a shared library into a running process from outside, with ptrace (x86-64 Linux).
//
// Every thread of the target is seized and interrupted (PTRACE_SEIZE + PTRACE_INTERRUPT, the
// thread list re-read until no new thread appears). A stop is a safe point when no thread is
// inside the dynamic loader, libc's allocator entry points or a malloc library replacing
// libc's (jemalloc, tcmalloc, mimalloc), and at least one thread
// is outside libc internals (so it holds no libc lock) to run the call; otherwise all threads
// are released for a moment and stopped again, a bounded number of times.
//
// The chosen thread then calls the target's own libc `dlopen(path, RTLD_NOW)`: its registers
// (general, FP/SSE/AVX xstate) and signal mask are saved, the path and a kernel signal frame
// holding that state are written below the red zone of its stack, and the call returns
// through libc code into rt_sigreturn of that frame (return_frame.h). The tracer catches the
// rt_sigreturn, takes the result and restores registers and stack bytes exactly; a thread that
// was blocked in a system call resumes it as if nothing happened (read() on a pipe keeps
// waiting, no EINTR). If the tracer dies at any moment (SIGKILL, OOM), the threads run on:
// the call completes and its thread continues where it was stopped, restored by the frame.
// A libc without the needed code (`__restore_rt` and a `mov %rax,(reg); ret` gadget) gets the
// older return to a non-canonical address whose fault the tracer catches, without that
// protection.
//
// While the call runs the other threads stay stopped. If it does not return within
// `InjectOptions::release_after_ms` (a stopped thread may hold a lock the call needs, or the
// library's constructor waits for other threads) the other threads are released and the call
// is awaited up to `call_timeout_ms` (ETIMEDOUT then: the thread is left to finish the call
// and return through its frame); `InjectStats::released_early` records that.
//
// The process may die at any moment (exit, abort from any thread, SIGKILL): every wait on its
// threads is a poll bounded by `wait_timeout_ms` that notices the death, reaps the threads we
// trace (so that its parent gets its exit status) and fails with ESRCH saying how it ended,
// e.g. "process N died during the injected call (killed by signal 6, SIGABRT)"
// (stopped_process.h). The only wait without a time bound is a call on a libc without the
// frame's return path (above), which the thread could not survive without us: it lasts as long
// as the call in a living process.
//
// The library's constructor runs on the hijacked thread while the others are stopped: it must
// not wait for other threads of the process (start a thread for such work instead).
//
// Errors name the cause: process gone or died meanwhile (ESRCH), a thread that never stopped
// (ETIMEDOUT), not permitted (EPERM, with owner/ptrace_scope/
// already-traced details), not x86-64 (ENOEXEC), no libc or dlopen found (ENOENT), library not
// readable by the target (EACCES), no safe point (EAGAIN), dlopen failure with the target's
// dlerror() text (ELIBBAD).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "base/result.h"

namespace liveio::inject {

struct InjectOptions {
    int max_attempts = 50;        // stops tried before giving up on finding a safe point
    int release_after_ms = 500;   // call still running: let the other threads go
    int call_timeout_ms = 10000;  // call still running: give up (the target keeps running it)
    // Bound on every wait for a thread: its stop after an interrupt (a thread in uninterruptible
    // sleep stops only when the sleep ends), and the exits of a dying process's threads.
    int wait_timeout_ms = 10000;
    // unload_library: besides the library's own mappings, anonymous executable memory counts as
    // the library's code (hook trampolines and stubs it generated jump back into it). Turn off
    // for targets that run JIT code of their own, or every stop may look unsafe.
    bool anonymous_code_is_library = true;
};

struct InjectStats {
    double pause_ms = 0;        // successful attempt: first thread interrupted -> last released
    double total_pause_ms = 0;  // summed over all attempts (unsafe stops included)
    double stop_ms = 0;         // successful attempt: first thread interrupted -> all stopped
    double call_ms = 0;         // time spent running the call(s) in the target
    int threads = 0;            // threads stopped in the successful attempt
    int attempts = 0;           // stops until a safe point was found
    bool released_early = false;
};

struct InjectedLibrary {
    pid_t pid = 0;
    std::string path;     // absolute path given to dlopen
    uint64_t handle = 0;  // dlopen's return value in the target
};

// dlopen(`so_path`, RTLD_NOW) in process `pid`. A relative `so_path` is made absolute against
// our working directory. Loading the same library twice returns the same handle (dlopen's
// reference count goes up); each successful call needs its own unload_library().
Result<InjectedLibrary> inject_library(pid_t pid, const std::string& so_path,
                                       InjectStats* stats = nullptr,
                                       const InjectOptions& options = {});

// dlclose(lib.handle) in the target, with the same stop / safe point / call protocol.
// The library's destructors run; when the reference count reaches zero it is unmapped.
// A stop is a safe point for the unload only when no thread's instruction pointer is inside the
// library's mappings (or anonymous executable memory, see InjectOptions): a thread that has
// just jumped through a hook into the library and not yet counted itself as in flight would
// otherwise resume in unmapped code. Such a stop is released and retried (EAGAIN naming the
// thread after `max_attempts`). Return addresses deeper in the stacks are not inspected: calls
// out of the library's hooks are covered by the hook dispatcher's in-flight counts, which the
// agent's detach waits for.
Result<void> unload_library(const InjectedLibrary& lib, InjectStats* stats = nullptr,
                            const InjectOptions& options = {});

// Calls `symbol` of the injected library (found with dlsym in the target) with up to six
// integer/pointer arguments and returns its rax. ENOENT when the symbol does not exist.
Result<long> call_in_target(const InjectedLibrary& lib, const std::string& symbol,
                            std::initializer_list<long> args, InjectStats* stats = nullptr,
                            const InjectOptions& options = {});

}  // namespace liveio::inject
