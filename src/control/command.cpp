#include "control/command.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include <fmt/format.h>

namespace liveio::control {
namespace {

using Clock = std::chrono::steady_clock;

std::string quoted(const std::vector<std::string>& argv) {
    std::string out;
    for (const auto& a : argv) out += (out.empty() ? "" : " ") + a;
    return out;
}

}  // namespace

Result<CommandOutput> run_command(const std::vector<std::string>& argv,
                                  std::chrono::milliseconds timeout) {
    if (argv.empty()) return make_error(EINVAL, "run_command: empty argv");
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0)
        return make_error(errno, fmt::format("pipe: {}", std::strerror(errno)));
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    std::fflush(nullptr);  // nothing buffered is written twice by the child
    const pid_t pid = ::fork();
    if (pid < 0) {
        const int err = errno;
        ::close(pipe_fds[0]);
        ::close(pipe_fds[1]);
        return make_error(err, fmt::format("fork: {}", std::strerror(err)));
    }
    if (pid == 0) {
        const int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (in >= 0) ::dup2(in, 0);
        ::dup2(pipe_fds[1], 1);
        ::dup2(pipe_fds[1], 2);
        sigset_t none;
        ::sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::execvp(args[0], args.data());
        ::_exit(127);
    }
    ::close(pipe_fds[1]);
    CommandOutput result;
    const auto deadline = Clock::now() + timeout;
    bool timed_out = false;
    for (;;) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        pollfd p{pipe_fds[0], POLLIN, 0};
        const int n = ::poll(&p, 1, static_cast<int>(left));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) continue;
        char buf[4096];
        const ssize_t got = ::read(pipe_fds[0], buf, sizeof buf);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        result.output.append(buf, static_cast<size_t>(got));
    }
    ::close(pipe_fds[0]);
    if (timed_out) ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (timed_out)
        return make_error(ETIMEDOUT, fmt::format("{} did not finish within {} ms", quoted(argv),
                                                 timeout.count()));
    result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (result.status == 127 && result.output.empty())
        return make_error(ENOENT, fmt::format("cannot run {} (not installed?)", argv[0]));
    return result;
}

Result<std::string> run_checked(const std::vector<std::string>& argv,
                                std::chrono::milliseconds timeout) {
    auto r = run_command(argv, timeout);
    if (!r) return r.error();
    if (r->status != 0) {
        std::string out = r->output;
        while (!out.empty() && out.back() == '\n') out.pop_back();
        return make_error(EIO,
                          fmt::format("`{}` failed (status {}): {}", quoted(argv), r->status, out));
    }
    return std::move(r->output);
}

}  // namespace liveio::control
