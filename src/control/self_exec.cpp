#include "control/self_exec.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace liveio::control {

Result<std::string> run_liveio(const std::vector<std::string>& args) {
    std::error_code ec;
    const std::string exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) return make_error(ec.value(), "cannot find the liveio executable: " + ec.message());
    // Prepared before fork: only async-signal-safe calls between fork and exec.
    std::vector<std::string> argv_s{"liveio"};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    int pipefd[2];
    if (::pipe2(pipefd, O_CLOEXEC) != 0) return make_error(errno, fmt::format("pipe: {}", std::strerror(errno)));
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
        const int err = errno;
        ::close(pipefd[0]);
        ::close(pipefd[1]);
        return make_error(err, fmt::format("fork: {}", std::strerror(err)));
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        ::dup2(pipefd[1], 1);
        ::dup2(pipefd[1], 2);
        ::execv(exe.c_str(), argv.data());
        ::_exit(127);
    }
    ::close(pipefd[1]);
    std::string out;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(pipefd[0], buf, sizeof buf);
        if (n > 0) out.append(buf, static_cast<size_t>(n));
        else if (n == 0 || errno != EINTR) break;
    }
    ::close(pipefd[0]);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        const std::string how = WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                                                  : fmt::format("signal {}", WTERMSIG(status));
        return make_error(ECHILD, fmt::format("`liveio {}` failed ({}):\n{}", fmt::join(args, " "), how, out));
    }
    return out;
}

bool agent_mapped(pid_t pid) {
    std::ifstream maps(fmt::format("/proc/{}/maps", pid));
    for (std::string line; std::getline(maps, line);)
        if (line.ends_with("/liveio-agent.so")) return true;
    return false;
}

}  // namespace liveio::control
