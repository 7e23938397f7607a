// Measurements of `liveio bench clickhouse` and what is printed from them: the per-query
// table, the summary per configuration, the metric lines and the gnuplot plot.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"

namespace liveio::bench {

enum class ConfigKind { Stock, Policy, DirectIo };

// One way of running the server: stock, one liveio policy switched on live, or ClickHouse's
// own O_DIRECT/AIO read path (min_bytes_to_use_direct_io=1).
struct Config {
    std::string name;
    ConfigKind kind = ConfigKind::Stock;
    std::string policy;  // ConfigKind::Policy
    // Knob settings (KEY=VALUE) the policy is switched on with: a variant of a policy, named
    // NAME:KEY=VALUE[:KEY=VALUE] on the command line and in the tables.
    std::vector<std::string> knobs;
    bool available = true;
    std::string unavailable_reason;  // the CLI's error when it could not be switched
};

struct Timings {
    std::vector<double> cold_ms, hot_ms;
    // The query's first run after the configuration was switched on, before its hot run: the
    // switch's one-time costs (per-thread state, rings, maps filled afresh) land here.
    std::vector<double> first_ms;
};

struct QueryInfo {
    std::string name;
    bool point_lookup = false;
};

// One pass over the queries at one device readahead (and device condition).
struct Phase {
    std::string name;  // "readahead 8192 KiB (the machine's)"
    int readahead_kb = 0;
    bool hot = true;  // hot runs measured in this phase
    // timings[query][config]
    std::map<std::string, std::map<std::string, Timings>> timings;
    // The device's condition during the pass ("idle", "contended"); when set, the tables give
    // it per query. Last: callers initialize the fields above in order.
    std::string device;
};

struct InsertResult {
    std::vector<double> ms;         // per round: 4 inserts + OPTIMIZE FINAL
    bool parts_identical = true;    // every file of the merged part equals stock's
    bool content_identical = true;  // count and content hash equal stock's
    std::string note;
};

double median(std::vector<double> v);
double spread(const std::vector<double>& v);  // max - min

// A configuration's runs of one query against stock's: the difference of the medians beyond
// the larger of the two run-to-run spreads (max - min) is a measured effect, inside it none.
enum class Verdict { Unknown, Faster, Slower, WithinNoise };
Verdict compare(const std::vector<double>& stock, const std::vector<double>& config);

struct ConfigSummary {
    std::optional<double> cold_speedup_geomean;    // stock cold / config cold, over queries
    std::optional<double> cold_gap_recovered_pct;  // over queries with stock cold/hot >= 1.3
    size_t gap_queries = 0;
    std::optional<double> hot_slowdown_pct;  // geomean hot config/stock - 1
    // The same for the first run after each switch (stock's first run after its switch).
    std::optional<double> first_after_switch_slowdown_pct;
    std::optional<double> point_lookup_cold_speedup;
    // Queries (ClickBench's and PK lookups) whose cold median differs from stock's by more
    // than the larger run-to-run spread of the two, faster or slower, or lies inside it; and
    // those whose hot median is slower than stock's by more than that spread.
    size_t cold_faster = 0, cold_slower = 0, cold_within_noise = 0, hot_slower = 0;
};

ConfigSummary summarize(const Phase& phase, const std::vector<QueryInfo>& queries,
                        const std::string& config);

// Prints the per-query tables of a phase (cold, then hot): median [min-max] per config, its
// ratio to stock, and whether the difference lies inside the runs' spread (see compare()).
void print_phase_table(const Phase& phase, const std::vector<QueryInfo>& queries,
                       const std::vector<Config>& configs);

// Writes the data file and gnuplot script of per-query cold speedups per config under
// `out_dir` (`stem`.tsv, .gp) and runs gnuplot; returns the SVG's path (`stem`.svg).
Result<std::string> plot_cold_speedups(const Phase& phase, const std::vector<QueryInfo>& queries,
                                       const std::vector<Config>& configs,
                                       const std::string& out_dir, const std::string& title,
                                       const std::string& stem = "cold_speedups");

}  // namespace liveio::bench
