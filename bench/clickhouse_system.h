// Machine-side pieces of `liveio bench clickhouse`: the block device under the data (its
// readahead, set and always restored), dropping the page cache, the device's own read
// throughput (fio), and the ClickHouse glue line count (scripts/clickhouse-glue-loc).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>

#include "base/result.h"

namespace liveio::bench {

// The queue/read_ahead_kb file of the whole disk holding `path` (a partition's parent).
Result<std::string> readahead_file_for(const std::string& path);

// Sets a device's readahead and puts the original value back on restore() or destruction.
// restore() may be called from a signal watcher thread while the owner runs.
class ReadaheadSetting {
public:
    static Result<ReadaheadSetting*> create(const std::string& file);  // caller owns
    ~ReadaheadSetting();
    ReadaheadSetting(const ReadaheadSetting&) = delete;
    ReadaheadSetting& operator=(const ReadaheadSetting&) = delete;

    int original_kb() const { return original_kb_; }
    Result<void> set_kb(int kb);
    Result<void> restore();

private:
    ReadaheadSetting(std::string file, int original)
        : file_(std::move(file)), original_kb_(original) {}
    std::string file_;
    int original_kb_;
    std::mutex mu_;
    bool changed_ = false;
};

Result<int> read_int_file(const std::string& path);

// Runs a shell command line and returns its output (stdout; add 2>&1 for stderr); a command
// that fails is an error quoting its output.
Result<std::string> run_command(const std::string& command);

// sync(), then drop clean page cache, dentries and inodes (root only).
Result<void> drop_page_cache();

// Bytes of the regular files under `dir` (recursively) and how many of them are in the page
// cache (mincore over a read-only mapping; nothing is read).
struct Residency {
    uint64_t bytes = 0;
    uint64_t resident_bytes = 0;
    double pct() const { return bytes ? 100.0 * double(resident_bytes) / double(bytes) : 0; }
};
Result<Residency> page_cache_residency(const std::string& dir);

struct DeviceFigures {
    double seq128k_qd1_mbs = 0;
    double seq128k_qd8_mbs = 0;
    double rand4k_qd1_iops = 0;
    double rand4k_qd32_iops = 0;
    // Mean completion latency of one request at QD1: what a single reader waits.
    double seq128k_qd1_lat_us = 0;
    double rand4k_qd1_lat_us = 0;
};

// fio, O_DIRECT reads of `file` through io_uring (read-only), `seconds` per job.
Result<DeviceFigures> measure_device(const std::string& file, int seconds);

// Output of scripts/clickhouse-glue-loc run on the source tree this binary was built from;
// the count is its last line's number.
Result<long> clickhouse_glue_loc(std::string* report);

}  // namespace liveio::bench
