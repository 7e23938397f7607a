#include "observe/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>

#include <fmt/format.h>

namespace liveio::observe {
namespace {

constexpr size_t kMaxRequestBytes = 16 * 1024;
constexpr int kClientTimeoutMs = 5000;

const char* reason(int status) {
    switch (status) {
        case 200: return "OK";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        default: return status >= 500 ? "Internal Server Error" : "Error";
    }
}

bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, kClientTimeoutMs) <= 0) return false;
        const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
}

// Reads up to the end of the request headers; nothing on timeout, oversize or EOF.
std::optional<std::string> read_head(int fd) {
    std::string buf;
    char chunk[4096];
    while (buf.find("\r\n\r\n") == std::string::npos) {
        if (buf.size() > kMaxRequestBytes) return std::nullopt;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, kClientTimeoutMs) <= 0) return std::nullopt;
        const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return std::nullopt;
        buf.append(chunk, static_cast<size_t>(n));
    }
    return buf;
}

// The value of header `name` (case-insensitive) in `head`, or "".
std::string header_value(const std::string& head, std::string_view name) {
    size_t pos = head.find("\r\n");
    while (pos != std::string::npos && pos + 2 < head.size()) {
        const size_t start = pos + 2;
        const size_t end = head.find("\r\n", start);
        if (end == std::string::npos || end == start) break;
        const std::string_view line(head.data() + start, end - start);
        const size_t colon = line.find(':');
        if (colon == name.size() &&
            std::equal(name.begin(), name.end(), line.begin(), [](char a, char b) {
                return std::tolower(static_cast<unsigned char>(a)) ==
                       std::tolower(static_cast<unsigned char>(b));
            })) {
            std::string_view v = line.substr(colon + 1);
            while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
            while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
            return std::string(v);
        }
        pos = end;
    }
    return "";
}

// Reads the rest of a body of `length` bytes of which `have` came with the head.
std::optional<std::string> read_body(int fd, std::string have, size_t length) {
    if (length > kMaxRequestBytes) return std::nullopt;
    char chunk[4096];
    while (have.size() < length) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, kClientTimeoutMs) <= 0) return std::nullopt;
        const ssize_t n = ::recv(fd, chunk, std::min(sizeof chunk, length - have.size()), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return std::nullopt;
        have.append(chunk, static_cast<size_t>(n));
    }
    have.resize(length);
    return have;
}

}  // namespace

Result<HttpServer> HttpServer::listen_unix(const std::string& path) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof sa.sun_path)
        return make_error(ENAMETOOLONG, fmt::format("unix socket path '{}': 1 to {} bytes", path,
                                                    sizeof sa.sun_path - 1));
    std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return make_error(errno, fmt::format("socket: {}", std::strerror(errno)));
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
    // The socket is created with no permissions for anyone but its owner, before it accepts.
    const mode_t old = ::umask(0177);
    const int bound = ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    const int bind_err = errno;
    ::umask(old);
    if (bound != 0 || ::listen(fd, 64) != 0) {
        const int err = bound != 0 ? bind_err : errno;
        ::close(fd);
        return make_error(err, fmt::format("cannot listen on {}: {}", path, std::strerror(err)));
    }
    return HttpServer(fd, path, 0, /*unix_socket=*/true);
}

Result<bool> HttpServer::serve_any(const std::vector<HttpServer*>& servers, int timeout_ms,
                                   const std::function<HttpReply(const HttpRequest&)>& handler,
                                   int wake_fd) {
    std::vector<pollfd> p;
    for (HttpServer* s : servers) p.push_back({s->fd_, POLLIN, 0});
    if (wake_fd >= 0) p.push_back({wake_fd, POLLIN, 0});
    const int ready = ::poll(p.data(), p.size(), timeout_ms);
    if (ready < 0) {
        if (errno == EINTR) return false;
        return make_error(errno,
                          fmt::format("poll on the listening sockets: {}", std::strerror(errno)));
    }
    bool served = false;
    for (size_t i = 0; i < servers.size(); ++i) {
        if (!(p[i].revents & POLLIN)) continue;
        auto r = servers[i]->serve_one(0, handler);
        if (!r) return r;
        served |= *r;
    }
    return served;
}

Result<HttpServer> HttpServer::listen(std::string_view address) {
    const size_t colon = address.rfind(':');
    if (colon == std::string_view::npos)
        return make_error(EINVAL, fmt::format("listen address '{}': expected HOST:PORT", address));
    std::string host(address.substr(0, colon));
    if (host.empty() || host == "localhost") host = "127.0.0.1";
    const std::string_view port_text = address.substr(colon + 1);
    unsigned port = 0;
    auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || p != port_text.data() + port_text.size() || port > 65535)
        return make_error(EINVAL,
                          fmt::format("listen address '{}': bad port '{}'", address, port_text));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(port));
    if (::inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1)
        return make_error(
            EINVAL,
            fmt::format("listen address '{}': '{}' is not a numeric IPv4 address", address, host));
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return make_error(errno, fmt::format("socket: {}", std::strerror(errno)));
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, 64) != 0) {
        const int err = errno;
        ::close(fd);
        return make_error(
            err, fmt::format("cannot listen on {}:{}: {}", host, port, std::strerror(err)));
    }
    socklen_t len = sizeof sa;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    return HttpServer(fd, host, ntohs(sa.sin_port));
}

HttpServer::HttpServer(HttpServer&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      host_(std::move(other.host_)),
      port_(other.port_),
      unix_(other.unix_),
      allow_post_(other.allow_post_) {}

HttpServer& HttpServer::operator=(HttpServer&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        if (fd_ >= 0 && unix_) ::unlink(host_.c_str());
        fd_ = std::exchange(other.fd_, -1);
        host_ = std::move(other.host_);
        port_ = other.port_;
        unix_ = other.unix_;
        allow_post_ = other.allow_post_;
    }
    return *this;
}

HttpServer::~HttpServer() {
    if (fd_ >= 0) ::close(fd_);
    if (fd_ >= 0 && unix_) ::unlink(host_.c_str());
}

Result<bool> HttpServer::serve_one(int timeout_ms,
                                   const std::function<HttpReply(const HttpRequest&)>& handler,
                                   int wake_fd) {
    pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    const int ready = ::poll(p, wake_fd >= 0 ? 2 : 1, timeout_ms);
    if (ready < 0) {
        if (errno == EINTR) return false;
        return make_error(errno,
                          fmt::format("poll on the listening socket: {}", std::strerror(errno)));
    }
    if (ready == 0 || !(p[0].revents & POLLIN)) return false;
    const int conn = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) {
        if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) return false;
        return make_error(errno, fmt::format("accept: {}", std::strerror(errno)));
    }
    HttpReply reply;
    if (auto head = read_head(conn)) {
        // Request line: METHOD SP TARGET SP HTTP/x.y
        const size_t eol = head->find("\r\n");
        const std::string line = head->substr(0, eol);
        const size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
        if (sp1 == std::string::npos || sp2 == sp1 ||
            !line.substr(sp2 + 1).starts_with("HTTP/1.")) {
            reply = {400, "text/plain; charset=utf-8", "malformed request line\n"};
        } else {
            HttpRequest req{line.substr(0, sp1), line.substr(sp1 + 1, sp2 - sp1 - 1)};
            if (const size_t q = req.path.find('?'); q != std::string::npos) {
                req.query = req.path.substr(q + 1);
                req.path.resize(q);
            }
            req.authorization = header_value(*head, "Authorization");
            req.local = unix_;
            std::optional<std::string> body;
            if (req.method == "POST" && allow_post_) {
                const std::string length = header_value(*head, "Content-Length");
                const size_t end = head->find("\r\n\r\n") + 4;
                body = read_body(conn, head->substr(end),
                                 length.empty() ? 0 : std::strtoul(length.c_str(), nullptr, 10));
            }
            if (req.method != "GET" && req.method != "HEAD" &&
                !(req.method == "POST" && allow_post_))
                reply = {405, "text/plain; charset=utf-8", "only GET and HEAD are served\n"};
            else if (req.method == "POST" && !body)
                reply = {400, "text/plain; charset=utf-8",
                         "request body missing, incomplete or over 16 KiB\n"};
            else {
                if (body) req.body = std::move(*body);
                reply = handler(req);
            }
            if (req.method == "HEAD") reply.body.clear();
        }
    } else {
        ::close(conn);
        return true;
    }
    const std::string head = fmt::format(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status, reason(reply.status), reply.content_type, reply.body.size());
    if (send_all(conn, head)) send_all(conn, reply.body);
    ::close(conn);
    return true;
}

}  // namespace liveio::observe
