/* BPF-side helpers shared by the built-in statistics programs: the log2 histogram slot and
 * the atomic update of a struct liveio_io_stats. For BPF C only (clang -target bpf). */
#ifndef LIVEIO_STATS_BPF_H
#define LIVEIO_STATS_BPF_H

#include "liveio/io_stats.h"

/* floor(log2(v)) for v > 0, 0 for v == 0; a branch ladder, no loop, so any verifier takes it. */
static __always_inline __u32 liveio_log2(__u64 v)
{
    __u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r;
}

/* Counts one call. Atomic adds, not per-CPU slots: in userspace a "CPU" is not exclusive
 * (threads preempted on one CPU would race on its slot), and an uncontended lock add costs a
 * few nanoseconds. */
static __always_inline void liveio_stats_add(struct liveio_io_stats *s, __u64 latency_ns,
                                             __u64 bytes, int failed)
{
    __u32 slot = liveio_log2(latency_ns);
    if (slot >= LIVEIO_HIST_SLOTS)
        slot = LIVEIO_HIST_SLOTS - 1;
    __sync_fetch_and_add(&s->calls, 1);
    __sync_fetch_and_add(&s->latency_ns, latency_ns);
    __sync_fetch_and_add(&s->hist[slot], 1);
    if (failed)
        __sync_fetch_and_add(&s->errors, 1);
    else if (bytes)
        __sync_fetch_and_add(&s->bytes, bytes);
}

#endif /* LIVEIO_STATS_BPF_H */
