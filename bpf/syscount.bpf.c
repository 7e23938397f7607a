// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* Per-syscall counts, errors and log2 latency histograms, written the way kernel tools
 * (libbpf-tools' syscount) are: against the kernel's raw_syscalls tracepoint layout, pairing
 * enter and exit through a map keyed by thread. The same object runs in the kernel (libbpf)
 * and in liveio's userspace runtime, which feeds it the same context layout; tests compare
 * the two on one workload. In userspace the tgid filter is moot (the agent only sees its own
 * process) but harmless. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/stats.bpf.h"

/* The kernel's struct trace_event_raw_sys_enter / _sys_exit (see
 * /sys/kernel/tracing/events/raw_syscalls/sys_{enter,exit}/format). */
struct sys_enter_ctx {
    __u64 common;       /* common_type, flags, preempt_count, pid */
    long id;
    unsigned long args[6];
};

struct sys_exit_ctx {
    __u64 common;
    long id;
    long ret;
};

/* Only count this process (0: every process). Set before load. */
const volatile __u32 target_tgid = 0;

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, __u64);    /* pid_tgid */
    __type(value, __u64);  /* entry time, ns */
} start_ns SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, LIVEIO_MAX_SYSCALL_NR);
    __type(key, __u32);
    __type(value, struct liveio_io_stats);
} syscalls SEC(".maps");


static __always_inline int wanted(__u64 pid_tgid)
{
    return target_tgid == 0 || (__u32)(pid_tgid >> 32) == target_tgid;
}

SEC("tracepoint/raw_syscalls/sys_enter")
int syscount_enter(struct sys_enter_ctx *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    if (!wanted(id))
        return 0;
    __u64 now = bpf_ktime_get_ns();
    bpf_map_update_elem(&start_ns, &id, &now, BPF_ANY);
    return 0;
}

SEC("tracepoint/raw_syscalls/sys_exit")
int syscount_exit(struct sys_exit_ctx *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    if (!wanted(id))
        return 0;
    __u64 *start = bpf_map_lookup_elem(&start_ns, &id);
    if (!start)
        return 0; /* entered before we attached */
    __u64 latency = bpf_ktime_get_ns() - *start;
    bpf_map_delete_elem(&start_ns, &id);

    if (ctx->id < 0 || ctx->id >= LIVEIO_MAX_SYSCALL_NR)
        return 0;
    __u32 nr = ctx->id;
    struct liveio_io_stats *s = bpf_map_lookup_elem(&syscalls, &nr);
    if (!s)
        return 0;
    liveio_stats_add(s, latency, 0, ctx->ret < 0);
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
