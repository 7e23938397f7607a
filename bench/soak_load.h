// The load of `liveio soak clickhouse`: checker threads running the data set's query mix over
// HTTP and comparing every answer with the expected one (computed from the generator, never
// asked of the server), a writer inserting known rows into a Log and a MergeTree table, and
// clickhouse-benchmark (Debian clickhouse-tools) running the same mix concurrently over the
// native protocol. Everything runs until a deadline and counts what failed.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/result.h"
#include "clickhouse/dataset.h"
#include "clickhouse/server.h"

namespace liveio::bench {

using SoakClock = std::chrono::steady_clock;

// Rows the writer inserts: batch b holds n = b * kSoakBatchRows .. + kSoakBatchRows - 1, each
// with v = soak_value(n); the tables are kSoakTables.
inline constexpr uint64_t kSoakBatchRows = 2000;
inline constexpr const char* kSoakTables[] = {"soak_log", "soak_mt"};
std::string soak_value(uint64_t n);
std::vector<std::string> soak_create_sql();

// What the inserts the server acknowledged put into one table.
struct WrittenRows {
    uint64_t rows = 0, sum_n = 0, sum_len = 0;
};

// The failures of one kind of load: how many, and the first few messages.
class FailureLog {
public:
    void add(std::string message);
    uint64_t count() const;
    std::vector<std::string> first() const;

private:
    mutable std::mutex mu_;
    uint64_t count_ = 0;
    std::vector<std::string> first_;
};

struct SoakLoadOptions {
    size_t checkers = 2;               // HTTP threads comparing answers
    size_t benchmark_concurrency = 2;  // clickhouse-benchmark -c; 0: no clickhouse-benchmark
    std::chrono::milliseconds write_interval{250};
};

class SoakLoad {
public:
    SoakLoad(const clickhouse::LocalServer& server, std::vector<clickhouse::Query> mix,
             SoakLoadOptions options);
    ~SoakLoad();
    SoakLoad(const SoakLoad&) = delete;
    SoakLoad& operator=(const SoakLoad&) = delete;

    // Starts every load thread; they stop by themselves at `deadline` (a query in flight
    // finishes). run() again after join() continues the same counts and rows.
    void run(SoakClock::time_point deadline);
    void join();

    uint64_t checked_queries() const { return checked_.load(); }
    uint64_t benchmark_queries() const { return bench_queries_.load(); }
    uint64_t inserts() const { return inserts_.load(); }
    const FailureLog& query_failures() const { return query_failures_; }
    const FailureLog& insert_failures() const { return insert_failures_; }
    const FailureLog& benchmark_failures() const { return bench_failures_; }
    // Rows acknowledged per table (kSoakTables order).
    std::vector<WrittenRows> written() const;
    // Why clickhouse-benchmark is not part of the load, or "".
    const std::string& benchmark_note() const { return bench_note_; }

private:
    void check_loop(size_t index, SoakClock::time_point deadline);
    void write_loop(SoakClock::time_point deadline);
    void benchmark_loop(SoakClock::time_point deadline);
    Result<uint64_t> run_benchmark(int seconds);

    const clickhouse::LocalServer& server_;
    const std::vector<clickhouse::Query> mix_;
    const SoakLoadOptions options_;
    std::string bench_binary_, bench_note_, bench_queries_file_;
    std::vector<std::thread> threads_;
    std::atomic<uint64_t> checked_{0}, bench_queries_{0}, inserts_{0};
    FailureLog query_failures_, insert_failures_, bench_failures_;
    mutable std::mutex written_mu_;
    std::vector<WrittenRows> written_;
    uint64_t next_batch_ = 0;
};

}  // namespace liveio::bench
