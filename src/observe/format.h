// Text for humans and scripts: the tables of `liveio top` / `stats`, their JSON, and
// bpftrace-style log2 histograms for `liveio hist`.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/result.h"
#include "observe/stats.h"

namespace liveio::observe {

// "850ns", "12.3us", "4.56ms", "1.20s"; "-" for nothing.
std::string format_latency(std::optional<double> ns);
// "0", "512", "12.0K", "3.40M", "1.20G" (powers of 1024 for bytes, of 1000 otherwise).
std::string format_count(double value, bool binary = false);

// The per-syscall and per-file-class tables. With seconds > 0 the snapshot is a delta over
// that many seconds and the columns are rates (calls/s, MB/s, errors/s); otherwise they are
// the cumulative counts. Rows are sorted by calls, busiest first; `max_rows` (0: all) limits
// each table.
std::string format_tables(const Snapshot& snap, double seconds, size_t max_rows = 0);

// {"interval_s": S or null, "syscalls": [{"nr", "name", "calls", "errors", "bytes",
//  "latency_ns_sum", "p50_ns", "p99_ns", "mean_ns", "hist": [...], and with an interval
//  "calls_per_s", "bytes_per_s"}], "classes": [{"class", "direction", ...same}],
//  "total": {...}}
nlohmann::json to_json(const Snapshot& snap, double seconds);

// bpftrace's print of a log2 histogram:
//   @pread64 (latency, ns):
//   [512, 1K)            140 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
// from the first to the last non-empty slot; "(no calls)" when empty.
std::string format_histogram(std::string_view title, const Histogram& hist);

// "1s", "500ms", "250us", "2m", "1.5" (seconds) -> seconds; errors name the bad text.
// Must be > 0 and at most a day.
Result<double> parse_seconds(std::string_view text);

}  // namespace liveio::observe
