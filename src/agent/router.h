// Maps control-request names to handlers. Adding a request is one add() call from whoever
// owns the feature (BPF program load, map fds, policies), not an edit of a central switch.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/result.h"

namespace liveio::agent {

// What a request handler returns: the JSON result, file descriptors to pass to the client
// with SCM_RIGHTS alongside the response line (closed by the agent once sent), and work to
// run once the response has been written (detach stops the control thread that way).
struct Reply {
    nlohmann::json result = nlohmann::json::object();
    std::vector<int> fds;
    std::function<void()> after_reply;
};

// A handler gets the request's arguments (the whole request object, "v"/"id"/"cmd" included)
// and runs on the agent's control thread, outside interception (its I/O is never hooked).
// Exceptions it throws become error responses.
using RequestHandler = std::function<Result<Reply>(const nlohmann::json& request)>;

class RequestRouter {
public:
    // EEXIST when `cmd` is already registered.
    Result<void> add(const std::string& cmd, std::string help, RequestHandler handler);
    // Removes a registration (a feature being torn down); false when absent.
    bool remove(const std::string& cmd);
    // ENOSYS for an unknown command (the message lists the known ones).
    Result<Reply> dispatch(const std::string& cmd, const nlohmann::json& request) const;
    // {cmd: help} for every registered request.
    nlohmann::json describe() const;

private:
    struct Entry {
        std::string help;
        RequestHandler handler;
    };
    mutable std::mutex mu_;
    std::map<std::string, Entry> entries_;
};

}  // namespace liveio::agent
