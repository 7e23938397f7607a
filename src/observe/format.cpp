#include "observe/format.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include <fmt/format.h>

namespace liveio::observe {

std::string format_latency(std::optional<double> ns) {
    if (!ns) return "-";
    const double v = *ns;
    if (v < 1000) return fmt::format("{:.0f}ns", v);
    if (v < 1e6) return fmt::format("{:.3g}us", v / 1e3);
    if (v < 1e9) return fmt::format("{:.3g}ms", v / 1e6);
    return fmt::format("{:.3g}s", v / 1e9);
}

std::string format_count(double value, bool binary) {
    const double k = binary ? 1024.0 : 1000.0;
    if (value < k)
        return std::floor(value) == value ? fmt::format("{:.0f}", value)
                                          : fmt::format("{:.1f}", value);
    static constexpr const char* kUnits[] = {"K", "M", "G", "T", "P"};
    size_t unit = 0;
    value /= k;
    while (value >= k && unit + 1 < std::size(kUnits)) {
        value /= k;
        ++unit;
    }
    return fmt::format("{:.{}f}{}", value, value < 10 ? 2 : value < 100 ? 1 : 0, kUnits[unit]);
}

namespace {

template <typename Row>
std::vector<const Row*> busiest(const std::vector<Row>& rows, size_t max_rows) {
    std::vector<const Row*> out;
    for (const auto& r : rows) out.push_back(&r);
    std::stable_sort(out.begin(), out.end(), [](const Row* a, const Row* b) {
        return a->counters.calls > b->counters.calls;
    });
    if (max_rows && out.size() > max_rows) out.resize(max_rows);
    return out;
}

// The numeric columns shared by both tables.
std::string columns(const Counters& c, double seconds) {
    const Rates r = rates(c, seconds);
    if (seconds > 0)
        return fmt::format("{:>10} {:>9.2f} {:>8} {:>9} {:>9} {:>9}", format_count(r.calls_per_s),
                           r.bytes_per_s / (1024.0 * 1024.0), format_count(r.errors_per_s),
                           format_latency(r.p50_ns), format_latency(r.p99_ns),
                           format_latency(r.mean_ns));
    return fmt::format("{:>10} {:>9} {:>8} {:>9} {:>9} {:>9}", c.calls,
                       format_count(static_cast<double>(c.bytes), true), c.errors,
                       format_latency(r.p50_ns), format_latency(r.p99_ns),
                       format_latency(r.mean_ns));
}

std::string header(std::string_view first, double seconds) {
    if (seconds > 0)
        return fmt::format("{:<30} {:>10} {:>9} {:>8} {:>9} {:>9} {:>9}\n", first, "CALLS/s",
                           "MB/s", "ERR/s", "P50", "P99", "MEAN");
    return fmt::format("{:<30} {:>10} {:>9} {:>8} {:>9} {:>9} {:>9}\n", first, "CALLS", "BYTES",
                       "ERRORS", "P50", "P99", "MEAN");
}

nlohmann::json counters_json(const Counters& c, double seconds) {
    const Rates r = rates(c, seconds);
    auto opt = [](const std::optional<double>& v) {
        return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
    };
    nlohmann::json j{{"calls", c.calls},          {"errors", c.errors},
                     {"bytes", c.bytes},          {"latency_ns_sum", c.latency_ns},
                     {"p50_ns", opt(r.p50_ns)},   {"p99_ns", opt(r.p99_ns)},
                     {"mean_ns", opt(r.mean_ns)}, {"hist", c.hist}};
    if (seconds > 0) {
        j["calls_per_s"] = r.calls_per_s;
        j["bytes_per_s"] = r.bytes_per_s;
    }
    return j;
}

// "512", "1K", "2M", "1G": bpftrace's bucket bound labels.
std::string bound_label(uint64_t v) {
    static constexpr const char* kUnits[] = {"", "K", "M", "G", "T"};
    size_t unit = 0;
    while (v >= 1024 && v % 1024 == 0 && unit + 1 < std::size(kUnits)) {
        v /= 1024;
        ++unit;
    }
    return fmt::format("{}{}", v, kUnits[unit]);
}

}  // namespace

std::string format_tables(const Snapshot& snap, double seconds, size_t max_rows) {
    std::string out = header("SYSCALL", seconds);
    for (const SyscallRow* row : busiest(snap.syscalls, max_rows))
        out += fmt::format("{:<30} {}\n", row->name, columns(row->counters, seconds));
    if (snap.syscalls.empty())
        out += "(no calls)\n";
    else
        out += fmt::format("{:<30} {}\n", "total", columns(snap.total(), seconds));
    if (!snap.classes.empty()) {
        out += "\n" + header("FILE CLASS", seconds);
        for (const ClassRow* row : busiest(snap.classes, max_rows))
            out += fmt::format("{:<30} {}\n", class_label(row->file_class, row->direction),
                               columns(row->counters, seconds));
    }
    return out;
}

nlohmann::json to_json(const Snapshot& snap, double seconds) {
    nlohmann::json j;
    j["interval_s"] = seconds > 0 ? nlohmann::json(seconds) : nlohmann::json(nullptr);
    j["syscalls"] = nlohmann::json::array();
    for (const auto& row : snap.syscalls) {
        nlohmann::json r = counters_json(row.counters, seconds);
        r["nr"] = row.nr;
        r["name"] = row.name;
        j["syscalls"].push_back(std::move(r));
    }
    j["classes"] = nlohmann::json::array();
    for (const auto& row : snap.classes) {
        nlohmann::json r = counters_json(row.counters, seconds);
        r["class"] = class_name(row.file_class);
        r["direction"] = direction_name(row.direction);
        j["classes"].push_back(std::move(r));
    }
    j["total"] = counters_json(snap.total(), seconds);
    return j;
}

std::string format_histogram(std::string_view title, const Histogram& hist) {
    std::string out = fmt::format("@{} (latency, ns):\n", title);
    size_t first = hist.size(), last = 0;
    uint64_t peak = 0;
    for (size_t i = 0; i < hist.size(); ++i) {
        if (hist[i] == 0) continue;
        first = std::min(first, i);
        last = i;
        peak = std::max(peak, hist[i]);
    }
    if (peak == 0) return out + "(no calls)\n";
    constexpr size_t kWidth = 52;  // bpftrace's bar width
    for (size_t i = first; i <= last; ++i) {
        const auto high = slot_high_ns(i);
        const std::string range =
            high ? fmt::format("[{}, {})", bound_label(slot_low_ns(i)), bound_label(*high))
                 : fmt::format("[{}, ...)", bound_label(slot_low_ns(i)));
        // Any non-empty slot gets at least one '@' so it is visible beside a large peak.
        size_t bar =
            static_cast<size_t>(static_cast<double>(hist[i]) * kWidth / static_cast<double>(peak));
        if (hist[i] && bar == 0) bar = 1;
        out +=
            fmt::format("{:<20} {:>8} |{:<{}}|\n", range, hist[i], std::string(bar, '@'), kWidth);
    }
    return out;
}

Result<double> parse_seconds(std::string_view text) {
    const std::string s(text);
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    const std::string unit(end);
    double scale = 0;
    if (unit.empty() || unit == "s")
        scale = 1;
    else if (unit == "ms")
        scale = 1e-3;
    else if (unit == "us")
        scale = 1e-6;
    else if (unit == "m")
        scale = 60;
    if (end == s.c_str() || scale == 0 || !std::isfinite(v))
        return make_error(
            EINVAL, fmt::format("'{}' is not a duration (examples: 1s, 500ms, 2m, 1.5)", text));
    const double seconds = v * scale;
    if (seconds <= 0 || seconds > 86400)
        return make_error(
            EINVAL,
            fmt::format("duration '{}' is out of range (more than 0, at most a day)", text));
    return seconds;
}

}  // namespace liveio::observe
