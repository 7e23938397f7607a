// `liveio soak clickhouse --minutes N`: a ClickHouse 18.16 test-bed server started as systemd
// starts the Debian service (user clickhouse, only PATH in its environment: no GLIBC_TUNABLES)
// runs a concurrent query mix and a writer (soak_load.h) while liveio attaches with every
// mechanism in turn, loads and unloads a BPF object, switches every policy on and off and
// detaches, every few seconds (soak_cycles.h). At the end: every answer equal to the expected
// one, the inserted rows exact, CHECK TABLE passing, and the server holding no more
// descriptors, threads or liveio mappings than it did before the soak (soak_target.h).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <optional>
#include <thread>

#include <fmt/format.h>

#include "base/mmap_min_addr.h"
#include "bench.h"
#include "clickhouse/dataset.h"
#include "clickhouse/server.h"
#include "control/self_exec.h"
#include "soak_cycles.h"
#include "soak_load.h"
#include "soak_target.h"

namespace liveio::bench {
namespace {

namespace ch = liveio::clickhouse;

struct SoakOptions {
    double minutes = 10;
    uint64_t rows = 1'000'000;
    double warmup_seconds = 30;
    size_t checkers = 2;
    size_t benchmark_concurrency = 2;
    int step_ms = 1000;
    std::vector<std::string> mechanisms{"got", "inline", "rewrite"};
};

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "liveio soak: %s\n", message.c_str());
    throw CLI::RuntimeError(1);
}

template <typename T>
T check(Result<T> r, const std::string& what) {
    if (!r) fail(what + ": " + r.error().message);
    if constexpr (!std::is_void_v<T>) return std::move(r).value();
}

std::string environment_of(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/environ", pid));
    std::string env((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (char& c : env)
        if (c == '\0') c = ' ';
    return env;
}

// The inserted rows of one table compared with what the server acknowledged: lost rows (or a
// message when anything else differs).
uint64_t verify_written(ch::HttpClient& client, const std::string& table, const WrittenRows& want,
                        std::vector<std::string>& problems) {
    auto rows =
        client.query_rows(fmt::format("SELECT count(), uniqExact(n), sum(n), sum(length(v)), "
                                      "countIf(v != concat('soak-', toString(n), '-', toString((n "
                                      "* 2654435761) % 1000003))) FROM {}",
                                      table));
    if (!rows || rows->size() != 1 || (*rows)[0].size() != 5) {
        problems.push_back(fmt::format("{}: checksum query failed: {}", table,
                                       rows ? "bad answer" : rows.error().message));
        return want.rows;
    }
    const auto& r = (*rows)[0];
    const uint64_t count = std::stoull(r[0]), distinct = std::stoull(r[1]),
                   sum_n = std::stoull(r[2]), sum_len = std::stoull(r[3]),
                   wrong = std::stoull(r[4]);
    std::printf(
        "  %-9s rows %llu (acknowledged %llu), distinct %llu, sum(n) %llu (want %llu), bytes %llu "
        "(want %llu), "
        "wrong values %llu\n",
        table.c_str(), (unsigned long long)count, (unsigned long long)want.rows,
        (unsigned long long)distinct, (unsigned long long)sum_n, (unsigned long long)want.sum_n,
        (unsigned long long)sum_len, (unsigned long long)want.sum_len, (unsigned long long)wrong);
    if (count != want.rows || distinct != count || sum_n != want.sum_n || sum_len != want.sum_len ||
        wrong != 0)
        problems.push_back(
            fmt::format("{}: rows or checksums differ from the acknowledged inserts", table));
    return count < want.rows ? want.rows - count : 0;
}

void print_failures(const char* what, const FailureLog& log) {
    if (log.count() == 0) return;
    std::printf("%s: %llu, first:\n", what, (unsigned long long)log.count());
    for (const auto& m : log.first()) std::printf("    %s\n", m.c_str());
}

int run_soak(SoakOptions o) {
    std::optional<MmapMinAddrZero> page_zero;
    if (std::find(o.mechanisms.begin(), o.mechanisms.end(), "rewrite") != o.mechanisms.end()) {
        page_zero.emplace();
        if (!page_zero->ok()) {
            std::printf("note: mechanism rewrite left out: %s\n", page_zero->reason().c_str());
            std::erase(o.mechanisms, "rewrite");
        }
    }
    if (o.mechanisms.empty()) fail("no mechanism to soak");

    ch::ServerOptions so;
    so.binary = check(ch::find_server_binary(), "clickhouse-server");
    so.profile_settings = ch::kProfileSettings;
    so.inherit_environment = false;
    so.environment = {ch::kServiceEnvironment};
    so.user = ch::service_user();
    auto server = check(ch::LocalServer::start(so), "starting clickhouse-server");
    const pid_t pid = server.pid();
    std::printf("clickhouse-server %d started as a service starts it: user %s, environment %s\n",
                pid, so.user.empty() ? "ours (not root, or no user clickhouse)" : so.user.c_str(),
                environment_of(pid).c_str());
    auto client = server.client();
    ch::DatasetOptions data;
    data.rows = o.rows;
    const auto loaded = check(ch::load(client, data), "loading the data set");
    for (const auto& sql : soak_create_sql()) check(client.execute(sql), sql);
    const auto mix = ch::query_mix(data, ch::ShardSlice{}, false);
    const auto stock = check(ch::run_mix(client, mix), "stock query mix");
    if (stock.mismatches != 0)
        fail("the stock server's answers differ from the expected ones; nothing to compare with");
    std::printf(
        "data set: %llu rows, %.1f MB; %zu queries, stock answers equal the expected ones\n",
        (unsigned long long)loaded.rows, loaded.bytes_on_disk / 1e6, mix.size());

    SoakLoad load(
        server, mix,
        SoakLoadOptions{.checkers = o.checkers, .benchmark_concurrency = o.benchmark_concurrency});
    if (!load.benchmark_note().empty()) std::printf("note: %s\n", load.benchmark_note().c_str());
    const auto seconds = [](double s) {
        return std::chrono::duration_cast<SoakClock::duration>(std::chrono::duration<double>(s));
    };

    // Warm-up without liveio: the server's caches, pools and arenas reach their working size,
    // so the numbers before the soak are the ones the same load leaves on a stock server.
    std::printf("warm-up without liveio: %.0f s\n", o.warmup_seconds);
    std::fflush(stdout);
    load.run(SoakClock::now() + seconds(o.warmup_seconds));
    load.join();
    const uint64_t stock_failures = load.query_failures().count() + load.insert_failures().count() +
                                    load.benchmark_failures().count();
    if (stock_failures != 0) {
        print_failures("failed queries without liveio", load.query_failures());
        print_failures("failed inserts without liveio", load.insert_failures());
        print_failures("clickhouse-benchmark failures without liveio", load.benchmark_failures());
        fail("the load fails on the stock server; the soak would measure nothing");
    }
    const uint64_t warm_checked = load.checked_queries(), warm_bench = load.benchmark_queries(),
                   warm_inserts = load.inserts();
    std::this_thread::sleep_for(std::chrono::seconds(2));  // the load's connections close
    const ProcessSnapshot before = check(snapshot_process(pid), "reading the server's /proc");

    std::string mechs;
    for (auto& m : o.mechanisms) mechs += (mechs.empty() ? "" : ",") + m;
    std::printf("soak: %.1f min, mechanisms %s, a configuration every %d ms\n", o.minutes,
                mechs.c_str(), o.step_ms);
    std::fflush(stdout);
    const auto started = SoakClock::now();
    const auto deadline = started + seconds(o.minutes * 60);
    load.run(deadline);
    CycleReport cycles;
    run_attach_cycles(pid, CycleOptions{o.mechanisms, std::chrono::milliseconds(o.step_ms)},
                      deadline, cycles);
    load.join();
    const double soak_s = std::chrono::duration<double>(SoakClock::now() - started).count();

    std::vector<std::string> problems;
    if (control::agent_mapped(pid)) {
        problems.push_back("liveio-agent.so still mapped after the last cycle");
        (void)control::run_liveio({"detach", std::to_string(pid)});
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));
    const ProcessSnapshot after = check(snapshot_process(pid), "reading the server's /proc");

    std::printf(
        "\nload during the soak (%.0f s): %llu answers checked, %llu clickhouse-benchmark queries, "
        "%llu inserts\n",
        soak_s, (unsigned long long)(load.checked_queries() - warm_checked),
        (unsigned long long)(load.benchmark_queries() - warm_bench),
        (unsigned long long)(load.inserts() - warm_inserts));
    std::string per;
    for (size_t i = 0; i < o.mechanisms.size(); ++i)
        per += fmt::format("{}{} {}", per.empty() ? "" : ", ", o.mechanisms[i],
                           cycles.per_mechanism.at(i));
    std::printf("attach cycles: %llu (%s), %llu liveio commands\n",
                (unsigned long long)cycles.cycles, per.c_str(), (unsigned long long)cycles.steps);
    print_failures("failed liveio commands", cycles.failures);
    print_failures("failed or wrong answers", load.query_failures());
    print_failures("failed inserts", load.insert_failures());
    print_failures("clickhouse-benchmark failures", load.benchmark_failures());

    // After the soak: the written rows, CHECK TABLE, the mix once more.
    std::printf("\nafter the soak:\n");
    uint64_t lost = 0;
    const auto written = load.written();
    for (size_t t = 0; t < std::size(kSoakTables); ++t)
        lost += verify_written(client, kSoakTables[t], written[t], problems);
    // 18.16 checks Log-family tables only ("Check query is not supported for MergeTree
    // storage"); the MergeTree tables are read whole by OPTIMIZE FINAL (a damaged part fails the
    // merge) and their answers were compared above and below.
    auto checked = client.query("CHECK TABLE soak_log");
    std::printf("  CHECK TABLE soak_log: %s\n", checked ? (*checked == "1\n" ? "passed" : "FAILED")
                                                        : checked.error().message.c_str());
    if (!checked || *checked != "1\n") problems.push_back("CHECK TABLE soak_log did not pass");
    for (const char* table : {"soak_mt", data.table.c_str()}) {
        auto merged = client.execute(fmt::format("OPTIMIZE TABLE {} FINAL", table));
        std::printf("  OPTIMIZE TABLE %s FINAL: %s\n", table,
                    merged ? "done" : merged.error().message.c_str());
        if (!merged) problems.push_back(fmt::format("OPTIMIZE TABLE {} FINAL failed", table));
    }
    lost += verify_written(client, "soak_mt", written[1], problems);
    auto final_mix = ch::run_mix(client, mix);
    const uint64_t final_wrong = final_mix ? final_mix->mismatches : mix.size();
    std::printf("  query mix: %s\n", final_mix ? fmt::format("{} of {} answers as expected",
                                                             mix.size() - final_wrong, mix.size())
                                                     .c_str()
                                               : final_mix.error().message.c_str());

    // The server's resources against its own numbers before the soak.
    std::printf("\n%-22s %12s %12s %12s\n", "server", "before", "after", "change");
    auto row = [](const char* what, long long b, long long a) {
        std::printf("%-22s %12lld %12lld %+12lld\n", what, b, a, a - b);
    };
    row("descriptors", (long long)before.fd_count(), (long long)after.fd_count());
    row("threads", (long long)before.thread_count(), (long long)after.thread_count());
    row("connection pool", (long long)before.connection_handler_threads(),
        (long long)after.connection_handler_threads());
    row("io_uring workers", (long long)before.io_uring_workers(),
        (long long)after.io_uring_workers());
    row("mappings", (long long)before.mappings, (long long)after.mappings);
    row("rss (KiB)", (long long)before.rss_kb, (long long)after.rss_kb);
    std::printf("descriptor kinds changed: %s\nthread names changed: %s\n",
                describe_change(before.fds, after.fds).c_str(),
                describe_change(before.threads, after.threads).c_str());
    const auto leftovers = after.liveio_resources();
    for (const auto& l : leftovers) problems.push_back("left behind: " + l);
    const long long leaked_fds =
        std::max<long long>(0, (long long)after.fd_count() - (long long)before.fd_count());
    const long long leaked_threads =
        std::max<long long>(0, (long long)after.thread_count() - (long long)before.thread_count());
    if (leaked_fds)
        problems.push_back(fmt::format("{} more descriptors than before the soak", leaked_fds));
    if (leaked_threads)
        problems.push_back(fmt::format("{} more threads than before the soak", leaked_threads));

    const uint64_t failed_queries = load.query_failures().count() + load.insert_failures().count() +
                                    load.benchmark_failures().count() + final_wrong;
    if (failed_queries)
        problems.push_back(fmt::format("{} failed or wrong queries", failed_queries));
    if (cycles.failures.count())
        problems.push_back(fmt::format("{} failed liveio commands", cycles.failures.count()));
    if (cycles.cycles == 0) problems.push_back("no attach cycle completed");
    const double rss_growth_mb = ((double)after.rss_kb - (double)before.rss_kb) / 1024.0;

    auto stopped = server.stop();
    if (!stopped) problems.push_back("the server did not stop cleanly: " + stopped.error().message);
    std::printf("\n%s\n", problems.empty() ? "soak passed" : "soak FAILED:");
    for (const auto& p : problems) std::printf("  %s\n", p.c_str());
    std::printf("metric: soak_failed_queries %llu\n", (unsigned long long)failed_queries);
    std::printf("metric: soak_attach_cycles %llu\n", (unsigned long long)cycles.cycles);
    std::printf("metric: soak_lost_rows %llu\n", (unsigned long long)lost);
    std::printf("metric: soak_target_rss_growth_mb %.1f\n", rss_growth_mb);
    std::printf("metric: soak_control_failures %llu\n",
                (unsigned long long)cycles.failures.count());
    std::printf("metric: soak_leaked_fds %lld\n", leaked_fds);
    std::printf("metric: soak_leaked_threads %lld\n", leaked_threads);
    std::fflush(stdout);
    return problems.empty() ? 0 : 1;
}

}  // namespace

void add_soak_clickhouse(CLI::App& soak) {
    auto o = std::make_shared<SoakOptions>();
    auto* cmd = soak.add_subcommand("clickhouse",
                                    "Attach, switch policies and detach every few seconds on a "
                                    "loaded ClickHouse; check answers, rows and leaks");
    cmd->add_option("--minutes", o->minutes, "length of the soak (after the warm-up)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_option("--rows", o->rows, "rows of the hits-like table the queries read")
        ->capture_default_str();
    cmd->add_option("--warmup-seconds", o->warmup_seconds,
                    "load without liveio before the numbers are taken")
        ->capture_default_str();
    cmd->add_option("--checkers", o->checkers, "threads comparing answers over HTTP")
        ->capture_default_str();
    cmd->add_option("--benchmark-concurrency", o->benchmark_concurrency,
                    "clickhouse-benchmark -c (0: not used)")
        ->capture_default_str();
    cmd->add_option("--step-ms", o->step_ms, "time in each configuration of a cycle")
        ->capture_default_str();
    cmd->add_option("--mechanisms", o->mechanisms, "mechanisms attached in turn")
        ->delimiter(',')
        ->capture_default_str();
    cmd->callback([o] {
        if (const int rc = run_soak(*o); rc != 0) throw CLI::RuntimeError(rc);
    });
}

}  // namespace liveio::bench
