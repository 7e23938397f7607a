#include "cli/observe_session.h"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <fmt/format.h>

#include "cli/process_ops.h"

namespace liveio::cli {
namespace {

// attach/detach narrate on stdout; in the observing commands stdout carries the data (JSON,
// tables, metrics), so while they run their narration goes to stderr.
class StdoutToStderr {
public:
    StdoutToStderr() {
        std::fflush(stdout);
        saved_ = ::dup(STDOUT_FILENO);
        if (saved_ >= 0) ::dup2(STDERR_FILENO, STDOUT_FILENO);
    }
    ~StdoutToStderr() {
        std::fflush(stdout);
        if (saved_ >= 0) {
            ::dup2(saved_, STDOUT_FILENO);
            ::close(saved_);
        }
    }
    StdoutToStderr(const StdoutToStderr&) = delete;
    StdoutToStderr& operator=(const StdoutToStderr&) = delete;

private:
    int saved_ = -1;
};

}  // namespace

void observe_fail(const std::string& message) {
    std::fflush(stdout);
    std::fprintf(stderr, "liveio: %s\n", message.c_str());
    throw CLI::RuntimeError(1);
}

void ObserveArgs::add_to(CLI::App* cmd) {
    cmd->add_option("--mechanism,-m", mechanism,
                    "how calls are intercepted if the command attaches")
        ->check(CLI::IsMember(control::mechanism_names()))
        ->capture_default_str();
    cmd->add_option("--agent", agent, "path of liveio-agent.so (if the command attaches)");
    cmd->add_flag("--stay", stay, "leave the agent attached and the programs loaded on exit");
}

std::string process_comm(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
    std::string comm;
    std::getline(in, comm);
    return comm;
}

std::vector<pid_t> processes_with_agents() {
    std::ifstream unix_sockets("/proc/net/unix");
    std::vector<pid_t> out;
    std::string line;
    const std::string marker = " @liveio/";
    while (std::getline(unix_sockets, line)) {
        const size_t at = line.rfind(marker);
        if (at == std::string::npos) continue;
        try {
            size_t used = 0;
            const std::string digits = line.substr(at + marker.size());
            const long pid = std::stol(digits, &used);
            // Listening sockets only (connections accepted from them carry the name too).
            if (used == digits.size() && pid > 0 && line.find(" 00010000 ") != std::string::npos &&
                std::find(out.begin(), out.end(), pid) == out.end())
                out.push_back(static_cast<pid_t>(pid));
        } catch (const std::exception&) {
        }
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::unique_ptr<TargetSession> TargetSession::open(pid_t pid, const ObserveArgs& args,
                                                   bool attach_if_needed) {
    std::unique_ptr<TargetSession> s(new TargetSession(pid, args));
    if (!process_running(pid)) observe_fail(fmt::format("process {} does not exist", pid));
    s->comm_ = process_comm(pid);
    auto connected = control::ControlClient::connect(pid);
    if (!connected) {
        const Error& e = connected.error();
        if (e.code == ESRCH) observe_fail(fmt::format("process {} does not exist", pid));
        if (e.code == EACCES || e.code == EPERM)
            observe_fail(fmt::format(
                "permission denied: the agent in process {} ({}) refuses us (it accepts its "
                "owner and root): {}",
                pid, s->comm_, e.message));
        if (e.code != ECONNREFUSED) observe_fail(fmt::format("process {}: {}", pid, e.message));
        if (!attach_if_needed)
            observe_fail(fmt::format("no liveio agent in process {} ({})", pid, s->comm_));
        {
            StdoutToStderr narrate;
            attach_process(pid, args.mechanism, args.agent);
        }
        s->attached_ = true;
        connected = control::ControlClient::connect(pid);
        if (!connected) {
            const std::string why = connected.error().message;
            s->close();
            observe_fail(
                fmt::format("attached to {} but its agent is not reachable: {}", pid, why));
        }
    }
    s->client_.emplace(std::move(connected).value());
    return s;
}

TargetSession::~TargetSession() {
    try {
        close();
    } catch (const std::exception&) {
        // close() already printed why; a destructor must not throw.
    }
}

bool TargetSession::alive() const { return process_running(pid_); }

void TargetSession::fail_request(const Error& error, const std::string& what) {
    if (!alive()) {
        closed_ = true;  // nothing left to undo
        observe_fail(fmt::format("process {} ({}) exited", pid_, comm_));
    }
    observe_fail(fmt::format("{}: {}", what, error.message));
}

void TargetSession::close() {
    if (closed_) return;
    closed_ = true;
    if (args_.stay || !alive()) return;
    if (client_) {
        auto bpf = observe::BpfClient(*client_);
        for (auto it = loaded_.rbegin(); it != loaded_.rend(); ++it)
            if (auto r = bpf.unload(*it); !r && alive())
                std::fprintf(stderr, "liveio: unloading object %llu from %d: %s\n",
                             static_cast<unsigned long long>(*it), pid_, r.error().message.c_str());
        client_.reset();  // the agent's control thread ends on detach; do not hold it
    }
    if (attached_) {
        StdoutToStderr narrate;
        try {
            detach_process(pid_);
        } catch (const CLI::RuntimeError&) {
            if (alive()) throw;  // the reason is printed; the command fails
        }
    }
}

observe::ObjectInfo TargetSession::load(const std::string& path,
                                        const std::vector<std::string>& programs) {
    auto obj = check(bpf().load(path, args_.engine, programs),
                     fmt::format("loading {} into {}", path, pid_));
    loaded_.push_back(obj.id);
    return obj;
}

BuiltinMaps TargetSession::builtin(const std::string& object_name) {
    BuiltinMaps out;
    const auto objects = check(bpf().list(), fmt::format("listing the BPF objects of {}", pid_));
    for (const auto& o : objects)
        if (o.name == object_name) {
            out.object = o;
            break;
        }
    if (out.object.id == 0) {
        auto path = observe::resolve_object_path(object_name);
        if (!path) observe_fail(path.error().message);
        out.object = load(*path);
        out.loaded_here = true;
    }
    out.maps = check(bpf().maps(out.object.id),
                     fmt::format("mapping the maps of object {} in {}", out.object.id, pid_));
    return out;
}

ebpf::Map& BuiltinMaps::need(const std::string& map_name, pid_t pid) const {
    const auto* m = observe::find_map(maps, map_name);
    if (!m)
        observe_fail(fmt::format("object {} ({}) in {} has no {} map", object.id, object.name, pid,
                                 map_name));
    return *m->map;
}

IoStatsMaps TargetSession::io_stats() {
    IoStatsMaps out;
    static_cast<BuiltinMaps&>(out) = builtin(observe::kIoStatsObject);
    out.syscalls = &out.need("syscall_stats", pid_);
    if (const auto* cls = observe::find_map(out.maps, "class_stats")) out.classes = cls->map.get();
    return out;
}

observe::Snapshot TargetSession::snapshot(const IoStatsMaps& maps) {
    return check(observe::read_snapshot(*maps.syscalls, maps.classes),
                 fmt::format("reading the maps of {}", pid_));
}

SignalWatch::SignalWatch() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    ::sigprocmask(SIG_BLOCK, &set, &old_);
    fd_ = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

SignalWatch::~SignalWatch() {
    if (fd_ >= 0) ::close(fd_);
    ::sigprocmask(SIG_SETMASK, &old_, nullptr);
}

bool SignalWatch::received() {
    signalfd_siginfo info;
    while (fd_ >= 0 && ::read(fd_, &info, sizeof info) == static_cast<ssize_t>(sizeof info))
        got_ = true;
    return got_;
}

bool SignalWatch::wait(double seconds) {
    if (received()) return true;
    pollfd p{fd_, POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(seconds * 1000));
    return received();
}

}  // namespace liveio::cli
