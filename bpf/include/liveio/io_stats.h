/* Map value layouts shared by the built-in statistics programs (bpf/io_stats.bpf.c,
 * bpf/syscount.bpf.c) and the CLI that reads their maps live (liveio top/stats/hist). */
#ifndef LIVEIO_IO_STATS_H
#define LIVEIO_IO_STATS_H

#include "liveio/io_edge.h"

#ifdef __cplusplus
namespace liveio {
#endif

/* Latency histogram: slot i counts calls with latency in [2^i, 2^(i+1)) ns, slot 0 also
 * counts 0 and 1 ns; the last slot collects everything from 2^31 ns (~2.1 s) up. */
#define LIVEIO_HIST_SLOTS 32

/* Syscall numbers below this bound index the per-syscall array (x86-64 has ~460). */
#define LIVEIO_MAX_SYSCALL_NR 512

struct liveio_io_stats {
    liveio_u64 calls;
    liveio_u64 errors;       /* calls that returned -errno */
    liveio_u64 bytes;        /* sum of positive results of read/write-direction calls */
    liveio_u64 latency_ns;   /* sum of latencies, for the mean */
    liveio_u64 hist[LIVEIO_HIST_SLOTS];
};

/* One record of the slow-I/O ring buffer: a call slower than the program's threshold. */
struct liveio_slow_io {
    struct liveio_io_ctx io;
    liveio_u64 pid_tgid;
    char comm[16];
};

/* Key of the per-class map: class and direction. */
#define LIVEIO_CLASS_KEY(cls, dir) ((cls) * 3 + (dir))
#define LIVEIO_CLASS_KEYS (LIVEIO_CLASS_COUNT * 3)

#ifdef __cplusplus
}  // namespace liveio
#endif

#endif /* LIVEIO_IO_STATS_H */
