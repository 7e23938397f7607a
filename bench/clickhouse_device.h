// The device conditions `liveio bench clickhouse` measures under. `idle`: the disk as the
// machine has it. `contended`: the same disk while a bounded background load (fio, random
// O_DIRECT reads at a fixed queue depth and block size, on its own file) keeps it busy, so each
// request of a single reader waits longer while parallel readers still gain: the situation of
// networked or shared block storage, where latency is high and parallelism available.
//
// Why a background load and not a blkio throttle (cgroup v1 read_iops_device/read_bps_device,
// the machine's only I/O limit): a throttle caps the rate, so a reader at queue depth 32 gets
// no more than one at depth 1 and overlapping requests has nothing to win (docs/bench-clickhouse.md
// has the fio figures of both).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace liveio::bench {

enum class DeviceCondition { Idle, Contended };

const char* condition_name(DeviceCondition c);

// "idle,contended" -> the conditions in that order (each at most once).
Result<std::vector<DeviceCondition>> parse_device_conditions(std::string_view list);

// The background load of the contended condition.
struct ContentionSpec {
    std::string block_size = "16k";
    int queue_depth = 16;
    uint64_t file_bytes = 2ull << 30;  // its own file, written once, read at random
    int max_seconds = 3600;            // fio's own bound for one pass, should stop() never come
};

std::string describe(const ContentionSpec& spec);

// The load's file `dir`/load-BYTES.dat, written once with fio (O_DIRECT, so its blocks are on
// the device) under a temporary name and renamed when complete. It must be on the same block
// device as `data_dir`.
Result<std::string> ensure_load_file(const std::string& dir, const std::string& data_dir,
                                     uint64_t bytes);

// What the background load itself achieved while it ran.
struct LoadFigures {
    double iops = 0;
    double mbs = 0;
    double seconds = 0;
    double mean_latency_us = 0;
    bool ended_early = false;  // fio had stopped by itself (its bound) before stop()
};

// A running background load: one fio process (jobs as threads, so one kill stops all), its own
// process group, killed if this process dies (setpriv --pdeathsig) and bounded by --runtime.
// stop() ends it with SIGTERM (fio then writes its figures), SIGKILL after a bounded wait; the
// destructor stops a load still running.
class BackgroundLoad {
public:
    static Result<std::unique_ptr<BackgroundLoad>> start(const std::string& file,
                                                         const ContentionSpec& spec,
                                                         const std::string& output_json);
    ~BackgroundLoad();
    BackgroundLoad(const BackgroundLoad&) = delete;
    BackgroundLoad& operator=(const BackgroundLoad&) = delete;

    pid_t pid() const { return pid_; }
    bool running() const { return pid_ > 0; }
    Result<LoadFigures> stop();

private:
    BackgroundLoad(pid_t pid, std::string output_json)
        : pid_(pid), output_json_(std::move(output_json)) {}
    void terminate();  // SIGTERM, bounded wait, SIGKILL; reaps

    pid_t pid_;
    bool ended_early_ = false;
    std::string output_json_;
};

}  // namespace liveio::bench
