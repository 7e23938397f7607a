// `liveio bench cluster`: ClickBench's queries (the adapted set of `liveio bench clickhouse`)
// on a Distributed table over a 3-shard ClickHouse 18.16 cluster in network namespaces (`liveio
// cluster up`), cold and hot, with every node stock, observed only (liveio attached, the node
// endpoints' io_stats and net_stats programs running) and under each policy, on unshaped links
// and on links rate-limited with tbf. Configurations are switched on all nodes at once with the
// `liveio cluster` commands, as an operator would. Every result is compared with stock's.
//
// Prints the per-query table per link setting, a summary, a plot of the cold speedups, and
// ends with the metric lines cluster_cold_speedup_geomean, cluster_observe_overhead_pct and
// cluster_attach_all_ms.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "bench.h"
#include "clickhouse/http_client.h"
#include "clickhouse_hits.h"
#include "clickhouse_report.h"
#include "clickhouse_system.h"
#include "cluster/control.h"
#include "cluster/harness.h"
#include "cluster/netns.h"
#include "control/self_exec.h"
#include "interrupt_guard.h"

namespace liveio::bench {
namespace {

using control::run_liveio;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

struct ClusterBenchOptions {
    size_t shards = 3;
    double rows_millions = 1.5;
    std::string queries = "Q2,Q5,Q8,Q13,Q16,Q21,Q37";  // "all": the 43
    std::string policies = "prefetch";
    std::string rate = "100mbit";  // the rate-limited pass; "" for none
    int runs = 2;
    std::string root = "/var/cache/liveio/bench-cluster";
    std::string name = "lbench";
    std::string out_dir;
    bool keep = false;
};

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "liveio bench cluster: %s\n", message.c_str());
    throw CLI::RuntimeError(1);
}

double elapsed_ms(Clock::time_point since) {
    return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

// The cluster made for the run; `down` when the run ends, unless --keep.
struct ClusterRun {
    std::string name, root;
    bool keep = false;
    ~ClusterRun() {
        if (keep) {
            std::printf("cluster %s kept: liveio cluster down --name %s --root %s\n", name.c_str(),
                        name.c_str(), root.c_str());
            return;
        }
        (void)cluster::down(name, root);
    }
};

Result<std::string> query_on(const cluster::Node& node, const std::string& sql) {
    auto scope = cluster::NetnsScope::enter(node.netns);
    if (!scope) return scope.error();
    clickhouse::HttpClient c(
        {.host = node.host, .port = node.http_port, .timeout = std::chrono::minutes(10)});
    return c.query(sql);
}

Result<void> execute_on(const cluster::Node& node, const std::string& sql) {
    auto r = query_on(node, sql);
    if (!r) return r.error();
    return {};
}

// Node i holds rows [i*N/S, (i+1)*N/S) of the data set of `bench clickhouse` with N rows: the
// Distributed table holds exactly that data set.
Result<void> load_hits(const cluster::ClusterFile& file, uint64_t rows) {
    const size_t shards = file.shards();
    std::vector<Result<void>> loaded(file.nodes.size());
    {
        std::vector<std::jthread> threads;
        for (size_t i = 0; i < file.nodes.size(); ++i)
            threads.emplace_back([&, i] {
                const cluster::Node& n = file.nodes[i];
                const uint64_t first = rows * n.shard / shards,
                               last = rows * (n.shard + 1) / shards;
                loaded[i] = [&]() -> Result<void> {
                    if (auto r = execute_on(n, "DROP TABLE IF EXISTS hits"); !r) return r;
                    if (auto r = execute_on(n, hits::create_table_sql("hits")); !r) return r;
                    constexpr uint64_t kBatch = 500'000;
                    for (uint64_t at = first; at < last; at += kBatch)
                        if (auto r =
                                execute_on(n, hits::insert_batch_sql(
                                                  "hits", at, std::min(kBatch, last - at), rows));
                            !r)
                            return r;
                    if (auto r = execute_on(n, "OPTIMIZE TABLE hits FINAL"); !r) return r;
                    if (auto r = execute_on(n, "DROP TABLE IF EXISTS hits_all"); !r) return r;
                    return execute_on(
                        n,
                        fmt::format(
                            "CREATE TABLE hits_all AS hits ENGINE = Distributed({}, default, hits)",
                            file.name));
                }();
            });
    }
    for (size_t i = 0; i < loaded.size(); ++i)
        if (!loaded[i])
            return make_error(loaded[i].error().code, fmt::format("node {}: {}", file.nodes[i].name,
                                                                  loaded[i].error().message));
    return {};
}

// The constants ClickBench's queries take (user, referer and URL hash), found in the whole
// Distributed data set.
Result<hits::QueryConstants> distributed_constants(const cluster::Node& initiator) {
    hits::QueryConstants c;
    auto user = query_on(initiator, hits::constants_user_sql("hits_all"));
    if (!user) return user.error();
    auto hashes = query_on(initiator, hits::constants_hashes_sql("hits_all"));
    if (!hashes) return hashes.error();
    const clickhouse::Rows u = clickhouse::parse_tsv(*user), h = clickhouse::parse_tsv(*hashes);
    if (u.empty() || u[0].empty() || h.empty() || h[0].size() < 2)
        return make_error(EPROTO, "the data set has no constants for the queries");
    c.user_id = std::stoll(u[0][0]);
    c.referer_hash = std::stoll(h[0][0]);
    c.url_hash = std::stoll(h[0][1]);
    return c;
}

// Switches every node between stock, observed and a policy with the `liveio cluster` commands.
class ClusterSwitch {
public:
    ClusterSwitch(const cluster::ClusterFile& file, std::string name, std::string root)
        : file_(file), target_{"--name",        std::move(name), "--root",
                               std::move(root), "--timeout",     "120s"} {}

    Result<void> apply(const Config& c) {
        const bool want_agent = c.kind != ConfigKind::Stock;
        const std::string want_policy = c.kind == ConfigKind::Policy ? c.policy : "";
        if (!want_agent) {
            if (!attached_) return {};
            if (auto r = cli({"cluster", "detach"}); !r) return r.error();
            attached_ = false;
            policy_.clear();
            return {};
        }
        if (!attached_) {
            std::vector<std::string> a{"cluster", "attach"};
            if (!want_policy.empty()) a.insert(a.end(), {"--policy", want_policy});
            const auto t0 = Clock::now();
            auto r = cli(a);
            if (!r) {
                (void)cli({"cluster", "detach"});  // whatever nodes did attach
                return r.error();
            }
            attach_ms_.push_back(elapsed_ms(t0));
            attached_ = true;
            policy_ = want_policy;
            return observe_everywhere();
        }
        if (policy_ == want_policy) return {};
        if (!policy_.empty()) {
            if (auto r = cli({"cluster", "policy", "off", policy_}); !r) return r.error();
            policy_.clear();
        }
        if (!want_policy.empty()) {
            if (auto r = cli({"cluster", "policy", "on", want_policy}); !r) return r.error();
            policy_ = want_policy;
        }
        return {};
    }

    const std::vector<double>& attach_ms() const { return attach_ms_; }

private:
    Result<std::string> cli(std::vector<std::string> args) {
        args.insert(args.end(), target_.begin(), target_.end());
        return run_liveio(args, std::chrono::minutes(5));
    }

    // Each node's endpoint starts observing its server (io_stats and net_stats loaded) on its
    // first /control/io: asked here, so every configuration but stock is measured observed.
    Result<void> observe_everywhere() {
        for (const cluster::Node& n : file_.nodes) {
            auto r =
                cluster::control_request(n, "GET", "/control/io", "", std::chrono::seconds(60));
            if (!r)
                return make_error(r.error().code,
                                  fmt::format("node {}: {}", n.name, r.error().message));
            if (r->body.find("\"ok\":true") == std::string::npos)
                return make_error(
                    EIO, fmt::format("node {} does not observe its server: {}", n.name, r->body));
        }
        return {};
    }

    const cluster::ClusterFile& file_;
    std::vector<std::string> target_;
    bool attached_ = false;
    std::string policy_;
    std::vector<double> attach_ms_;
};

Result<void> drop_caches(const cluster::ClusterFile& file) {
    if (auto r = drop_page_cache(); !r) return r;
    for (const cluster::Node& n : file.nodes) {
        if (auto r = execute_on(n, "SYSTEM DROP MARK CACHE"); !r) return r;
        if (auto r = execute_on(n, "SYSTEM DROP UNCOMPRESSED CACHE"); !r) return r;
    }
    return {};
}

void run_cluster_bench(ClusterBenchOptions o) {
    if (::geteuid() != 0)
        fail("needs root: namespaces for the cluster, and cold runs drop the page cache");
    if (auto why = cluster::netns_unavailable_reason(); !why.empty())
        fail("no network namespaces here: " + why);
    if (o.shards < 1 || o.shards > 8) fail("--shards: 1..8");
    const uint64_t rows = static_cast<uint64_t>(std::llround(o.rows_millions * 1e6));
    if (rows < 100'000)
        fail("--rows below 0.1 (100k rows) is too small for the queries' constants");
    InterruptGuard guard("liveio bench cluster: interrupted; the cluster is taken down");
    const auto started = Clock::now();
    std::error_code ec;
    fs::create_directories(o.root, ec);
    if (o.out_dir.empty()) {
        char stamp[32];
        const std::time_t now = std::time(nullptr);
        std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::gmtime(&now));
        o.out_dir = fmt::format("{}/results/{}", o.root, stamp);
    }
    fs::create_directories(o.out_dir, ec);
    if (ec) fail(fmt::format("cannot create {}: {}", o.out_dir, ec.message()));

    (void)cluster::down(o.name, o.root);  // a cluster left by an interrupted run
    ClusterRun run{o.name, o.root, o.keep};
    cluster::UpOptions up;
    up.name = o.name;
    up.shards = o.shards;
    up.rows = 0;
    up.state_root = o.root;
    up.history_interval = "10s";
    std::error_code exe_ec;
    up.liveio_exe = fs::read_symlink("/proc/self/exe", exe_ec);
    if (exe_ec) fail("cannot find this executable: " + exe_ec.message());
    up.log = [](const std::string& line) { std::printf("  %s\n", line.c_str()); };
    fmt::print("== cluster: {} shards in network namespaces ==\n", o.shards);
    auto file = cluster::up(up);
    if (!file) fail("cluster up: " + file.error().message);
    const auto load_start = Clock::now();
    if (auto r = load_hits(*file, rows); !r) fail("loading the data set: " + r.error().message);
    fmt::print(
        "data set: {} rows (the `bench clickhouse` generator), {} per shard, loaded in {:.1f} s\n",
        rows, rows / o.shards, elapsed_ms(load_start) / 1000);
    const cluster::Node& initiator = file->nodes[0];
    auto constants = distributed_constants(initiator);
    if (!constants) fail("resolving the queries' constants: " + constants.error().message);

    std::vector<hits::Query> queries = hits::clickbench_queries(*constants);
    if (o.queries != "all") {
        std::set<std::string> wanted;
        std::stringstream ss(o.queries);
        for (std::string q; std::getline(ss, q, ',');) wanted.insert(q);
        std::erase_if(queries, [&](const hits::Query& q) { return !wanted.count(q.name); });
        if (queries.size() != wanted.size()) fail("--queries: names are Q1..Q43");
    }
    const std::regex table(R"(\bhits\b)");
    for (auto& q : queries) q.sql = std::regex_replace(q.sql, table, "hits_all");
    std::vector<QueryInfo> infos;
    for (const auto& q : queries) infos.push_back({q.name, false});

    std::vector<Config> configs{{"stock", ConfigKind::Stock}, {"observe", ConfigKind::Policy, ""}};
    {
        std::stringstream ss(o.policies);
        for (std::string p; std::getline(ss, p, ',');)
            if (!p.empty()) configs.push_back({p, ConfigKind::Policy, p});
    }
    // One unrecorded run of every query first: a freshly started cluster's first queries pay
    // for what later ones reuse (connections between the shards, thread pools, allocations),
    // which would favour every configuration measured after stock.
    for (const auto& q : queries)
        if (auto r = query_on(initiator, q.sql); !r)
            fail(fmt::format("{} (warm-up, stock): {}", q.name, r.error().message));
    ClusterSwitch sw(*file, o.name, o.root);
    std::vector<Phase> phases;
    phases.push_back({.name = "links unshaped", .readahead_kb = 0, .hot = true});
    if (!o.rate.empty())
        phases.push_back({.name = fmt::format("links rate-limited to {} (tbf, no delay)", o.rate),
                          .readahead_kb = 0,
                          .hot = true});
    size_t mismatches = 0, errors = 0;
    std::map<std::string, std::string> stock_result;  // by query: stock's answer, byte for byte
    for (size_t pi = 0; pi < phases.size(); ++pi) {
        Phase& phase = phases[pi];
        if (auto r = cluster::set_link_rate(*file, pi == 0 ? "" : o.rate); !r)
            fail("shaping the links: " + r.error().message);
        fmt::print(
            "\n== {}: {} queries on {} (Distributed over {} shards), {} cold + {} hot runs ==\n",
            phase.name, queries.size(), initiator.name, o.shards, o.runs, o.runs);
        // Stock first in every pass: its answers are the reference.
        for (size_t k = 0; k < configs.size(); ++k) {
            Config& c = configs[k == 0 ? 0 : 1 + (k - 1 + pi) % (configs.size() - 1)];
            if (!c.available) continue;
            if (auto r = sw.apply(c); !r) {
                c.available = false;
                c.unavailable_reason = r.error().message;
                fmt::print("  {} is unavailable: {}\n", c.name, r.error().message.substr(0, 600));
                Config stock{"stock", ConfigKind::Stock};
                if (auto back = sw.apply(stock); !back)
                    fail("cannot bring the cluster back to stock: " + back.error().message);
                continue;
            }
            std::string line = fmt::format("  {:<8}", c.name);
            for (const auto& q : queries) {
                if (guard.interrupted()) throw CLI::RuntimeError(128 + guard.signal());
                Timings& t = phase.timings[q.name][c.name];
                bool failed = false;
                for (int i = 0; i < 2 * o.runs && !failed; ++i) {
                    const bool cold = i < o.runs;
                    if (cold) {
                        if (auto r = drop_caches(*file); !r)
                            fail("dropping caches: " + r.error().message);
                    }
                    const auto t0 = Clock::now();
                    auto body = query_on(initiator, q.sql);
                    const double ms = elapsed_ms(t0);
                    if (!body) {
                        if (c.kind == ConfigKind::Stock)
                            fail(fmt::format("{} under stock: {}", q.name, body.error().message));
                        ++errors;
                        fmt::print("  QUERY ERROR: {} under {}: {}\n", q.name, c.name,
                                   body.error().message);
                        failed = true;
                        break;
                    }
                    auto [ref, fresh] = stock_result.try_emplace(q.name, *body);
                    if (!fresh && ref->second != *body) {
                        ++mismatches;
                        fmt::print("  RESULT MISMATCH: {} under {} ({}): {} bytes vs stock's {}\n",
                                   q.name, c.name, phase.name, body->size(), ref->second.size());
                    }
                    (cold ? t.cold_ms : t.hot_ms).push_back(ms);
                }
                if (failed)
                    phase.timings[q.name].erase(c.name);
                else
                    line += fmt::format(" {}:{:.0f}/{:.0f}", q.name, median(t.cold_ms),
                                        median(t.hot_ms));
            }
            fmt::print("{}  (cold/hot ms)\n", line);
            std::fflush(stdout);
        }
        if (auto r = sw.apply(configs[0]); !r) fail("detaching: " + r.error().message);
    }
    (void)cluster::set_link_rate(*file, "");

    for (const Phase& phase : phases) {
        fmt::print("\n== per query: {} ==\n", phase.name);
        print_phase_table(phase, infos, configs);
    }
    fmt::print(
        "\n== summary ({} queries, {:.1f} min; the machine may be shared: compare side by side) "
        "==\n",
        queries.size(), elapsed_ms(started) / 60000);
    fmt::print("{:<10} {:<44} {:>14} {:>14}  {}\n", "config", "links", "cold speedup",
               "hot vs stock", "cold faster/slower/within spread, hot slower");
    for (const Phase& phase : phases)
        for (const Config& c : configs) {
            if (c.kind == ConfigKind::Stock) continue;
            if (!c.available) {
                fmt::print("{:<10} {:<44} unavailable: {}\n", c.name, phase.name,
                           c.unavailable_reason.substr(0, 200));
                continue;
            }
            const ConfigSummary s = summarize(phase, infos, c.name);
            fmt::print(
                "{:<10} {:<44} {:>14} {:>14}  {}/{}/{}, {}\n", c.name, phase.name,
                s.cold_speedup_geomean ? fmt::format("{:.3f}x", *s.cold_speedup_geomean) : "n/a",
                s.hot_slowdown_pct ? fmt::format("{:+.1f}%", *s.hot_slowdown_pct) : "n/a",
                s.cold_faster, s.cold_slower, s.cold_within_noise, s.hot_slower);
        }
    fmt::print("results: {} mismatches with stock, {} query errors under liveio\n", mismatches,
               errors);
    auto plot = plot_cold_speedups(
        phases[0], infos, configs, o.out_dir,
        fmt::format(
            "liveio bench cluster: cold speedup vs stock per query ({} shards, {} rows, {})",
            o.shards, rows, phases[0].name));
    if (plot)
        fmt::print("plot: {}\n", *plot);
    else
        fmt::print("plot: not drawn: {}\n", plot.error().message);

    const Config* policy = configs.size() > 2 && configs[2].available ? &configs[2] : nullptr;
    const double speedup =
        policy ? summarize(phases[0], infos, policy->name).cold_speedup_geomean.value_or(NAN) : NAN;
    const double observe =
        configs[1].available ? summarize(phases[0], infos, "observe").hot_slowdown_pct.value_or(NAN)
                             : NAN;
    fmt::print("metric: cluster_cold_speedup_geomean {:.3f}\n", speedup);
    fmt::print("metric: cluster_observe_overhead_pct {:.2f}\n", observe);
    fmt::print("metric: cluster_attach_all_ms {}\n",
               sw.attach_ms().empty() ? "nan" : fmt::format("{:.0f}", median(sw.attach_ms())));
    if (mismatches || errors) throw CLI::RuntimeError(1);
}

}  // namespace

void add_cluster_bench(CLI::App& bench) {
    auto o = std::make_shared<ClusterBenchOptions>();
    auto* cmd = bench.add_subcommand(
        "cluster",
        "ClickBench's queries on a Distributed table over a namespace cluster: stock vs observed "
        "vs "
        "policies on every node, cold and hot, links unshaped and rate-limited (root)");
    cmd->add_option("--shards", o->shards, "shards (one node each)")->capture_default_str();
    cmd->add_option("--rows", o->rows_millions, "rows of the data set over all shards, in millions")
        ->capture_default_str();
    cmd->add_option("--queries", o->queries, "queries (Q1..Q43, comma-separated) or all")
        ->capture_default_str();
    cmd->add_option("--policies", o->policies,
                    "liveio policies to compare, comma-separated (the first gives the metric)")
        ->capture_default_str();
    cmd->add_option("--rate", o->rate, "rate of the rate-limited pass (tc units); \"\" for none")
        ->capture_default_str();
    cmd->add_option("--runs", o->runs, "cold and hot runs per query and configuration")
        ->check(CLI::Range(1, 20))
        ->capture_default_str();
    cmd->add_option("--root", o->root, "state, data and results of the benchmark's cluster")
        ->capture_default_str();
    cmd->add_option("--name", o->name, "cluster name")->capture_default_str();
    cmd->add_option("--out", o->out_dir,
                    "directory for the plot and its data (default: ROOT/results/TIME)");
    cmd->add_flag("--keep", o->keep, "leave the cluster up afterwards");
    cmd->callback([o] { run_cluster_bench(*o); });
}

}  // namespace liveio::bench
