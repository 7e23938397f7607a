#include "clickhouse/dataset.h"

#include <fmt/format.h>
#include <algorithm>
#include <map>
#include <optional>
#include <thread>

namespace liveio::clickhouse {
namespace {

using Clock = std::chrono::steady_clock;

// Bounds of the generator's value ranges, used to size the C++ side's counting tables.
constexpr uint64_t kUserModulus = 1000003;
constexpr uint32_t kRegions = 251;
constexpr uint32_t kUrlBuckets = 5003;

// Query parameters; they are part of the documented mix.
constexpr uint32_t kRangeCounterLo = 100, kRangeCounterHi = 119;
constexpr uint32_t kDistCounterLo = 500, kDistCounterHi = 549;
constexpr uint32_t kFetchCounter = 7;
constexpr uint32_t kUrlBucket = 77;
constexpr size_t kPointLookups = 4;
constexpr size_t kTopRegions = 5;

std::string tsv_row(std::initializer_list<std::string> fields) {
    std::string out;
    for (const auto& f : fields) out += (out.empty() ? "" : "\t") + f;
    return out + "\n";
}

template <typename T>
std::string num(T v) {
    return std::to_string(v);
}

// The first row at or after `from` that `slice` holds (rows beyond the data set: none).
std::optional<uint64_t> first_held(ShardSlice slice, uint64_t from, uint64_t rows) {
    for (uint64_t n = from; n < rows && n < from + slice.shards; ++n)
        if (slice.holds(n)) return n;
    return std::nullopt;
}

// Everything the mix asks about one set of rows, gathered in one pass over make_hit().
struct Aggregates {
    uint64_t range_count = 0, range_duration = 0, range_max_user = 0;
    uint64_t time_count = 0, time_min_watch = UINT64_MAX, time_max_watch = 0, time_regions = 0;
    std::vector<uint64_t> region_count = std::vector<uint64_t>(kRegions);
    std::vector<uint64_t> region_duration = std::vector<uint64_t>(kRegions);
    std::vector<bool> users = std::vector<bool>(kUserModulus);
    uint64_t url_matches = 0, refreshes = 0;
    uint64_t dist_count = 0, dist_duration = 0;
    std::string fetch;  // rows of the CounterID = kFetchCounter fetch, in WatchID order
};

struct TimeWindow {
    uint32_t from, to;  // [from, to)
};

TimeWindow time_window(uint64_t rows) {
    return {static_cast<uint32_t>(kEventTimeBase + rows / 4),
            static_cast<uint32_t>(kEventTimeBase + rows / 4 + rows / 10)};
}

void add_row(Aggregates& a, const Hit& h, TimeWindow window, std::string_view url_needle) {
    if (h.counter_id >= kRangeCounterLo && h.counter_id <= kRangeCounterHi) {
        ++a.range_count;
        a.range_duration += h.duration;
        a.range_max_user = std::max(a.range_max_user, h.user_id);
    }
    if (h.counter_id >= kDistCounterLo && h.counter_id <= kDistCounterHi) {
        ++a.dist_count;
        a.dist_duration += h.duration;
    }
    if (h.event_time >= window.from && h.event_time < window.to) {
        ++a.time_count;
        a.time_min_watch = std::min(a.time_min_watch, h.watch_id);
        a.time_max_watch = std::max(a.time_max_watch, h.watch_id);
        a.time_regions += h.region_id;
    }
    ++a.region_count[h.region_id];
    a.region_duration[h.region_id] += h.duration;
    a.users[h.user_id] = true;
    // The SQL side matches the URL text (LIKE); the same test on the generated string.
    if (h.url.find(url_needle) != std::string::npos) ++a.url_matches;
    a.refreshes += h.is_refresh;
    if (h.counter_id == kFetchCounter) a.fetch += tsv_row({num(h.watch_id), num(h.duration)});
}

// One pass over the data set: the rows of `slice` into *local, every row into *all (if given).
void aggregate(uint64_t rows, ShardSlice slice, Aggregates* local, Aggregates* all) {
    const TimeWindow window = time_window(rows);
    const std::string url_needle = fmt::format("/{}/", kUrlBucket);
    for (uint64_t n = 0; n < rows; ++n) {
        const bool held = slice.holds(n);
        if (!held && !all) continue;
        const Hit h = make_hit(n);
        if (held) add_row(*local, h, window, url_needle);
        if (all) add_row(*all, h, window, url_needle);
    }
}

// Top regions by `primary` (descending), ties by RegionID ascending, as the SQL orders them.
std::string top_regions(const Aggregates& a, const std::vector<uint64_t>& primary) {
    std::vector<uint32_t> ids;
    for (uint32_t r = 0; r < kRegions; ++r)
        if (a.region_count[r]) ids.push_back(r);
    std::sort(ids.begin(), ids.end(), [&](uint32_t x, uint32_t y) {
        return primary[x] != primary[y] ? primary[x] > primary[y] : x < y;
    });
    ids.resize(std::min(ids.size(), kTopRegions));
    std::string out;
    for (uint32_t r : ids)
        out += tsv_row({num(r), num(a.region_count[r]), num(a.region_duration[r])});
    return out;
}

Result<uint64_t> query_number(HttpClient& client, const std::string& sql) {
    auto rows = client.query_rows(sql);
    if (!rows) return rows.error();
    if (rows->size() != 1 || rows->front().size() != 1)
        return make_error(EPROTO, fmt::format("`{}` did not return one value", sql));
    try {
        return static_cast<uint64_t>(std::stoull(rows->front().front()));
    } catch (const std::exception&) {
        return make_error(
            EPROTO, fmt::format("`{}` returned '{}', not a number", sql, rows->front().front()));
    }
}

// Active parts, rows and bytes of `table` on one server.
Result<LoadReport> table_report(HttpClient& client, const std::string& table) {
    auto rows = client.query_rows(
        fmt::format("SELECT count(), sum(rows), sum(bytes_on_disk) FROM system.parts "
                    "WHERE database = currentDatabase() AND table = '{}' AND active",
                    table));
    if (!rows) return rows.error();
    if (rows->size() != 1 || rows->front().size() != 3)
        return make_error(EPROTO, "unexpected answer from system.parts");
    LoadReport r;
    const auto& f = rows->front();
    r.parts = std::stoull(f[0]);
    r.rows = std::stoull(f[1]);
    r.bytes_on_disk = std::stoull(f[2]);
    return r;
}

}  // namespace

Hit make_hit(uint64_t n) {
    Hit h;
    h.watch_id = n;
    h.counter_id = static_cast<uint32_t>(n % 1000);
    h.user_id = (n * 2654435761ULL) % kUserModulus;
    h.event_time = static_cast<uint32_t>(kEventTimeBase + n);
    h.region_id = static_cast<uint32_t>((n * 7) % kRegions);
    h.duration = static_cast<uint32_t>((n * 7919) % 10007);
    h.is_refresh = n % 10 == 0;
    h.url = fmt::format("https://example.org/{}/item?id={}", n % kUrlBuckets, n);
    return h;
}

std::string create_table_sql(const DatasetOptions& o) {
    return fmt::format(
        "CREATE TABLE {} (WatchID UInt64, CounterID UInt32, UserID UInt64, EventTime DateTime, "
        "RegionID UInt32, Duration UInt32, IsRefresh UInt8, URL String) "
        "ENGINE = MergeTree() ORDER BY (CounterID, WatchID)",
        o.table);
}

std::string insert_sql(const DatasetOptions& o, ShardSlice slice) {
    // The WHERE keeps the slice; numbers() itself is cheap next to writing the columns.
    return fmt::format(
        "INSERT INTO {} SELECT number, number % 1000, (number * 2654435761) % 1000003, "
        "toDateTime({} + number), (number * 7) % 251, (number * 7919) % 10007, number % 10 = 0, "
        "concat('https://example.org/', toString(number % 5003), '/item?id=', toString(number)) "
        "FROM numbers({}) WHERE number % {} = {}",
        o.table, kEventTimeBase, o.rows, slice.shards, slice.shard);
}

std::string create_distributed_sql(const DatasetOptions& o, std::string_view cluster) {
    return fmt::format("CREATE TABLE {} AS {} ENGINE = Distributed({}, currentDatabase(), {})",
                       o.distributed_table, o.table, cluster, o.table);
}

Result<LoadReport> load(HttpClient& client, const DatasetOptions& o, ShardSlice slice) {
    if (slice.shards == 0 || slice.shard >= slice.shards)
        return make_error(EINVAL,
                          fmt::format("shard {} of {} does not exist", slice.shard, slice.shards));
    if (o.rows == 0) return make_error(EINVAL, "the data set needs at least one row");
    const auto t0 = Clock::now();
    for (const std::string& sql : {fmt::format("DROP TABLE IF EXISTS {}", o.table),
                                   create_table_sql(o), insert_sql(o, slice)})
        if (auto r = client.execute(sql); !r) return r.error();
    // The insert leaves a part per block; background merges may already be merging some, in
    // which case OPTIMIZE does nothing (optimize_throw_if_noop is 0): repeat until one part.
    const auto deadline = Clock::now() + std::chrono::seconds(120);
    Result<LoadReport> report = table_report(client, o.table);
    while (report && report->parts > 1) {
        if (Clock::now() > deadline)
            return make_error(ETIMEDOUT,
                              fmt::format("{} still has {} parts after 120 s of OPTIMIZE", o.table,
                                          report->parts));
        if (auto r = client.execute(fmt::format("OPTIMIZE TABLE {} FINAL", o.table)); !r)
            return r.error();
        report = table_report(client, o.table);
        if (report && report->parts > 1)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!report) return report.error();
    const uint64_t expected = o.rows / slice.shards + (slice.shard < o.rows % slice.shards ? 1 : 0);
    if (report->rows != expected)
        return make_error(EPROTO, fmt::format("{} holds {} rows after the load, expected {}",
                                              o.table, report->rows, expected));
    report->elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
    return report;
}

Result<LoadReport> load(LocalCluster& cluster, const DatasetOptions& o) {
    const auto t0 = Clock::now();
    const size_t n = cluster.size();
    std::vector<std::optional<Result<LoadReport>>> results(n);
    {
        std::vector<std::jthread> threads;
        for (size_t i = 0; i < n; ++i)
            threads.emplace_back([&, i] {
                auto client = cluster.shard(i).client();
                results[i] = load(client, o, ShardSlice{i, n});
            });
    }
    LoadReport total;
    for (size_t i = 0; i < n; ++i) {
        if (!*results[i])
            return make_error(results[i]->error().code,
                              fmt::format("shard {}: {}", i, results[i]->error().message));
        total.rows += (*results[i])->rows;
        total.bytes_on_disk += (*results[i])->bytes_on_disk;
        total.parts += (*results[i])->parts;
    }
    if (auto r =
            cluster.execute_on_all(fmt::format("DROP TABLE IF EXISTS {}", o.distributed_table));
        !r)
        return r.error();
    if (auto r = cluster.execute_on_all(create_distributed_sql(o, cluster.name())); !r)
        return r.error();
    auto client = cluster.shard(0).client();
    auto counted = query_number(client, fmt::format("SELECT count() FROM {}", o.distributed_table));
    if (!counted) return counted.error();
    if (*counted != o.rows)
        return make_error(EPROTO, fmt::format("{} counts {} rows, expected {}", o.distributed_table,
                                              *counted, o.rows));
    total.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
    return total;
}

std::string_view to_string(QueryKind kind) {
    switch (kind) {
        case QueryKind::PointLookup: return "point lookup";
        case QueryKind::RangeScan: return "range scan";
        case QueryKind::Aggregation: return "aggregation";
        case QueryKind::Distributed: return "distributed";
    }
    return "?";
}

std::vector<Query> query_mix(const DatasetOptions& o, ShardSlice slice, bool distributed) {
    std::vector<Query> mix;
    const std::string& t = o.table;
    Aggregates local, all;
    aggregate(o.rows, slice, &local, distributed ? &all : nullptr);

    auto point = [](const std::string& table, uint64_t n) {
        const Hit h = make_hit(n);
        return std::pair{
            fmt::format("SELECT WatchID, UserID, toUInt32(EventTime), Duration, URL FROM {} "
                        "WHERE CounterID = {} AND WatchID = {}",
                        table, h.counter_id, n),
            tsv_row({num(h.watch_id), num(h.user_id), num(h.event_time), num(h.duration), h.url})};
    };
    for (size_t i = 0; i < kPointLookups; ++i)
        if (auto n = first_held(slice, o.rows * (2 * i + 1) / (2 * kPointLookups), o.rows)) {
            auto [sql, expected] = point(t, *n);
            mix.push_back({fmt::format("point_{}", i + 1), QueryKind::PointLookup, sql, expected});
        }

    mix.push_back(
        {"range_counter", QueryKind::RangeScan,
         fmt::format(
             "SELECT count(), sum(Duration), max(UserID) FROM {} WHERE CounterID BETWEEN {} AND {}",
             t, kRangeCounterLo, kRangeCounterHi),
         tsv_row({num(local.range_count), num(local.range_duration), num(local.range_max_user)})});
    const TimeWindow window = time_window(o.rows);
    mix.push_back({"range_time", QueryKind::RangeScan,
                   fmt::format("SELECT count(), min(WatchID), max(WatchID), sum(RegionID) FROM {} "
                               "WHERE EventTime >= toDateTime({}) AND EventTime < toDateTime({})",
                               t, window.from, window.to),
                   // On an empty range ClickHouse's min/max of UInt64 are 0.
                   tsv_row({num(local.time_count), num(local.time_count ? local.time_min_watch : 0),
                            num(local.time_max_watch), num(local.time_regions)})});
    mix.push_back({"agg_regions", QueryKind::Aggregation,
                   fmt::format("SELECT RegionID, count(), sum(Duration) FROM {} GROUP BY RegionID "
                               "ORDER BY count() DESC, RegionID LIMIT {}",
                               t, kTopRegions),
                   top_regions(local, local.region_count)});
    mix.push_back({"agg_users", QueryKind::Aggregation,
                   fmt::format("SELECT uniqExact(UserID) FROM {}", t),
                   tsv_row({num(std::count(local.users.begin(), local.users.end(), true))})});
    mix.push_back(
        {"agg_urls", QueryKind::Aggregation,
         fmt::format("SELECT countIf(URL LIKE '%/{}/%'), sum(IsRefresh) FROM {}", kUrlBucket, t),
         tsv_row({num(local.url_matches), num(local.refreshes)})});

    if (distributed) {
        const std::string& d = o.distributed_table;
        mix.push_back(
            {"dist_range", QueryKind::Distributed,
             fmt::format("SELECT count(), sum(Duration) FROM {} WHERE CounterID BETWEEN {} AND {}",
                         d, kDistCounterLo, kDistCounterHi),
             tsv_row({num(all.dist_count), num(all.dist_duration)})});
        mix.push_back(
            {"dist_regions", QueryKind::Distributed,
             fmt::format("SELECT RegionID, count(), sum(Duration) FROM {} GROUP BY RegionID "
                         "ORDER BY sum(Duration) DESC, RegionID LIMIT {}",
                         d, kTopRegions),
             top_regions(all, all.region_duration)});
        // A row of another shard than the local one whenever there are several.
        if (auto n = first_held(ShardSlice{(slice.shard + 1) % slice.shards, slice.shards},
                                o.rows / 3, o.rows)) {
            auto [sql, expected] = point(d, *n);
            mix.push_back({"dist_point", QueryKind::Distributed, sql, expected});
        }
        mix.push_back(
            {"dist_fetch", QueryKind::Distributed,
             fmt::format("SELECT WatchID, Duration FROM {} WHERE CounterID = {} ORDER BY WatchID",
                         d, kFetchCounter),
             all.fetch});
    }
    return mix;
}

Result<MixRun> run_mix(HttpClient& client, const std::vector<Query>& mix) {
    MixRun run;
    const auto t0 = Clock::now();
    for (const Query& q : mix) {
        const auto start = Clock::now();
        auto out = client.query(q.sql);
        if (!out)
            return make_error(out.error().code,
                              fmt::format("query {}: {}", q.name, out.error().message));
        QueryRun r{q.name, q.kind, Clock::now() - start, *out == q.expected, {}};
        if (!r.matched) {
            r.got = std::move(*out);
            ++run.mismatches;
        }
        run.queries.push_back(std::move(r));
    }
    run.elapsed = Clock::now() - t0;
    return run;
}

Result<void> drop_caches(HttpClient& client, const DatasetOptions& o) {
    for (const std::string& sql :
         {std::string("SYSTEM DROP MARK CACHE"), std::string("SYSTEM DROP UNCOMPRESSED CACHE"),
          fmt::format("DETACH TABLE {}", o.table), fmt::format("ATTACH TABLE {}", o.table)})
        if (auto r = client.execute(sql); !r)
            return make_error(r.error().code, fmt::format("{}: {}", sql, r.error().message));
    return {};
}

}  // namespace liveio::clickhouse
