// The control protocol between the `liveio` command and liveio-agent.so inside a target.
//
// Transport: a Unix stream socket in the abstract namespace, "\0liveio/<pid>". Abstract names
// carry no file permissions, so the agent checks every connection's SO_PEERCRED (the target's
// own uid and root only).
//
// Framing: newline-delimited JSON, one object per line, at most kMaxRequestBytes per request.
//   request:  {"v": 1, "id": 7, "cmd": "status", ...arguments}
//   response: {"v": 1, "id": 7, "ok": true, "result": {...}}
//          or {"v": 1, "id": 7, "ok": false, "error": {"code": 22, "message": "..."}}
// A request whose "v" differs from kProtocolVersion is answered with an error naming both
// versions, so either side can tell the user which one is too old.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/result.h"

namespace liveio::control {

inline constexpr int kProtocolVersion = 1;
inline constexpr const char* kAgentVersion = "0.1";
inline constexpr size_t kMaxRequestBytes = 64 * 1024;
// Bound on connecting to an agent and on handing it a request (ControlClient).
inline constexpr int kSendTimeoutMs = 10000;

// The interception mechanisms as requests and replies name them, in hook::Mechanism order
// (GOT slots, inline function hooks, syscall rewriting).
// Constant-initialized: the agent may read it from its library constructor.
inline constexpr std::array<const char*, 3> kMechanismNames = {"got", "inline", "rewrite"};
inline std::vector<std::string> mechanism_names() {
    return {kMechanismNames.begin(), kMechanismNames.end()};
}

// "\0liveio/<pid>" as the socket address bytes (leading NUL included).
std::string control_socket_name(pid_t pid);

// Accumulates bytes from a stream and splits them into lines. A line longer than `max_line`
// (newline not yet seen after that many bytes) marks the buffer as overflowed: the rest of
// the stream cannot be framed reliably, so the connection is answered once and closed.
class LineBuffer {
public:
    explicit LineBuffer(size_t max_line) : max_line_(max_line) {}
    void append(std::string_view bytes) { buf_.append(bytes); }
    // The next complete line without its newline, if any.
    std::optional<std::string> next_line();
    bool overflowed() const { return overflowed_; }

private:
    std::string buf_;
    size_t max_line_;
    bool overflowed_ = false;
};

nlohmann::json make_ok(const nlohmann::json& id, nlohmann::json result);
nlohmann::json make_error_response(const nlohmann::json& id, const Error& error);
// A response as the line sent on the socket (newline included).
std::string render_response(const nlohmann::json& response);

// A connection from the CLI (or a test) to one agent.
class ControlClient {
public:
    // Connects to the agent of `pid`. Errors distinguish "process gone" (ESRCH), "no agent
    // loaded" (ECONNREFUSED/ENOENT) and "permission denied" (EACCES).
    static Result<ControlClient> connect(pid_t pid);
    // Connects to an arbitrary abstract name (tests run agents under their own names).
    static Result<ControlClient> connect_name(const std::string& abstract_name);

    ControlClient(ControlClient&& other) noexcept;
    ControlClient& operator=(ControlClient&& other) noexcept;
    ControlClient(const ControlClient&) = delete;
    ControlClient& operator=(const ControlClient&) = delete;
    ~ControlClient();

    // Sends {"v":1,"id":..,"cmd":cmd, ...args} and waits up to `timeout_ms` for the response.
    // A response with ok=false becomes an Error carrying the agent's code and message.
    Result<nlohmann::json> call(const std::string& cmd,
                                nlohmann::json args = nlohmann::json::object(),
                                int timeout_ms = 10000);
    // Sends raw bytes and reads one response line, unparsed (for protocol tests).
    Result<std::string> raw_exchange(std::string_view bytes, int timeout_ms = 10000);

    int fd() const { return fd_; }
    // File descriptors the agent passed with SCM_RIGHTS since the last call; the caller owns
    // them from here on.
    std::vector<int> take_fds() { return std::exchange(fds_, {}); }

private:
    explicit ControlClient(int fd) : fd_(fd) {}
    Result<std::string> read_line(int timeout_ms);

    int fd_ = -1;
    uint64_t next_id_ = 1;
    LineBuffer in_{16 * 1024 * 1024};
    std::vector<int> fds_;
};

}  // namespace liveio::control
