// Network namespaces by name, as iproute2 keeps them (/run/netns/NAME, a bind mount of the
// namespace): entering one from a thread, finding the processes inside one, and whether this
// process may create them at all.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "base/result.h"

namespace liveio::cluster {

std::string netns_path(const std::string& name);
bool netns_exists(const std::string& name);

// Moves the calling thread (only it: a network namespace is per thread) into the named
// namespace until destruction, when it returns to the namespace it came from. Sockets opened
// meanwhile, and processes forked meanwhile, belong to the entered namespace.
class NetnsScope {
public:
    // An empty name enters nothing (the scope is a no-op), so callers need no branch for
    // nodes reached without a namespace.
    static Result<NetnsScope> enter(const std::string& name);
    NetnsScope(NetnsScope&& other) noexcept;
    NetnsScope& operator=(NetnsScope&&) = delete;
    NetnsScope(const NetnsScope&) = delete;
    ~NetnsScope();

private:
    NetnsScope() = default;
    int original_fd_ = -1;
};

// The pids of every process whose network namespace is the named one (what `ip netns pids`
// prints), found through /proc/PID/ns/net. Zombies are left out: they hold no resources and
// are reaped by whoever adopted them.
std::vector<pid_t> processes_in_netns(const std::string& name);

// Empty when this process can create network namespaces, else why not (not root, no
// CAP_SYS_ADMIN, kernel without CONFIG_NET_NS): checked by a child that tries unshare().
std::string netns_unavailable_reason();

}  // namespace liveio::cluster
