// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* bpf_printk at the exit of pread64: the agent tests read the lines through bpf.log. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct sys_exit {
    __u64 common;
    int __syscall_nr;
    int pad;
    long ret;
};

SEC("tracepoint/syscalls/sys_exit_pread64")
int say_pread(struct sys_exit *ctx)
{
    bpf_printk("pread returned %ld", ctx->ret);
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
