// A minimal HTTP/1.1 server on plain sockets for `liveio serve`: one request per connection
// (Connection: close), answered in the caller's thread. Enough for Prometheus scrapes and curl;
// requests are bounded in size and time so a stuck client cannot stall the server for long.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace liveio::observe {

struct HttpRequest {
    std::string method;         // "GET"
    std::string path;           // "/metrics" (query string removed)
    std::string query;          // what followed '?' in the target, undecoded ("" none)
    std::string authorization;  // the Authorization header's value ("" none)
    std::string body;           // POST only (allow_post), at most 16 KiB
    bool local = false;         // came over a unix socket (listen_unix), not TCP
};

struct HttpReply {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
};

class HttpServer {
public:
    // "127.0.0.1:9100", "0.0.0.0:9100", ":9100" (loopback); port 0 picks a free one.
    static Result<HttpServer> listen(std::string_view address);

    // A unix stream socket at `path` (an existing socket file there is replaced), mode 0600:
    // only its owner (and root) may connect, which is what authorizes its requests.
    static Result<HttpServer> listen_unix(const std::string& path);

    // Waits up to `timeout_ms` for a connection on any of `servers` and serves it like
    // serve_one; `wake_fd` as there.
    static Result<bool> serve_any(const std::vector<HttpServer*>& servers, int timeout_ms,
                                  const std::function<HttpReply(const HttpRequest&)>& handler,
                                  int wake_fd = -1);

    // POST requests (with a body) reach the handler; without it they get 405.
    void allow_post(bool allow) { allow_post_ = allow; }

    HttpServer(HttpServer&& other) noexcept;
    HttpServer& operator=(HttpServer&& other) noexcept;
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;
    ~HttpServer();

    uint16_t port() const { return port_; }
    const std::string& host() const { return host_; }  // for a unix socket: its path
    int fd() const { return fd_; }

    // Waits up to `timeout_ms` for a connection and answers its request with `handler`'s reply
    // (malformed requests get 400 without calling it). Returns whether a connection came;
    // errors of one connection (client went away) are not errors of the server. The wait also
    // ends, with false, when `wake_fd` (if >= 0) becomes readable (e.g. a signalfd).
    Result<bool> serve_one(int timeout_ms,
                           const std::function<HttpReply(const HttpRequest&)>& handler,
                           int wake_fd = -1);

private:
    HttpServer(int fd, std::string host, uint16_t port, bool unix_socket = false)
        : fd_(fd), host_(std::move(host)), port_(port), unix_(unix_socket) {}
    int fd_ = -1;
    std::string host_;
    uint16_t port_ = 0;
    bool unix_ = false;
    bool allow_post_ = false;
};

}  // namespace liveio::observe
