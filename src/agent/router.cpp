#include "agent/router.h"

namespace liveio::agent {

Result<void> RequestRouter::add(const std::string& cmd, std::string help, RequestHandler handler) {
    if (cmd.empty() || !handler) return make_error(EINVAL, "request name and handler are required");
    std::lock_guard lock(mu_);
    if (!entries_.emplace(cmd, Entry{std::move(help), std::move(handler)}).second)
        return make_error(EEXIST, "request '" + cmd + "' is already registered");
    return {};
}

bool RequestRouter::remove(const std::string& cmd) {
    std::lock_guard lock(mu_);
    return entries_.erase(cmd) > 0;
}

Result<Reply> RequestRouter::dispatch(const std::string& cmd, const nlohmann::json& request) const {
    RequestHandler handler;
    {
        std::lock_guard lock(mu_);
        auto it = entries_.find(cmd);
        if (it == entries_.end()) {
            std::string known;
            for (auto& [name, entry] : entries_) known += (known.empty() ? "" : ", ") + name;
            return make_error(ENOSYS, "unknown request '" + cmd + "' (known: " + known + ")");
        }
        // A copy, so a handler may register or remove requests without deadlocking.
        handler = it->second.handler;
    }
    return handler(request);
}

nlohmann::json RequestRouter::describe() const {
    std::lock_guard lock(mu_);
    nlohmann::json out = nlohmann::json::object();
    for (auto& [name, entry] : entries_) out[name] = entry.help;
    return out;
}

}  // namespace liveio::agent
