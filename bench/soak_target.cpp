#include "soak_target.h"

#include <dirent.h>
#include <unistd.h>

#include <fstream>
#include <regex>

#include <fmt/format.h>

namespace liveio::bench {
namespace {

// Names in /proc/PID/fd without the inode numbers that make every socket distinct.
std::string fd_kind(const std::string& target) {
    static const std::regex numbered(R"(^(socket|pipe):\[\d+\]$)");
    std::smatch m;
    if (std::regex_match(target, m, numbered)) return m[1].str();
    return target;
}

std::vector<std::string> dir_entries(const std::string& dir) {
    std::vector<std::string> out;
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') out.emplace_back(e->d_name);
        ::closedir(d);
    }
    return out;
}

// ClickHouse names its connection threads HTTPHandler, TCPHandler, InterserverIOHTTPHandler;
// a pool thread that has not run one yet still has the process's name.
bool is_connection_handler(const std::string& name, const std::string& comm) {
    return name.ends_with("Handler") || name == comm;
}

}  // namespace

size_t ProcessSnapshot::fd_count() const {
    size_t n = 0;
    for (auto& [kind, count] : fds) n += static_cast<size_t>(count);
    return n;
}

size_t ProcessSnapshot::thread_count() const {
    size_t n = 0;
    for (auto& [name, count] : threads)
        if (!name.starts_with("iou-") && !is_connection_handler(name, comm))
            n += static_cast<size_t>(count);
    return n;
}

size_t ProcessSnapshot::connection_handler_threads() const {
    size_t n = 0;
    for (auto& [name, count] : threads)
        if (is_connection_handler(name, comm)) n += static_cast<size_t>(count);
    return n;
}

size_t ProcessSnapshot::io_uring_workers() const {
    size_t n = 0;
    for (auto& [name, count] : threads)
        if (name.starts_with("iou-")) n += static_cast<size_t>(count);
    return n;
}

std::vector<std::string> ProcessSnapshot::liveio_resources() const {
    std::vector<std::string> out;
    for (auto& [kind, count] : fds)
        if (kind.find("io_uring") != std::string::npos ||
            kind.find("eventfd") != std::string::npos ||
            kind.find("memfd:liveio") != std::string::npos)
            out.push_back(fmt::format("{} descriptor(s) {}", count, kind));
    for (auto& [name, count] : threads)
        if (name.starts_with("liveio")) out.push_back(fmt::format("{} thread(s) {}", count, name));
    for (auto& line : liveio_mappings) out.push_back("mapping " + line);
    for (auto& line : wx_mappings) out.push_back("writable+executable mapping " + line);
    return out;
}

Result<ProcessSnapshot> snapshot_process(pid_t pid) {
    const std::string proc = fmt::format("/proc/{}", pid);
    if (::access(proc.c_str(), F_OK) != 0)
        return make_error(ESRCH, fmt::format("process {} is gone", pid));
    ProcessSnapshot s;
    for (const std::string& fd : dir_entries(proc + "/fd")) {
        char buf[4096];
        const ssize_t n = ::readlink((proc + "/fd/" + fd).c_str(), buf, sizeof buf - 1);
        if (n > 0) ++s.fds[fd_kind(std::string(buf, static_cast<size_t>(n)))];
    }
    std::ifstream process_comm(proc + "/comm");
    std::getline(process_comm, s.comm);
    for (const std::string& tid : dir_entries(proc + "/task")) {
        std::ifstream comm(proc + "/task/" + tid + "/comm");
        std::string name;
        if (std::getline(comm, name)) ++s.threads[name];
    }
    std::ifstream maps(proc + "/maps");
    for (std::string line; std::getline(maps, line);) {
        ++s.mappings;
        // "start-end perms offset dev inode path": perms is the second field.
        const size_t sp = line.find(' ');
        const std::string perms = sp == std::string::npos ? "" : line.substr(sp + 1, 4);
        if (line.find("liveio-agent.so") != std::string::npos ||
            line.find("memfd:liveio") != std::string::npos)
            s.liveio_mappings.push_back(line);
        if (perms.size() == 4 && perms[1] == 'w' && perms[2] == 'x') s.wx_mappings.push_back(line);
    }
    std::ifstream status(proc + "/status");
    for (std::string line; std::getline(status, line);)
        if (line.starts_with("VmRSS:")) s.rss_kb = std::stoull(line.substr(6));
    return s;
}

std::string describe_change(const std::map<std::string, int>& before,
                            const std::map<std::string, int>& after) {
    std::map<std::string, int> delta;
    for (auto& [k, n] : after) delta[k] += n;
    for (auto& [k, n] : before) delta[k] -= n;
    std::string out;
    for (auto& [k, d] : delta)
        if (d != 0) out += fmt::format("{}{:+d} {}", out.empty() ? "" : ", ", d, k);
    return out.empty() ? "none" : out;
}

}  // namespace liveio::bench
