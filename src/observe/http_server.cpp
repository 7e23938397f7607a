#include "observe/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
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

}  // namespace

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
        return make_error(EINVAL, fmt::format("listen address '{}': bad port '{}'", address, port_text));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(port));
    if (::inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1)
        return make_error(EINVAL, fmt::format("listen address '{}': '{}' is not a numeric IPv4 address", address, host));
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return make_error(errno, fmt::format("socket: {}", std::strerror(errno)));
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, 64) != 0) {
        const int err = errno;
        ::close(fd);
        return make_error(err, fmt::format("cannot listen on {}:{}: {}", host, port, std::strerror(err)));
    }
    socklen_t len = sizeof sa;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    return HttpServer(fd, host, ntohs(sa.sin_port));
}

HttpServer::HttpServer(HttpServer&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), host_(std::move(other.host_)), port_(other.port_) {}

HttpServer& HttpServer::operator=(HttpServer&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = std::exchange(other.fd_, -1);
        host_ = std::move(other.host_);
        port_ = other.port_;
    }
    return *this;
}

HttpServer::~HttpServer() {
    if (fd_ >= 0) ::close(fd_);
}

Result<bool> HttpServer::serve_one(int timeout_ms, const std::function<HttpReply(const HttpRequest&)>& handler,
                                   int wake_fd) {
    pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    const int ready = ::poll(p, wake_fd >= 0 ? 2 : 1, timeout_ms);
    if (ready < 0) {
        if (errno == EINTR) return false;
        return make_error(errno, fmt::format("poll on the listening socket: {}", std::strerror(errno)));
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
        if (sp1 == std::string::npos || sp2 == sp1 || !line.substr(sp2 + 1).starts_with("HTTP/1.")) {
            reply = {400, "text/plain; charset=utf-8", "malformed request line\n"};
        } else {
            HttpRequest req{line.substr(0, sp1), line.substr(sp1 + 1, sp2 - sp1 - 1)};
            if (const size_t q = req.path.find('?'); q != std::string::npos) req.path.resize(q);
            if (req.method != "GET" && req.method != "HEAD")
                reply = {405, "text/plain; charset=utf-8", "only GET and HEAD are served\n"};
            else
                reply = handler(req);
            if (req.method == "HEAD") reply.body.clear();
        }
    } else {
        ::close(conn);
        return true;
    }
    const std::string head = fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                         reply.status, reason(reply.status), reply.content_type, reply.body.size());
    if (send_all(conn, head)) send_all(conn, reply.body);
    ::close(conn);
    return true;
}

}  // namespace liveio::observe
