// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* Built-in statistics at liveio's I/O edge: per syscall, per file class and per file, the
 * number of calls, errors, bytes and a log2 latency histogram; calls slower than a threshold
 * go to a ring buffer as events. What `liveio top`, `stats` and `hist` show.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/stats.bpf.h"

/* Set by the loader before the program is verified (the CLI's --slow option). */
const volatile __u64 slow_threshold_ns = 10 * 1000 * 1000;

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, LIVEIO_MAX_SYSCALL_NR);
    __type(key, __u32);
    __type(value, struct liveio_io_stats);
} syscall_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, LIVEIO_CLASS_KEYS);
    __type(key, __u32);
    __type(value, struct liveio_io_stats);
} class_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);
    __type(value, struct liveio_io_stats);
} file_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 256 * 1024);
} slow_events SEC(".maps");

static __always_inline void account(struct liveio_io_stats *s, const struct liveio_io_ctx *io)
{
    __u64 bytes = io->direction != LIVEIO_IO_OTHER && io->result > 0 ? io->result : 0;
    liveio_stats_add(s, io->latency_ns, bytes, io->result < 0);
}

SEC("liveio/io_exit")
int io_stats(struct liveio_io_ctx *io)
{
    __u32 nr = io->nr;
    struct liveio_io_stats *s = bpf_map_lookup_elem(&syscall_stats, &nr);
    if (s)
        account(s, io);

    __u32 cls = io->file_class;
    __u32 dir = io->direction;
    if (cls < LIVEIO_CLASS_COUNT && dir < 3) {
        __u32 key = LIVEIO_CLASS_KEY(cls, dir);
        s = bpf_map_lookup_elem(&class_stats, &key);
        if (s)
            account(s, io);
    }

    __u64 file = io->file_id;
    if (file) {
        s = bpf_map_lookup_elem(&file_stats, &file);
        if (!s) {
            static const struct liveio_io_stats zero;
            /* NOEXIST: another thread may have created the entry meanwhile; then use it. */
            bpf_map_update_elem(&file_stats, &file, &zero, BPF_NOEXIST);
            s = bpf_map_lookup_elem(&file_stats, &file);
        }
        if (s)
            account(s, io);
    }

    if (io->latency_ns >= slow_threshold_ns) {
        struct liveio_slow_io *ev = bpf_ringbuf_reserve(&slow_events, sizeof(*ev), 0);
        if (ev) {
            __builtin_memcpy(&ev->io, io, sizeof(ev->io));
            ev->pid_tgid = bpf_get_current_pid_tgid();
            bpf_get_current_comm(ev->comm, sizeof(ev->comm));
            bpf_ringbuf_submit(ev, 0);
        }
    }
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
