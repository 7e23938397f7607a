#include "observe/stats.h"

#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "base/syscall_table.h"
#include "ebpf/map.h"

namespace liveio::observe {

Counters Counters::from(const liveio_io_stats& raw) {
    Counters c;
    c.calls = raw.calls;
    c.errors = raw.errors;
    c.bytes = raw.bytes;
    c.latency_ns = raw.latency_ns;
    std::copy(std::begin(raw.hist), std::end(raw.hist), c.hist.begin());
    return c;
}

Counters& Counters::operator+=(const Counters& o) {
    calls += o.calls;
    errors += o.errors;
    bytes += o.bytes;
    latency_ns += o.latency_ns;
    for (size_t i = 0; i < hist.size(); ++i) hist[i] += o.hist[i];
    return *this;
}

Counters delta(const Counters& now, const Counters& before) {
    // The program adds to `calls` first and to the other fields after (separate atomic adds),
    // so a read racing with it can see a field lag `calls`: the reset test uses calls alone,
    // and every other field is clamped so that such a read never wraps around.
    if (now.calls < before.calls) return now;
    auto sub = [](uint64_t a, uint64_t b) { return a >= b ? a - b : 0; };
    Counters d;
    d.calls = now.calls - before.calls;
    d.errors = sub(now.errors, before.errors);
    d.bytes = sub(now.bytes, before.bytes);
    d.latency_ns = sub(now.latency_ns, before.latency_ns);
    for (size_t i = 0; i < d.hist.size(); ++i) d.hist[i] = sub(now.hist[i], before.hist[i]);
    return d;
}

uint64_t slot_low_ns(size_t slot) { return slot == 0 ? 0 : uint64_t{1} << slot; }

std::optional<uint64_t> slot_high_ns(size_t slot) {
    if (slot + 1 >= LIVEIO_HIST_SLOTS) return std::nullopt;
    return uint64_t{1} << (slot + 1);
}

std::optional<double> max_latency_bound_ns(const Histogram& hist, uint64_t latency_sum_ns) {
    size_t top = hist.size();
    double others_low = 0;
    for (size_t i = 0; i < hist.size(); ++i) {
        if (hist[i] == 0) continue;
        top = i;
        others_low += static_cast<double>(hist[i]) * static_cast<double>(slot_low_ns(i));
    }
    if (top == hist.size()) return std::nullopt;
    const double top_low = static_cast<double>(slot_low_ns(top));
    others_low -= top_low;  // the one call that takes the rest
    double bound = static_cast<double>(latency_sum_ns) - others_low;
    if (const auto high = slot_high_ns(top)) bound = std::min(bound, static_cast<double>(*high));
    return std::max(bound, top_low);
}

std::optional<double> percentile_ns(const Histogram& hist, double q,
                                    std::optional<uint64_t> latency_sum_ns) {
    uint64_t total = 0;
    for (uint64_t n : hist) total += n;
    if (total == 0) return std::nullopt;
    q = std::clamp(q, 0.0, 1.0);
    // The rank of the wanted latency among `total` sorted ones (1-based, at least the first).
    const double rank = std::max(1.0, q * static_cast<double>(total));
    const double bound = latency_sum_ns ? *max_latency_bound_ns(hist, *latency_sum_ns)
                                        : std::numeric_limits<double>::infinity();
    double below = 0;
    for (size_t i = 0; i < hist.size(); ++i) {
        if (hist[i] == 0) continue;
        const double here = static_cast<double>(hist[i]);
        if (below + here >= rank) {
            const auto high = slot_high_ns(i);
            const double low = static_cast<double>(slot_low_ns(i));
            if (!high) return low;
            return std::min(low + (rank - below) / here * (static_cast<double>(*high) - low),
                            bound);
        }
        below += here;
    }
    return static_cast<double>(slot_low_ns(hist.size() - 1));  // unreachable: rank <= total
}

Rates rates(const Counters& d, double seconds) {
    Rates r;
    if (seconds > 0) {
        r.calls_per_s = static_cast<double>(d.calls) / seconds;
        r.errors_per_s = static_cast<double>(d.errors) / seconds;
        r.bytes_per_s = static_cast<double>(d.bytes) / seconds;
    }
    if (d.calls > 0) r.mean_ns = static_cast<double>(d.latency_ns) / static_cast<double>(d.calls);
    r.p50_ns = percentile_ns(d.hist, 0.50, d.latency_ns);
    r.p99_ns = percentile_ns(d.hist, 0.99, d.latency_ns);
    return r;
}

Counters Snapshot::total() const {
    Counters t;
    for (const auto& row : syscalls) {
        t.calls += row.counters.calls;
        t.errors += row.counters.errors;
        t.bytes += row.counters.bytes;
        t.latency_ns += row.counters.latency_ns;
        for (size_t i = 0; i < t.hist.size(); ++i) t.hist[i] += row.counters.hist[i];
    }
    return t;
}

const SyscallRow* Snapshot::find_syscall(std::string_view name) const {
    for (const auto& row : syscalls)
        if (row.name == name) return &row;
    return nullptr;
}

Snapshot delta(const Snapshot& now, const Snapshot& before) {
    Snapshot d;
    d.time_ns = now.time_ns >= before.time_ns ? now.time_ns - before.time_ns : 0;
    for (const auto& row : now.syscalls) {
        auto it = std::find_if(before.syscalls.begin(), before.syscalls.end(),
                               [&](const SyscallRow& b) { return b.nr == row.nr; });
        Counters c = it == before.syscalls.end() ? row.counters : delta(row.counters, it->counters);
        if (!c.empty()) d.syscalls.push_back({row.nr, row.name, c});
    }
    for (const auto& row : now.classes) {
        auto it =
            std::find_if(before.classes.begin(), before.classes.end(), [&](const ClassRow& b) {
                return b.file_class == row.file_class && b.direction == row.direction;
            });
        Counters c = it == before.classes.end() ? row.counters : delta(row.counters, it->counters);
        if (!c.empty()) d.classes.push_back({row.file_class, row.direction, c});
    }
    return d;
}

namespace {

Result<void> check_layout(const ebpf::Map& map) {
    const auto& s = map.spec();
    if (s.key_size != sizeof(uint32_t) || s.value_size != sizeof(liveio_io_stats))
        return make_error(
            EINVAL, fmt::format("map '{}' has {}-byte keys and {}-byte values; io_stats maps have "
                                "{}-byte keys and {}-byte values (struct liveio_io_stats)",
                                s.name, s.key_size, s.value_size, sizeof(uint32_t),
                                sizeof(liveio_io_stats)));
    if (s.type != ebpf::MapType::Array)
        return make_error(EINVAL, fmt::format("map '{}' is of type {}, io_stats maps are arrays",
                                              s.name, static_cast<uint32_t>(s.type)));
    return {};
}

// Calls fn(key, counters) for every element of an io_stats array with calls > 0.
template <typename F>
Result<void> for_each_row(ebpf::Map& map, F&& fn) {
    if (auto ok = check_layout(map); !ok) return ok.error();
    liveio_io_stats raw;
    for (uint32_t key = 0; key < map.spec().max_entries; ++key) {
        if (const long rc = map.copy_value(&key, &raw); rc != 0)
            return make_error(
                static_cast<int>(-rc),
                fmt::format("map '{}': reading element {} failed: {}", map.spec().name, key,
                            std::strerror(static_cast<int>(-rc))));
        if (raw.calls != 0) fn(key, Counters::from(raw));
    }
    return {};
}

}  // namespace

Result<Snapshot> read_snapshot(ebpf::Map& syscall_stats, ebpf::Map* class_stats) {
    Snapshot snap;
    snap.time_ns = monotonic_ns();
    auto ok = for_each_row(syscall_stats, [&](uint32_t nr, const Counters& c) {
        snap.syscalls.push_back({nr, syscall_name(nr), c});
    });
    if (!ok) return ok.error();
    if (class_stats) {
        ok = for_each_row(*class_stats, [&](uint32_t key, const Counters& c) {
            snap.classes.push_back({key / 3, key % 3, c});
        });
        if (!ok) return ok.error();
    }
    return snap;
}

std::string syscall_name(uint32_t nr) { return liveio::syscall_name(nr); }

std::string class_name(uint32_t file_class) {
    switch (file_class) {
        case LIVEIO_CLASS_UNKNOWN: return "unknown";
        case LIVEIO_CLASS_FILE: return "file";
        case LIVEIO_CLASS_CH_BIN: return ".bin";
        case LIVEIO_CLASS_CH_MRK: return ".mrk";
        case LIVEIO_CLASS_CH_PRIMARY: return "primary.idx";
        case LIVEIO_CLASS_CH_OTHER: return "ch-other";
        case LIVEIO_CLASS_TCP: return "tcp";
        case LIVEIO_CLASS_UNIX: return "unix";
        case LIVEIO_CLASS_PIPE: return "pipe";
        case LIVEIO_CLASS_OTHER: return "other";
        default: return fmt::format("class_{}", file_class);
    }
}

std::string direction_name(uint32_t direction) {
    switch (direction) {
        case LIVEIO_IO_READ: return "read";
        case LIVEIO_IO_WRITE: return "write";
        default: return "other";
    }
}

std::string class_label(uint32_t file_class, uint32_t direction) {
    std::string what;
    switch (file_class) {
        case LIVEIO_CLASS_UNKNOWN: what = "unclassified"; break;
        case LIVEIO_CLASS_FILE: what = "file"; break;
        case LIVEIO_CLASS_CH_BIN: what = "CH .bin"; break;
        case LIVEIO_CLASS_CH_MRK: what = "CH .mrk"; break;
        case LIVEIO_CLASS_CH_PRIMARY: what = "CH primary.idx"; break;
        case LIVEIO_CLASS_CH_OTHER: what = "CH other files"; break;
        case LIVEIO_CLASS_TCP: what = "tcp"; break;
        case LIVEIO_CLASS_UNIX: what = "unix socket"; break;
        case LIVEIO_CLASS_PIPE: what = "pipe"; break;
        case LIVEIO_CLASS_OTHER: what = "other descriptors"; break;
        default: what = class_name(file_class);
    }
    switch (direction) {
        case LIVEIO_IO_READ: return what + " reads";
        case LIVEIO_IO_WRITE: return what + " writes";
        default: return what + ": other calls";
    }
}

uint64_t monotonic_ns() {
    timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace liveio::observe
