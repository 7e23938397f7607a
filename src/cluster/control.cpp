#include "cluster/control.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "cluster/netns.h"

namespace liveio::cluster {
namespace {

using Clock = std::chrono::steady_clock;

Error errno_error(int code, const std::string& what) {
    return make_error(code, fmt::format("{}: {}", what, std::strerror(code)));
}

int ms_left(Clock::time_point deadline) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left > 0 ? static_cast<int>(left) : 0;
}

// Waits for `fd` to be ready for `events` until the deadline.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
    for (;;) {
        pollfd p{fd, events, 0};
        const int n = ::poll(&p, 1, ms_left(deadline));
        if (n < 0 && errno == EINTR) continue;
        return n > 0;
    }
}

Result<int> connect_with_deadline(const sockaddr* sa, socklen_t len, int family,
                                  const std::string& what, Clock::time_point deadline) {
    const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return errno_error(errno, "socket");
    if (::connect(fd, sa, len) != 0) {
        if (errno != EINPROGRESS) {
            const int err = errno;
            ::close(fd);
            return errno_error(err, "connect " + what);
        }
        if (!wait_fd(fd, POLLOUT, deadline)) {
            ::close(fd);
            return make_error(ETIMEDOUT, fmt::format("connect {}: no answer in time", what));
        }
        int err = 0;
        socklen_t elen = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (err != 0) {
            ::close(fd);
            return errno_error(err, "connect " + what);
        }
    }
    return fd;
}

// One HTTP/1.1 exchange on a connected non-blocking socket (Connection: close: the reply
// ends at EOF). Closes fd.
Result<ControlReply> exchange(int fd, const std::string& request, const std::string& what,
                              Clock::time_point deadline) {
    std::string_view out(request);
    while (!out.empty()) {
        if (!wait_fd(fd, POLLOUT, deadline)) {
            ::close(fd);
            return make_error(ETIMEDOUT, fmt::format("{}: sending the request timed out", what));
        }
        const ssize_t n = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) {
            const int err = errno;
            ::close(fd);
            return errno_error(err, what + ": send");
        }
        out.remove_prefix(static_cast<size_t>(n));
    }
    std::string in;
    char buf[8192];
    for (;;) {
        if (!wait_fd(fd, POLLIN, deadline)) {
            ::close(fd);
            return make_error(ETIMEDOUT, fmt::format("{}: no complete reply in time", what));
        }
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0) {
            const int err = errno;
            ::close(fd);
            return errno_error(err, what + ": recv");
        }
        if (n == 0) break;
        in.append(buf, static_cast<size_t>(n));
        if (in.size() > (64u << 20)) {
            ::close(fd);
            return make_error(EMSGSIZE, what + ": reply over 64 MiB");
        }
    }
    ::close(fd);
    const size_t head_end = in.find("\r\n\r\n");
    int status = 0;
    if (head_end == std::string::npos || std::sscanf(in.c_str(), "HTTP/1.%*d %d", &status) != 1)
        return make_error(EPROTO, fmt::format("{}: not an HTTP reply", what));
    return ControlReply{status, in.substr(head_end + 4), what};
}

std::string request_text(const std::string& method, const std::string& target,
                         const std::string& host, const std::string& body,
                         const std::string& token) {
    std::string req =
        fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", method, target, host);
    if (!token.empty()) req += fmt::format("Authorization: Bearer {}\r\n", token);
    if (method == "POST")
        req += fmt::format("Content-Type: application/json\r\nContent-Length: {}\r\n", body.size());
    return req + "\r\n" + (method == "POST" ? body : "");
}

bool is_local_socket(const std::string& path) {
    struct stat st {};
    return !path.empty() && ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

}  // namespace

Result<std::string> read_token_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return errno_error(errno, "token file " + path);
    struct stat st {};
    ::fstat(fd, &st);
    if (!S_ISREG(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
        ::close(fd);
        return make_error(
            EPERM,
            fmt::format(
                "token file {} must be a regular file owned by uid {} with mode 0600 or 0400 "
                "(it is mode {:04o}, owner {})",
                path, ::geteuid(), st.st_mode & 07777, st.st_uid));
    }
    char buf[512];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    ::close(fd);
    if (n < 0) return errno_error(errno, "reading token file " + path);
    std::string token(buf, static_cast<size_t>(n));
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' '))
        token.pop_back();
    if (token.size() < 16 || token.find_first_of(" \t\r\n") != std::string::npos)
        return make_error(
            EINVAL,
            fmt::format("token file {}: the token must be one word of at least 16 characters",
                        path));
    return token;
}

Result<std::string> ensure_token_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EEXIST) return read_token_file(path);
        return errno_error(errno, "creating token file " + path);
    }
    unsigned char raw[24];
    size_t got = 0;
    while (got < sizeof raw) {
        const ssize_t n = ::getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int err = errno;
            ::close(fd);
            ::unlink(path.c_str());
            return errno_error(err, "getrandom");
        }
        got += static_cast<size_t>(n);
    }
    std::string token;
    for (unsigned char c : raw) token += fmt::format("{:02x}", c);
    const std::string line = token + "\n";
    const bool written = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    ::close(fd);
    if (!written) {
        ::unlink(path.c_str());
        return make_error(EIO, "writing token file " + path);
    }
    return token;
}

bool bearer_matches(const std::string& presented, const std::string& token) {
    const std::string expected = "Bearer " + token;
    if (token.empty() || presented.size() != expected.size()) return false;
    unsigned char diff = 0;
    for (size_t i = 0; i < expected.size(); ++i)
        diff |= static_cast<unsigned char>(presented[i] ^ expected[i]);
    return diff == 0;
}

Result<ControlReply> control_request_tcp(const Node& node, const std::string& method,
                                         const std::string& target, const std::string& body,
                                         const std::string& token,
                                         std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    if (!node.control.port)
        return make_error(ENOTCONN, fmt::format("node {} has no control port", node.name));
    const std::string what = fmt::format("tcp:{}:{}", node.host, node.control.port);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(node.control.port);
    if (::inet_pton(AF_INET, node.host.c_str(), &sa.sin_addr) != 1)
        return make_error(EINVAL, fmt::format("node {}: host '{}' is not a numeric IPv4 address",
                                              node.name, node.host));
    auto scope = NetnsScope::enter(node.netns);
    if (!scope) return scope.error();
    auto fd =
        connect_with_deadline(reinterpret_cast<sockaddr*>(&sa), sizeof sa, AF_INET, what, deadline);
    if (!fd) return fd.error();
    return exchange(*fd, request_text(method, target, node.host, body, token), what, deadline);
}

Result<ControlReply> control_request(const Node& node, const std::string& method,
                                     const std::string& target, const std::string& body,
                                     std::chrono::milliseconds timeout) {
    if (is_local_socket(node.control.socket)) {
        const auto deadline = Clock::now() + timeout;
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        if (node.control.socket.size() >= sizeof sa.sun_path)
            return make_error(ENAMETOOLONG, "control socket path too long");
        std::memcpy(sa.sun_path, node.control.socket.c_str(), node.control.socket.size() + 1);
        const std::string what = "unix:" + node.control.socket;
        auto fd = connect_with_deadline(reinterpret_cast<sockaddr*>(&sa), sizeof sa, AF_UNIX, what,
                                        deadline);
        if (!fd) return fd.error();
        return exchange(*fd, request_text(method, target, "localhost", body, ""), what, deadline);
    }
    if (!node.control.port)
        return make_error(
            ENOTCONN,
            fmt::format("node {}: no control socket {} here and no control port", node.name,
                        node.control.socket.empty() ? "named" : node.control.socket));
    if (node.control.token_file.empty())
        return make_error(
            EPERM,
            fmt::format("node {}: TCP control needs a token_file in the cluster file", node.name));
    auto token = read_token_file(node.control.token_file);
    if (!token) return token.error();
    return control_request_tcp(node, method, target, body, *token, timeout);
}

Result<pid_t> start_control_endpoint(const std::string& liveio_exe, const Node& node,
                                     const std::string& history_table,
                                     const std::string& history_interval) {
    std::vector<std::string> args{liveio_exe,         "serve",
                                  "--target",         std::to_string(node.server_pid),
                                  "--control-socket", node.control.socket,
                                  "--sockets"};
    if (!history_table.empty())
        args.insert(
            args.end(),
            {"--sink", fmt::format("clickhouse://127.0.0.1:{}/{}", node.http_port, history_table),
             "--sink-interval", history_interval});
    if (node.control.port) {
        args.insert(args.end(), {"--listen", fmt::format("{}:{}", node.host, node.control.port),
                                 "--token-file", node.control.token_file});
    } else {
        args.insert(args.end(), {"--listen", "127.0.0.1:0"});
    }
    args.insert(args.end(), {"--node", node.name});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = node.data_dir + "/serve.log";
    ::unlink(node.control.socket.c_str());
    const pid_t pid = ::fork();
    if (pid < 0) return errno_error(errno, "fork");
    if (pid == 0) {
        ::setsid();
        sigset_t none;
        ::sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        const int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (out < 0 || in < 0) ::_exit(127);
        ::dup2(in, 0);
        ::dup2(out, 1);
        ::dup2(out, 2);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    for (;;) {
        if (is_local_socket(node.control.socket)) return pid;
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) {
            std::ifstream in(log);
            std::stringstream ss;
            ss << in.rdbuf();
            return make_error(ECHILD, fmt::format("liveio serve exited at startup: {}", ss.str()));
        }
        if (Clock::now() >= deadline) {
            ::kill(pid, SIGKILL);
            return make_error(ETIMEDOUT,
                              "liveio serve did not open its control socket within 20 s");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

}  // namespace liveio::cluster
