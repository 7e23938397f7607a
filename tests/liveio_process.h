// Tests that run the liveio command line end to end.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace liveio::test_support {

// A running `liveio ARGS` (LIVEIO_CLI_PATH, defined by the test's CMakeLists) with its
// stdout+stderr on a pipe; killed and reaped when destroyed. The child gets SIGTERM when the
// test process dies (a test killed by its timeout), which liveio's commands handle by
// stopping their servers and undoing what they changed.
class LiveioProcess {
public:
    explicit LiveioProcess(std::vector<std::string> args) {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) return;
        args.insert(args.begin(), LIVEIO_CLI_PATH);
        const pid_t parent = ::getpid();
        pid_ = ::fork();
        if (pid_ == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != parent) ::_exit(127);
            ::dup2(p[1], 1);
            ::dup2(p[1], 2);
            std::vector<char*> argv;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(argv[0], argv.data());
            ::_exit(127);
        }
        ::close(p[1]);
        fd_ = p[0];
    }
    ~LiveioProcess() {
        if (pid_ > 0) {
            // SIGTERM first: the command stops its servers and restores what it changed.
            ::kill(pid_, SIGTERM);
            bool reaped = false;
            for (int i = 0; i < 300 && !reaped; ++i) {
                reaped = ::waitpid(pid_, nullptr, WNOHANG) == pid_;
                if (!reaped) ::usleep(100 * 1000);
            }
            if (!reaped) {
                ::kill(pid_, SIGKILL);
                ::waitpid(pid_, nullptr, 0);
            }
        }
        if (fd_ >= 0) ::close(fd_);
    }
    // Reads until `marker` appears in the output (true) or the output ends (false).
    bool read_until(const std::string& marker) {
        char buf[4096];
        while (output_.find(marker) == std::string::npos) {
            const ssize_t n = ::read(fd_, buf, sizeof buf);
            if (n <= 0) return false;
            output_.append(buf, static_cast<size_t>(n));
        }
        return true;
    }
    // Reads the rest and reaps the process; its wait status.
    int finish() {
        read_until(std::string(1, '\0'));  // never present: reads to the end
        int status = 0;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        return status;
    }
    pid_t pid() const { return pid_; }
    const std::string& output() const { return output_; }

private:
    pid_t pid_ = -1;
    int fd_ = -1;
    std::string output_;
};

}  // namespace liveio::test_support
