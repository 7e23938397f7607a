// Every thread of a process held in a ptrace stop, and the waits on them (inject.cpp's stop).
//
// No wait here blocks: each polls waitpid(tid, __WALL | WNOHANG) up to a deadline
// (InjectOptions::wait_timeout_ms) and watches meanwhile whether the process is dying. A dying
// process (exit_group, a fatal signal such as an abort from any thread, SIGKILL) reports its
// main thread to its tracer only once every other thread has been reaped, and those threads
// are our tracees, which only we reap: a blocking wait for the main thread (or one wait at a
// time in the wrong order) would never return. So once the process is seen dying, every thread
// we hold is reaped (its parent then gets its exit status) and the wait fails with ESRCH:
// "process N died during the injected call (killed by signal 6, SIGABRT)".
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <chrono>
#include <map>
#include <optional>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "inject/inject.h"

namespace liveio::inject {

struct Tracee {
    pid_t tid = 0;
    int pending_signal = 0;  // stopped in signal-delivery-stop: re-delivered on detach
    bool job_stopped = false;
    user_regs_struct regs{};
};

// Why PTRACE_SEIZE of `pid` failed with `code`, in words (owner, ptrace_scope, tracer).
Error seize_error(pid_t pid, int code);

// Owns the ptrace attachment of every thread of one process; releasing detaches them all.
class StoppedProcess {
public:
    StoppedProcess(pid_t pid, const InjectOptions& options);
    ~StoppedProcess() { release_all(); }
    StoppedProcess(const StoppedProcess&) = delete;
    StoppedProcess& operator=(const StoppedProcess&) = delete;

    // Seizes and interrupts every thread until the thread list no longer grows.
    Result<void> stop_all();

    // Detaches every thread except `keep` (0: all). Returns when they all run again; threads
    // that cannot be detached because they are dying are reaped (both bounded by
    // wait_timeout_ms; what is left then stays traced until this process exits, when the
    // kernel detaches or reaps it).
    void release_all(pid_t keep = 0);

    // One look at tracee `tid`, which the caller resumed: its wait status when it reported a
    // stop or its exit, nullopt when it has nothing to report yet. Fails (death_error) once the
    // process is seen dying. `during` completes "process N died ...".
    Result<std::optional<int>> poll(pid_t tid, std::string_view during);
    // poll() until `tid` reports; ETIMEDOUT after wait_timeout_ms.
    Result<int> wait_for(pid_t tid, std::string_view during);

    // Whether the process is exiting or gone (its main thread a zombie, or reaped, or a thread
    // of ours killed by a signal: fatal signals end the whole process). Looks at /proc at most
    // once a millisecond unless `look_now`.
    bool dying(bool look_now = false);
    // Reaps every thread we hold (bounded) and says how the process ended.
    Error death_error(std::string_view during);
    bool death_reported() const { return death_reported_; }
    // What is being done to the process, for death_error() after a failed ptrace request.
    void set_phase(const char* during) { phase_ = during; }
    const char* phase() const { return phase_; }

    std::vector<Tracee>& threads() { return threads_; }
    double pause_ms() const;
    double stop_ms() const;
    pid_t pid() const { return pid_; }

private:
    using Clock = std::chrono::steady_clock;
    // What one waitpid(WNOHANG) of a tracee reported.
    struct Report {
        enum Kind { none, stopped, exited } kind = none;
        int status = 0;  // -1 for an exit we could not collect (not, or no longer, our tracee)
    };
    Report collect(pid_t tid);
    Report collect_own_child();
    void note_exit(pid_t tid, int status);
    Result<void> collect_stops();
    void settle();
    void reap_all();
    Clock::time_point deadline() const;

    const pid_t pid_;
    const InjectOptions& options_;
    // We are the process's parent too: the main thread's exit is left for our own wait.
    const bool our_child_;
    std::vector<Tracee> threads_;   // stopped (one may be running a call: RemoteCaller)
    std::vector<pid_t> unsettled_;  // seized, not stopped yet or not detachable
    std::map<pid_t, int> exits_;    // threads we reaped, with their wait status
    std::optional<int> death_status_, first_exit_status_;
    bool dying_ = false, death_reported_ = false;
    const char* phase_ = "while it was stopped";
    size_t left_exiting_ = 0;  // threads still exiting when reap_all() gave up
    Clock::time_point looked_{}, started_{}, all_stopped_{}, released_{};
};

}  // namespace liveio::inject
