// The ClickHouse sink (`--sink clickhouse://HOST:PORT/db.table`): every interval, one row per
// syscall and per file class that saw calls, inserted through ClickHouse's HTTP interface into
// a MergeTree table created when absent, so operators query their I/O history with SQL:
//
//   SELECT name, sum(calls), max(p99_ns) FROM db.table WHERE kind = 'syscall' GROUP BY name
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "base/result.h"
#include "clickhouse/http_client.h"
#include "observe/net_stats.h"
#include "observe/stats.h"

namespace liveio::observe {

struct SinkTarget {
    std::string host;  // numeric IPv4 (the HTTP client connects to addresses, not names)
    uint16_t port = 8123;
    std::string database;
    std::string table;

    std::string qualified() const { return "`" + database + "`.`" + table + "`"; }
};

// "clickhouse://127.0.0.1:8123/db.table" (port defaults to 8123; "localhost" means 127.0.0.1).
// Errors name the part that is wrong.
Result<SinkTarget> parse_sink_url(std::string_view url);

// CREATE TABLE IF NOT EXISTS for the sink's columns:
//   time DateTime, host String, pid UInt32, comm String, kind String ('syscall' | 'class' |
//   'socket': name is the TCP socket's remote address:port, 'closed' if never seen open),
//   name String, direction String, interval_s Float64, calls UInt64, errors UInt64,
//   bytes UInt64, latency_sum_ns UInt64, mean_ns Float64, p50_ns Float64, p99_ns Float64,
//   hist Array(UInt64)
std::string sink_create_table_sql(const SinkTarget& target);

// The rows of one interval's delta as TabSeparated text in the column order above.
struct SinkBatch {
    int64_t unix_time = 0;  // end of the interval
    std::string host;
    pid_t pid = 0;
    std::string comm;
    double interval_s = 0;
    const Snapshot* delta = nullptr;
    const std::vector<SocketSample>* sockets = nullptr;  // deltas over the interval, optional
};
std::string sink_rows_tsv(const SinkBatch& batch);

// A connection to the sink's server; the database and table are created on open().
class ClickHouseSink {
public:
    static Result<ClickHouseSink> open(const SinkTarget& target);
    // Inserts the batch's rows (nothing when its delta is empty). Returns the rows inserted.
    Result<size_t> write(const SinkBatch& batch);
    const SinkTarget& target() const { return target_; }

private:
    ClickHouseSink(SinkTarget target, clickhouse::HttpClient client)
        : target_(std::move(target)), client_(std::move(client)) {}
    SinkTarget target_;
    clickhouse::HttpClient client_;
};

// This machine's host name (gethostname), for the rows' host column.
std::string local_host_name();

}  // namespace liveio::observe
