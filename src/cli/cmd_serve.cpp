// `liveio serve --listen 127.0.0.1:PORT [--pid PID ...] [--sink clickhouse://HOST:PORT/db.table]`:
// the io_stats counters of every observed process as a Prometheus /metrics endpoint, and
// optionally inserted into ClickHouse every --sink-interval.
//
// Processes: those given with --pid (attached if they have no agent yet), else every process
// that has a liveio agent, found again at every scrape. Each gets the built-in io_stats
// object (its running instance, or one loaded here and unloaded on exit unless --stay).
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <map>
#include <set>

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/observe_session.h"
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
    ObserveArgs observe;
};

// One observed process. A session that fails (process exited, agent gone) is kept with its
// error so the endpoint reports it down instead of dropping it silently.
struct Observed {
    std::unique_ptr<TargetSession> session;
    IoStatsMaps io;
    std::string comm;
    std::string error;
    observe::Snapshot last_sunk;  // counters at the last sink write
    bool have_last = false;
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
        for (pid_t pid : args_.pids) add(pid, /*attach=*/true);
        std::fprintf(stderr, "liveio: serving http://%s:%u/metrics for %s; Ctrl-C to stop\n", server->host().c_str(),
                     server->port(), args_.pids.empty() ? "every process with a liveio agent" : "the given processes");
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
                timeout_ms = static_cast<int>((next_sink - std::min(next_sink, observe::monotonic_ns())) / 1000000 + 1);
            }
            auto served = server->serve_one(timeout_ms, [&](const observe::HttpRequest& req) { return handle(req); },
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
        if (o.io.loaded_here) {
            // Everything this instance counts is new: the first interval starts at its load.
            o.last_sunk.time_ns = observe::monotonic_ns();
            o.have_last = true;
        }
        observed_.emplace(pid, std::move(o));
    }

    // Without --pid: follow the processes that have agents now.
    void discover() {
        if (!args_.pids.empty()) return;
        for (pid_t pid : processes_with_agents()) {
            if (observed_.count(pid) || failed_.count(pid)) continue;
            try {
                add(pid, /*attach=*/false);
            } catch (const CLI::RuntimeError&) {
                failed_.insert(pid);  // the reason is on stderr; do not retry every scrape
            }
        }
    }

    observe::HttpReply handle(const observe::HttpRequest& req) {
        if (req.path == "/") {
            return {200, "text/html; charset=utf-8",
                    "<html><body><h1>liveio</h1><a href=\"/metrics\">/metrics</a></body></html>\n"};
        }
        if (req.path != "/metrics") return {404, "text/plain; charset=utf-8", "only /metrics is served\n"};
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
        const std::string host = observe::local_host_name();
        for (auto& [pid, o] : observed_) {
            if (!o.error.empty() || !o.session->alive()) continue;
            auto snap = observe::read_snapshot(*o.io.syscalls, o.io.classes);
            if (!snap) continue;
            if (o.have_last) {
                const observe::Snapshot d = observe::delta(*snap, o.last_sunk);
                auto n = sink_->write({static_cast<int64_t>(std::time(nullptr)), host, pid, o.comm,
                                       static_cast<double>(d.time_ns) / 1e9, &d});
                if (!n) std::fprintf(stderr, "liveio: %s\n", n.error().message.c_str());
            }
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
    double sink_interval_ = 10;
};

}  // namespace

void add_serve_commands(CLI::App& app) {
    auto* cmd = app.add_subcommand("serve", "Prometheus /metrics endpoint (and ClickHouse sink) for observed processes");
    auto args = std::make_shared<ServeArgs>();
    cmd->add_option("--listen,-l", args->listen, "HOST:PORT to listen on, e.g. 127.0.0.1:9464")->required();
    cmd->add_option("--pid,-p", args->pids, "processes to observe (default: every process with an agent)")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--sink", args->sink, "insert metrics into clickhouse://HOST:PORT/db.table");
    cmd->add_option("--sink-interval", args->sink_interval, "how often rows are inserted")->capture_default_str();
    args->observe.add_to(cmd);
    cmd->callback([args] { Server(*args).run(); });
}

}  // namespace liveio::cli
