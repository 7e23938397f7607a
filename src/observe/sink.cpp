#include "observe/sink.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>

#include <fmt/format.h>

namespace liveio::observe {
namespace {

// ClickHouse identifiers we accept unquoted-safe: letters, digits, underscore, not leading digit.
bool valid_identifier(std::string_view s) {
    if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
    for (char c : s)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
    return true;
}

const char* kColumns[] = {"time",      "host",       "pid",    "comm",   "kind",  "name",
                          "direction", "interval_s", "calls",  "errors", "bytes", "latency_sum_ns",
                          "mean_ns",   "p50_ns",     "p99_ns", "hist"};

}  // namespace

Result<SinkTarget> parse_sink_url(std::string_view url) {
    constexpr std::string_view kScheme = "clickhouse://";
    const auto bad = [&](const std::string& why) {
        return make_error(
            EINVAL,
            fmt::format("sink '{}': {} (expected clickhouse://HOST:PORT/db.table)", url, why));
    };
    if (!url.starts_with(kScheme)) return bad("unknown scheme");
    std::string_view rest = url.substr(kScheme.size());
    const size_t slash = rest.find('/');
    if (slash == std::string_view::npos) return bad("no /db.table");
    std::string_view authority = rest.substr(0, slash), path = rest.substr(slash + 1);
    SinkTarget t;
    const size_t colon = authority.rfind(':');
    t.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
        const std::string_view port = authority.substr(colon + 1);
        unsigned value = 0;
        auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
        if (ec != std::errc() || p != port.data() + port.size() || value == 0 || value > 65535)
            return bad("bad port '" + std::string(port) + "'");
        t.port = static_cast<uint16_t>(value);
    }
    if (t.host == "localhost") t.host = "127.0.0.1";
    in_addr addr;
    if (t.host.empty() || ::inet_pton(AF_INET, t.host.c_str(), &addr) != 1)
        return bad("host '" + t.host + "' is not a numeric IPv4 address");
    const size_t dot = path.find('.');
    if (dot == std::string_view::npos) return bad("the path must be db.table");
    t.database = std::string(path.substr(0, dot));
    t.table = std::string(path.substr(dot + 1));
    if (!valid_identifier(t.database)) return bad("bad database name '" + t.database + "'");
    if (!valid_identifier(t.table)) return bad("bad table name '" + t.table + "'");
    return t;
}

std::string sink_create_table_sql(const SinkTarget& t) {
    return fmt::format(
        "CREATE TABLE IF NOT EXISTS {} (time DateTime, host String, pid UInt32, comm String, kind "
        "String, "
        "name String, direction String, interval_s Float64, calls UInt64, errors UInt64, bytes "
        "UInt64, "
        "latency_sum_ns UInt64, mean_ns Float64, p50_ns Float64, p99_ns Float64, hist "
        "Array(UInt64)) "
        "ENGINE = MergeTree() PARTITION BY toYYYYMM(time) ORDER BY (host, pid, kind, name, "
        "direction, time)",
        t.qualified());
}

std::string sink_rows_tsv(const SinkBatch& b) {
    if (!b.delta) return "";
    std::string out;
    auto row = [&](std::string_view kind, std::string_view name, std::string_view direction,
                   const Counters& c) {
        const Rates r = rates(c, b.interval_s);
        std::string hist = "[";
        for (size_t i = 0; i < c.hist.size(); ++i)
            hist += fmt::format("{}{}", i ? "," : "", c.hist[i]);
        hist += "]";
        out += fmt::format("{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                           b.unix_time, clickhouse::tsv_escape(b.host), b.pid,
                           clickhouse::tsv_escape(b.comm), kind, clickhouse::tsv_escape(name),
                           direction, b.interval_s, c.calls, c.errors, c.bytes, c.latency_ns,
                           r.mean_ns.value_or(0), r.p50_ns.value_or(0), r.p99_ns.value_or(0), hist);
    };
    for (const auto& s : b.delta->syscalls) row("syscall", s.name, "", s.counters);
    for (const auto& c : b.delta->classes)
        row("class", class_name(c.file_class), direction_name(c.direction), c.counters);
    if (b.sockets)
        for (const auto& s : *b.sockets)
            for (uint32_t dir = 0; dir < 3; ++dir)
                if (!s.counters.dir[dir].empty())
                    row("socket", s.connection.remote().empty() ? "closed" : s.connection.remote(),
                        direction_name(dir), s.counters.dir[dir]);
    return out;
}

Result<ClickHouseSink> ClickHouseSink::open(const SinkTarget& target) {
    clickhouse::HttpClientOptions options;
    options.host = target.host;
    options.port = target.port;
    options.timeout = std::chrono::milliseconds(30000);
    clickhouse::HttpClient client(options);
    const std::string where = fmt::format("sink clickhouse://{}:{}", target.host, target.port);
    if (auto ok = client.execute("CREATE DATABASE IF NOT EXISTS `" + target.database + "`"); !ok)
        return make_error(ok.error().code, where + ": " + ok.error().message);
    if (auto ok = client.execute(sink_create_table_sql(target)); !ok)
        return make_error(ok.error().code, where + ": " + ok.error().message);
    return ClickHouseSink(target, std::move(client));
}

Result<size_t> ClickHouseSink::write(const SinkBatch& batch) {
    const std::string rows = sink_rows_tsv(batch);
    if (rows.empty()) return size_t{0};
    const std::vector<std::string> columns(std::begin(kColumns), std::end(kColumns));
    if (auto ok = client_.insert(target_.database + "." + target_.table,
                                 clickhouse::InsertFormat::TabSeparated, rows, columns);
        !ok)
        return make_error(ok.error().code,
                          fmt::format("sink {}: {}", target_.qualified(), ok.error().message));
    return static_cast<size_t>(std::count(rows.begin(), rows.end(), '\n'));
}

std::string local_host_name() {
    char name[256] = {};
    if (::gethostname(name, sizeof name - 1) != 0) return "unknown";
    return name;
}

}  // namespace liveio::observe
