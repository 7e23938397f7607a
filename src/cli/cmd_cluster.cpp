// `liveio cluster up|down|status|attach|detach|policy|stats|top`: a ClickHouse cluster as one
// thing. up/down run the local harness (cluster/harness.h); the other commands read a cluster
// file (the harness's, or --file for machines elsewhere) and act on every node at once, each
// request bounded by --timeout, reporting per node: a node that is down or refuses is a line
// of the report and a non-zero exit status, never a wait.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/observe_session.h"
#include "clickhouse/http_client.h"
#include "cluster/control.h"
#include "cluster/harness.h"
#include "cluster/netns.h"
#include "cluster/top.h"
#include "observe/format.h"

namespace liveio::cli {
namespace {

using nlohmann::json;
using namespace liveio::cluster;

std::string trimmed(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "liveio: %s\n", message.c_str());
    throw CLI::RuntimeError(1);
}

struct Target {
    std::string name = "liveio";
    std::string root = default_state_root();
    std::string file;  // --file: a cluster file instead of the harness's
    std::string timeout = "30s";

    void add_to(CLI::App* cmd, bool with_file) {
        cmd->add_option("--name,-n", name, "cluster name")->capture_default_str();
        cmd->add_option("--root", root, "directory holding the harness's clusters")
            ->capture_default_str();
        if (with_file) {
            cmd->add_option("--file,-f", file,
                            "cluster file naming the nodes (default: the harness's for --name)");
            cmd->add_option("--timeout", timeout, "bound on each node's answer")
                ->capture_default_str();
        }
    }
    ClusterFile load() const {
        const std::string path = file.empty() ? cluster_file_path(name, root) : file;
        auto f = read_cluster_file(path);
        if (!f)
            fail(f.error().message +
                 (file.empty()
                      ? fmt::format(" (is cluster {} up? liveio cluster up --name {})", name, name)
                      : ""));
        return std::move(f).value();
    }
    std::chrono::milliseconds timeout_ms() const {
        auto s = observe::parse_seconds(timeout);
        if (!s || *s <= 0) fail("--timeout: expected a duration such as 30s or 500ms");
        return std::chrono::milliseconds(static_cast<int64_t>(*s * 1000));
    }
};

std::string self_exe() {
    std::error_code ec;
    const auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) fail("cannot find this executable: " + ec.message());
    return p;
}

void cmd_up(const UpOptions& base, bool no_control) {
    UpOptions o = base;
    o.log = [](const std::string& line) {
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
    };
    if (!no_control) o.liveio_exe = self_exe();
    auto file = up(o);
    if (!file) fail("cluster up: " + file.error().message);
    std::printf("cluster %s up: %zu nodes; cluster file %s\n", o.name.c_str(), file->nodes.size(),
                cluster_file_path(o.name, o.state_root).c_str());
    for (const Node& n : file->nodes)
        std::printf("  %-4s shard %zu replica %zu  %s:%u (http %u)%s  pid %d\n", n.name.c_str(),
                    n.shard, n.replica, n.host.c_str(), n.tcp_port, n.http_port,
                    n.netns.empty() ? "" : fmt::format("  netns {}", n.netns).c_str(),
                    n.server_pid);
}

void cmd_down(const Target& t) {
    auto r = down(t.name, t.root);
    if (!r) fail("cluster down: " + r.error().message);
    if (!r->existed) {
        std::printf("cluster %s: nothing recorded, nothing to remove\n", t.name.c_str());
        return;
    }
    std::printf(
        "cluster %s down: %zu processes stopped, %zu killed, %zu namespaces and %zu directories "
        "removed\n",
        t.name.c_str(), r->stopped.size(), r->killed.size(), r->namespaces.size(), r->dirs.size());
}

// Runs `fn` for every node in parallel and returns their results in node order.
template <typename Fn>
auto for_all(const ClusterFile& f, Fn fn) {
    std::vector<decltype(fn(f.nodes[0]))> out(f.nodes.size());
    std::vector<std::jthread> threads;
    for (size_t i = 0; i < f.nodes.size(); ++i)
        threads.emplace_back([&, i] { out[i] = fn(f.nodes[i]); });
    threads.clear();
    return out;
}

struct NodeAnswer {
    bool ok = false;
    std::string text;  // error, or what to print
    json reply;
};

NodeAnswer ask(const Node& n, const std::string& method, const std::string& target,
               const json& body, std::chrono::milliseconds timeout) {
    auto r = control_request(n, method, target, body.is_null() ? "" : body.dump(), timeout);
    if (!r) return {false, fmt::format("unreachable: {}", r.error().message), {}};
    json j;
    try {
        j = json::parse(r->body);
    } catch (const std::exception&) {
        return {false, fmt::format("HTTP {} from {}: {}", r->status, r->via, r->body), {}};
    }
    if (r->status != 200)
        return {false, fmt::format("refused (HTTP {}): {}", r->status, j.value("error", r->body)),
                j};
    if (!j.value("ok", false)) return {false, j.value("error", r->body), j};
    return {true, j.value("output", std::string()), j};
}

// Prints one line per node: `ok_line(answer)` for a node that answered, FAIL and the reason for
// one that did not. Returns how many failed.
size_t print_answers(const ClusterFile& f, const std::vector<NodeAnswer>& answers,
                     const std::function<std::string(const NodeAnswer&)>& ok_line) {
    size_t failed = 0;
    for (size_t i = 0; i < answers.size(); ++i) {
        if (answers[i].ok) {
            std::printf("%-4s %s\n", f.nodes[i].name.c_str(), ok_line(answers[i]).c_str());
        } else {
            std::printf("%-4s FAIL %s\n", f.nodes[i].name.c_str(),
                        trimmed(answers[i].text).c_str());
            ++failed;
        }
    }
    return failed;
}

void fail_if_any(size_t failed, size_t nodes, const char* verb) {
    if (failed) fail(fmt::format("{}: {} of {} nodes failed", verb, failed, nodes));
}

// A command's output under its node's "ok" line; a multi-line answer (policy list) stays
// readable indented under it. `hint`, when some node failed, follows the lines. Exits non-zero
// when any node failed.
void report(const ClusterFile& f, const std::vector<NodeAnswer>& answers, const char* verb,
            const std::string& hint = "") {
    const size_t failed = print_answers(f, answers, [](const NodeAnswer& a) {
        std::string text = trimmed(a.text);
        for (size_t at = text.find('\n'); at != std::string::npos; at = text.find('\n', at + 1))
            text.insert(at + 1, 10, ' ');
        return "ok   " + text;
    });
    if (failed && !hint.empty()) std::printf("%s\n", hint.c_str());
    std::fflush(stdout);  // the lines before the failure's message on stderr
    fail_if_any(failed, answers.size(), verb);
}

void cmd_status(const Target& t) {
    const ClusterFile f = t.load();
    const auto timeout = t.timeout_ms();
    struct Row {
        std::string server, rows, control;
    };
    auto rows = for_all(f, [&](const Node& n) {
        Row row;
        auto scope = NetnsScope::enter(n.netns);
        if (!scope) return Row{"no namespace: " + scope.error().message, "-", "-"};
        clickhouse::HttpClient c({.host = n.host, .port = n.http_port, .timeout = timeout});
        auto count = c.query(fmt::format("SELECT count() FROM {}", f.table));
        row.server = count ? "up"
                           : fmt::format("DOWN ({})", c.ping() ? count.error().message
                                                               : "no answer on http port");
        row.rows = count ? trimmed(*count) : "-";
        if (n.control.socket.empty() && !n.control.port) {
            row.control = "none";
        } else {
            auto a = ask(n, "GET", "/control/ping", nullptr, timeout);
            row.control = a.ok ? fmt::format("up (target {}{})", a.reply.value("target", 0),
                                             a.reply.value("agent", false) ? ", agent loaded" : "")
                               : a.text;
        }
        return row;
    });
    std::printf("cluster %s: %zu shards, %zu nodes\n", f.name.c_str(), f.shards(), f.nodes.size());
    std::printf("%-4s %5s %7s %-22s %-8s %10s  %s\n", "node", "shard", "replica", "address",
                "server", "rows", "control");
    size_t down_nodes = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
        const Node& n = f.nodes[i];
        std::printf("%-4s %5zu %7zu %-22s %-8s %10s  %s\n", n.name.c_str(), n.shard, n.replica,
                    fmt::format("{}:{}", n.host, n.tcp_port).c_str(), rows[i].server.c_str(),
                    rows[i].rows.c_str(), rows[i].control.c_str());
        down_nodes += rows[i].server != "up";
    }
    if (down_nodes) fail(fmt::format("status: {} of {} nodes down", down_nodes, rows.size()));
}

// `mechanism` "" leaves it to each node: attach's default, or the one an attached node has.
void cmd_attach(const Target& t, const std::vector<std::string>& policies,
                const std::string& mechanism) {
    const ClusterFile f = t.load();
    json body = {{"policies", policies}};
    if (!mechanism.empty()) body["mechanism"] = mechanism;
    const auto answers = for_all(
        f, [&](const Node& n) { return ask(n, "POST", "/control/attach", body, t.timeout_ms()); });
    // The same refusal on the nodes attached with another mechanism, in cluster terms.
    const bool other_mechanism =
        std::any_of(answers.begin(), answers.end(), [](const NodeAnswer& a) {
            return !a.ok && a.text.find("is attached with mechanism") != std::string::npos;
        });
    std::string policy_list;
    for (const std::string& p : policies) policy_list += (policy_list.empty() ? "" : ",") + p;
    report(f, answers, "attach",
           other_mechanism
               ? fmt::format("to switch every node to -m {}: liveio cluster detach, then liveio "
                             "cluster attach -m {}{}",
                             mechanism, mechanism,
                             policy_list.empty() ? "" : " --policy " + policy_list)
               : "");
}

void cmd_detach(const Target& t) {
    const ClusterFile f = t.load();
    report(f,
           for_all(f,
                   [&](const Node& n) {
                       return ask(n, "POST", "/control/detach", json::object(), t.timeout_ms());
                   }),
           "detach");
}

void cmd_policy(const Target& t, const std::vector<std::string>& words) {
    const ClusterFile f = t.load();
    const json body = {{"words", words}};
    report(f,
           for_all(f,
                   [&](const Node& n) {
                       return ask(n, "POST", "/control/policy", body, t.timeout_ms());
                   }),
           "policy");
}

void cmd_stats(const Target& t, bool as_json) {
    const ClusterFile f = t.load();
    auto answers = for_all(
        f, [&](const Node& n) { return ask(n, "GET", "/control/stats", nullptr, t.timeout_ms()); });
    if (as_json) {
        json all = json::object();
        for (size_t i = 0; i < answers.size(); ++i)
            all[f.nodes[i].name] = answers[i].ok ? answers[i].reply.value("status", json::object())
                                                 : json{{"error", answers[i].text}};
        std::printf("%s\n", all.dump(2).c_str());
        fail_if_any(static_cast<size_t>(std::count_if(answers.begin(), answers.end(),
                                                      [](const NodeAnswer& a) { return !a.ok; })),
                    answers.size(), "stats");
        return;
    }
    std::printf("%-4s %-8s %-22s %14s %16s %10s  %s\n", "node", "pid", "mechanisms", "calls",
                "bytes", "errors", "policies on");
    uint64_t calls = 0, bytes = 0, errors = 0;
    const size_t failed = print_answers(f, answers, [&](const NodeAnswer& a) {
        const json s = a.reply.value("status", json::object());
        const json total = s.value("calls", json::object()).value("total", json::object());
        std::string mechs, pols;
        for (const json& m : s.value("mechanisms", json::array()))
            mechs += (mechs.empty() ? "" : ",") + m.value("name", std::string("?"));
        const json policies = s.value("policies", json::object());
        for (const json& p :
             policies.is_object() ? policies.value("policies", json::array()) : policies)
            if (p.is_object() && p.value("on", false))
                pols += (pols.empty() ? "" : ",") + p.value("name", std::string("?"));
        const uint64_t c = total.value("calls", uint64_t{0}), b = total.value("bytes", uint64_t{0}),
                       e = total.value("errors", uint64_t{0});
        calls += c, bytes += b, errors += e;
        return fmt::format("{:<8} {:<22} {:>14} {:>16} {:>10}  {}", s.value("pid", 0),
                           mechs.empty() ? "none" : mechs, c, b, e, pols.empty() ? "-" : pols);
    });
    std::printf("%-4s %-8s %-22s %14llu %16llu %10llu\n", "all", "", "",
                static_cast<unsigned long long>(calls), static_cast<unsigned long long>(bytes),
                static_cast<unsigned long long>(errors));
    fail_if_any(failed, answers.size(), "stats");
}

// One sampling of every node for `top`: its endpoint's /control/io and its server's query
// counter (minus the queries of earlier samplings: each one is a query itself).
class TopSampler {
public:
    TopSampler(const ClusterFile& f, std::chrono::milliseconds timeout)
        : f_(f), timeout_(timeout), own_queries_(f.nodes.size()) {}

    std::vector<NodeIoSample> sample() {
        return for_all(f_, [&](const Node& n) {
            const size_t i = static_cast<size_t>(&n - f_.nodes.data());
            NodeIoSample s = io(n);
            auto scope = NetnsScope::enter(n.netns);
            if (!scope) return s;
            // Inside the node's namespace its server also listens on the loopback.
            clickhouse::HttpClient c({.host = n.netns.empty() ? n.host : "127.0.0.1",
                                      .port = n.http_port,
                                      .timeout = timeout_});
            auto q = c.query("SELECT value FROM system.events WHERE event = 'Query'");
            ++own_queries_[i];
            if (q) {
                const uint64_t v = std::strtoull(trimmed(*q).c_str(), nullptr, 10);
                s.queries = v >= own_queries_[i] ? v - own_queries_[i] : 0;
            }
            return s;
        });
    }

    // Only the /control/io of `nodes` (the others empty): to name peers, not counted.
    std::vector<NodeIoSample> sample_again(const std::vector<size_t>& nodes) {
        return for_all(f_, [&](const Node& n) {
            const size_t i = static_cast<size_t>(&n - f_.nodes.data());
            return std::find(nodes.begin(), nodes.end(), i) != nodes.end() ? io(n) : NodeIoSample{};
        });
    }

private:
    NodeIoSample io(const Node& n) const {
        auto a = ask(n, "GET", "/control/io", nullptr, timeout_);
        NodeIoSample s = a.reply.is_object() ? parse_node_io(a.reply) : NodeIoSample{};
        if (!a.ok && s.error.empty()) s.error = a.text;
        return s;
    }

    const ClusterFile& f_;
    std::chrono::milliseconds timeout_;
    std::vector<uint64_t> own_queries_;
};

struct TopOptions {
    std::string interval = "2s";
    size_t iterations = 0;  // 0: until a signal
    bool once = false;
    bool as_json = false;
};

void cmd_top(const Target& t, const TopOptions& o) {
    const ClusterFile f = t.load();
    auto seconds = observe::parse_seconds(o.interval);
    if (!seconds || *seconds < 0.1)
        fail("--interval: expected a duration of at least 100ms, such as 2s");
    const size_t iterations = o.once ? 1 : o.iterations;
    SignalWatch signals;
    TopSampler sampler(f, t.timeout_ms());
    auto before = sampler.sample();
    const bool redraw = !o.as_json && iterations != 1 && ::isatty(STDOUT_FILENO);
    for (size_t i = 0; iterations == 0 || i < iterations; ++i) {
        if (signals.wait(*seconds)) break;
        auto now = sampler.sample();
        const TopView view = top_interval(f, before, now, [&](const std::vector<size_t>& nodes) {
            return sampler.sample_again(nodes);
        });
        if (o.as_json) {
            std::printf("%s\n", top_json(view).dump().c_str());
        } else {
            if (redraw) std::printf("\033[H\033[2J");
            std::printf(
                "cluster %s: %zu nodes, interval %.1f s (disk%%: disk time / disk + TCP call "
                "time)\n%s\n",
                f.name.c_str(), f.nodes.size(), *seconds, render_top(view).c_str());
        }
        std::fflush(stdout);
        before = std::move(now);
    }
}

}  // namespace

void add_cluster_commands(CLI::App& app) {
    auto* cluster = app.add_subcommand(
        "cluster", "A ClickHouse cluster: start one locally, or act on every node of one");
    cluster->require_subcommand(1);
    {
        auto* up = cluster->add_subcommand(
            "up", "Start shards x replicas ClickHouse servers, each in its own network namespace");
        auto o = std::make_shared<UpOptions>();
        auto no_control = std::make_shared<bool>(false);
        up->add_option("--name,-n", o->name, "cluster name")->capture_default_str();
        up->add_option("--shards", o->shards, "shards")->capture_default_str();
        up->add_option("--replicas", o->replicas,
                       "replicas per shard (independent copies of the shard's data)")
            ->capture_default_str();
        up->add_option("--rate", o->rate,
                       "shape every node link to RATE each way with tbf (e.g. 100mbit); no delay: "
                       "netem is not in this kernel");
        up->add_option("--subnet", o->subnet, "the /24 of node addresses (first three octets)")
            ->capture_default_str();
        up->add_option("--rows", o->rows, "dataset rows over all shards (0: none)")
            ->capture_default_str();
        up->add_option("--root", o->state_root, "directory for the cluster's state and data")
            ->capture_default_str();
        up->add_flag("--loopback", o->loopback,
                     "loopback ports even when namespaces could be made");
        up->add_option("--history-interval", o->history_interval,
                       "how often every node's metrics go into the I/O history table")
            ->capture_default_str();
        up->add_flag("--no-control", *no_control,
                     "do not start a liveio serve control endpoint per node");
        up->callback([o, no_control] { cmd_up(*o, *no_control); });
    }
    {
        auto* down = cluster->add_subcommand(
            "down",
            "Stop every process and remove every namespace, link and directory of a cluster");
        auto t = std::make_shared<Target>();
        t->add_to(down, false);
        down->callback([t] { cmd_down(*t); });
    }
    {
        auto* status =
            cluster->add_subcommand("status", "Per node: server up, rows, control endpoint");
        auto t = std::make_shared<Target>();
        t->add_to(status, true);
        status->callback([t] { cmd_status(*t); });
    }
    {
        auto* attach =
            cluster->add_subcommand("attach", "Attach liveio to the server of every node");
        auto t = std::make_shared<Target>();
        auto policies = std::make_shared<std::vector<std::string>>();
        auto mechanism = std::make_shared<std::string>();
        t->add_to(attach, true);
        attach
            ->add_option("--policy", *policies,
                         "the policies to have on on every node (an attached node's others are "
                         "switched off)")
            ->delimiter(',');
        attach
            ->add_option("--mechanism,-m", *mechanism,
                         "how calls are intercepted (default: got, or what an attached node has)")
            ->check(CLI::IsMember({"got", "inline", "rewrite"}));
        attach->callback([t, policies, mechanism] { cmd_attach(*t, *policies, *mechanism); });
    }
    {
        auto* detach =
            cluster->add_subcommand("detach", "Detach liveio from the server of every node");
        auto t = std::make_shared<Target>();
        t->add_to(detach, true);
        detach->callback([t] { cmd_detach(*t); });
    }
    {
        auto* policy = cluster->add_subcommand(
            "policy", "liveio policy on every node: list | on NAME | off NAME | set NAME K=V");
        auto t = std::make_shared<Target>();
        auto words = std::make_shared<std::vector<std::string>>();
        t->add_to(policy, true);
        policy->add_option("words", *words, "list | on NAME [K=V...] | off NAME | set NAME K=V")
            ->required();
        policy->callback([t, words] { cmd_policy(*t, *words); });
    }
    {
        auto* top = cluster->add_subcommand(
            "top", "Every node live: disk and network traffic, disk vs network time, TCP per peer");
        auto t = std::make_shared<Target>();
        auto o = std::make_shared<TopOptions>();
        t->add_to(top, true);
        top->add_option("--interval,-i", o->interval, "refresh interval")->capture_default_str();
        top->add_option("--iterations", o->iterations, "refreshes before exiting (0: until Ctrl-C)")
            ->capture_default_str();
        top->add_flag("--once", o->once, "one interval, printed once (as --iterations 1)");
        top->add_flag("--json", o->as_json, "one JSON object per refresh");
        top->callback([t, o] { cmd_top(*t, *o); });
    }
    {
        auto* stats = cluster->add_subcommand(
            "stats", "Per node: the agent's mechanisms, call counts and policies");
        auto t = std::make_shared<Target>();
        auto as_json = std::make_shared<bool>(false);
        t->add_to(stats, true);
        stats->add_flag("--json", *as_json, "every node's answer as JSON");
        stats->callback([t, as_json] { cmd_stats(*t, *as_json); });
    }
}

}  // namespace liveio::cli
