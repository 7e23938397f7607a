// The cached hits-like data set of `liveio bench clickhouse`: a ClickHouse server directory
// (the test bed's layout) under the cache directory, one per row count, holding table `hits`
// as one merged part. Made once (generator in clickhouse_hits.h, server niced), reused by
// later runs when its marker file names the same generator version and row count.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "base/result.h"
#include "clickhouse/http_client.h"
#include "clickhouse/server.h"

namespace liveio::bench {

struct DatasetInfo {
    std::string dir;  // the server directory
    uint64_t rows = 0;
    uint64_t bytes_on_disk = 0;       // of the active parts of `hits`
    uint64_t bytes_uncompressed = 0;  // of the columns, as ClickHouse counts them
    size_t parts = 0;
    double generation_seconds = 0;  // when this run made it; else from the marker
    bool generated_now = false;
};

// The directory for `rows` rows under `cache_dir` ("40m", "300k", ...).
std::string dataset_dir(const std::string& cache_dir, uint64_t rows);

// Server options for the benchmark's server on `dir` (settings, static TLS reserve).
clickhouse::ServerOptions bench_server_options(const std::string& dir);

// Makes sure `dir` holds the data set (generating it when its marker is missing or stale,
// in batches of `batch_rows`, with progress lines on stdout).
Result<DatasetInfo> ensure_dataset(const std::string& dir, uint64_t rows, uint64_t batch_rows);

// Runs `sql` with extra URL parameters (ClickHouse settings, query_id: "a=1&b=2") and
// returns the output; a refused query is an error with ClickHouse's message.
Result<std::string> query_with(clickhouse::HttpClient& client, std::string_view sql,
                               std::string_view params);

// Reads the current size figures of `hits` into *info.
Result<void> describe_dataset(clickhouse::HttpClient& client, DatasetInfo* info);

}  // namespace liveio::bench
