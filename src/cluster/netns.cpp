#include "cluster/netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>

#include "base/proc_tasks.h"

namespace liveio::cluster {

std::string netns_path(const std::string& name) { return "/run/netns/" + name; }

bool netns_exists(const std::string& name) { return ::access(netns_path(name).c_str(), F_OK) == 0; }

Result<NetnsScope> NetnsScope::enter(const std::string& name) {
    NetnsScope scope;
    if (name.empty()) return scope;
    const int original = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (original < 0)
        return make_error(errno,
                          fmt::format("open /proc/thread-self/ns/net: {}", std::strerror(errno)));
    const int target = ::open(netns_path(name).c_str(), O_RDONLY | O_CLOEXEC);
    if (target < 0) {
        const int err = errno;
        ::close(original);
        return make_error(err, fmt::format("network namespace {}: {}", name, std::strerror(err)));
    }
    const int rc = ::setns(target, CLONE_NEWNET);
    const int err = errno;
    ::close(target);
    if (rc != 0) {
        ::close(original);
        return make_error(
            err, fmt::format("entering network namespace {}: {}", name, std::strerror(err)));
    }
    scope.original_fd_ = original;
    return scope;
}

NetnsScope::NetnsScope(NetnsScope&& other) noexcept
    : original_fd_(std::exchange(other.original_fd_, -1)) {}

NetnsScope::~NetnsScope() {
    if (original_fd_ < 0) return;
    // Returning cannot fail for a namespace we were in (same user, same rights).
    (void)::setns(original_fd_, CLONE_NEWNET);
    ::close(original_fd_);
}

std::vector<pid_t> processes_in_netns(const std::string& name) {
    std::vector<pid_t> pids;
    struct stat ns {};
    if (::stat(netns_path(name).c_str(), &ns) != 0) return pids;
    DIR* proc = ::opendir("/proc");
    if (!proc) return pids;
    while (dirent* e = ::readdir(proc)) {
        char* end = nullptr;
        const long pid = std::strtol(e->d_name, &end, 10);
        if (pid <= 0 || *end) continue;
        struct stat st {};
        if (::stat(fmt::format("/proc/{}/ns/net", pid).c_str(), &st) != 0) continue;
        if (st.st_ino != ns.st_ino || st.st_dev != ns.st_dev) continue;
        if (process_state(static_cast<pid_t>(pid)) == 'Z') continue;
        pids.push_back(static_cast<pid_t>(pid));
    }
    ::closedir(proc);
    return pids;
}

std::string netns_unavailable_reason() {
    if (::geteuid() != 0)
        return "not running as root (network namespaces, veth and bridges need CAP_SYS_ADMIN and "
               "CAP_NET_ADMIN)";
    const pid_t pid = ::fork();
    if (pid < 0) return fmt::format("fork: {}", std::strerror(errno));
    if (pid == 0) ::_exit(::unshare(CLONE_NEWNET) == 0 ? 0 : (errno & 0x7f));
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
    if (WIFEXITED(status))
        return fmt::format("unshare(CLONE_NEWNET) fails: {}", std::strerror(WEXITSTATUS(status)));
    return "unshare(CLONE_NEWNET) probe crashed";
}

}  // namespace liveio::cluster
