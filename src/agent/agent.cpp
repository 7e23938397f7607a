#include "agent/agent.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <vector>

#include "agent/request_line.h"
#include "base/fault_points.h"
#include "control/protocol.h"
#include "hook/dispatcher.h"
#include "hook/world_stop.h"

namespace liveio::agent {

using control::control_socket_name;
using control::kAgentVersion;
using control::kMaxRequestBytes;
using control::kProtocolVersion;
using control::LineBuffer;
using control::make_error_response;
using control::make_ok;
using control::render_response;

namespace {

using nlohmann::json;

constexpr size_t kMaxConnections = 16;
// A client that stops reading its responses must not stall the control thread forever.
constexpr int kSendTimeoutMs = 2000;

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

// Writes all of `data` (and `fds` with the first byte) to a non-blocking socket.
bool send_all(int fd, const std::string& data, const std::vector<int>& fds) {
    size_t off = 0;
    bool fds_sent = fds.empty();
    while (off < data.size()) {
        msghdr msg{};
        iovec iov{const_cast<char*>(data.data() + off), data.size() - off};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        std::vector<char> control;
        if (!fds_sent) {
            control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
            msg.msg_control = control.data();
            msg.msg_controllen = control.size();
            cmsghdr* c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
            std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
        }
        const ssize_t w = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (w > 0) {
            off += static_cast<size_t>(w);
            fds_sent = true;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            pollfd p{fd, POLLOUT, 0};
            if (::poll(&p, 1, kSendTimeoutMs) <= 0) return false;
            continue;
        }
        return false;
    }
    return true;
}

struct Connection {
    int fd;
    LineBuffer in{kMaxRequestBytes};
};

}  // namespace

const char* mechanism_name(hook::Mechanism m) {
    const auto i = static_cast<size_t>(m);
    return i < control::kMechanismNames.size() ? control::kMechanismNames[i] : "unknown";
}

Result<hook::Mechanism> parse_mechanism(const std::string& name) {
    for (size_t i = 0; i < control::kMechanismNames.size(); ++i)
        if (name == control::kMechanismNames[i]) return static_cast<hook::Mechanism>(i);
    return make_error(EINVAL, "unknown mechanism '" + name + "' (expected got, inline or rewrite)");
}

Agent::Agent(AgentOptions options) : options_(std::move(options)) {}

Result<std::unique_ptr<Agent>> Agent::start(AgentOptions options) {
    if (options.socket_name.empty()) options.socket_name = control_socket_name(::getpid());
    std::unique_ptr<Agent> agent(new Agent(std::move(options)));
    if (auto r = agent->open_socket(); !r) return r.error();
    agent->register_builtin_requests();
    BpfHost::Options bpf_options;
    bpf_options.ensure_interception = [a = agent.get()]() -> Result<void> {
        {
            std::lock_guard lock(a->mu_);
            for (auto& slot : a->interceptors_)
                if (slot) return {};
        }
        auto r = a->install(json{{"mechanism", "got"}});
        if (!r) return r.error();
        return {};
    };
    auto bpf = BpfHost::create(std::move(bpf_options));
    if (!bpf) return bpf.error();
    agent->bpf_ = std::move(bpf).value();
    agent->pipeline_ = std::make_unique<AgentPipeline>(agent->counters_, *agent->bpf_);
    if (auto r = agent->bpf_->register_requests(agent->router_); !r) return r.error();
    agent->policies_ = std::make_unique<PolicyHost>(*agent->bpf_, *agent->pipeline_);
    if (auto r = agent->policies_->register_requests(agent->router_); !r) return r.error();

    // The control thread inherits this mask: the application's asynchronous signals are
    // delivered to its own threads, never to ours. The world-stop signal stays deliverable
    // (inline patching parks every other thread with it) and faults cannot be blocked.
    sigset_t all, old;
    sigfillset(&all);
    for (int s : {hook::world_stop_signal(), SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP})
        sigdelset(&all, s);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    try {
        agent->thread_ = std::thread([a = agent.get()] { a->serve(); });
    } catch (const std::exception& e) {
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        return make_error(EAGAIN,
                          std::string("cannot start the agent control thread: ") + e.what());
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return agent;
}

Result<void> Agent::open_socket() {
    hook::Dispatcher::ScopedInside inside;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string& name = options_.socket_name;
    if (name.size() > sizeof(addr.sun_path))
        return make_error(ENAMETOOLONG, "socket name too long");
    std::memcpy(addr.sun_path, name.data(), name.size());
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (listen_fd_ < 0) return make_error(errno, errno_text("agent socket"));
    // The lowest free numbers are the target's (base/high_fd.h): ours go high.
    listen_fd_ = move_high(listen_fd_);
    listen_identity_ = fd_identity(listen_fd_);
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
        const int err = errno;
        return make_error(err, err == EADDRINUSE
                                   ? "another liveio agent already serves this process"
                                   : "agent bind: " + std::string(std::strerror(err)));
    }
    if (::listen(listen_fd_, 16) != 0) return make_error(errno, errno_text("agent listen"));
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) return make_error(errno, errno_text("agent eventfd"));
    wake_fd_ = move_high(wake_fd_);
    wake_identity_ = fd_identity(wake_fd_);
    return {};
}

Agent::~Agent() {
    stop_control();
    policies_.reset();  // drains the I/O thread before the programs go
    if (bpf_) bpf_->unload_all();
    (void)uninstall(std::nullopt);
    hook::Dispatcher::ScopedInside inside;
    // The target may have closed them and reused the numbers.
    close_if_same(listen_fd_, listen_identity_);
    close_if_same(wake_fd_, wake_identity_);
}

void Agent::stop_control() {
    hook::Dispatcher::ScopedInside inside;
    stop_requested_.store(true, std::memory_order_release);
    // Never into a file the target put at the number after closing ours. A control thread
    // asleep in poll() keeps the closed eventfd and listening socket alive (poll holds
    // references to them) but nobody can write that eventfd any more: a connection to our own
    // socket name wakes it instead.
    if (wake_fd_ >= 0 && fd_identity(wake_fd_) == wake_identity_) {
        const uint64_t one = 1;
        (void)!::write(wake_fd_, &one, sizeof one);
    } else if (thread_.joinable()) {
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        const std::string& name = options_.socket_name;
        std::memcpy(addr.sun_path, name.data(), std::min(name.size(), sizeof addr.sun_path));
        const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s >= 0) {
            (void)::connect(s, reinterpret_cast<sockaddr*>(&addr),
                            static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) +
                                                   std::min(name.size(), sizeof addr.sun_path)));
            ::close(s);
        }
    }
    if (thread_.joinable()) thread_.join();
}

void Agent::set_last_error(std::string message) {
    std::lock_guard lock(mu_);
    last_error_ = std::move(message);
}

Result<json> Agent::install(const json& spec) {
    if (!spec.is_object()) return make_error(EINVAL, "install expects an object");
    hook::InterceptOptions options;
    try {
        auto m = parse_mechanism(spec.value("mechanism", std::string("got")));
        if (!m) return m.error();
        options.mechanism = *m;
        for (const char* key : {"objects", "functions"}) {
            if (!spec.contains(key) || spec[key].is_null()) continue;
            if (!spec[key].is_array())
                return make_error(EINVAL, std::string(key) + " must be an array of strings");
            auto& out = key[0] == 'o' ? options.objects : options.functions;
            for (auto& v : spec[key]) {
                if (!v.is_string())
                    return make_error(EINVAL, std::string(key) + " must be an array of strings");
                out.push_back(v.get<std::string>());
            }
        }
    } catch (const json::exception& e) {
        return make_error(EINVAL, std::string("bad install request: ") + e.what());
    }
    std::lock_guard lock(mu_);
    auto& slot = interceptors_[static_cast<int>(options.mechanism)];
    if (slot)
        return make_error(EBUSY, std::string("mechanism ") + mechanism_name(options.mechanism) +
                                     " is already installed (uninstall it first)");
    auto interceptor = hook::Interceptor::install(options, pipeline_.get());
    if (!interceptor) return interceptor.error();
    slot = std::move(interceptor).value();
    return json{{"mechanism", mechanism_name(options.mechanism)}, {"installed", true}};
}

Result<json> Agent::uninstall(std::optional<hook::Mechanism> mechanism) {
    std::lock_guard lock(mu_);
    json removed = json::array();
    json reports = json::object();
    for (auto& slot : interceptors_) {
        if (!slot || (mechanism && slot->mechanism() != *mechanism)) continue;
        const hook::Mechanism m = slot->mechanism();
        // Waits until no thread is inside this mechanism's hooks; only then may the handler
        // (our call pipeline) and, after detach, the library's code go away.
        if (auto r = slot->uninstall(); !r)
            return make_error(r.error().code, std::string("uninstalling ") + mechanism_name(m) +
                                                  ": " + r.error().message);
        const hook::UninstallReport report = slot->last_uninstall();
        json how = {{"moved_out", report.moved_out},
                    {"world_stops", report.world_stops},
                    {"waited_ms", report.waited_ms}};
        if (!report.kept.empty()) how["kept"] = report.kept;
        reports[mechanism_name(m)] = std::move(how);
        slot.reset();
        removed.push_back(mechanism_name(m));
    }
    if (mechanism && removed.empty())
        return make_error(
            ENOENT, std::string("mechanism ") + mechanism_name(*mechanism) + " is not installed");
    return json{{"uninstalled", removed}, {"how", reports}};
}

json Agent::status() const {
    json mechanisms = json::array();
    std::string last_error;
    {
        std::lock_guard lock(mu_);
        for (auto& slot : interceptors_)
            if (slot)
                mechanisms.push_back({{"name", mechanism_name(slot->mechanism())},
                                      {"calls_dispatched", slot->calls_dispatched()}});
        last_error = last_error_;
    }
    const double uptime =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    json out = {{"pid", ::getpid()},
                {"agent_version", kAgentVersion},
                {"protocol", kProtocolVersion},
                {"uptime_s", uptime},
                {"resident", options_.resident},
                {"mechanisms", mechanisms},
                {"calls", counters_.snapshot()},
                {"policies", policies_ ? policies_->list() : json::object()},
                {"control",
                 {{"allowed_uids", {::geteuid(), 0}},
                  {"refused_connections", refused_connections_.load(std::memory_order_relaxed)}}},
                {"requests", router_.describe()}};
    if (!options_.library_path.empty())
        out["library"] = {{"path", options_.library_path}, {"handle", options_.library_handle}};
    if (!last_error.empty()) out["last_error"] = last_error;
    json faults = json::object();
    for (size_t i = 0; i < std::size(fault::kPointNames); ++i) {
        const auto p = static_cast<fault::Point>(i);
        if (fault::plan().armed(p) != 0 || fault::plan().injected(p) != 0)
            faults[fault::kPointNames[i]] = {{"armed", fault::plan().armed(p)},
                                             {"injected", fault::plan().injected(p)}};
    }
    if (!faults.empty()) out["faults"] = faults;
    return out;
}

void Agent::register_builtin_requests() {
    auto must = [](Result<void> r) {
        // Built-in names are distinct; a clash is a programming error caught by every test.
        if (!r) std::terminate();
    };
    must(router_.add("status", "pid, version, installed mechanisms, calls per syscall, uptime",
                     [this](const json&) -> Result<Reply> {
                         return Reply{status(), {}, {}};
                     }));
    must(router_.add("install",
                     "install {mechanism: got|inline|rewrite, objects: [..], functions: [..]}",
                     [this](const json& req) -> Result<Reply> {
                         auto r = install(req);
                         if (!r) return r.error();
                         return Reply{std::move(r).value(), {}, {}};
                     }));
    must(router_.add(
        "fault.arm",
        "fault.arm {point, times}: the next `times` runs of an engine step fail (tests)",
        [](const json& req) -> Result<Reply> {
            if (!req.contains("point") || !req["point"].is_string() || !req.contains("times") ||
                !req["times"].is_number_unsigned() || req["times"].get<uint64_t>() > UINT32_MAX)
                return make_error(EINVAL, "expected {\"point\": NAME, \"times\": N}");
            const auto point = fault::parse_point(req["point"].get<std::string>());
            if (!point) {
                std::string names;
                for (const char* n : fault::kPointNames)
                    names += (names.empty() ? "" : ", ") + std::string(n);
                return make_error(ENOENT, "no fault point '" + req["point"].get<std::string>() +
                                              "' (points: " + names + ")");
            }
            fault::plan().arm(*point, req["times"].get<uint32_t>());
            return Reply{};
        }));
    must(router_.add("uninstall", "uninstall {mechanism?}: remove one or every mechanism",
                     [this](const json& req) -> Result<Reply> {
                         std::optional<hook::Mechanism> m;
                         if (req.contains("mechanism")) {
                             if (!req["mechanism"].is_string())
                                 return make_error(EINVAL, "mechanism must be a string");
                             auto p = parse_mechanism(req["mechanism"].get<std::string>());
                             if (!p) return p.error();
                             m = *p;
                         }
                         auto r = uninstall(m);
                         if (!r) return r.error();
                         return Reply{std::move(r).value(), {}, {}};
                     }));
    must(router_.add("detach",
                     "uninstall everything and stop serving, so the library can be unloaded",
                     [this](const json&) -> Result<Reply> {
                         // Drained: nothing in flight, no liveio-io thread (or refused, attached).
                         if (auto off = policies_->off_all(); !off) return off.error();
                         bpf_->unload_all();  // programs, maps and uprobes go before the library
                         auto r = uninstall(std::nullopt);
                         if (!r) return r.error();
                         Reply reply;
                         reply.result = {{"uninstalled", (*r)["uninstalled"]},
                                         {"how", (*r)["how"]},
                                         {"unloadable", !options_.resident},
                                         {"control_tid", control_tid_.load()}};
                         if (!options_.library_path.empty())
                             reply.result["library"] = {{"path", options_.library_path},
                                                        {"handle", options_.library_handle}};
                         if (!options_.resident)
                             reply.after_reply = [this] { stop_requested_.store(true); };
                         return reply;
                     }));
}

void Agent::serve() {
    hook::Dispatcher::ScopedInside inside;  // this thread's I/O goes straight to the kernel
    control_tid_.store(static_cast<pid_t>(::gettid()), std::memory_order_release);
    std::vector<Connection> conns;
    const uid_t own_uid = ::geteuid();

    auto respond = [](int fd, const json& response, const std::vector<int>& fds = {}) {
        return send_all(fd, render_response(response), fds);
    };

    // Handles one request line; returns false when the connection must be closed.
    auto handle_line = [&](Connection& c, const std::string& line) -> bool {
        Reply reply;
        const std::string response = answer_request_line(router_, line, reply);
        const bool ok = send_all(c.fd, response, reply.fds);
        for (int fd : reply.fds) ::close(fd);
        if (reply.after_reply) reply.after_reply();
        return ok;
    };

    auto close_conn = [&](size_t i) {
        ::close(conns[i].fd);
        conns.erase(conns.begin() + static_cast<long>(i));
    };

    while (!stop_requested_.load(std::memory_order_acquire)) {
        std::vector<pollfd> fds;
        fds.push_back({wake_fd_, POLLIN, 0});
        fds.push_back({listen_fd_, POLLIN, 0});
        for (auto& c : conns) fds.push_back({c.fd, POLLIN, 0});
        const int n = ::poll(fds.data(), fds.size(), -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;  // cannot happen with valid fds; never spin
        }
        if (fds[0].revents) break;
        // Connections first (indices match fds[2..]); walk backwards so erasing is safe.
        for (size_t i = conns.size(); i-- > 0;) {
            const short re = fds[i + 2].revents;
            if (!re) continue;
            char buf[4096];
            const ssize_t r = ::recv(conns[i].fd, buf, sizeof buf, 0);
            if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (r <= 0) {
                close_conn(i);
                continue;
            }
            conns[i].in.append(std::string_view(buf, static_cast<size_t>(r)));
            bool keep = true;
            while (keep && !stop_requested_.load()) {
                auto line = conns[i].in.next_line();
                if (!line) break;
                keep = handle_line(conns[i], *line);
            }
            if (keep && conns[i].in.overflowed()) {
                (void)respond(conns[i].fd,
                              make_error_response(
                                  nullptr, make_error(E2BIG, "request longer than " +
                                                                 std::to_string(kMaxRequestBytes) +
                                                                 " bytes")));
                keep = false;
            }
            if (!keep) close_conn(i);
        }
        if (fds[1].revents & POLLIN) {
            const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd >= 0) {
                ucred cred{};
                socklen_t len = sizeof cred;
                const bool known = ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
                if (!known || (cred.uid != 0 && cred.uid != own_uid)) {
                    refused_connections_.fetch_add(1, std::memory_order_relaxed);
                    (void)respond(
                        fd, make_error_response(
                                nullptr, make_error(EACCES, "permission denied: uid " +
                                                                (known ? std::to_string(cred.uid)
                                                                       : std::string("unknown")) +
                                                                " may not control process " +
                                                                std::to_string(::getpid()) +
                                                                "; only its owner (uid " +
                                                                std::to_string(own_uid) +
                                                                ") and root may")));
                    ::close(fd);
                } else if (conns.size() >= kMaxConnections) {
                    (void)respond(
                        fd, make_error_response(nullptr,
                                                make_error(EBUSY, "too many control connections")));
                    ::close(fd);
                } else {
                    conns.push_back(Connection{fd});
                }
            }
        }
    }
    for (auto& c : conns) ::close(c.fd);
    // Closing the listening socket frees the abstract name at once, so a re-attach that
    // loads a fresh agent can bind it. A child the application is forking right now holds the
    // descriptor until it execs (close-on-exec): shut the socket down first, so it refuses
    // connections whoever still holds it.
    // The target may have closed it and reused the number: only ours is shut down and closed.
    if (fd_identity(listen_fd_) == listen_identity_) {
        ::shutdown(listen_fd_, SHUT_RDWR);
        ::close(listen_fd_);
    }
    listen_fd_ = -1;
    control_stopped_.store(true, std::memory_order_release);
}

}  // namespace liveio::agent
