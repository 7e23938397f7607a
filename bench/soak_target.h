// What a process holds, read from /proc: descriptors, threads, mappings and resident memory.
// `liveio soak` compares the target with its own numbers before the soak; anything liveio
// could have left behind (its library, memfds, io_uring rings, its threads, writable and
// executable memory) is listed by name.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/result.h"

namespace liveio::bench {

struct ProcessSnapshot {
    // Descriptor targets by kind: "socket", "pipe", "anon_inode:[eventfd]", "/memfd:NAME", or a
    // path; counts per kind.
    std::map<std::string, int> fds;
    // Thread names (/proc/PID/task/TID/comm), counts per name.
    std::map<std::string, int> threads;
    std::string comm;  // the process's name (/proc/PID/comm): its main thread's
    size_t mappings = 0;
    uint64_t rss_kb = 0;
    // Lines of /proc/PID/maps naming liveio (its library, memfds) and mappings both writable
    // and executable.
    std::vector<std::string> liveio_mappings, wx_mappings;

    size_t fd_count() const;
    // Threads of the process's own code; io_uring's kernel workers (iou-wrk-N, iou-sqp-N) are
    // counted apart: the kernel keeps a thread's io-wq worker until that thread exits, also
    // after every ring of it is closed.
    // Connection handler threads (HTTPHandler, TCPHandler...) are counted apart too: they are
    // the server's Poco connection pool, one per concurrent connection, kept idle for a while
    // after the connection closes and renamed by the next handler that runs on them, so their
    // number follows the load's peak concurrency, not liveio. A pool thread that has not run a
    // handler yet carries the process's own name (`comm`, as the main thread), so threads of
    // that name count with the pool.
    size_t thread_count() const;
    size_t connection_handler_threads() const;
    size_t io_uring_workers() const;
    // Descriptors and threads that are liveio's: io_uring rings, eventfds and memfds of liveio,
    // threads named liveio*.
    std::vector<std::string> liveio_resources() const;
};

Result<ProcessSnapshot> snapshot_process(pid_t pid);

// "+2 socket, -1 pipe": kinds whose count changed from `before` to `after`.
std::string describe_change(const std::map<std::string, int>& before,
                            const std::map<std::string, int>& after);

}  // namespace liveio::bench
