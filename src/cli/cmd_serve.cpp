// `liveio serve --listen 127.0.0.1:PORT [--pid PID ...] [--sink clickhouse://HOST:PORT/db.table]`:
// the io_stats counters of every observed process as a Prometheus /metrics endpoint, and
// optionally inserted into ClickHouse every --sink-interval.
//
// Processes: those given with --pid (attached if they have no agent yet), else every process
// that has a liveio agent, found again at every scrape. Each gets the built-in io_stats
// object (its running instance, or one loaded here and unloaded on exit unless --stay).
//
// As a cluster node's control endpoint (--target PID, the node's server): /control/ping,
// /control/attach, /control/detach, /control/policy and /control/stats act on that process by
// running this executable's own attach/detach/policy/status commands (bounded in time, their
// output returned), so a request takes exactly the path of the command line. Control requests
// come over --control-socket (a unix socket only its owner can open) or over the TCP listener
// with `Authorization: Bearer TOKEN`, TOKEN read from the owner-only --token-file; without a
// token file TCP control is off. /metrics then shows the target while it has an agent;
// /control/io returns its counters as JSON (what `liveio cluster top` shows).
#include <signal.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/observe_session.h"
#include "cluster/control.h"
#include "control/command.h"
#include "observe/format.h"
#include "observe/http_server.h"
#include "observe/prometheus.h"
#include "observe/sink.h"

namespace liveio::cli {
namespace {

struct ServeArgs {
    std::string listen;
    std::vector<pid_t> pids;
    std::string sink;
    std::string sink_interval = "10s";
    pid_t target = 0;
    std::string control_socket;
    std::string token_file;
    std::string node;
    bool sockets = false;
    ObserveArgs observe;
};

// A control reply: JSON {"ok": ..., "node": ..., ...}.
observe::HttpReply json_reply(int status, nlohmann::json body) {
    return {status, "application/json", body.dump() + "\n"};
}

// One observed process. A session that fails (process exited, agent gone) is kept with its
// error so the endpoint reports it down instead of dropping it silently.
struct Observed {
    std::unique_ptr<TargetSession> session;
    IoStatsMaps io;
    std::string comm;
    std::string error;
    observe::Snapshot last_sunk;  // counters at the last sink write
    bool have_last = false;
    // With --sockets: the net_stats object, its socket_stats map, the sockets' peers.
    BuiltinMaps net;
    ebpf::Map* sockets = nullptr;
    std::unique_ptr<observe::SocketPeers> peers;
    std::map<uint64_t, observe::SocketCounters> last_sunk_sockets;  // by file_id

    std::vector<observe::SocketSample> read_sockets() {
        if (!sockets) return {};
        auto rows = observe::read_sockets(*sockets);
        if (!rows) return {};
        return peers->resolve(*rows);
    }
};

class Server {
public:
    explicit Server(ServeArgs args) : args_(std::move(args)) {}

    void run() {
        // Before anything is attached or announced: a signal from here on ends the loop below
        // and the cleanup runs.
        SignalWatch signals;
        if (!args_.sink.empty()) {
            auto t = observe::parse_sink_url(args_.sink);
            if (!t) observe_fail(t.error().message);
            auto s = observe::parse_seconds(args_.sink_interval);
            if (!s) observe_fail("--sink-interval: " + s.error().message);
            sink_interval_ = *s;
            auto sink = observe::ClickHouseSink::open(*t);
            if (!sink) observe_fail(sink.error().message);
            sink_.emplace(std::move(sink).value());
        }
        auto server = observe::HttpServer::listen(args_.listen);
        if (!server) observe_fail(server.error().message);
        if (!args_.token_file.empty()) {
            auto token = cluster::read_token_file(args_.token_file);
            if (!token) observe_fail(token.error().message);
            token_ = *token;
        }
        std::vector<observe::HttpServer*> listeners{&*server};
        std::optional<observe::HttpServer> control;
        if (!args_.control_socket.empty()) {
            auto c = observe::HttpServer::listen_unix(args_.control_socket);
            if (!c) observe_fail(c.error().message);
            control.emplace(std::move(c).value());
            control->allow_post(true);
            listeners.push_back(&*control);
        }
        if (args_.target) {
            server->allow_post(true);
            std::error_code ec;
            self_exe_ = std::filesystem::read_symlink("/proc/self/exe", ec);
            if (ec) observe_fail("cannot find this executable: " + ec.message());
        }
        for (pid_t pid : args_.pids) add(pid, /*attach=*/true);
        std::fprintf(
            stderr, "liveio: serving http://%s:%u/metrics for %s; Ctrl-C to stop\n",
            server->host().c_str(), server->port(),
            args_.pids.empty() ? "every process with a liveio agent" : "the given processes");
        std::printf("listening on %s:%u\n", server->host().c_str(), server->port());
        std::fflush(stdout);
        uint64_t next_sink = observe::monotonic_ns() + static_cast<uint64_t>(sink_interval_ * 1e9);
        while (!signals.received()) {
            int timeout_ms = 1000;
            if (sink_) {
                const uint64_t now = observe::monotonic_ns();
                if (now >= next_sink) {
                    write_sink();
                    next_sink = now + static_cast<uint64_t>(sink_interval_ * 1e9);
                }
                timeout_ms = static_cast<int>(
                    (next_sink - std::min(next_sink, observe::monotonic_ns())) / 1000000 + 1);
            }
            auto served = observe::HttpServer::serve_any(
                listeners, timeout_ms, [&](const observe::HttpRequest& req) { return handle(req); },
                signals.fd());
            if (!served) observe_fail(served.error().message);
        }
        if (sink_) write_sink();  // the last partial interval
        close_all();
    }

    ~Server() {
        try {
            close_all();
        } catch (const std::exception&) {
        }
    }

private:
    void add(pid_t pid, bool attach) {
        Observed o;
        o.session = TargetSession::open(pid, args_.observe, attach);
        o.comm = o.session->comm();
        o.io = o.session->io_stats();
        if (args_.sockets) {
            o.net = o.session->builtin(observe::kNetStatsObject);
            o.sockets = &o.net.need("socket_stats", pid);
            o.peers = std::make_unique<observe::SocketPeers>(pid);
        }
        if (o.io.loaded_here) {
            // Everything this instance counts is new: the first interval starts at its load.
            o.last_sunk.time_ns = observe::monotonic_ns();
            o.have_last = true;
        }
        observed_.emplace(pid, std::move(o));
    }

    // Without --pid: follow the processes that have agents now (with --target: that one).
    void discover() {
        if (!args_.pids.empty()) return;
        if (args_.target) {
            if (observed_.count(args_.target) || failed_.count(args_.target) || !has_agent())
                return;
            try {
                add(args_.target, /*attach=*/false);
            } catch (const CLI::RuntimeError&) {
                failed_.insert(args_.target);
            }
            return;
        }
        for (pid_t pid : processes_with_agents()) {
            if (observed_.count(pid) || failed_.count(pid)) continue;
            try {
                add(pid, /*attach=*/false);
            } catch (const CLI::RuntimeError&) {
                failed_.insert(pid);  // the reason is on stderr; do not retry every scrape
            }
        }
    }

    bool has_agent() const {
        for (pid_t pid : processes_with_agents())
            if (pid == args_.target) return true;
        return false;
    }

    // Runs `liveio ARGS...` (this executable) for a control request, bounded in time.
    observe::HttpReply run_self(std::vector<std::string> args, std::chrono::seconds limit,
                                bool json_output = false) {
        args.insert(args.begin(), self_exe_);
        auto r = control::run_command(args, limit);
        if (!r)
            return json_reply(200,
                              {{"ok", false}, {"node", args_.node}, {"error", r.error().message}});
        if (r->status != 0) {
            std::string out = r->output;
            while (!out.empty() && out.back() == '\n') out.pop_back();
            return json_reply(200, {{"ok", false}, {"node", args_.node}, {"error", out}});
        }
        nlohmann::json reply = {{"ok", true}, {"node", args_.node}, {"output", r->output}};
        if (json_output) {
            try {
                reply["status"] = nlohmann::json::parse(r->output);
                reply.erase("output");
            } catch (const std::exception& e) {
                return json_reply(200, {{"ok", false},
                                        {"node", args_.node},
                                        {"error", std::string("unparsable status: ") + e.what()}});
            }
        }
        return json_reply(200, reply);
    }

    // /control/io: the target's cumulative io_stats counters (per syscall, per file class) and,
    // with --sockets, per TCP socket with its addresses; `liveio cluster top` takes deltas.
    observe::HttpReply io_reply() {
        discover();
        auto it = observed_.find(args_.target);
        // A server killed before this endpoint first looked at it has no session here: say it
        // is gone rather than that it lacks an agent (a zombie whose parent has not reaped it
        // yet is gone too).
        if (it == observed_.end() && !process_running(args_.target))
            return json_reply(
                200, {{"ok", false},
                      {"node", args_.node},
                      {"error", fmt::format("target process {} is gone (exited)", args_.target)}});
        if (it == observed_.end())
            return json_reply(200, {{"ok", false},
                                    {"node", args_.node},
                                    {"error", "no liveio agent in the target (attach first)"}});
        Observed& o = it->second;
        if (o.error.empty() && !o.session->alive()) o.error = "process exited";
        auto snap = o.error.empty() ? observe::read_snapshot(*o.io.syscalls, o.io.classes)
                                    : Result<observe::Snapshot>(make_error(ESRCH, o.error));
        if (!snap)
            return json_reply(
                200, {{"ok", false}, {"node", args_.node}, {"error", snap.error().message}});
        nlohmann::json syscalls = nlohmann::json::array(), classes = nlohmann::json::array(),
                       sockets = nlohmann::json::array();
        for (const auto& r : snap->syscalls) {
            nlohmann::json j = observe::to_json(r.counters);
            j["name"] = r.name;
            syscalls.push_back(std::move(j));
        }
        for (const auto& r : snap->classes) {
            nlohmann::json j = observe::to_json(r.counters);
            j["class"] = observe::class_name(r.file_class);
            j["direction"] = observe::direction_name(r.direction);
            classes.push_back(std::move(j));
        }
        for (const auto& sample : o.read_sockets()) sockets.push_back(observe::to_json(sample));
        return json_reply(200, {{"ok", true},
                                {"node", args_.node},
                                {"pid", args_.target},
                                {"time_ns", snap->time_ns},
                                {"unix_time", std::time(nullptr)},
                                {"syscalls", std::move(syscalls)},
                                {"classes", std::move(classes)},
                                {"sockets", std::move(sockets)},
                                {"sockets_observed", o.sockets != nullptr}});
    }

    // Forgets the target's session (unloading the io_stats instance loaded here) before a
    // detach, so the agent is left with nothing of ours.
    void forget_target() {
        if (auto it = observed_.find(args_.target); it != observed_.end()) {
            it->second.session->close();
            observed_.erase(it);
        }
        failed_.erase(args_.target);
    }

    observe::HttpReply handle_control(const observe::HttpRequest& req) {
        if (!req.local) {
            if (token_.empty())
                return json_reply(403, {{"ok", false},
                                        {"node", args_.node},
                                        {"error",
                                         "control over TCP is off on this node (liveio serve was "
                                         "started without --token-file); "
                                         "use its control socket"}});
            if (!cluster::bearer_matches(req.authorization, token_))
                return json_reply(401,
                                  {{"ok", false},
                                   {"node", args_.node},
                                   {"error", req.authorization.empty()
                                                 ? "control over TCP needs 'Authorization: Bearer "
                                                   "TOKEN' (the token of the node's token file)"
                                                 : "wrong bearer token"}});
        }
        if (!args_.target)
            return json_reply(404,
                              {{"ok", false},
                               {"node", args_.node},
                               {"error", "no --target: this liveio serve controls no process"}});
        const std::string pid = std::to_string(args_.target);
        nlohmann::json body = nlohmann::json::object();
        if (!req.body.empty()) {
            try {
                body = nlohmann::json::parse(req.body);
            } catch (const std::exception& e) {
                return json_reply(400, {{"ok", false},
                                        {"node", args_.node},
                                        {"error", std::string("request body: ") + e.what()}});
            }
        }
        auto bad_word = [](const std::string& w) { return w.empty() || w[0] == '-'; };
        try {
            if (req.path == "/control/ping") {
                const bool alive = process_running(args_.target);
                return json_reply(200, {{"ok", alive},
                                        {"node", args_.node},
                                        {"target", args_.target},
                                        {"alive", alive},
                                        {"agent", alive && has_agent()},
                                        {"error", alive ? "" : "target process is gone"}});
            }
            if (req.method != "POST" && req.path != "/control/stats" && req.path != "/control/io")
                return json_reply(
                    405, {{"ok", false},
                          {"node", args_.node},
                          {"error", "control requests other than ping and stats are POST"}});
            if (req.path == "/control/attach") {
                // No mechanism: attach's default, and whichever an attached target has.
                std::vector<std::string> a{"attach", pid};
                if (body.contains("mechanism")) {
                    const std::string mechanism = body.value("mechanism", std::string());
                    if (bad_word(mechanism))
                        return json_reply(
                            400, {{"ok", false}, {"node", args_.node}, {"error", "bad mechanism"}});
                    a.insert(a.end(), {"--mechanism", mechanism});
                }
                for (const std::string& p : body.value("policies", std::vector<std::string>())) {
                    if (bad_word(p))
                        return json_reply(
                            400,
                            {{"ok", false}, {"node", args_.node}, {"error", "bad policy name"}});
                    a.insert(a.end(), {"--policy", p});
                }
                return run_self(a, std::chrono::seconds(120));
            }
            if (req.path == "/control/detach") {
                forget_target();
                return run_self({"detach", pid}, std::chrono::seconds(120));
            }
            if (req.path == "/control/policy") {
                std::vector<std::string> a{"policy", pid};
                for (const std::string& w : body.value("words", std::vector<std::string>())) {
                    if (bad_word(w))
                        return json_reply(
                            400,
                            {{"ok", false}, {"node", args_.node}, {"error", "bad policy word"}});
                    a.push_back(w);
                }
                return run_self(a, std::chrono::seconds(60));
            }
            if (req.path == "/control/stats")
                return run_self({"status", pid, "--json"}, std::chrono::seconds(30), true);
            if (req.path == "/control/io") return io_reply();
        } catch (const nlohmann::json::exception& e) {
            return json_reply(400, {{"ok", false},
                                    {"node", args_.node},
                                    {"error", std::string("request body: ") + e.what()}});
        }
        return json_reply(404, {{"ok", false},
                                {"node", args_.node},
                                {"error", "unknown control request " + req.path}});
    }

    observe::HttpReply handle(const observe::HttpRequest& req) {
        if (req.path.starts_with("/control/")) return handle_control(req);
        if (req.method == "POST")
            return {405, "text/plain; charset=utf-8", "only GET and HEAD are served\n"};
        if (req.local)
            return {404, "text/plain; charset=utf-8", "the control socket serves /control/ only\n"};
        if (req.path == "/") {
            return {200, "text/html; charset=utf-8",
                    "<html><body><h1>liveio</h1><a href=\"/metrics\">/metrics</a></body></html>\n"};
        }
        if (req.path != "/metrics")
            return {404, "text/plain; charset=utf-8", "only /metrics is served\n"};
        discover();
        std::vector<observe::ProcessMetrics> all;
        for (auto& [pid, o] : observed_) {
            observe::ProcessMetrics m;
            m.pid = pid;
            m.comm = o.comm;
            if (o.error.empty() && !o.session->alive()) o.error = "process exited";
            if (o.error.empty()) {
                auto snap = observe::read_snapshot(*o.io.syscalls, o.io.classes);
                if (snap) {
                    m.up = true;
                    m.snapshot = std::move(snap).value();
                    m.sockets = o.read_sockets();
                } else {
                    o.error = snap.error().message;
                }
            }
            m.error = o.error;
            all.push_back(std::move(m));
        }
        return {200, observe::kPrometheusContentType, observe::render_prometheus(all)};
    }

    void write_sink() {
        discover();
        // Nodes of a local cluster share the host name (no UTS namespace): --node names them.
        const std::string host = args_.node.empty() ? observe::local_host_name() : args_.node;
        for (auto& [pid, o] : observed_) {
            if (!o.error.empty() || !o.session->alive()) continue;
            auto snap = observe::read_snapshot(*o.io.syscalls, o.io.classes);
            if (!snap) continue;
            std::vector<observe::SocketSample> sockets = o.read_sockets();
            std::map<uint64_t, observe::SocketCounters> now_sockets;
            for (auto& sample : sockets) {
                now_sockets[sample.file_id] = sample.counters;
                if (auto b = o.last_sunk_sockets.find(sample.file_id);
                    b != o.last_sunk_sockets.end())
                    sample.counters = observe::delta(sample.counters, b->second);
            }
            if (o.have_last) {
                const observe::Snapshot d = observe::delta(*snap, o.last_sunk);
                auto n = sink_->write({static_cast<int64_t>(std::time(nullptr)), host, pid, o.comm,
                                       static_cast<double>(d.time_ns) / 1e9, &d, &sockets});
                if (!n) std::fprintf(stderr, "liveio: %s\n", n.error().message.c_str());
            }
            o.last_sunk_sockets = std::move(now_sockets);
            o.last_sunk = std::move(snap).value();
            o.have_last = true;
        }
    }

    void close_all() {
        for (auto& [pid, o] : observed_) o.session->close();
        observed_.clear();
    }

    ServeArgs args_;
    std::map<pid_t, Observed> observed_;
    std::set<pid_t> failed_;
    std::optional<observe::ClickHouseSink> sink_;
    std::string token_;
    std::string self_exe_;
    double sink_interval_ = 10;
};

}  // namespace

void add_serve_commands(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "serve", "Prometheus /metrics endpoint (and ClickHouse sink) for observed processes");
    auto args = std::make_shared<ServeArgs>();
    cmd->add_option("--listen,-l", args->listen, "HOST:PORT to listen on, e.g. 127.0.0.1:9464")
        ->required();
    cmd->add_option("--pid,-p", args->pids,
                    "processes to observe (default: every process with an agent)")
        ->check(CLI::PositiveNumber);
    cmd->add_option(
           "--target", args->target,
           "control endpoint: the process control requests act on (a cluster node's server)")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--control-socket", args->control_socket,
                    "control endpoint: unix socket for control requests (mode 0600)");
    cmd->add_option("--token-file", args->token_file,
                    "control endpoint: owner-only file holding the bearer token TCP control "
                    "requests must present");
    cmd->add_option("--node", args->node, "control endpoint: the node name put in replies");
    cmd->add_flag("--sockets", args->sockets,
                  "also load the built-in net_stats program: per TCP socket (local and remote "
                  "address) calls, bytes, "
                  "latency and message sizes in /metrics, /control/io and the sink");
    cmd->add_option("--sink", args->sink, "insert metrics into clickhouse://HOST:PORT/db.table");
    cmd->add_option("--sink-interval", args->sink_interval, "how often rows are inserted")
        ->capture_default_str();
    args->observe.add_to(cmd);
    cmd->callback([args] { Server(*args).run(); });
}

}  // namespace liveio::cli
