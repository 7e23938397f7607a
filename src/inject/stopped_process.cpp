// Stopping every thread of a process, and bounded waits on its threads: see stopped_process.h.
#include "inject/stopped_process.h"

#include <signal.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "base/errno_error.h"
#include "base/proc_tasks.h"
#include "inject/kill_point.h"

namespace liveio::inject {
namespace {

std::optional<std::string> first_line(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    if (!std::getline(in, line)) return std::nullopt;
    return line;
}

// Field `key` ("TracerPid:") of /proc/PID/status; 0 when absent.
long status_field(pid_t pid, const std::string& key) {
    std::ifstream in(fmt::format("/proc/{}/status", pid));
    for (std::string line; std::getline(in, line);)
        if (line.rfind(key, 0) == 0) return std::strtol(line.c_str() + key.size(), nullptr, 10);
    return 0;
}

// The parent process id in /proc/PID/stat (the field after the state); 0 when unknown.
pid_t parent_of(pid_t pid) {
    auto line = first_line(fmt::format("/proc/{}/stat", pid));
    if (!line) return 0;
    size_t paren = line->rfind(')');
    if (paren == std::string::npos) return 0;
    std::istringstream fields(line->substr(paren + 1));
    char state = 0;
    pid_t ppid = 0;
    fields >> state >> ppid;
    return ppid;
}

std::string describe_end(int status) {
    if (WIFSIGNALED(status)) {
        const char* abbrev = sigabbrev_np(WTERMSIG(status));
        return fmt::format("killed by signal {}{}{}", WTERMSIG(status), abbrev ? ", SIG" : "",
                           abbrev ? abbrev : "");
    }
    if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
    return "it is exiting";
}

// Sleeps between polls: short at first (a stop usually comes within microseconds and the
// target is paused meanwhile), longer the longer the wait.
class Backoff {
public:
    explicit Backoff(std::chrono::microseconds cap = std::chrono::microseconds(1000)) : cap_(cap) {}
    void sleep() {
        std::this_thread::sleep_for(nap_);
        nap_ = std::min(nap_ * 2, cap_);
    }

private:
    std::chrono::microseconds nap_{2}, cap_;
};

}  // namespace

Error seize_error(pid_t pid, int code) {
    if (code == ESRCH) return make_error(ESRCH, fmt::format("process {} does not exist", pid));
    // A zombie (exited, not yet reaped by its parent) cannot be traced either.
    if (const char state = process_state(pid); state == 'Z' || state == 'X')
        return make_error(ESRCH, fmt::format("process {} has exited (a zombie)", pid));
    if (code != EPERM) return errno_error(code, fmt::format("PTRACE_SEIZE of process {}", pid));
    std::string why;
    if (long tracer = status_field(pid, "TracerPid:"); tracer != 0)
        why += fmt::format("; it is already traced by process {}", tracer);
    struct stat st;
    if (stat(fmt::format("/proc/{}", pid).c_str(), &st) == 0 && st.st_uid != geteuid())
        why += fmt::format("; it is owned by uid {}, we are uid {}", st.st_uid, geteuid());
    if (auto scope = first_line("/proc/sys/kernel/yama/ptrace_scope");
        scope && !scope->empty() && (*scope)[0] != '0')
        why += fmt::format(
            "; kernel.yama.ptrace_scope is {} (1: only ancestors, 2: CAP_SYS_PTRACE only, 3: "
            "never)",
            (*scope)[0]);
    if (why.empty()) why = "; the process is not dumpable or we lack CAP_SYS_PTRACE";
    return make_error(EPERM, fmt::format("not permitted to ptrace process {}{}", pid, why));
}

StoppedProcess::StoppedProcess(pid_t pid, const InjectOptions& options)
    : pid_(pid), options_(options), our_child_(parent_of(pid) == getpid()) {}

double StoppedProcess::pause_ms() const {
    return std::chrono::duration<double, std::milli>(released_ - started_).count();
}

double StoppedProcess::stop_ms() const {
    return std::chrono::duration<double, std::milli>(all_stopped_ - started_).count();
}

StoppedProcess::Clock::time_point StoppedProcess::deadline() const {
    return Clock::now() + std::chrono::milliseconds(std::max(1, options_.wait_timeout_ms));
}

Result<void> StoppedProcess::stop_all() {
    std::set<pid_t> known;
    bool first = true;
    for (;;) {
        std::vector<pid_t> fresh;
        std::optional<Error> failure;
        for (pid_t tid : list_threads(pid_)) {
            if (known.count(tid)) continue;
            known.insert(tid);
            // io_uring workers refuse ptrace (EPERM) and run no user code: nothing to stop.
            if (is_io_uring_worker(pid_, tid)) continue;
            if (ptrace(PTRACE_SEIZE, tid, nullptr, nullptr) != 0) {
                int e = errno;
                if (e == ESRCH && !first) continue;  // the thread exited meanwhile
                failure = seize_error(pid_, e);
                break;
            }
            first = false;
            fresh.push_back(tid);
        }
        if (fresh.empty() && !failure) break;
        if (threads_.empty() && unsettled_.empty()) started_ = Clock::now();
        // Every seized thread is brought to a stop and recorded, also on failure, so that
        // release_all() can detach it.
        for (pid_t tid : fresh) ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr);
        kill_point("inject-seized", pid_);
        unsettled_.insert(unsettled_.end(), fresh.begin(), fresh.end());
        if (auto r = collect_stops(); !r && !failure) failure = r.error();
        if (failure) return *failure;
    }
    if (threads_.empty()) return make_error(ESRCH, fmt::format("process {} does not exist", pid_));
    all_stopped_ = Clock::now();
    for (auto& t : threads_) {
        if (t.job_stopped)
            return make_error(
                EBUSY,
                fmt::format("process {} is stopped by job control (SIGSTOP); continue it first",
                            pid_));
        if (ptrace(PTRACE_GETREGS, t.tid, nullptr, &t.regs) != 0)
            return errno_error(errno, fmt::format("reading registers of thread {}", t.tid));
    }
    return {};
}

// Waits until every thread in unsettled_ reported its interrupt stop, or its exit (a thread
// that ended meanwhile).
Result<void> StoppedProcess::collect_stops() {
    const auto until = deadline();
    Backoff backoff(std::chrono::microseconds(200));
    for (;;) {
        for (size_t i = 0; i < unsettled_.size();) {
            const pid_t tid = unsettled_[i];
            const Report r = collect(tid);
            if (r.kind == Report::none) {
                ++i;
            } else if (r.kind == Report::stopped) {
                unsettled_.erase(unsettled_.begin() + static_cast<long>(i));
                Tracee t;
                t.tid = tid;
                const int sig = WSTOPSIG(r.status);
                if ((r.status >> 16) == PTRACE_EVENT_STOP)
                    t.job_stopped =
                        sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
                else if ((r.status >> 16) == 0)
                    t.pending_signal = sig;  // a signal arrived first; give it back on detach
                threads_.push_back(t);
            }  // exited: note_exit() took it out of unsettled_
        }
        if (dying()) return death_error("while its threads were being stopped");
        if (unsettled_.empty()) return {};
        if (Clock::now() > until)
            return make_error(ETIMEDOUT,
                              fmt::format("thread {} of process {} did not stop within {} ms "
                                          "(state {}; uninterruptible sleep?)",
                                          unsettled_.front(), pid_, options_.wait_timeout_ms,
                                          process_state(unsettled_.front())));
        backoff.sleep();
    }
}

void StoppedProcess::release_all(pid_t keep) {
    std::vector<Tracee> kept;
    for (auto& t : threads_) {
        if (t.tid == keep) {
            kept.push_back(t);
            continue;
        }
        // ESRCH: the thread is not in a stop (killed, or still stopping): settled below.
        if (ptrace(PTRACE_DETACH, t.tid, nullptr,
                   reinterpret_cast<void*>(static_cast<long>(t.pending_signal))) != 0 &&
            errno == ESRCH)
            unsettled_.push_back(t.tid);
    }
    if (!threads_.empty() && kept.size() != threads_.size()) released_ = Clock::now();
    threads_ = std::move(kept);
    settle();
}

// Threads we hold that could not be detached: one that reaches its stop is detached then
// (with the signal it stopped for); a dying process is reaped.
void StoppedProcess::settle() {
    const auto until = deadline();
    Backoff backoff;
    while (!unsettled_.empty()) {
        for (size_t i = 0; i < unsettled_.size();) {
            const pid_t tid = unsettled_[i];
            const Report r = collect(tid);
            if (r.kind == Report::stopped) {
                const long sig = (r.status >> 16) == 0 ? WSTOPSIG(r.status) : 0;
                if (ptrace(PTRACE_DETACH, tid, nullptr, reinterpret_cast<void*>(sig)) == 0 ||
                    errno != ESRCH) {
                    unsettled_.erase(unsettled_.begin() + static_cast<long>(i));
                    continue;
                }
            }
            if (r.kind != Report::exited) ++i;  // exited: note_exit() took it out
        }
        if (unsettled_.empty()) return;
        if (dying()) return reap_all();
        if (Clock::now() > until) return;
        backoff.sleep();
    }
}

StoppedProcess::Report StoppedProcess::collect(pid_t tid) {
    if (auto it = exits_.find(tid); it != exits_.end()) return {Report::exited, it->second};
    if (tid == pid_ && our_child_) return collect_own_child();
    int status = 0;
    pid_t r;
    while ((r = waitpid(tid, &status, __WALL | WNOHANG)) < 0 && errno == EINTR) {
    }
    if (r == 0) return {};
    if (r < 0) {  // ECHILD: not, or no longer, our tracee
        note_exit(tid, -1);
        return {Report::exited, -1};
    }
    if (WIFSTOPPED(status)) return {Report::stopped, status};
    note_exit(tid, status);
    return {Report::exited, status};
}

// The main thread of our own child: its exit is only looked at (WNOWAIT), collecting it is our
// caller's business as its parent; a stop is then taken with waitid(WSTOPPED), which leaves
// exits alone. (A tracer's waitid reports ptrace stops whatever the flags.)
StoppedProcess::Report StoppedProcess::collect_own_child() {
    siginfo_t info{};
    if (waitid(P_PID, pid_, &info, WEXITED | WSTOPPED | WNOWAIT | WNOHANG | __WALL) != 0) {
        if (errno == EINTR) return {};
        note_exit(pid_, -1);
        return {Report::exited, -1};
    }
    if (info.si_pid != pid_) return {};
    if (info.si_code == CLD_EXITED || info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED) {
        const int status = info.si_code == CLD_EXITED   ? (info.si_status & 0xff) << 8
                           : info.si_code == CLD_DUMPED ? info.si_status | 0x80
                                                        : info.si_status;
        note_exit(pid_, status);
        return {Report::exited, status};
    }
    info = {};
    if (waitid(P_PID, pid_, &info, WSTOPPED | WNOHANG | __WALL) != 0 || info.si_pid != pid_)
        return {};
    // si_status holds the whole stop code (signal, and the ptrace event above it).
    return {Report::stopped, (info.si_status << 8) | 0x7f};
}

void StoppedProcess::note_exit(pid_t tid, int status) {
    exits_[tid] = status;
    std::erase_if(threads_, [&](const Tracee& t) { return t.tid == tid; });
    std::erase(unsettled_, tid);
    if (status == -1) return;
    if (!first_exit_status_) first_exit_status_ = status;
    // A signal ends the whole process, never one thread; the main thread reports last.
    if (WIFSIGNALED(status) || tid == pid_) {
        dying_ = true;
        if (!death_status_ || tid == pid_) death_status_ = status;
    }
}

bool StoppedProcess::dying(bool look_now) {
    if (dying_) return true;
    const auto now = Clock::now();
    if (!look_now && now - looked_ < std::chrono::milliseconds(1)) return false;
    looked_ = now;
    dying_ = !process_running(pid_);
    return dying_;
}

// Collects the exit of every thread we hold, in whatever order they come: the main thread
// reports only after all the others. Bounded by wait_timeout_ms; gives up early if the process
// turns out not to be dying (a lone thread ended).
void StoppedProcess::reap_all() {
    std::vector<pid_t> held = unsettled_;
    for (const auto& t : threads_) held.push_back(t.tid);
    const auto start = Clock::now(), until = deadline();
    Backoff backoff;
    while (!held.empty()) {
        std::erase_if(held, [&](pid_t tid) { return collect(tid).kind == Report::exited; });
        if (held.empty()) break;
        const auto now = Clock::now();
        if (now > until || (now - start > std::chrono::milliseconds(50) && !dying_ && !dying(true)))
            break;
        backoff.sleep();
    }
    left_exiting_ = held.size();
}

Error StoppedProcess::death_error(std::string_view during) {
    reap_all();
    death_reported_ = true;
    std::string how = death_status_        ? describe_end(*death_status_)
                      : first_exit_status_ ? describe_end(*first_exit_status_)
                                           : "it is exiting";
    std::string left;
    if (left_exiting_ != 0)
        left = fmt::format(
            "; {} of its threads had not finished exiting after {} ms (the kernel reaps them "
            "when this process exits)",
            left_exiting_, options_.wait_timeout_ms);
    return make_error(ESRCH, fmt::format("process {} died {} ({}){}", pid_, during, how, left));
}

Result<std::optional<int>> StoppedProcess::poll(pid_t tid, std::string_view during) {
    const Report r = collect(tid);
    if (r.kind == Report::stopped) return std::optional<int>(r.status);
    if (r.kind == Report::exited) {
        if (dying(true)) return death_error(during);
        if (r.status == -1)
            return make_error(ESRCH, fmt::format("thread {} of process {} is gone", tid, pid_));
        return std::optional<int>(r.status);
    }
    if (dying()) return death_error(during);
    return std::optional<int>();
}

Result<int> StoppedProcess::wait_for(pid_t tid, std::string_view during) {
    const auto until = deadline();
    Backoff backoff;
    for (;;) {
        auto r = poll(tid, during);
        if (!r) return r.error();
        if (*r) return **r;
        if (Clock::now() > until)
            return make_error(
                ETIMEDOUT,
                fmt::format("thread {} of process {} did not stop within {} ms {} "
                            "(state {})",
                            tid, pid_, options_.wait_timeout_ms, during, process_state(tid)));
        backoff.sleep();
    }
}

}  // namespace liveio::inject
