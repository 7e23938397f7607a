// Helpers of the agent tests: a liveio-io-target child process, running the `liveio` CLI, and
// waiting for a condition without turning its duration into an assertion.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace liveio::agent::testing {

inline std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline std::string temp_path(const std::string& tag) {
    static int counter = 0;
    return "/tmp/liveio-test-agent-" + std::to_string(::getpid()) + "-" + tag + "-" +
           std::to_string(counter++);
}

// Forks and execs argv with stdout and stderr appended to `out_path`. Returns the pid.
inline pid_t spawn(const std::vector<std::string>& argv, const std::string& out_path) {
    // The child's freopen would otherwise flush our pending stdout a second time.
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
        FILE* f = std::freopen(out_path.c_str(), "a", stdout);
        if (f == nullptr || ::dup2(STDOUT_FILENO, STDERR_FILENO) < 0) ::_exit(120);
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    return pid;
}

inline int wait_exit(pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Polls `done` every 10 ms; false if it never became true within `limit_ms`. The limit only
// guards against a hang: tests assert on the condition, never on how long it took.
template <typename F>
bool eventually(F&& done, int limit_ms = 60000) {
    for (int waited = 0; waited < limit_ms; waited += 10) {
        if (done()) return true;
        ::usleep(10000);
    }
    return done();
}

// ptrace attach is possible for root, or for our own children under ptrace_scope <= 1 only
// when the child allows it; the tests attach to their own children as the same user.
inline std::string ptrace_unavailable() {
    std::ifstream f("/proc/sys/kernel/yama/ptrace_scope");
    int scope = 0;
    if (f >> scope && scope >= 3) return "ptrace is disabled (kernel.yama.ptrace_scope=3)";
    if (scope == 2 && ::geteuid() != 0) return "ptrace_scope=2 needs CAP_SYS_PTRACE";
    return "";
}

struct CliResult {
    int status;
    std::string output;  // stdout and stderr, interleaved
};

inline CliResult run_cli(const std::vector<std::string>& args) {
    std::vector<std::string> argv{LIVEIO_CLI_PATH};
    argv.insert(argv.end(), args.begin(), args.end());
    const std::string out = temp_path("cli");
    const int status = wait_exit(spawn(argv, out));
    CliResult r{status, read_file(out)};
    ::unlink(out.c_str());
    return r;
}

// A running liveio-io-target (optionally under `liveio run`), stopped with SIGTERM.
class IoTarget {
public:
    // `prefix`: e.g. {LIVEIO_CLI_PATH, "run", "--mechanism", "got", "--"}; empty: plain.
    // `extra`: more options of the target (e.g. --idle).
    explicit IoTarget(std::vector<std::string> prefix = {}, int file_threads = 2,
                      std::vector<std::string> extra = {})
        : out_(temp_path("target")) {
        std::vector<std::string> argv = std::move(prefix);
        for (const char* a :
             {LIVEIO_IO_TARGET_PATH, "--report-ms", "200", "--dir", "/tmp", "--threads"})
            argv.push_back(a);
        argv.push_back(std::to_string(file_threads));
        argv.insert(argv.end(), extra.begin(), extra.end());
        pid_ = spawn(argv, out_);
    }
    ~IoTarget() {
        if (pid_ > 0 && alive()) {
            ::kill(pid_, SIGKILL);
            wait_exit(pid_);
        }
        ::unlink(out_.c_str());
    }
    IoTarget(const IoTarget&) = delete;
    IoTarget& operator=(const IoTarget&) = delete;

    pid_t pid() const { return pid_; }
    std::string output() const { return read_file(out_); }
    bool wait_ready() {
        return eventually([&] { return output().find("ready") != std::string::npos || !alive(); });
    }
    bool alive() {
        if (exit_status_ >= 0) return false;
        int status;
        if (::waitpid(pid_, &status, WNOHANG) != pid_) return true;
        exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return false;
    }
    // Waits until the target has printed `n` more "counts" lines (its threads kept running).
    bool wait_progress(int n = 2) {
        auto count = [&] {
            const std::string o = output();
            size_t c = 0;
            for (size_t p = o.find("counts "); p != std::string::npos; p = o.find("counts ", p + 1))
                ++c;
            return c;
        };
        const size_t want = count() + static_cast<size_t>(n);
        return eventually([&] { return count() >= want || !alive(); });
    }
    // --idle: makes the three idle threads return from their recv/read and call again (under
    // whatever interception is installed now); true once each is back asleep in its call.
    bool rearm_idle_calls() {
        auto rearms = [&] {
            const std::string o = output();
            size_t c = 0;
            for (size_t p = o.find("idle-rearm "); p != std::string::npos;
                 p = o.find("idle-rearm ", p + 1))
                ++c;
            return c;
        };
        const size_t want = rearms() + 3;
        if (::kill(pid_, SIGUSR1) != 0 || !eventually([&] { return rearms() >= want || !alive(); }))
            return false;
        // The threads printed before calling again: wait until all sleep in read/recvfrom.
        return eventually([&] {
                   const std::string o = output();
                   int asleep = 0;
                   for (size_t p = o.rfind("idle-rearm "), n = 0; p != std::string::npos && n < 3;
                        p = p == 0 ? std::string::npos : o.rfind("idle-rearm ", p - 1), ++n) {
                       const std::string tid = o.substr(p + 11, o.find('\n', p) - p - 11);
                       std::ifstream sc("/proc/" + std::to_string(pid_) + "/task/" + tid +
                                        "/syscall");
                       long nr = -1;
                       asleep += (sc >> nr) && (nr == 0 || nr == 45);  // read, recvfrom
                   }
                   return asleep == 3 || !alive();
               }) &&
               alive();
    }
    // SIGTERM, then the exit status (0: every byte and errno verified).
    int stop() {
        if (alive()) {
            ::kill(pid_, SIGTERM);
            exit_status_ = wait_exit(pid_);
        }
        pid_ = -1;
        return exit_status_;
    }

private:
    std::string out_;
    pid_t pid_ = -1;
    int exit_status_ = -1;  // once reaped
};

}  // namespace liveio::agent::testing
