#include "control/protocol.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <fmt/format.h>

namespace liveio::control {

std::string control_socket_name(pid_t pid) {
    return std::string(1, '\0') + "liveio/" + std::to_string(pid);
}

std::optional<std::string> LineBuffer::next_line() {
    const size_t nl = buf_.find('\n');
    if (nl == std::string::npos) {
        if (buf_.size() > max_line_) overflowed_ = true;
        return std::nullopt;
    }
    if (nl > max_line_) {
        overflowed_ = true;
        return std::nullopt;
    }
    std::string line = buf_.substr(0, nl);
    buf_.erase(0, nl + 1);
    return line;
}

nlohmann::json make_ok(const nlohmann::json& id, nlohmann::json result) {
    return {{"v", kProtocolVersion}, {"id", id}, {"ok", true}, {"result", std::move(result)}};
}

nlohmann::json make_error_response(const nlohmann::json& id, const Error& error) {
    return {{"v", kProtocolVersion},
            {"id", id},
            {"ok", false},
            {"error", {{"code", error.code}, {"message", error.message}}}};
}

std::string render_response(const nlohmann::json& response) {
    // Replies carry names from BPF objects (ELF symbols and sections: arbitrary bytes); dump()
    // would throw on bytes that are not UTF-8 and end the control thread, so they become U+FFFD.
    return response.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

Result<ControlClient> ControlClient::connect(pid_t pid) {
    struct stat st;
    const std::string proc = "/proc/" + std::to_string(pid);
    if (pid <= 0 || ::stat(proc.c_str(), &st) != 0)
        return make_error(ESRCH, "process " + std::to_string(pid) + " does not exist");
    auto c = connect_name(control_socket_name(pid));
    if (!c && (c.error().code == ECONNREFUSED || c.error().code == ENOENT))
        return make_error(ECONNREFUSED, "no liveio agent is running in process " +
                                            std::to_string(pid) + " (attach first)");
    if (!c) return c;
    // Abstract names have no owner: any process may bind the target's name before its agent
    // does. Requests (programs, policies) go only to the target itself.
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(c->fd(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return make_error(
            errno, std::string("SO_PEERCRED on the control socket: ") + std::strerror(errno));
    if (cred.pid != pid)
        return make_error(
            EACCES,
            fmt::format("the control socket of process {} is served by process {} (uid {}), "
                        "not the target: refusing to talk to it",
                        pid, cred.pid, cred.uid));
    return c;
}

Result<ControlClient> ControlClient::connect_name(const std::string& name) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (name.size() > sizeof(addr.sun_path))
        return make_error(ENAMETOOLONG, "control socket name too long");
    std::memcpy(addr.sun_path, name.data(), name.size());
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return make_error(errno, std::string("socket: ") + std::strerror(errno));
    // connect() waits while the agent's backlog is full and send() while its receive buffer is:
    // an agent that stopped accepting or reading (its process dying, or hung) must not hold
    // the command forever. SO_SNDTIMEO bounds both.
    const timeval send_bound{kSendTimeoutMs / 1000, (kSendTimeoutMs % 1000) * 1000};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_bound, sizeof send_bound);
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
        const int err = errno;
        ::close(fd);
        if (err == EAGAIN)
            return make_error(ETIMEDOUT, fmt::format("the agent's control socket did not accept "
                                                     "the connection within {} ms",
                                                     kSendTimeoutMs));
        return make_error(err,
                          "connect to agent control socket: " + std::string(std::strerror(err)));
    }
    return ControlClient(fd);
}

ControlClient::ControlClient(ControlClient&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      next_id_(other.next_id_),
      in_(std::move(other.in_)),
      fds_(std::exchange(other.fds_, {})) {}

ControlClient& ControlClient::operator=(ControlClient&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = std::exchange(other.fd_, -1);
        next_id_ = other.next_id_;
        in_ = std::move(other.in_);
        for (int fd : fds_) ::close(fd);
        fds_ = std::exchange(other.fds_, {});
    }
    return *this;
}

ControlClient::~ControlClient() {
    if (fd_ >= 0) ::close(fd_);
    for (int fd : fds_) ::close(fd);
}

Result<std::string> ControlClient::read_line(int timeout_ms) {
    for (;;) {
        if (auto line = in_.next_line()) return std::move(*line);
        pollfd p{fd_, POLLIN, 0};
        const int n = ::poll(&p, 1, timeout_ms);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return make_error(errno, std::string("poll: ") + std::strerror(errno));
        if (n == 0)
            return make_error(ETIMEDOUT,
                              "agent did not answer within " + std::to_string(timeout_ms) + " ms");
        char buf[4096];
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
        iovec iov{buf, sizeof buf};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        const ssize_t r = ::recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
        for (cmsghdr* c = r > 0 ? CMSG_FIRSTHDR(&msg) : nullptr; c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < n; ++i) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                fds_.push_back(fd);
            }
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0)
            return make_error(errno, std::string("recv from agent: ") + std::strerror(errno));
        if (r == 0) return make_error(ECONNRESET, "agent closed the connection without answering");
        in_.append(std::string_view(buf, static_cast<size_t>(r)));
    }
}

Result<std::string> ControlClient::raw_exchange(std::string_view bytes, int timeout_ms) {
    while (!bytes.empty()) {
        const ssize_t w = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            // The agent may reject and close before reading everything (oversized request):
            // its answer is still in our receive queue.
            if (errno == EPIPE || errno == ECONNRESET) break;
            if (errno == EAGAIN)
                return make_error(
                    ETIMEDOUT,
                    fmt::format("the agent did not read the request within {} ms", kSendTimeoutMs));
            return make_error(errno, std::string("send to agent: ") + std::strerror(errno));
        }
        bytes.remove_prefix(static_cast<size_t>(w));
    }
    return read_line(timeout_ms);
}

Result<nlohmann::json> ControlClient::call(const std::string& cmd, nlohmann::json args,
                                           int timeout_ms) {
    nlohmann::json req = args.is_object() ? std::move(args) : nlohmann::json::object();
    const uint64_t id = next_id_++;
    req["v"] = kProtocolVersion;
    req["id"] = id;
    req["cmd"] = cmd;
    auto line = raw_exchange(req.dump() + "\n", timeout_ms);
    if (!line) return line.error();
    nlohmann::json resp;
    try {
        resp = nlohmann::json::parse(*line);
    } catch (const nlohmann::json::exception& e) {
        return make_error(EPROTO, std::string("agent sent malformed JSON: ") + e.what());
    }
    if (!resp.is_object()) return make_error(EPROTO, "agent response is not a JSON object");
    const int v = resp.value("v", 0);
    const bool ok = resp.value("ok", false);
    if (!ok) {
        const auto& err = resp.contains("error") ? resp["error"] : nlohmann::json::object();
        const int code = err.is_object() ? err.value("code", EPROTO) : EPROTO;
        std::string message = err.is_object() ? err.value("message", std::string("unknown error"))
                                              : std::string("unknown error");
        if (v != kProtocolVersion)
            message += " (agent speaks protocol " + std::to_string(v) + ", this liveio speaks " +
                       std::to_string(kProtocolVersion) + ")";
        return make_error(code, message);
    }
    if (v != kProtocolVersion)
        return make_error(EPROTO, "agent speaks protocol version " + std::to_string(v) +
                                      ", this liveio speaks " + std::to_string(kProtocolVersion) +
                                      ": agent is too " + (v < kProtocolVersion ? "old" : "new"));
    if (resp.value("id", nlohmann::json()) != nlohmann::json(id))
        return make_error(EPROTO, "agent answered a different request id");
    return resp.contains("result") ? resp["result"] : nlohmann::json::object();
}

}  // namespace liveio::control
