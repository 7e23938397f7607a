// Helpers shared by the injection tests: reading a file, skipping where ptrace is not allowed
// (containers often forbid it), and a running inject_target.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace liveio::inject::testing {

inline std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Why this process may not ptrace a child of its own; empty when it may.
inline std::string ptrace_unavailable_reason() {
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    std::string reason;
    if (ptrace(PTRACE_SEIZE, child, nullptr, nullptr) != 0)
        reason = std::string("PTRACE_SEIZE of a child fails: ") + strerror(errno);
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    return reason;
}

// waitpid(pid) polled until `limit_ms`; nullopt if it did not end by then.
inline std::optional<int> wait_bounded(pid_t pid, int limit_ms) {
    for (int waited = 0; waited <= limit_ms; waited += 5) {
        int status = 0;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0 && errno != EINTR) return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return std::nullopt;
}

// Upper bound for a target to answer; only reached when something is broken (not a timing check).
constexpr int kReplyTimeoutMs = 30000;

// A running inject_target with pipes on its stdin/stdout; killed and reaped on destruction.
class Target {
public:
    // `dying_mode`: INJECT_DYING_MODE for the dying library (targets/inject_dying.c).
    Target(std::vector<std::string> args, const std::string& marker, uid_t run_as = 0,
           const std::string& dying_mode = "")
        : marker_(marker) {
        // A target that died must fail the test, not kill the test binary on write().
        signal(SIGPIPE, SIG_IGN);
        int in[2], out[2];
        EXPECT_EQ(pipe2(in, O_CLOEXEC), 0);
        EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
        pid_ = fork();
        if (pid_ == 0) {
            dup2(in[0], 0);
            dup2(out[1], 1);
            setenv("INJECT_PROBE_MARKER", marker.c_str(), 1);
            if (!dying_mode.empty()) setenv("INJECT_DYING_MODE", dying_mode.c_str(), 1);
            rlimit no_core{0, 0};  // a test that makes it abort wants no core file
            setrlimit(RLIMIT_CORE, &no_core);
            if (run_as != 0 &&
                (setresgid(run_as, run_as, run_as) != 0 || setresuid(run_as, run_as, run_as) != 0))
                _exit(120);
            std::vector<char*> argv{const_cast<char*>(INJECT_TARGET_PATH)};
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            execv(argv[0], argv.data());
            _exit(127);
        }
        close(in[0]);
        close(out[1]);
        to_ = in[1];
        from_ = out[0];
        ready_ = read_line() == "ready";
    }
    ~Target() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
        close(to_);
        close(from_);
        unlink(marker_.c_str());
    }

    pid_t pid() const { return pid_; }
    // Its wait status once it ended, collected by us as its parent within `limit_ms`.
    std::optional<int> reap(int limit_ms) {
        auto status = wait_bounded(pid_, limit_ms);
        if (status) pid_ = -1;
        return status;
    }
    bool ready() const { return ready_; }
    std::string marks() const { return slurp(marker_); }

    struct Status {
        bool alive = false;
        unsigned long long verified = 0, errors = 0, signals = 0, threads_ended = 0;
    };
    Status status() {
        Status s;
        std::string cmd = "status\n";
        if (write(to_, cmd.data(), cmd.size()) != static_cast<ssize_t>(cmd.size())) return s;
        std::istringstream reply(read_line());
        std::string ok;
        reply >> ok >> s.verified >> s.errors >> s.signals >> s.threads_ended;
        s.alive = ok == "ok";
        return s;
    }
    // Waits until the target has verified more bytes than `after` (it is still doing I/O).
    Status progressed_beyond(unsigned long long after) {
        for (;;) {
            Status s = status();
            if (!s.alive || s.errors != 0 || s.verified > after) return s;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }

private:
    std::string read_line() {
        std::string line;
        char c;
        for (;;) {
            pollfd p{from_, POLLIN, 0};
            if (poll(&p, 1, kReplyTimeoutMs) != 1) return "(no reply)";
            if (read(from_, &c, 1) != 1) return "(target closed its stdout)";
            if (c == '\n') return line;
            line += c;
        }
    }

    pid_t pid_ = -1;
    int to_ = -1, from_ = -1;
    bool ready_ = false;
    std::string marker_;
};

}  // namespace liveio::inject::testing

#define SKIP_WITHOUT_PTRACE()                                                                  \
    do {                                                                                       \
        if (auto why = ::liveio::inject::testing::ptrace_unavailable_reason(); !why.empty()) { \
            GTEST_SKIP() << why;                                                               \
        }                                                                                      \
    } while (0)
