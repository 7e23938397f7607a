// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* uprobe and uretprobe on a function of the test binary itself (liveio_test_probed in
 * tests/agent/test_bpf_host.cpp) and a uretprobe on its twin liveio_test_probed_ret (one
 * probe per function address): counts calls, sums the first argument and the return values
 * from the probed registers. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct pt_regs_min {
    unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax;
};

enum { CALLS, ARG_SUM, RETURNS, RET_SUM, SLOTS };

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, SLOTS);
    __type(key, __u32);
    __type(value, __u64);
} probed SEC(".maps");

static __always_inline void add(__u32 slot, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(&probed, &slot);
    if (p)
        __sync_fetch_and_add(p, v);
}

SEC("uprobe//proc/self/exe:liveio_test_probed")
int on_call(struct pt_regs_min *regs)
{
    add(CALLS, 1);
    add(ARG_SUM, regs->di);
    return 0;
}

SEC("uretprobe//proc/self/exe:liveio_test_probed_ret")
int on_return(struct pt_regs_min *regs)
{
    add(RETURNS, 1);
    add(RET_SUM, regs->ax);
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
