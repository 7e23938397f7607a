// Prometheus text exposition format 0.0.4 for `liveio serve`: rendering the io_stats
// snapshots of every observed process, and a strict parser of the format (tests check what we
// serve by parsing it back; the parser rejects what Prometheus would reject).
//
// Families (labels in braces):
//   liveio_syscalls_total{pid,comm,syscall}            counter  calls
//   liveio_syscall_errors_total{pid,comm,syscall}      counter  calls that returned -errno
//   liveio_io_bytes_total{pid,comm,syscall}            counter  bytes transferred
//   liveio_io_latency_seconds{pid,comm,syscall,le}     histogram from the log2 slots
//   liveio_class_calls_total{pid,comm,class,direction} counter
//   liveio_class_bytes_total{pid,comm,class,direction} counter
//   liveio_class_latency_seconds{pid,comm,class,direction,le} histogram
//   liveio_socket_calls_total{pid,comm,local,remote,direction} counter (net_stats loaded)
//   liveio_socket_bytes_total{pid,comm,local,remote,direction} counter
//   liveio_socket_latency_seconds{pid,comm,local,remote,direction,le} histogram
//   liveio_target_up{pid,comm}                         gauge    1 if its maps were read
#pragma once

#include <sys/types.h>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "observe/net_stats.h"
#include "observe/stats.h"

namespace liveio::observe {

struct ProcessMetrics {
    pid_t pid = 0;
    std::string comm;  // /proc/PID/comm
    bool up = false;   // false: the snapshot could not be read (error says why)
    std::string error;
    Snapshot snapshot;                  // cumulative counters
    std::vector<SocketSample> sockets;  // cumulative, when net_stats is loaded
};

std::string render_prometheus(const std::vector<ProcessMetrics>& processes);

// Content-Type of the rendering.
inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

struct PromSample {
    std::string name;  // including _bucket/_sum/_count suffixes
    std::map<std::string, std::string> labels;
    double value = 0;
};

struct PromFamily {
    std::string name;
    std::string type;  // counter, gauge, histogram, summary, untyped
    std::string help;
};

struct PromExposition {
    std::vector<PromFamily> families;
    std::vector<PromSample> samples;

    // The value of the one sample with this name and (a superset of) these labels; an error
    // when there is none or several.
    Result<double> value(std::string_view name,
                         const std::map<std::string, std::string>& labels) const;
};

// Parses text format 0.0.4. Errors name the line: bad metric or label names, unterminated or
// badly escaped label values, unparsable values, TYPE after the family's samples or twice,
// samples of one family not together, and for histograms: buckets not cumulative, no +Inf
// bucket, _count differing from the +Inf bucket.
Result<PromExposition> parse_prometheus(std::string_view text);

}  // namespace liveio::observe
