// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* Kernel edge (root only): device latency and bytes per process from the block layer, so
 * the CLI can put device time beside the syscall time seen in userspace (a read that took
 * 2 ms in pread but 0 on the device was queued or hit the page cache). Runs in the kernel
 * only: the userspace runtime has no block layer to observe.
 *
 * A request is keyed by (device, sector) from issue to completion, as biolatency does
 * without BTF; the issuing process is the one current at block_rq_issue, which for
 * writeback is a kernel worker (attributed to tgid 0 here, as it is not the target). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/stats.bpf.h"

/* The kernel's trace_event_raw_block_rq / _block_rq_completion (see
 * /sys/kernel/tracing/events/block/block_rq_{issue,complete}/format). Only the leading
 * fields, whose offsets have been stable since 5.x, are declared. */
struct block_rq_issue_ctx {
    __u64 common;
    __u32 dev;
    __u32 pad;
    __u64 sector;
    __u32 nr_sector;
    __u32 bytes;
};

struct block_rq_complete_ctx {
    __u64 common;
    __u32 dev;
    __u32 pad;
    __u64 sector;
    __u32 nr_sector;
    __s32 error;
};

/* Only requests issued by this process (0: all). Set before load. */
const volatile __u32 target_tgid = 0;

struct request_key {
    __u64 sector;
    __u32 dev;
    __u32 pad;
};

struct request_start {
    __u64 issue_ns;
    __u32 tgid;
    __u32 bytes;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, struct request_key);
    __type(value, struct request_start);
} in_flight SEC(".maps");

/* Per process: calls = requests, bytes, errors, device latency histogram. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, struct liveio_io_stats);
} device_stats SEC(".maps");


SEC("tracepoint/block/block_rq_issue")
int block_issue(struct block_rq_issue_ctx *ctx)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (target_tgid && tgid != target_tgid)
        return 0;
    struct request_key key = {.sector = ctx->sector, .dev = ctx->dev};
    struct request_start start = {
        .issue_ns = bpf_ktime_get_ns(), .tgid = tgid, .bytes = ctx->bytes};
    bpf_map_update_elem(&in_flight, &key, &start, BPF_ANY);
    return 0;
}

SEC("tracepoint/block/block_rq_complete")
int block_complete(struct block_rq_complete_ctx *ctx)
{
    struct request_key key = {.sector = ctx->sector, .dev = ctx->dev};
    struct request_start *start = bpf_map_lookup_elem(&in_flight, &key);
    if (!start)
        return 0;
    __u64 latency = bpf_ktime_get_ns() - start->issue_ns;
    __u32 tgid = start->tgid;
    __u64 bytes = start->bytes;
    bpf_map_delete_elem(&in_flight, &key);

    struct liveio_io_stats *s = bpf_map_lookup_elem(&device_stats, &tgid);
    if (!s) {
        static const struct liveio_io_stats zero;
        bpf_map_update_elem(&device_stats, &tgid, &zero, BPF_NOEXIST);
        s = bpf_map_lookup_elem(&device_stats, &tgid);
        if (!s)
            return 0;
    }
    liveio_stats_add(s, latency, bytes, ctx->error != 0);
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
