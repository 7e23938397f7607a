// The sample data set of the demo, the tests and `liveio bench observe`: a hits-like MergeTree
// table (after ClickHouse's own "hits" benchmark table) generated on the server with
// INSERT ... SELECT FROM numbers(), and a documented query mix over it whose expected results
// are computed here in C++ from the same generator formula, never by asking the server.
//
// Row n (n = 0 .. rows-1), identical in make_hit() and in insert_sql():
//   WatchID   = n
//   CounterID = n % 1000                      (primary key prefix: ORDER BY (CounterID, WatchID))
//   UserID    = (n * 2654435761) % 1000003
//   EventTime = 1767225600 + n                (2026-01-01 00:00:00 UTC plus n seconds)
//   RegionID  = (n * 7) % 251
//   Duration  = (n * 7919) % 10007
//   IsRefresh = n % 10 = 0
//   URL       = 'https://example.org/' || (n % 5003) || '/item?id=' || n
// In a cluster of k shards, shard i holds the rows with n % k == i.
//
// Size: ~24 bytes per row on disk (8 M rows: ~190 MB over two shards). Queries read the column
// files (.bin) and marks (.mrk) from the file system on every run: the servers are started with
// use_uncompressed_cache=0 (kProfileSettings), because 18.16 enables the uncompressed block
// cache by default and then answers repeated small reads from memory, and drop_caches()
// empties the mark cache and reloads primary.idx. Files still come from the page cache.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "clickhouse/http_client.h"
#include "clickhouse/server.h"

namespace liveio::clickhouse {

// One row of the data set, from the generator formula above.
struct Hit {
    uint64_t watch_id = 0;
    uint32_t counter_id = 0;
    uint64_t user_id = 0;
    uint32_t event_time = 0;  // unix seconds (UTC)
    uint32_t region_id = 0;
    uint32_t duration = 0;
    uint8_t is_refresh = 0;
    std::string url;
};

inline constexpr uint32_t kEventTimeBase = 1767225600;  // 2026-01-01 00:00:00 UTC

Hit make_hit(uint64_t n);

// Settings of the servers' default profile the data set is meant to run with (see above).
inline constexpr const char* kProfileSettings =
    "<use_uncompressed_cache>0</use_uncompressed_cache>";

struct DatasetOptions {
    uint64_t rows = 8'000'000;                   // over all shards
    std::string table = "hits";                  // the MergeTree table on every server
    std::string distributed_table = "hits_all";  // Distributed over the cluster's `table`s
};

// Which rows one server holds: n % shards == shard.
struct ShardSlice {
    size_t shard = 0;
    size_t shards = 1;
    bool holds(uint64_t n) const { return n % shards == shard; }
};

std::string create_table_sql(const DatasetOptions& options);
std::string insert_sql(const DatasetOptions& options, ShardSlice slice);
std::string create_distributed_sql(const DatasetOptions& options, std::string_view cluster);

struct LoadReport {
    uint64_t rows = 0;           // rows in the table(s) after the load, as the server counts them
    uint64_t bytes_on_disk = 0;  // of the active parts
    size_t parts = 0;            // active parts (1 per server once merged)
    std::chrono::milliseconds elapsed{0};
};

// (Re)creates options.table on one server, fills it with `slice` and merges it into one part,
// so every run reads the same files. Fails if the server's row count differs from the slice's.
Result<LoadReport> load(HttpClient& client, const DatasetOptions& options, ShardSlice slice = {});

// Loads every shard of `cluster` in parallel (shard i gets slice {i, size}) and creates the
// Distributed table on every shard.
Result<LoadReport> load(LocalCluster& cluster, const DatasetOptions& options);

enum class QueryKind { PointLookup, RangeScan, Aggregation, Distributed };
std::string_view to_string(QueryKind kind);

struct Query {
    std::string name;
    QueryKind kind;
    std::string sql;
    std::string expected;  // the server's TabSeparated output, byte for byte
};

// The query mix: point lookups, primary-key and non-key range scans and aggregations over the
// local table holding `slice`, and, when `distributed`, queries over the Distributed table
// (every row of the data set; run them on a shard of the cluster). Expected results come from
// one pass of make_hit() over the rows.
std::vector<Query> query_mix(const DatasetOptions& options, ShardSlice slice, bool distributed);

struct QueryRun {
    std::string name;
    QueryKind kind;
    std::chrono::nanoseconds elapsed{0};
    bool matched = false;
    std::string got;  // the server's output when it differs from the expected one
};

struct MixRun {
    std::vector<QueryRun> queries;
    std::chrono::nanoseconds elapsed{0};
    size_t mismatches = 0;
};

// Runs every query once, in order. A server error fails the run (naming the query); a result
// that differs from the expected one is recorded (matched = false, got = output).
Result<MixRun> run_mix(HttpClient& client, const std::vector<Query>& mix);

// Makes the next queries read marks and primary.idx from files again: SYSTEM DROP MARK CACHE,
// SYSTEM DROP UNCOMPRESSED CACHE, then DETACH and ATTACH of the table (which reloads each
// part's primary index and checksums).
Result<void> drop_caches(HttpClient& client, const DatasetOptions& options);

}  // namespace liveio::clickhouse
