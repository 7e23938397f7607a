// The statistics of the built-in io_stats program (bpf/io_stats.bpf.c) as the CLI sees them:
// cumulative counters read from its maps, deltas between two reads, rates and percentiles of
// the log2 latency histograms.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "liveio/io_stats.h"

namespace liveio::ebpf {
class Map;
}

namespace liveio::observe {

// Slot i counts latencies in [2^i, 2^(i+1)) ns (slot 0 also 0 and 1 ns); the last slot is
// open-ended: everything from 2^31 ns up.
using Histogram = std::array<uint64_t, LIVEIO_HIST_SLOTS>;

struct Counters {
    uint64_t calls = 0;
    uint64_t errors = 0;
    uint64_t bytes = 0;
    uint64_t latency_ns = 0;  // sum
    Histogram hist{};

    static Counters from(const liveio_io_stats& raw);
    bool empty() const { return calls == 0; }
    Counters& operator+=(const Counters& other);  // field by field, histogram slot by slot
};

// Counters accumulated since `before` was read. The counters only grow while one program
// instance runs; when `now` is below `before` (the object was unloaded and loaded again, or
// the agent restarted) the instance counted from zero since, so `now` itself is the delta.
Counters delta(const Counters& now, const Counters& before);

// Lower bound of slot i in ns (0 for slot 0), and its exclusive upper bound (none for the
// last slot).
uint64_t slot_low_ns(size_t slot);
std::optional<uint64_t> slot_high_ns(size_t slot);

// The largest latency `hist` and the latencies' sum allow: one call of the highest non-empty
// slot took what the sum leaves once every other call took its slot's lower bound (exact for
// a single call). Never below that slot's lower bound: a read racing with the program may see
// a call in a slot before its latency in the sum. Nothing for an empty histogram.
std::optional<double> max_latency_bound_ns(const Histogram& hist, uint64_t latency_sum_ns);

// The q-quantile (0 < q <= 1) of the latencies counted in `hist`, in ns, or nothing for an
// empty histogram. Within the slot holding the quantile the latencies are taken as uniformly
// spread (linear interpolation between the slot's bounds), which is the best a log2 histogram
// tells; in the open last slot the result is its lower bound. Given the latencies' sum, the
// result never exceeds max_latency_bound_ns: interpolation alone can place a quantile above
// the slowest call (one call of 1500 ns would show a median of 2048 ns).
std::optional<double> percentile_ns(const Histogram& hist, double q,
                                    std::optional<uint64_t> latency_sum_ns = std::nullopt);

// Rates and latency summary of counters accumulated over `seconds` (> 0).
struct Rates {
    double calls_per_s = 0;
    double errors_per_s = 0;
    double bytes_per_s = 0;
    std::optional<double> mean_ns, p50_ns, p99_ns;
};
Rates rates(const Counters& d, double seconds);

// One row of syscall_stats (key: x86-64 syscall number).
struct SyscallRow {
    uint32_t nr = 0;
    std::string name;  // "pread64"; "syscall_<nr>" where unnamed
    Counters counters;
};

// One row of class_stats (key: LIVEIO_CLASS_KEY(class, direction)).
struct ClassRow {
    uint32_t file_class = 0;  // enum liveio_file_class
    uint32_t direction = 0;   // enum liveio_io_direction
    Counters counters;
};

// Everything io_stats counted in one process at one moment (or, after delta(), between two).
struct Snapshot {
    uint64_t time_ns = 0;              // CLOCK_MONOTONIC when read
    std::vector<SyscallRow> syscalls;  // rows with calls > 0, by syscall number
    std::vector<ClassRow> classes;     // rows with calls > 0, by key

    Counters total() const;  // over all syscalls
    const SyscallRow* find_syscall(std::string_view name) const;
};

// Rows of `now` minus the same rows of `before` (rows without calls in the interval dropped);
// time_ns is the interval's length.
Snapshot delta(const Snapshot& now, const Snapshot& before);

// Reads io_stats' syscall_stats and (optional) class_stats maps. The maps must have the
// layout of liveio/io_stats.h (4-byte keys, struct liveio_io_stats values): anything else is
// an error naming the map and what differs.
Result<Snapshot> read_snapshot(ebpf::Map& syscall_stats, ebpf::Map* class_stats);

// Names, stable identifiers for JSON, Prometheus labels and sink rows: "pread64"; ".bin",
// ".mrk", "primary.idx", "ch-other", "file", "tcp", "unix", "pipe", "other", "unknown";
// "read", "write", "other".
std::string syscall_name(uint32_t nr);
std::string class_name(uint32_t file_class);
std::string direction_name(uint32_t direction);
// What people read in tables: "CH .bin reads" (CH: ClickHouse), "CH other files: other calls",
// "unclassified: other calls" (the "other" direction is every call that moves no data:
// open, close, fsync, ...; "unknown" is a call with no descriptor or one not classified yet).
std::string class_label(uint32_t file_class, uint32_t direction);

// CLOCK_MONOTONIC in ns.
uint64_t monotonic_ns();

}  // namespace liveio::observe
