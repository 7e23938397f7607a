// The node control endpoint: `liveio serve --target PID --control-socket PATH [--token-file F]`
// next to each ClickHouse server answers attach/detach/policy/stats requests for that server
// (HTTP, JSON replies) on a local unix socket (mode 0600: the owner is the authorization) and
// on its TCP listener only with `Authorization: Bearer <token>`, the token read from an
// owner-only file. This is the client side used by `liveio cluster attach/detach/stats`, the
// token helpers both sides share, and how the harness starts an endpoint.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>

#include "base/result.h"
#include "cluster/cluster_file.h"

namespace liveio::cluster {

// The TCP port of a node's `liveio serve` (its Prometheus /metrics and, with a token, control).
inline constexpr uint16_t kControlPort = 9464;

// The token in `path`. Refused (EPERM) when the file is not a regular file owned by this user
// with no permission bits for group or others: a token others can read authorizes nothing.
Result<std::string> read_token_file(const std::string& path);

// Creates `path` (mode 0600) holding a fresh random token unless it exists; returns the token.
Result<std::string> ensure_token_file(const std::string& path);

// True when `presented` (the Authorization header's value) is "Bearer <token>"; compares in
// time independent of where they differ.
bool bearer_matches(const std::string& presented, const std::string& token);

struct ControlReply {
    int status = 0;    // HTTP status
    std::string body;  // JSON from the endpoint
    std::string via;   // "unix:PATH" or "tcp:HOST:PORT"
};

// Sends one request to `node`'s control endpoint: over its unix socket when that exists on
// this machine, else over TCP to host:port (inside node.netns when set) with the token of
// control.token_file. The whole exchange is bounded by `timeout`.
Result<ControlReply> control_request(const Node& node, const std::string& method,
                                     const std::string& target, const std::string& body,
                                     std::chrono::milliseconds timeout);

// The same over TCP only, with `token` as given ("" sends no Authorization header); for tests
// of the refusal and for nodes on other machines.
Result<ControlReply> control_request_tcp(const Node& node, const std::string& method,
                                         const std::string& target, const std::string& body,
                                         const std::string& token,
                                         std::chrono::milliseconds timeout);

// Starts `liveio_exe serve --sockets` for `node` in the calling thread's network namespace,
// detached from the caller (own session, output in <data_dir>/serve.log, no PDEATHSIG), and
// waits (at most 20 s) for its control socket. With `history_table` ("db.table"), it inserts
// its metrics there on the node's own server every `history_interval`. Returns its pid.
Result<pid_t> start_control_endpoint(const std::string& liveio_exe, const Node& node,
                                     const std::string& history_table = "",
                                     const std::string& history_interval = "5s");

}  // namespace liveio::cluster
