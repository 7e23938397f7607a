// `liveio demo`: the README's main command. Starts a private 2-shard ClickHouse 18.16 cluster
// (Debian package) on free ports in a temporary directory, loads the sample data set, runs the
// query mix unpatched, attaches liveio to shard 0 live, runs the mix again and prints what
// liveio saw, then runs the mix cold (page cache and ClickHouse's caches dropped) stock and
// with an acceleration policy switched on live, alternately, and prints the measured speedup;
// detaches, and checks that results and server are unchanged. Nothing of the
// user's system is touched; everything is removed at exit, also on Ctrl-C.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench/clickhouse_system.h"
#include "bench/interrupt_guard.h"
#include "cli/commands.h"
#include "clickhouse/dataset.h"
#include "clickhouse/server.h"
#include "control/protocol.h"
#include "control/self_exec.h"
#include "ebpf/map.h"
#include "liveio/io_stats.h"
#include "observe/bpf_client.h"
#include "observe/format.h"
#include "observe/stats.h"

namespace liveio::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
namespace ch = liveio::clickhouse;
using bench::InterruptGuard;
using control::agent_mapped;
using control::run_liveio;

struct DemoOptions {
    uint64_t rows = ch::DatasetOptions{}.rows;
    int rounds = 3;       // runs of the mix per phase; the median is compared
    int cold_rounds = 3;  // cold runs of the mix per side (stock, policy), alternated
    std::string policy = "marks";  // the policy that measurably speeds up cold lookups (README)
    std::string mechanism = "got";
};

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "liveio demo: %s\n", message.c_str());
    throw CLI::RuntimeError(1);
}

void print_indented(const std::string& text, const char* prefix = "    ") {
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        fmt::print("{}{}\n", prefix, std::string_view(text).substr(start, end - start));
        start = end + 1;
    }
}

double ms(std::chrono::nanoseconds d) { return d.count() / 1e6; }

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty()      ? 0
           : v.size() % 2 ? v[v.size() / 2]
                          : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// The mix run `rounds` times after ClickHouse's own caches were dropped (so the first run
// reads marks and primary indexes from files); every result must match.
struct Phase {
    std::vector<ch::MixRun> runs;
    double median_ms() const {
        std::vector<double> v;
        for (auto& r : runs) v.push_back(ms(r.elapsed));
        return median(v);
    }
    double query_median_ms(size_t i) const {
        std::vector<double> v;
        for (auto& r : runs) v.push_back(ms(r.queries.at(i).elapsed));
        return median(v);
    }
};

Phase run_phase(ch::HttpClient& client, const ch::DatasetOptions& data,
                const std::vector<ch::Query>& mix, int rounds, const InterruptGuard& guard) {
    Phase phase;
    auto check = [&](auto r, const std::string& what) {
        if (guard.interrupted()) throw CLI::RuntimeError(128 + guard.signal());
        if (!r) fail(what + ": " + r.error().message);
        return r;
    };
    (void)check(ch::drop_caches(client, data), "dropping ClickHouse's caches");
    for (int i = 0; i < rounds; ++i) {
        auto run = check(ch::run_mix(client, mix), "query mix");
        for (auto& q : run->queries)
            if (!q.matched)
                fail(fmt::format("query {} returned a wrong result:\n{}", q.name,
                                 q.got.substr(0, 500)));
        phase.runs.push_back(std::move(*run));
    }
    return phase;
}

// Per-syscall calls/bytes/errors of the agent's `status` reply.
using CallCounts = std::map<std::string, std::array<uint64_t, 3>>;

CallCounts status_counts(pid_t pid) {
    CallCounts out;
    auto client = control::ControlClient::connect(pid);
    if (!client) return out;
    auto s = client->call("status");
    if (!s) return out;
    const json calls = s->value("calls", json::object());
    for (auto& [name, c] : calls.items())
        out[name] = {c.value("calls", uint64_t{0}), c.value("bytes", uint64_t{0}),
                     c.value("errors", uint64_t{0})};
    return out;
}

void print_call_counts(const CallCounts& after, const CallCounts& before) {
    struct Row {
        std::string name;
        std::array<uint64_t, 3> v;
    };
    std::vector<Row> rows;
    for (auto& [name, a] : after) {
        auto it = before.find(name);
        std::array<uint64_t, 3> d = a;
        if (it != before.end())
            for (int i = 0; i < 3; ++i) d[i] -= std::min(d[i], it->second[i]);
        if (d[0] && name != "total") rows.push_back({name, d});
    }
    std::sort(rows.begin(), rows.end(), [](const Row& x, const Row& y) { return x.v[0] > y.v[0]; });
    fmt::print("    {:<14} {:>10} {:>14} {:>8}\n", "syscall", "calls", "bytes", "errors");
    for (auto& r : rows)
        fmt::print("    {:<14} {:>10} {:>14} {:>8}\n", r.name, r.v[0], r.v[1], r.v[2]);
    if (after.count("total")) {
        auto t = after.at("total");
        if (before.count("total"))
            for (int i = 0; i < 3; ++i) t[i] -= std::min(t[i], before.at("total")[i]);
        fmt::print("    {:<14} {:>10} {:>14} {:>8}\n", "total", t[0], t[1], t[2]);
    }
}

// The built-in io_stats program loaded into the agent of the target (bpf.load), its maps
// read live from here. Unloaded by unload() or when the agent detaches.
class IoStats {
public:
    // Nothing (with the reason in *why) when the object or the agent's BPF host is missing.
    static std::unique_ptr<IoStats> load(pid_t pid, std::string* why) {
        auto path = observe::resolve_object_path("io_stats");
        if (!path) {
            *why = path.error().message;
            return nullptr;
        }
        auto client = control::ControlClient::connect(pid);
        if (!client) {
            *why = client.error().message;
            return nullptr;
        }
        std::unique_ptr<IoStats> s(new IoStats(std::move(*client)));
        observe::BpfClient bpf(s->client_);
        auto object = bpf.load(*path);
        if (!object) {
            *why = object.error().message;
            return nullptr;
        }
        s->object_ = std::move(*object);
        auto maps = bpf.maps(s->object_.id);
        if (!maps) {
            *why = "reading its maps: " + maps.error().message;
            (void)bpf.unload(s->object_.id);
            return nullptr;
        }
        s->maps_ = std::move(*maps);
        if (!observe::find_map(s->maps_, "syscall_stats")) {
            *why = "the object has no syscall_stats map";
            (void)bpf.unload(s->object_.id);
            return nullptr;
        }
        return s;
    }

    const observe::ObjectInfo& object() const { return object_; }
    Result<observe::Snapshot> snapshot() {
        const auto* classes = observe::find_map(maps_, "class_stats");
        return observe::read_snapshot(*observe::find_map(maps_, "syscall_stats")->map,
                                      classes ? classes->map.get() : nullptr);
    }
    // Every slow-I/O record the program submitted since the last call.
    std::vector<liveio_slow_io> take_slow_events(uint64_t* dropped) {
        std::vector<liveio_slow_io> out;
        const auto* ring_map = observe::find_map(maps_, "slow_events");
        auto* ring = ring_map ? dynamic_cast<ebpf::RingBuffer*>(ring_map->map.get()) : nullptr;
        if (!ring) return out;
        ring->consume([&](const void* data, uint32_t size) {
            liveio_slow_io ev{};
            std::memcpy(&ev, data, std::min<size_t>(size, sizeof ev));
            out.push_back(ev);
        });
        *dropped = ring->dropped();
        return out;
    }
    Result<void> unload() { return observe::BpfClient(client_).unload(object_.id); }

private:
    explicit IoStats(control::ControlClient client) : client_(std::move(client)) {}
    control::ControlClient client_;
    observe::ObjectInfo object_;
    std::vector<observe::LiveMap> maps_;
};

void print_slow_events(std::vector<liveio_slow_io> events, uint64_t dropped) {
    std::sort(events.begin(), events.end(), [](const liveio_slow_io& a, const liveio_slow_io& b) {
        return a.io.latency_ns > b.io.latency_ns;
    });
    fmt::print("    {} slow calls (over io_stats' threshold){}{}\n", events.size(),
               dropped ? fmt::format(", {} dropped", dropped) : "",
               events.empty() ? "" : "; the slowest:");
    if (events.empty()) return;
    fmt::print("    {:<12} {:<11} {:>5} {:>10} {:>10} {:>10}  {}\n", "syscall", "class", "fd",
               "bytes", "result", "latency", "thread");
    for (size_t i = 0; i < std::min<size_t>(events.size(), 8); ++i) {
        const auto& e = events[i];
        fmt::print("    {:<12} {:<11} {:>5} {:>10} {:>10} {:>10}  {} ({})\n",
                   observe::syscall_name(static_cast<uint32_t>(e.io.nr)),
                   observe::class_name(e.io.file_class), e.io.fd, e.io.count, e.io.result,
                   observe::format_latency(static_cast<double>(e.io.latency_ns)),
                   std::string(e.comm, strnlen(e.comm, sizeof e.comm)), e.io.tid);
    }
}

// The policy's counters from the agent (`policy.list`), empty when it is not listed.
json policy_counters(pid_t pid, const std::string& name) {
    auto client = control::ControlClient::connect(pid);
    if (!client) return json::object();
    auto list = client->call("policy.list");
    if (!list) return json::object();
    for (const auto& p : list->value("policies", json::array()))
        if (p.value("name", "") == name && p.contains("counters")) return p["counters"];
    return json::object();
}

// Cold runs of the mix, stock and with `policy` switched on live, alternated round by round
// (which side goes first alternates too). Before every run: the policy is off (`policy off`
// returns once its prefetches are drained), the page cache is dropped, ClickHouse's mark and
// uncompressed caches are dropped; a policy run then switches the policy on. Every result
// must match.
std::optional<double> run_cold_comparison(pid_t target, const std::string& data_dir,
                                          ch::HttpClient& client, const ch::DatasetOptions& data,
                                          const std::vector<ch::Query>& mix, const DemoOptions& o,
                                          const InterruptGuard& guard) {
    const std::string pid = std::to_string(target);
    fmt::print(
        "\n[6/7] acceleration: the mix cold (page cache and ClickHouse's caches dropped before "
        "every run), "
        "stock vs the {} policy switched on live, {} runs each, alternated\n",
        o.policy, o.cold_rounds);
    if (o.cold_rounds == 0) {
        fmt::print("    skipped (--cold-rounds 0)\n");
        return std::nullopt;
    }
    if (::geteuid() != 0) {
        fmt::print("    skipped: dropping the page cache (/proc/sys/vm/drop_caches) needs root\n");
        return std::nullopt;
    }
    // The sign of a prefetch gain depends on how far the kernel already reads ahead.
    if (auto ra = bench::readahead_file_for(data_dir); ra)
        if (auto kb = bench::read_int_file(*ra); kb)
            fmt::print(
                "    device readahead of the disk under the data: {} KiB (what read-ahead can add "
                "depends on it: "
                "docs/POLICIES.md)\n",
                *kb);
    const size_t label_width = std::max<size_t>(o.policy.size(), 5);
    Phase stock, accelerated;
    json counters = json::object();
    auto cold_run = [&](Phase& into, bool policy) {
        if (auto r = bench::drop_page_cache(); !r)
            fail("dropping the page cache: " + r.error().message);
        if (policy) {
            fmt::print("    $ liveio policy {} on {}\n", pid, o.policy);
            auto on = run_liveio({"policy", pid, "on", o.policy});
            if (!on) fail(fmt::format("switching {} on: {}", o.policy, on.error().message));
        }
        Phase one = run_phase(client, data, mix, 1, guard);  // drops ClickHouse's caches first
        into.runs.push_back(std::move(one.runs.front()));
        fmt::print("    {:<{}} cold mix {:8.1f} ms, results match\n", policy ? o.policy : "stock",
                   label_width, ms(into.runs.back().elapsed));
        if (policy) {
            counters = policy_counters(target, o.policy);
            auto off = run_liveio({"policy", pid, "off", o.policy});
            if (!off) fail(fmt::format("switching {} off: {}", o.policy, off.error().message));
        }
    };
    for (int i = 0; i < o.cold_rounds; ++i) {
        const bool policy_first = i % 2 == 1;
        cold_run(policy_first ? accelerated : stock, policy_first);
        cold_run(policy_first ? stock : accelerated, !policy_first);
    }
    fmt::print("\n    {:<14} {:<13} {:>12} {:>12} {:>9}\n", "query", "kind", "stock ms",
               o.policy + " ms", "speedup");
    for (size_t i = 0; i < mix.size(); ++i) {
        const double s = stock.query_median_ms(i), p = accelerated.query_median_ms(i);
        fmt::print("    {:<14} {:<13} {:>12.2f} {:>12.2f} {:>8.2f}x\n", mix[i].name,
                   ch::to_string(mix[i].kind), s, p, p > 0 ? s / p : 0);
    }
    const double s = stock.median_ms(), p = accelerated.median_ms();
    auto mib = [&](const char* key) {
        return static_cast<double>(counters.value(key, uint64_t{0})) / (1 << 20);
    };
    fmt::print(
        "    cold mix median: stock {:.1f} ms, {} {:.1f} ms: {:.2f}x (> 1 is faster; measured "
        "here, on a machine "
        "that may be busy; `liveio bench clickhouse` is the careful measurement)\n",
        s, o.policy, p, p > 0 ? s / p : 0);
    fmt::print(
        "    {} in its last run: {} actions, {:.1f} MiB prefetched, {:.1f} MiB used, {:.1f} MiB "
        "wasted\n",
        o.policy, counters.value("actions", uint64_t{0}), mib("issued_bytes"), mib("used_bytes"),
        mib("wasted_bytes"));
    if (p <= 0) return std::nullopt;
    return s / p;
}

void run_demo(const DemoOptions& o) {
    InterruptGuard guard(
        "\nliveio demo: interrupted; stopping ClickHouse and removing its files\n");
    auto interrupted_check = [&] {
        if (guard.interrupted()) throw CLI::RuntimeError(128 + guard.signal());
    };
    const auto demo_start = Clock::now();
    auto binary = ch::find_server_binary();
    if (!binary) fail(binary.error().message + "\n(./scripts/deps.sh installs it)");

    fmt::print(
        "liveio demo: a private ClickHouse 18.16 cluster, its I/O observed live by liveio\n\n");
    fmt::print(
        "[1/7] starting a 2-shard ClickHouse cluster ({}) on free ports in a temporary directory\n",
        *binary);
    ch::ClusterOptions co;
    co.server.profile_settings = ch::kProfileSettings;
    co.server.environment = {ch::kStaticTlsReserve};
    auto cluster = ch::LocalCluster::start(co);
    interrupted_check();
    if (!cluster) fail("starting ClickHouse: " + cluster.error().message);
    for (size_t i = 0; i < cluster->size(); ++i) {
        const auto& s = cluster->shard(i);
        guard.kill_on_interrupt(s.pid());
        fmt::print("    shard {}: pid {}, http {}, native tcp {}, dir {}, up in {} ms\n", i,
                   s.pid(), s.ports().http, s.ports().tcp, s.dir(), s.startup_time().count());
    }
    const pid_t target = cluster->shard(0).pid();

    ch::DatasetOptions data;
    data.rows = o.rows;
    fmt::print(
        "\n[2/7] loading the data set: table {} (MergeTree) with {} rows, split over the shards, "
        "and Distributed table {}\n",
        data.table, data.rows, data.distributed_table);
    auto loaded = ch::load(*cluster, data);
    interrupted_check();
    if (!loaded) fail("loading the data set: " + loaded.error().message);
    fmt::print("    {} rows, {:.1f} MB on disk in {} parts, loaded in {:.1f} s\n", loaded->rows,
               loaded->bytes_on_disk / 1e6, loaded->parts, loaded->elapsed.count() / 1e3);

    const auto mix = ch::query_mix(data, ch::ShardSlice{0, cluster->size()}, true);
    auto client = cluster->shard(0).client();
    fmt::print(
        "\n[3/7] query mix on shard 0, unpatched: {} queries (point lookups, range scans, "
        "aggregations, "
        "distributed), {} runs after dropping ClickHouse's mark cache\n",
        mix.size(), o.rounds);
    const Phase before = run_phase(client, data, mix, o.rounds, guard);
    fmt::print("    median {:.1f} ms per mix; every result matches the generator's\n",
               before.median_ms());

    fmt::print(
        "\n[4/7] attaching liveio to shard 0 (pid {}) while it runs\n    $ liveio attach {} "
        "--mechanism {}\n",
        target, target, o.mechanism);
    auto attached = run_liveio({"attach", std::to_string(target), "--mechanism", o.mechanism});
    interrupted_check();
    if (!attached) fail(attached.error().message);
    print_indented(*attached);
    std::string no_stats;
    auto stats = IoStats::load(target, &no_stats);
    if (stats) {
        fmt::print(
            "    $ liveio load {} io_stats      (bpf.load: verified, JIT-compiled, attached in the "
            "target)\n",
            target);
        for (const auto& p : stats->object().programs)
            fmt::print("    program {} at {} ({}, {} instructions)\n", p.name, p.attach, p.engine,
                       p.insns);
        std::string maps;
        for (const auto& m : stats->object().maps)
            maps += fmt::format("{}{} ({})", maps.empty() ? "" : ", ", m.name, m.type);
        fmt::print("    maps, read live from here through shared memory: {}\n", maps);
    } else {
        fmt::print("    io_stats not loaded ({}); showing the agent's call counters instead\n",
                   no_stats);
    }
    const CallCounts counts_before = status_counts(target);
    std::optional<observe::Snapshot> stats_before;
    if (stats) {
        auto snap = stats->snapshot();
        if (!snap) fail("reading io_stats' maps: " + snap.error().message);
        stats_before = std::move(*snap);
        uint64_t dropped = 0;
        (void)stats->take_slow_events(&dropped);  // only the mix's events are shown
    }

    fmt::print("\n[5/7] the same query mix with liveio attached\n");
    const Phase during = run_phase(client, data, mix, o.rounds, guard);
    const CallCounts counts_after = status_counts(target);
    fmt::print("    median {:.1f} ms per mix ({:+.1f}% vs unpatched); every result matches\n\n",
               during.median_ms(), 100.0 * (during.median_ms() / before.median_ms() - 1));
    fmt::print("    {:<14} {:<13} {:>12} {:>12}\n", "query", "kind", "unpatched ms", "attached ms");
    for (size_t i = 0; i < mix.size(); ++i)
        fmt::print("    {:<14} {:<13} {:>12.2f} {:>12.2f}\n", mix[i].name,
                   ch::to_string(mix[i].kind), before.query_median_ms(i),
                   during.query_median_ms(i));
    if (stats) {
        auto snap = stats->snapshot();
        if (!snap) fail("reading io_stats' maps: " + snap.error().message);
        const observe::Snapshot seen = observe::delta(*snap, *stats_before);
        fmt::print(
            "\n    what liveio saw in shard 0 during the {} runs (io_stats: per syscall, per file "
            "class):\n\n",
            o.rounds);
        print_indented(observe::format_tables(seen, 0));
        uint64_t dropped = 0;
        auto events = stats->take_slow_events(&dropped);
        fmt::print("\n");
        print_slow_events(std::move(events), dropped);
        if (auto r = stats->unload(); !r) fail("unloading io_stats: " + r.error().message);
    } else {
        fmt::print(
            "\n    what liveio saw in shard 0 during the {} runs (calls intercepted per "
            "syscall):\n",
            o.rounds);
        print_call_counts(counts_after, counts_before);
    }

    const auto cold_speedup =
        run_cold_comparison(target, cluster->shard(0).dir(), client, data, mix, o, guard);

    fmt::print("\n[7/7] detaching\n    $ liveio detach {}\n", target);
    auto detached = run_liveio({"detach", std::to_string(target)});
    interrupted_check();
    if (!detached) fail(detached.error().message);
    print_indented(*detached);
    // The server after detach: alive, agent gone, same answers.
    if (::kill(target, 0) != 0) fail("shard 0 is gone after detach");
    if (agent_mapped(target)) fail("liveio-agent.so is still mapped in shard 0 after detach");
    const Phase after = run_phase(client, data, mix, 1, guard);
    fmt::print(
        "    shard 0 still serves: the mix answers correctly again ({:.1f} ms); liveio-agent.so is "
        "unmapped\n",
        after.median_ms());

    const int cold_runs = cold_speedup ? 2 * o.cold_rounds : 0;
    fmt::print(
        "\nsummary: {} rows on 2 shards; {} queries x {} runs per phase; mix median unpatched "
        "{:.1f} ms, "
        "attached {:.1f} ms ({:+.1f}%); cold mix with {} switched on live: {}; results identical "
        "in all {} runs; "
        "server unchanged after detach; demo took {:.0f} s\n",
        data.rows, mix.size(), o.rounds, before.median_ms(), during.median_ms(),
        100.0 * (during.median_ms() / before.median_ms() - 1), o.policy,
        cold_speedup ? fmt::format("{:.2f}x vs stock cold", *cold_speedup) : "not measured",
        2 * o.rounds + 1 + cold_runs,
        std::chrono::duration<double>(Clock::now() - demo_start).count());
    if (auto r = cluster->stop(); !r)
        fmt::print(stderr, "liveio demo: stopping ClickHouse: {}\n", r.error().message);
}

}  // namespace

void add_demo_commands(CLI::App& app) {
    auto* demo = app.add_subcommand(
        "demo", "Start a private ClickHouse cluster, attach liveio live and show what it sees");
    auto o = std::make_shared<DemoOptions>();
    demo->add_option("--rows", o->rows, "rows of the sample data set")
        ->check(CLI::Range(uint64_t{1000}, uint64_t{200'000'000}))
        ->capture_default_str();
    demo->add_option("--rounds", o->rounds, "runs of the query mix per phase")
        ->check(CLI::Range(1, 100))
        ->capture_default_str();
    demo->add_option("--cold-rounds", o->cold_rounds,
                     "cold runs of the mix per side in the acceleration step (0: skip it)")
        ->check(CLI::Range(0, 20))
        ->capture_default_str();
    demo->add_option("--policy", o->policy, "the policy of the acceleration step")
        ->capture_default_str();
    demo->add_option("--mechanism,-m", o->mechanism, "how liveio intercepts calls")
        ->check(CLI::IsMember(control::mechanism_names()))
        ->capture_default_str();
    demo->callback([o] { run_demo(*o); });
}

}  // namespace liveio::cli
