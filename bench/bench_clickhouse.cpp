// `liveio bench clickhouse`: do liveio's acceleration policies make a running ClickHouse 18.16
// faster, and do they never change a result?
//
// One server (the Debian clickhouse-server, test bed of src/clickhouse) on the cached hits-like
// data set (clickhouse_dataset.h, clickhouse_hits.h). For each query, in an order of
// configurations rotated from query to query so drift hits all alike: switch the
// configuration live (stock; each policy through the CLI: `liveio attach PID --policy NAME`,
// `liveio policy PID on|off NAME`; ClickHouse's own O_DIRECT/AIO path through the setting
// min_bytes_to_use_direct_io=1), then `runs` cold runs (page cache dropped, ClickHouse's mark
// and uncompressed caches dropped) and `runs` hot runs. Times are HTTP response times measured
// here around one request on a kept-alive connection (the server finishes the query before it
// answers: wait_end_of_query=1). Every result is hashed and compared with stock's first run.
// The pass is made at the machine's device readahead and again at 128 KiB (set, and restored
// on exit, error and Ctrl-C). Both on the idle device and, by default, once more while a bounded
// background load contends for the disk (clickhouse_device.h: a single reader then waits
// longer per request while parallel readers still gain), the device's own fio figures measured
// under each condition. Then an INSERT + merge workload per configuration (idle device) whose
// merged part must be byte-identical to stock's.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "bench.h"
#include "clickhouse/server.h"
#include "clickhouse_dataset.h"
#include "clickhouse_device.h"
#include "clickhouse_hits.h"
#include "clickhouse_report.h"
#include "clickhouse_system.h"
#include "control/self_exec.h"
#include "interrupt_guard.h"
#include "policy/catalog.h"

namespace liveio::bench {
namespace {

namespace ch = liveio::clickhouse;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using control::agent_mapped;
using control::run_liveio;

struct ClickhouseOptions {
    double scale = 40;  // million rows
    std::string cache_dir = "/var/cache/liveio/bench-clickhouse";
    std::string policies;  // comma-separated catalog names; empty: every policy of the catalog
    std::string
        queries;  // comma-separated names, or "all"; empty: kDefaultQueries (all with --full)
    std::string out_dir;
    int runs = 3;
    int low_readahead_kb = 128;
    int insert_rounds = 2;
    int fio_seconds = 3;
    std::string devices = "idle,contended";  // device conditions, each a pass (clickhouse_device.h)
    ContentionSpec contention;
    bool quick = false;
    bool full = false;
};

// The default run's queries: ClickBench's short and medium scans (count, filters and GROUP BYs
// over a few columns, string filters over URL/Title, the PK-range queries Q37-Q43), the ones
// whose stock cold/hot ratio is the largest (Q1, Q4, Q14, Q38, Q43), and every PK lookup. Left
// to --full: the long CPU-bound GROUP BYs over tens of millions of keys (Q5, Q6, Q9-Q13,
// Q15-Q36 except Q20, Q40), seconds to a minute of decompression and hashing each on this
// machine, where the disk is a small share of the time.
constexpr const char* kDefaultQueries =
    "Q1,Q2,Q3,Q4,Q7,Q8,Q14,Q20,Q37,Q38,Q39,Q41,Q42,Q43,PK1,PK2,PK3,PK4,PK5,PK6,PK7,PK8";

// A cold run starts with at most this share of the table's bytes in the page cache; the
// caches are dropped up to kColdAttempts times to get there.
constexpr double kColdResidentPct = 0.1;
constexpr int kColdAttempts = 4;

// Settings every benchmark query runs with: room for the GROUP BYs over tens of millions of
// keys (the test bed's profile caps memory at 4 GB).
constexpr const char* kQuerySettings = "max_memory_usage=12000000000";

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "liveio bench clickhouse: %s\n", message.c_str());
    throw CLI::RuntimeError(1);
}

uint64_t fnv1a(std::string_view data, uint64_t h = 14695981039346656037ull) {
    for (unsigned char c : data) h = (h ^ c) * 1099511628211ull;
    return h;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// The knob settings of a --policies entry NAME:KEY=VALUE[:KEY=VALUE...] (none for NAME).
std::vector<std::string> variant_knobs(const std::string& entry) {
    std::vector<std::string> knobs;
    std::stringstream ss(entry);
    std::string part;
    std::getline(ss, part, ':');
    while (std::getline(ss, part, ':'))
        if (!part.empty()) knobs.push_back(part);
    return knobs;
}

// The error text of a failed CLI command, trimmed to its essential lines.
std::string cli_error(const Error& e) {
    std::string m;
    for (char ch : e.message) {
        if (ch != '\n')
            m += ch;
        else if (!m.empty() && !m.ends_with(" "))
            m += " ";
    }
    while (!m.empty() && m.back() == ' ') m.pop_back();
    if (m.size() > 600) m = m.substr(0, 600) + "...";
    return m;
}

// Switches the server between configurations with the liveio CLI, as a user would.
class PolicySwitch {
public:
    explicit PolicySwitch(pid_t pid) : pid_(std::to_string(pid)), pid_num_(pid) {}

    Result<void> apply(const Config& c) {
        const std::string want = c.kind == ConfigKind::Policy ? c.name : "";
        if (want == active_) return {};
        if (!active_.empty()) {
            auto r = run_liveio({"policy", pid_, "off", active_policy_});
            if (!r) return r.error();
            add_ledger(*r, active_);
            active_.clear();
        }
        if (want.empty()) return {};
        std::vector<std::string> on = {"policy", pid_, "on", c.policy};
        on.insert(on.end(), c.knobs.begin(), c.knobs.end());
        auto r = attached_ ? run_liveio(on) : run_liveio({"attach", pid_, "--policy", c.policy});
        if (!attached_ && agent_mapped(pid_num_)) attached_ = true;
        if (!r) return r.error();
        attached_ = true;
        active_ = want;
        active_policy_ = c.policy;
        // A first attach switches the policy on with its defaults: the variant's knobs now.
        for (const std::string& k : c.knobs)
            if (auto s = run_liveio({"policy", pid_, "set", c.policy, k}); !s) return s.error();
        return {};
    }

    Result<void> detach() {
        if (!attached_ && !agent_mapped(pid_num_)) return {};
        auto r = run_liveio({"detach", pid_});
        if (!r) return r.error();
        attached_ = false;
        active_.clear();
        return {};
    }

    const std::string& active() const { return active_; }

    // What the policies issued, summed over every `policy off` of the run (its final figures,
    // counted after the drain), in MiB.
    struct Ledger {
        double issued = 0, used = 0, wasted = 0, cached = 0, pending = 0;
        int offs = 0;
    };
    const std::map<std::string, Ledger>& ledgers() const { return ledgers_; }

private:
    // The line `liveio policy PID off NAME` prints (src/cli/cmd_policy.cpp), for `config`.
    void add_ledger(const std::string& out, const std::string& config) {
        static const std::regex line(
            R"(policy (\S+) off in \d+ \(drained\): \d+ actions, ([0-9.]+) MiB issued, ([0-9.]+) )"
            R"(MiB used, ([0-9.]+) MiB wasted \(([0-9.]+) MiB of it still cached\), ([0-9.]+) MiB )"
            R"(pending)");
        std::smatch m;
        if (!std::regex_search(out, m, line)) return;
        Ledger& l = ledgers_[config];
        l.issued += std::stod(m[2].str());
        l.used += std::stod(m[3].str());
        l.wasted += std::stod(m[4].str());
        l.cached += std::stod(m[5].str());
        l.pending += std::stod(m[6].str());
        ++l.offs;
    }
    std::map<std::string, Ledger> ledgers_;
    std::string pid_;
    pid_t pid_num_;
    bool attached_ = false;
    std::string active_;         // the config switched on (a policy or a variant of one)
    std::string active_policy_;  // its policy
};

struct QueryRun {
    double ms = 0;
    uint64_t hash = 0;
    std::string body;
};

class Bench {
public:
    Bench(const ClickhouseOptions& o, ch::LocalServer& server, InterruptGuard& guard,
          const std::string& raw_path)
        : o_(o),
          server_(server),
          guard_(guard),
          client_(server.client(std::chrono::minutes(30))),
          switch_(server.pid()),
          raw_(raw_path, std::ios::app),
          table_dir_(server.data_path() + "data/default/hits") {}

    void check_interrupt() {
        if (guard_.interrupted()) throw CLI::RuntimeError(128 + guard_.signal());
    }

    Result<QueryRun> run(const std::string& sql, const Config& c, bool record_body) {
        std::string params = kQuerySettings;
        if (c.kind == ConfigKind::DirectIo) params += "&min_bytes_to_use_direct_io=1";
        params += fmt::format("&query_id=liveio-bench-{}", ++query_seq_);
        const auto start = Clock::now();
        auto body = query_with(client_, sql, params);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
        check_interrupt();
        if (!body) return body.error();
        QueryRun r{ms, fnv1a(*body), {}};
        if (record_body) r.body = std::move(*body);
        return r;
    }

    Result<void> drop_caches() {
        if (auto r = drop_page_cache(); !r) return r;
        if (auto r = client_.execute("SYSTEM DROP MARK CACHE"); !r) return r;
        return client_.execute("SYSTEM DROP UNCOMPRESSED CACHE");
    }

    // Makes `c` current; a policy that cannot be switched becomes unavailable (with the CLI's
    // error) and the server is brought back to stock.
    bool switch_to(Config& c) {
        if (!c.available) return false;
        auto r = switch_.apply(c);
        if (r) return true;
        c.available = false;
        c.unavailable_reason = cli_error(r.error());
        fmt::print("  {} is unavailable: {}\n", c.name, c.unavailable_reason);
        Config stock{"stock"};
        if (auto back = switch_.apply(stock); !back) {
            if (auto d = switch_.detach(); !d)
                fail(fmt::format("cannot bring the server back to stock after {} failed: {}",
                                 c.name, cli_error(d.error())));
        }
        return false;
    }

    // Makes a cold run of `c` for `q` possible: `c` is switched on live and `q` run once
    // under it, unrecorded (the policy has been on for a query, as on a server that keeps it
    // on; the switch's one-time costs are the hot rounds' `first` runs), then the page cache
    // and ClickHouse's mark and uncompressed caches are dropped and the table's files checked
    // to be out of the page cache (mincore). False when `c` cannot be switched.
    bool prepare_cold(Config& c, const hits::Query& q) {
        if (!switch_to(c)) return false;
        (void)run(q.sql, c, false);  // a failure shows in the recorded run
        if (auto r = drop_caches(); !r) fail("dropping caches: " + r.error().message);
        // The policy stays on: the warm-up's prefetches may still be in flight, and pages under
        // I/O survive drop_caches: drop again (bounded) until the files are out.
        for (int attempt = 0;; ++attempt) {
            auto resident = page_cache_residency(table_dir_);
            if (!resident) fail("page-cache residency of the table: " + resident.error().message);
            last_resident_pct_ = resident->pct();
            if (last_resident_pct_ <= kColdResidentPct || attempt + 1 == kColdAttempts) break;
            ++cold_redrops_;
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
            if (auto r = drop_caches(); !r) fail("dropping caches: " + r.error().message);
        }
        max_resident_pct_ = std::max(max_resident_pct_, last_resident_pct_);
        return true;
    }

    // Runs every query under every available config at the current readahead. Per query: one
    // unrecorded stock run (first-execution effects: parsing, function and dictionary set-up,
    // memory), then `runs` rounds of cold runs and `runs` rounds of hot runs; each round runs
    // every config once, in an order rotated from round to round and query to query, so
    // drift, the machine's other load and any position effect hit all configs alike.
    void run_phase(Phase& phase, const std::vector<hits::Query>& queries,
                   std::vector<Config>& configs) {
        const size_t n = configs.size();
        for (size_t qi = 0; qi < queries.size(); ++qi) {
            const auto& q = queries[qi];
            Config stock{"stock"};
            if (!switch_to(stock)) fail("cannot switch the server back to stock");
            if (auto r = run(q.sql, stock, false); !r)
                fail(fmt::format("{} (stock, warm-up): {}", q.name, r.error().message));
            std::map<std::string, std::vector<QueryRun>> runs;
            std::set<std::string> failed;
            auto round = [&](int i, const char* kind) {
                for (size_t k = 0; k < n; ++k) {
                    Config& c = configs[(qi + static_cast<size_t>(i) + k) % n];
                    if (!c.available || failed.count(c.name)) continue;
                    Timings& t = phase.timings[q.name][c.name];
                    if (kind[0] == 'c') {
                        if (!prepare_cold(c, q)) continue;
                    } else {
                        // The first run after the switch, then the hot run: the policy has
                        // been on for a query, as on a server that keeps it on.
                        if (!switch_to(c)) continue;
                        auto first = record(runs[c.name], phase, q, c, "first", i);
                        if (!first) {
                            failed.insert(c.name);
                            continue;
                        }
                        t.first_ms.push_back(*first);
                    }
                    auto ms = record(runs[c.name], phase, q, c, kind, i);
                    if (!ms) {
                        failed.insert(c.name);
                        continue;
                    }
                    (kind[0] == 'c' ? t.cold_ms : t.hot_ms).push_back(*ms);
                }
            };
            for (int i = 0; i < o_.runs; ++i) round(i, "cold");
            for (int i = 0; phase.hot && i < o_.runs; ++i) round(i, "hot");
            std::string line = fmt::format("  {:<5}", q.name);
            for (const auto& c : configs) {
                if (failed.count(c.name)) {
                    // Runs of this query that did answer are no comparable timing either.
                    phase.timings[q.name].erase(c.name);
                    line += fmt::format("  {} ERROR", c.name);
                    continue;
                }
                auto it = phase.timings[q.name].find(c.name);
                if (it == phase.timings[q.name].end()) continue;
                const Timings& t = it->second;
                line += phase.hot ? fmt::format("  {} {:.0f}/{:.0f} ms", c.name, median(t.cold_ms),
                                                median(t.hot_ms))
                                  : fmt::format("  {} {:.0f} ms", c.name, median(t.cold_ms));
            }
            fmt::print("{}\n", line);
            std::fflush(stdout);
            compare_results(phase, q, runs);
        }
    }

    // The highest share of the table's bytes found in the page cache right before a cold run.
    double max_resident_pct() const { return max_resident_pct_; }
    size_t cold_redrops() const { return cold_redrops_; }

    size_t mismatches() const { return mismatches_; }
    size_t query_errors() const { return query_errors_; }
    const std::vector<std::string>& errors() const { return errors_; }
    ch::HttpClient& client() { return client_; }
    PolicySwitch& policy_switch() { return switch_; }

private:
    // A query refused under stock ends the benchmark; under another configuration it is
    // reported and counted (a failed query is a changed result), and that configuration's
    // timings of the query are dropped.
    std::optional<double> record(std::vector<QueryRun>& into, const Phase& phase,
                                 const hits::Query& q, const Config& c, const char* kind,
                                 int round) {
        auto r = run(q.sql, c, true);
        if (!r && c.kind == ConfigKind::Stock)
            fail(fmt::format("{} ({}, {}): {}", q.name, c.name, kind, r.error().message));
        if (!r) {
            ++query_errors_;
            errors_.push_back(fmt::format("{} under {} ({}, {}): {}", q.name, c.name, phase.name,
                                          kind, r.error().message));
            fmt::print("  QUERY ERROR: {}\n", errors_.back());
            return std::nullopt;
        }
        into.push_back(std::move(*r));
        // Every run as it happens, so an interrupted benchmark keeps what it measured.
        raw_ << fmt::format("{}\t{}\t{}\t{}\t{:.3f}\t{:016x}\t{}\t{}\t{}\n", phase.readahead_kb,
                            q.name, c.name, kind, into.back().ms, into.back().hash, round + 1,
                            kind[0] == 'c' ? fmt::format("{:.2f}", last_resident_pct_) : "-",
                            phase.device)
             << std::flush;
        return into.back().ms;
    }

    // Every run of every config must return stock's first result, byte for byte.
    void compare_results(const Phase& phase, const hits::Query& q,
                         std::map<std::string, std::vector<QueryRun>>& runs) {
        auto stock = runs.find("stock");
        if (stock == runs.end() || stock->second.empty()) return;
        const QueryRun& ref = stock->second.front();
        for (auto& [config, list] : runs) {
            for (size_t i = 0; i < list.size(); ++i) {
                if (list[i].hash == ref.hash && list[i].body == ref.body) continue;
                ++mismatches_;
                size_t line = 0, pos = 0;
                const std::string& got = list[i].body;
                while (pos < std::min(got.size(), ref.body.size()) && got[pos] == ref.body[pos]) {
                    if (got[pos] == '\n') ++line;
                    ++pos;
                }
                fmt::print(
                    "  RESULT MISMATCH: {} under {} (run {} of {}, {}): {} bytes vs stock's {}, "
                    "first difference "
                    "in line {}:\n    stock: {}\n    got:   {}\n",
                    q.name, config, i + 1, list.size(), phase.name, got.size(), ref.body.size(),
                    line + 1,
                    first_line(ref.body.substr(ref.body.rfind('\n', pos) == std::string::npos
                                                   ? 0
                                                   : ref.body.rfind('\n', pos) + 1))
                        .substr(0, 200),
                    first_line(got.substr(got.rfind('\n', pos) == std::string::npos
                                              ? 0
                                              : got.rfind('\n', pos) + 1))
                        .substr(0, 200));
            }
        }
    }

    const ClickhouseOptions& o_;
    ch::LocalServer& server_;
    InterruptGuard& guard_;
    ch::HttpClient client_;
    PolicySwitch switch_;
    uint64_t query_seq_ = 0;
    size_t mismatches_ = 0;
    size_t query_errors_ = 0;
    std::vector<std::string> errors_;
    std::ofstream raw_;  // readahead_kb, query, config, cold|hot, ms, result hash, round, resident
                         // % (cold), device condition
    std::string table_dir_;
    double last_resident_pct_ = 0;
    double max_resident_pct_ = 0;
    size_t cold_redrops_ = 0;  // drops repeated because table pages were still resident
};

Result<hits::QueryConstants> resolve_constants(ch::HttpClient& client, uint64_t rows, int keys) {
    hits::QueryConstants c;
    auto user = client.query_rows(hits::constants_user_sql("hits"));
    if (!user) return user.error();
    auto hashes = client.query_rows(hits::constants_hashes_sql("hits"));
    if (!hashes) return hashes.error();
    auto keyed = client.query_rows(hits::constants_keys_sql("hits", rows, keys));
    if (!keyed) return keyed.error();
    try {
        c.user_id = std::stoll(user->at(0).at(0));
        c.referer_hash = std::stoll(hashes->at(0).at(0));
        c.url_hash = std::stoll(hashes->at(0).at(1));
        for (const auto& r : *keyed) {
            c.counters.push_back(std::stoi(r.at(0)));
            c.dates.push_back(r.at(1));
            c.users.push_back(std::stoll(r.at(2)));
            c.watch_ids.push_back(std::stoll(r.at(3)));
        }
    } catch (const std::exception& e) {
        return make_error(EPROTO, fmt::format("resolving the queries' constants: {}", e.what()));
    }
    return c;
}

// Hashes of every file of the one active part of `table` (name -> size:hash).
Result<std::map<std::string, std::string>> part_files(ch::HttpClient& client,
                                                      const std::string& data_path,
                                                      const std::string& table) {
    auto parts =
        client.query_rows(fmt::format("SELECT name FROM system.parts WHERE database = "
                                      "currentDatabase() AND table = '{}' AND active",
                                      table));
    if (!parts) return parts.error();
    if (parts->size() != 1)
        return make_error(
            EIO, fmt::format("{} has {} active parts after OPTIMIZE FINAL", table, parts->size()));
    const std::string dir =
        fmt::format("{}data/default/{}/{}", data_path, table, parts->at(0).at(0));
    std::map<std::string, std::string> out;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        std::ifstream in(entry.path(), std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        out[entry.path().filename().string()] =
            fmt::format("{}:{:016x}", bytes.size(), fnv1a(bytes));
    }
    if (ec) return make_error(ec.value(), fmt::format("listing {}: {}", dir, ec.message()));
    return out;
}

// INSERT of known rows (4 parts, TabSeparated from this process) + OPTIMIZE FINAL into a
// fresh table, per config and round; the merged part's files must equal stock's.
std::map<std::string, InsertResult> run_inserts(Bench& bench, ch::LocalServer& server,
                                                std::vector<Config>& configs, int rounds,
                                                uint64_t part_rows) {
    std::map<std::string, InsertResult> results;
    auto& client = bench.client();
    // Four counters with about part_rows rows each: their rows, ordered, are the parts.
    auto counters =
        client.query_rows(fmt::format("SELECT CounterID FROM hits GROUP BY CounterID HAVING "
                                      "count() BETWEEN {} AND {} ORDER BY CounterID LIMIT 4",
                                      part_rows / 2, part_rows));
    if (!counters || counters->size() < 4) {
        fmt::print(
            "  insert workload skipped: {}\n",
            counters ? "fewer than 4 counters of the wanted size" : counters.error().message);
        return results;
    }
    std::vector<std::string> bodies;
    for (const auto& row : *counters) {
        auto body = client.query(fmt::format(
            "SELECT * FROM hits WHERE CounterID = {} ORDER BY WatchID FORMAT TabSeparated",
            row.at(0)));
        if (!body) fail("reading rows for the insert workload: " + body.error().message);
        bodies.push_back(std::move(*body));
    }
    const std::string content_sql =
        "SELECT count(), sum(cityHash64(WatchID, Title, EventTime, CounterID, UserID, URL, "
        "Referer, SearchPhrase, "
        "URLHash, RefererHash)) FROM hits_insert";
    std::map<std::string, std::string> stock_files;
    std::string stock_content;
    for (int round = 0; round < rounds; ++round) {
        for (size_t k = 0; k < configs.size(); ++k) {
            Config& c = configs[(k + static_cast<size_t>(round)) % configs.size()];
            // Round 0 starts with configs[0], stock: the reference of the byte comparison.
            if (!bench.switch_to(c)) continue;
            const std::string settings = c.kind == ConfigKind::DirectIo
                                             ? " SETTINGS min_merge_bytes_to_use_direct_io = 1"
                                             : "";
            if (auto r = client.execute("DROP TABLE IF EXISTS hits_insert"); !r)
                fail(r.error().message);
            std::string create = hits::create_table_sql("hits_insert");
            if (!settings.empty()) create += ", min_merge_bytes_to_use_direct_io = 1";
            if (auto r = client.execute(create); !r)
                fail("creating hits_insert: " + r.error().message);
            const auto start = Clock::now();
            for (const auto& body : bodies)
                if (auto r = client.insert("hits_insert", ch::InsertFormat::TabSeparated, body); !r)
                    fail(fmt::format("insert under {}: {}", c.name, r.error().message));
            if (auto r = client.execute("OPTIMIZE TABLE hits_insert FINAL"); !r)
                fail(fmt::format("merge under {}: {}", c.name, r.error().message));
            const double ms =
                std::chrono::duration<double, std::milli>(Clock::now() - start).count();
            InsertResult& res = results[c.name];
            res.ms.push_back(ms);
            // ATTACH loads the part again, checking its files against checksums.txt.
            if (auto r = client.execute("DETACH TABLE hits_insert"); !r) fail(r.error().message);
            if (auto r = client.execute("ATTACH TABLE hits_insert"); !r)
                fail(fmt::format("re-attaching hits_insert after {}: {}", c.name,
                                 r.error().message));
            auto files = part_files(client, server.data_path(), "hits_insert");
            if (!files) fail(files.error().message);
            auto content = client.query(content_sql);
            if (!content) fail(content.error().message);
            if (stock_files.empty() && c.name == "stock") {
                stock_files = *files;
                stock_content = *content;
            }
            if (*files != stock_files) {
                res.parts_identical = false;
                for (const auto& [name, sig] : *files)
                    if (stock_files[name] != sig)
                        res.note += fmt::format(" {} differs ({} vs stock {});", name, sig,
                                                stock_files[name]);
                fmt::print("  PART MISMATCH under {}:{}\n", c.name, res.note);
            }
            if (*content != stock_content) {
                res.content_identical = false;
                fmt::print("  CONTENT MISMATCH under {}: {} vs stock {}\n", c.name,
                           first_line(*content), first_line(stock_content));
            }
            fmt::print("  insert+merge {:<9} round {}: {:.0f} ms, {} files {}\n", c.name, round + 1,
                       ms, files->size(),
                       res.parts_identical ? "identical to stock's" : "DIFFERENT from stock's");
            std::fflush(stdout);
        }
    }
    (void)client.execute("DROP TABLE IF EXISTS hits_insert");
    return results;
}

std::string timestamp() {
    std::time_t now = std::time(nullptr);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", std::gmtime(&now));
    return buf;
}

std::string fmt_opt(const std::optional<double>& v, const char* spec = "{:.3f}") {
    return v ? fmt::format(fmt::runtime(spec), *v) : "n/a";
}

void run(ClickhouseOptions o) {
    if (o.quick) {
        o.scale = std::min(o.scale, 0.3);
        o.runs = 1;
        o.insert_rounds = 1;
        o.fio_seconds = 1;
        o.contention.file_bytes = 256ull << 20;
        if (o.queries.empty()) o.queries = "Q1,Q3,Q8,Q21,Q37,Q43,PK1,PK6";
    }
    // A contended pass must not outlive its bound: --full passes take hours.
    if (o.full) o.contention.max_seconds = 6 * 3600;
    auto conditions = parse_device_conditions(o.devices);
    if (!conditions) fail("--device: " + conditions.error().message);
    auto has_condition = [&](DeviceCondition c) {
        return std::find(conditions->begin(), conditions->end(), c) != conditions->end();
    };
    // Any policy of the catalog (the policies the CLI can switch on); every one by default.
    std::vector<std::string> policy_names;
    if (o.policies.empty()) {
        for (const auto& p : policy::catalog()) policy_names.push_back(p.name);
    } else {
        std::stringstream ss(o.policies);
        for (std::string name; std::getline(ss, name, ',');) {
            if (name.empty()) continue;
            const std::string base = name.substr(0, name.find(':'));
            auto p = policy::find_policy(base);
            if (!p) fail("--policies: " + p.error().message);
            for (const std::string& k : variant_knobs(name))
                if (auto r = (*p)->parse_setting(k); !r) fail("--policies: " + r.error().message);
            policy_names.push_back(name);
        }
    }
    if (::geteuid() != 0)
        fail(
            "cold runs drop the page cache (/proc/sys/vm/drop_caches) and the bench sets the "
            "device's "
            "readahead: run as root");
    const uint64_t rows = static_cast<uint64_t>(std::llround(o.scale * 1e6));
    if (rows < 100'000)
        fail("--scale below 0.1 (100k rows) is too small for the queries' constants");

    InterruptGuard guard(
        "\nliveio bench clickhouse: interrupted; restoring readahead, stopping ClickHouse\n");
    const std::string dir = dataset_dir(o.cache_dir, rows);
    auto dataset = ensure_dataset(dir, rows, std::min<uint64_t>(4'000'000, rows));
    if (guard.interrupted()) throw CLI::RuntimeError(128 + guard.signal());
    if (!dataset) fail("data set: " + dataset.error().message);
    const auto run_start = Clock::now();  // bench_minutes: the run after data generation

    auto ra_file = readahead_file_for(dir);
    if (!ra_file) fail(ra_file.error().message);
    auto ra_created = ReadaheadSetting::create(*ra_file);
    if (!ra_created) fail(ra_created.error().message);
    std::unique_ptr<ReadaheadSetting> readahead(*ra_created);
    ReadaheadSetting* ra = readahead.get();
    guard.on_interrupt([ra] { (void)ra->restore(); });

    auto server = ch::LocalServer::start(bench_server_options(dir));
    if (!server) fail("starting ClickHouse: " + server.error().message);
    guard.kill_on_interrupt(server->pid());
    const std::string out_dir =
        o.out_dir.empty() ? fmt::format("{}/results/{}", o.cache_dir, timestamp()) : o.out_dir;
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    if (ec) fail(fmt::format("cannot create {}: {}", out_dir, ec.message()));
    Bench bench(o, *server, guard, out_dir + "/runs.tsv");
    if (auto r = describe_dataset(bench.client(), &*dataset); !r) fail(r.error().message);

    fmt::print(
        "liveio bench clickhouse: ClickHouse 18.16 (pid {}, port {}), machine shared with other "
        "work\n",
        server->pid(), server->ports().http);
    fmt::print("every run is logged to {}/runs.tsv\n", out_dir);
    fmt::print(
        "data set: {} rows in {} part(s), {:.2f} GB on disk, {:.2f} GB uncompressed (ratio "
        "{:.2f}), dir {}\n",
        dataset->rows, dataset->parts, dataset->bytes_on_disk / 1e9,
        dataset->bytes_uncompressed / 1e9,
        dataset->bytes_uncompressed / std::max(1.0, double(dataset->bytes_on_disk)), dir);
    fmt::print("  generated {} in {:.0f} s\n", dataset->generated_now ? "now" : "by an earlier run",
               dataset->generation_seconds);

    // The device: its readahead and its own throughput, beside which the gains are read.
    const int machine_ra = ra->original_kb();
    fmt::print("device: {} = {} KiB\n", *ra_file, machine_ra);
    std::string biggest;  // the table's biggest column file: fio reads it
    {
        uintmax_t size = 0;
        for (const auto& e :
             fs::recursive_directory_iterator(server->data_path() + "data/default/hits", ec))
            if (e.is_regular_file() && e.path().extension() == ".bin" && e.file_size() > size) {
                size = e.file_size();
                biggest = e.path().string();
            }
    }
    std::map<std::string, DeviceFigures> device;  // per device condition
    auto measure = [&](DeviceCondition cond) {
        const char* name = condition_name(cond);
        auto dev = biggest.empty() ? Result<DeviceFigures>(make_error(ENOENT, "no .bin file"))
                                   : measure_device(biggest, o.fio_seconds);
        if (!dev) {
            fmt::print("  device figures ({}) unavailable: {}\n", name, dev.error().message);
            return;
        }
        fmt::print(
            "  {} device, fio O_DIRECT io_uring on {}: 128 KiB sequential {:.0f} MB/s at QD1 (mean "
            "latency {:.0f} us), {:.0f} MB/s at QD8; 4 KiB random {:.0f} IOPS at QD1 ({:.0f} us), "
            "{:.0f} at QD32\n",
            name, fs::path(biggest).filename().string(), dev->seq128k_qd1_mbs,
            dev->seq128k_qd1_lat_us, dev->seq128k_qd8_mbs, dev->rand4k_qd1_iops,
            dev->rand4k_qd1_lat_us, dev->rand4k_qd32_iops);
        device[name] = *dev;
    };
    if (has_condition(DeviceCondition::Idle)) measure(DeviceCondition::Idle);
    std::string load_file;
    if (has_condition(DeviceCondition::Contended)) {
        auto file = ensure_load_file(o.cache_dir + "/device-load", dir, o.contention.file_bytes);
        if (!file) fail("the contended condition's load file: " + file.error().message);
        load_file = *file;
        fmt::print(
            "contended device: {}, started before and stopped after each contended pass (at most "
            "{} s); stock and every configuration run under it alike, interleaved as on the idle "
            "device\n",
            describe(o.contention), o.contention.max_seconds);
    }
    // Ctrl-C stops the background load at once (it would stop by itself at its bound).
    auto load_pid = std::make_shared<std::atomic<pid_t>>(-1);
    guard.on_interrupt([load_pid] {
        if (const pid_t pid = load_pid->load(); pid > 0) ::kill(pid, SIGKILL);
    });

    auto constants = resolve_constants(bench.client(), dataset->rows, 8);
    if (!constants) fail(constants.error().message);
    std::vector<hits::Query> queries = hits::clickbench_queries(*constants);
    for (auto& q : hits::point_lookup_queries("hits", *constants)) queries.push_back(std::move(q));
    if (o.queries.empty() && !o.full) o.queries = kDefaultQueries;
    if (!o.queries.empty() && o.queries != "all") {
        std::set<std::string> wanted;
        std::stringstream ss(o.queries);
        for (std::string name; std::getline(ss, name, ',');) wanted.insert(name);
        std::erase_if(queries, [&](const hits::Query& q) { return !wanted.count(q.name); });
    }
    std::vector<QueryInfo> infos;
    for (const auto& q : queries) infos.push_back({q.name, q.point_lookup});
    fmt::print("queries: {} (ClickBench's 43 adapted to 18.16, PK point lookups); changes:\n",
               queries.size());
    for (const auto& q : queries)
        if (!q.change.empty()) fmt::print("  {}: {}\n", q.name, q.change);

    std::vector<Config> configs{{"stock"}};
    for (const auto& name : policy_names)
        configs.push_back(
            {name, ConfigKind::Policy, name.substr(0, name.find(':')), variant_knobs(name)});
    configs.push_back({"odirect", ConfigKind::DirectIo});
    fmt::print(
        "configurations: stock, policies {}, odirect (min_bytes_to_use_direct_io=1); per query {} "
        "rounds of cold "
        "runs, then {} rounds of hot runs, every configuration once per round in a rotated order\n",
        fmt::join(policy_names, ","), o.runs, o.runs);
    // Every policy switched on and off once before measuring: one that cannot be switched is
    // reported with the CLI's error and left out.
    for (auto& c : configs) {
        if (c.kind != ConfigKind::Policy) continue;
        if (bench.switch_to(c)) {
            Config stock{"stock"};
            if (auto r = bench.policy_switch().apply(stock); !r)
                fail(fmt::format("switching {} off: {}", c.name, cli_error(r.error())));
        }
    }

    // Per device condition a pass at the machine's readahead (cold and hot) and, on the idle
    // device (under contention too with --full), one at the low readahead.
    std::vector<Phase> phases;
    for (DeviceCondition cond : *conditions) {
        const bool idle = cond == DeviceCondition::Idle;
        const std::string prefix = idle ? "" : fmt::format("{} device, ", condition_name(cond));
        Phase a;
        a.name = fmt::format("{}readahead {} KiB (the machine's)", prefix, machine_ra);
        a.readahead_kb = machine_ra;
        a.device = condition_name(cond);
        phases.push_back(std::move(a));
        if (o.low_readahead_kb > 0 && o.low_readahead_kb != machine_ra && (idle || o.full)) {
            Phase b;
            b.name = fmt::format("{}readahead {} KiB", prefix, o.low_readahead_kb);
            b.readahead_kb = o.low_readahead_kb;
            b.device = condition_name(cond);
            b.hot = o.full;  // hot runs come from the page cache: readahead does not change them
            phases.push_back(std::move(b));
        }
    }
    std::map<std::string, LoadFigures> load_figures;  // per phase name
    const auto bench_start = Clock::now();
    for (auto& phase : phases) {
        if (auto r =
                phase.readahead_kb == machine_ra ? ra->restore() : ra->set_kb(phase.readahead_kb);
            !r)
            fail(r.error().message);
        std::unique_ptr<BackgroundLoad> load;
        if (phase.device == condition_name(DeviceCondition::Contended)) {
            auto started = BackgroundLoad::start(
                load_file, o.contention,
                fmt::format("{}/contention-load-{}.json", out_dir, phase.readahead_kb));
            if (!started) fail("starting the background load: " + started.error().message);
            load = std::move(*started);
            load_pid->store(load->pid());
            fmt::print("\n{}: background load running (pid {})\n", phase.name, load->pid());
            if (!device.count(phase.device)) measure(DeviceCondition::Contended);
        }
        fmt::print("\n== {}: cold{} ==\n", phase.name, phase.hot ? " and hot" : "");
        bench.run_phase(phase, queries, configs);
        if (load) {
            load_pid->store(-1);
            auto figures = load->stop();
            if (!figures) fail("the background load: " + figures.error().message);
            if (figures->ended_early)
                fail(
                    fmt::format("the background load ended before the pass did (its bound: {} "
                                "s): part of the pass ran on the idle device",
                                o.contention.max_seconds));
            load_figures[phase.name] = *figures;
            fmt::print(
                "  background load during the pass: {:.0f} IOPS, {:.0f} MB/s, mean latency {:.0f} "
                "us, over {:.0f} s\n",
                figures->iops, figures->mbs, figures->mean_latency_us, figures->seconds);
        }
    }
    if (auto r = ra->restore(); !r) fail(r.error().message);

    fmt::print("\n== INSERT + merge (4 parts of known rows, OPTIMIZE FINAL), {} round(s) ==\n",
               o.insert_rounds);
    auto inserts =
        run_inserts(bench, *server, configs, o.insert_rounds, std::max<uint64_t>(rows / 200, 2000));
    if (auto r = bench.policy_switch().detach(); !r) fail("liveio detach: " + cli_error(r.error()));
    const double minutes = std::chrono::duration<double>(Clock::now() - bench_start).count() / 60;

    // Tables, summary, plot, metrics.
    for (const auto& phase : phases) {
        fmt::print("\n== per query, {} ==\n", phase.name);
        print_phase_table(phase, infos, configs);
    }
    fmt::print("\n== summary ({} queries, {:.1f} min of measuring) ==\n", queries.size(), minutes);
    for (const auto& c : configs)
        if (!c.available) fmt::print("{}: UNAVAILABLE: {}\n", c.name, c.unavailable_reason);
    size_t part_mismatches = 0;
    const double stock_insert = inserts.count("stock") ? median(inserts["stock"].ms) : 0;
    for (const auto& phase : phases) {
        fmt::print("{}:\n  {:<9} {:>13} {:>15} {:>13} {:>15} {:>18}\n", phase.name, "config",
                   "cold speedup", "gap recovered", "hot slowdown", "PK cold speedup",
                   "1st after switch");
        for (const auto& c : configs) {
            if (!c.available || c.kind == ConfigKind::Stock) continue;
            auto s = summarize(phase, infos, c.name);
            fmt::print("  {:<9} {:>13} {:>15} {:>13} {:>15} {:>18}\n", c.name,
                       fmt_opt(s.cold_speedup_geomean, "{:.3f}x"),
                       s.cold_gap_recovered_pct
                           ? fmt::format("{:.1f}% ({}q)", *s.cold_gap_recovered_pct, s.gap_queries)
                           : "n/a",
                       phase.hot ? fmt_opt(s.hot_slowdown_pct, "{:+.1f}%") : "-",
                       fmt_opt(s.point_lookup_cold_speedup, "{:.3f}x"),
                       phase.hot ? fmt_opt(s.first_after_switch_slowdown_pct, "{:+.1f}%") : "-");
        }
        // How much of a cold run is waiting for the device under this condition.
        std::vector<double> cold_over_hot;
        for (const auto& [query, by_config] : phase.timings)
            if (auto it = by_config.find("stock");
                it != by_config.end() && !it->second.cold_ms.empty() && !it->second.hot_ms.empty())
                cold_over_hot.push_back(median(it->second.cold_ms) /
                                        std::max(1e-9, median(it->second.hot_ms)));
        if (!cold_over_hot.empty()) {
            double log_sum = 0;
            for (double r : cold_over_hot) log_sum += std::log(r);
            fmt::print("  stock cold/hot: geomean {:.2f}x, largest {:.2f}x over {} queries\n",
                       std::exp(log_sum / double(cold_over_hot.size())),
                       *std::max_element(cold_over_hot.begin(), cold_over_hot.end()),
                       cold_over_hot.size());
        }
    }
    for (const auto& phase : phases) {
        std::vector<double> stock_spread;
        for (const auto& [query, by_config] : phase.timings)
            if (auto it = by_config.find("stock");
                it != by_config.end() && it->second.cold_ms.size() > 1)
                stock_spread.push_back(100.0 * spread(it->second.cold_ms) /
                                       std::max(1e-9, median(it->second.cold_ms)));
        fmt::print(
            "{}: stock's own cold run-to-run spread (max - min) / median: median over queries "
            "{:.0f}%, largest "
            "{:.0f}%\n",
            phase.name, median(stock_spread),
            stock_spread.empty() ? 0.0
                                 : *std::max_element(stock_spread.begin(), stock_spread.end()));
        fmt::print("{}: cold medians vs stock's beyond / inside the run-to-run spread:\n",
                   phase.name);
        for (const auto& c : configs) {
            if (!c.available || c.kind == ConfigKind::Stock) continue;
            auto s = summarize(phase, infos, c.name);
            fmt::print(
                "  {:<9} {} faster, {} slower, {} inside the spread (no measurable effect){}\n",
                c.name, s.cold_faster, s.cold_slower, s.cold_within_noise,
                phase.hot
                    ? fmt::format("; hot: {} slower than stock beyond the spread", s.hot_slower)
                    : "");
        }
    }
    for (const auto& [condition, d] : device)
        fmt::print(
            "the {} device beside these gains (fio, O_DIRECT, io_uring): 128 KiB sequential {:.0f} "
            "MB/s at QD1 (mean latency {:.0f} us), {:.0f} at QD8 ({:.2f}x from queue depth); 4 KiB "
            "random {:.0f} IOPS at QD1 ({:.0f} us), {:.0f} at QD32 ({:.1f}x): the most that "
            "overlapping a reader's requests can give on this device\n",
            condition, d.seq128k_qd1_mbs, d.seq128k_qd1_lat_us, d.seq128k_qd8_mbs,
            d.seq128k_qd8_mbs / std::max(1.0, d.seq128k_qd1_mbs), d.rand4k_qd1_iops,
            d.rand4k_qd1_lat_us, d.rand4k_qd32_iops,
            d.rand4k_qd32_iops / std::max(1.0, d.rand4k_qd1_iops));
    for (const auto& [phase_name, f] : load_figures)
        fmt::print(
            "{}: the background load did {:.0f} IOPS ({:.0f} MB/s, mean latency {:.0f} us) "
            "over {:.0f} s\n",
            phase_name, f.iops, f.mbs, f.mean_latency_us, f.seconds);
    fmt::print(
        "cold runs: at most {:.2f}% of the table's bytes were in the page cache when one started "
        "(mincore, after "
        "policy off + drop_caches + SYSTEM DROP MARK/UNCOMPRESSED CACHE; {} drops repeated because "
        "pages were "
        "still resident)\n",
        bench.max_resident_pct(), bench.cold_redrops());
    for (const auto& [name, l] : bench.policy_switch().ledgers()) {
        const double used_pct = l.issued > 0 ? 100 * l.used / l.issued : 0;
        fmt::print(
            "{} over the run ({} times switched off, final figures after each drain): {:.1f} MiB "
            "issued, {:.1f} used ({:.1f}%), {:.1f} wasted ({:.1f} of it still in the page cache "
            "then), {:.1f} pending\n",
            name, l.offs, l.issued, l.used, used_pct, l.wasted, l.cached, l.pending);
    }
    fmt::print("insert + merge (median ms):");
    for (auto& [name, r] : inserts) {
        fmt::print("  {} {:.0f}{}", name, median(r.ms),
                   stock_insert > 0 && name != "stock"
                       ? fmt::format(" ({:.2f}x)", stock_insert / median(r.ms))
                       : "");
        if (!r.parts_identical || !r.content_identical) ++part_mismatches;
    }
    fmt::print("\n");

    // Per device condition, its pass at the machine's readahead: the headline metrics are the
    // idle device's (names unchanged), the contended device's carry the suffix _contended.
    auto main_phase_of = [&](DeviceCondition cond) -> const Phase* {
        for (const auto& phase : phases)
            if (phase.device == condition_name(cond) && phase.readahead_kb == machine_ra)
                return &phase;
        return nullptr;
    };
    struct Headline {
        const Config* best = nullptr;  // the highest cold speedup geomean among the policies
        ConfigSummary best_summary;
        std::optional<double> pk_marks;  // the marks policy's cold PK lookup speedup
    };
    auto headline_of = [&](const Phase* phase) {
        Headline h;
        if (!phase) return h;
        for (const auto& c : configs) {
            if (!c.available || c.kind != ConfigKind::Policy) continue;
            auto s = summarize(*phase, infos, c.name);
            if (s.cold_speedup_geomean &&
                (!h.best || *s.cold_speedup_geomean > *h.best_summary.cold_speedup_geomean)) {
                h.best = &c;
                h.best_summary = s;
            }
            if (c.name == "marks") h.pk_marks = s.point_lookup_cold_speedup;
        }
        return h;
    };
    const Phase* idle_phase = main_phase_of(DeviceCondition::Idle);
    const Phase* contended_phase = main_phase_of(DeviceCondition::Contended);
    const Headline idle = headline_of(idle_phase);
    const Headline contended = headline_of(contended_phase);

    for (const Phase* phase : {idle_phase, contended_phase}) {
        if (!phase) continue;
        const bool is_idle = phase == idle_phase;
        auto plot = plot_cold_speedups(
            *phase, infos, configs, out_dir,
            fmt::format("liveio bench clickhouse: cold speedup vs stock per query ({} rows, {})",
                        dataset->rows, phase->name),
            is_idle ? "cold_speedups" : "cold_speedups_contended");
        if (plot)
            fmt::print("plot{}: {}\n", is_idle ? "" : " (contended device)", *plot);
        else
            fmt::print("plot{} not written: {}\n", is_idle ? "" : " (contended device)",
                       plot.error().message);
    }

    std::optional<double> insert_speedup;
    if (idle.best && inserts.count(idle.best->name) && stock_insert > 0)
        insert_speedup = stock_insert / median(inserts[idle.best->name].ms);
    std::string glue_report;
    auto glue = clickhouse_glue_loc(&glue_report);

    for (const Phase* phase : {idle_phase, contended_phase}) {
        if (!phase) continue;
        const Headline& h = phase == idle_phase ? idle : contended;
        fmt::print(
            "\nbest policy, {}: {} (its cold speedup, hot slowdown and gap figures below{})\n",
            phase->name, h.best ? h.best->name : "none available",
            phase == idle_phase ? "; insert on the idle device" : ", suffixed _contended");
    }
    if (idle_phase && !idle.pk_marks)
        fmt::print("cold_point_lookup_speedup: the marks policy is unavailable\n");
    if (!glue) fmt::print("clickhouse_glue_loc: {}\n", glue.error().message);
    fmt::print("results under every configuration compared with stock's: {} mismatching runs\n",
               bench.mismatches());
    if (bench.query_errors()) {
        fmt::print("queries that failed under a configuration (stock answered them):\n");
        for (const auto& e : bench.errors()) fmt::print("  {}\n", e);
    }
    fmt::print("metric: result_mismatches {}\n", bench.mismatches());
    fmt::print("metric: query_errors {}\n", bench.query_errors());
    fmt::print("metric: part_mismatches {}\n", part_mismatches);
    auto print_headline = [&](const Headline& h, const std::string& suffix) {
        fmt::print("metric: cold_speedup_geomean{} {}\n", suffix,
                   fmt_opt(h.best_summary.cold_speedup_geomean));
        fmt::print("metric: cold_gap_recovered_pct{} {}\n", suffix,
                   fmt_opt(h.best_summary.cold_gap_recovered_pct, "{:.1f}"));
        fmt::print("metric: cold_point_lookup_speedup{} {}\n", suffix, fmt_opt(h.pk_marks));
        fmt::print("metric: hot_slowdown_pct{} {}\n", suffix,
                   fmt_opt(h.best_summary.hot_slowdown_pct, "{:.2f}"));
        fmt::print("metric: first_after_switch_slowdown_pct{} {}\n", suffix,
                   fmt_opt(h.best_summary.first_after_switch_slowdown_pct, "{:.2f}"));
    };
    print_headline(idle, "");
    fmt::print("metric: insert_speedup {}\n", fmt_opt(insert_speedup));
    fmt::print("metric: clickhouse_glue_loc {}\n", glue ? std::to_string(*glue) : "n/a");
    if (contended_phase) print_headline(contended, "_contended");
    for (const auto& [condition, d] : device) {
        const std::string suffix = condition == "idle" ? "" : "_" + condition;
        fmt::print("metric: device_seq128k_qd8_over_qd1{} {:.3f}\n", suffix,
                   d.seq128k_qd8_mbs / std::max(1.0, d.seq128k_qd1_mbs));
        fmt::print("metric: device_rand4k_qd32_over_qd1{} {:.3f}\n", suffix,
                   d.rand4k_qd32_iops / std::max(1.0, d.rand4k_qd1_iops));
        fmt::print("metric: device_rand4k_qd1_latency_us{} {:.0f}\n", suffix, d.rand4k_qd1_lat_us);
    }
    for (const auto& [name, l] : bench.policy_switch().ledgers())
        fmt::print("metric: ledger_{}_used_pct {:.1f}\n", name,
                   l.issued > 0 ? 100 * l.used / l.issued : 0.0);
    fmt::print("metric: cold_start_resident_pct_max {:.2f}\n", bench.max_resident_pct());
    fmt::print("metric: bench_minutes_after_data {:.1f}\n",
               std::chrono::duration<double>(Clock::now() - run_start).count() / 60);
    if (auto r = server->stop(); !r) fail("stopping ClickHouse: " + r.error().message);
}

}  // namespace

void add_clickhouse_bench(CLI::App& bench) {
    auto* cmd = bench.add_subcommand(
        "clickhouse",
        "ClickHouse 18.16 on a hits-like table: ClickBench's queries and PK lookups cold "
        "and hot, stock vs each policy (switched live) vs O_DIRECT; results compared");
    auto o = std::make_shared<ClickhouseOptions>();
    cmd->add_option("--scale", o->scale, "rows of the data set, in millions")
        ->check(CLI::Range(0.1, 1000.0))
        ->capture_default_str();
    cmd->add_option("--cache-dir", o->cache_dir,
                    "where data sets (server directories) and results are kept")
        ->capture_default_str();
    cmd->add_option(
        "--policies", o->policies,
        "liveio policies to compare, comma-separated (default: every policy of the catalog); "
        "NAME:KEY=VALUE[:KEY=VALUE] is a variant of a policy switched on with those knobs");
    cmd->add_option("--queries", o->queries,
                    "these queries (Q1..Q43, PK1..PK8), comma-separated, or 'all' "
                    "(default: a representative subset; all with --full)");
    cmd->add_option("--runs", o->runs, "cold and hot runs per query and configuration")
        ->check(CLI::Range(1, 20))
        ->capture_default_str();
    cmd->add_option("--low-readahead", o->low_readahead_kb,
                    "device readahead (KiB) of the second pass; 0: none")
        ->check(CLI::Range(0, 1 << 20))
        ->capture_default_str();
    cmd->add_option("--insert-rounds", o->insert_rounds, "rounds of the INSERT + merge workload")
        ->check(CLI::Range(1, 20))
        ->capture_default_str();
    cmd->add_option("--out", o->out_dir,
                    "directory for the plot and its data (default: CACHE_DIR/results/TIME)");
    cmd->add_option("--device", o->devices,
                    "device conditions, comma-separated, each a pass over the queries: idle (the "
                    "disk as it is), contended (a bounded background fio random-read load on the "
                    "same disk)")
        ->capture_default_str();
    cmd->add_option("--contention-bs", o->contention.block_size,
                    "block size of the contended condition's background random reads")
        ->capture_default_str();
    cmd->add_option("--contention-qd", o->contention.queue_depth,
                    "queue depth of the contended condition's background random reads")
        ->check(CLI::Range(1, 256))
        ->capture_default_str();
    cmd->add_flag("--quick", o->quick, "a test of the harness: 0.3M rows, 8 queries, 1 run");
    cmd->add_flag("--full", o->full,
                  "every combination: all 51 queries, hot runs at the low readahead too");
    cmd->callback([o] { run(*o); });
}

}  // namespace liveio::bench
