// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* Written against the kernel's own layouts (see
 * /sys/kernel/tracing/events/syscalls/sys_{enter,exit}_pread64/format): the per-syscall
 * tracepoints and the raw sys_exit tracepoint reading struct pt_regs with probe_read_kernel,
 * as kernel tools do. The agent tests count a known pread workload with it. */
#include "counters.bpf.h"

struct sys_enter_pread64 {
    __u64 common;
    int __syscall_nr;
    int pad;
    __u64 fd;
    __u64 buf;
    __u64 count;
    __s64 pos;
};

struct sys_exit {
    __u64 common;
    int __syscall_nr;
    int pad;
    long ret;
};

enum { ENTERS, REQUESTED, EXITS, RETURNED, RAW_EXITS, LAST_FD, POS_SUM, PID_TGID, SLOTS };

TEST_COUNTERS(counters, SLOTS);

static __always_inline void add(__u32 slot, __u64 v)
{
    counter_add(&counters, slot, v);
}

SEC("tracepoint/syscalls/sys_enter_pread64")
int pread_enter(struct sys_enter_pread64 *ctx)
{
    add(ENTERS, 1);
    add(REQUESTED, ctx->count);
    add(POS_SUM, ctx->pos);
    __u32 slot = LAST_FD;
    __u64 fd = ctx->fd;
    bpf_map_update_elem(&counters, &slot, &fd, BPF_ANY);
    slot = PID_TGID;
    __u64 id = bpf_get_current_pid_tgid();
    bpf_map_update_elem(&counters, &slot, &id, BPF_ANY);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_pread64")
int pread_exit(struct sys_exit *ctx)
{
    add(EXITS, 1);
    if (ctx->ret > 0)
        add(RETURNED, ctx->ret);
    return 0;
}

SEC("raw_tracepoint/sys_exit")
int raw_exit(struct bpf_raw_tracepoint_args *ctx)
{
    struct pt_regs_min *regs = (struct pt_regs_min *)ctx->args[0];
    unsigned long nr = 0;
    bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
    if (nr == 17 /* pread64 */)
        add(RAW_EXITS, 1);
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
