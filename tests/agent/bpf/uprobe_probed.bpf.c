// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* uprobe and uretprobe on a function of the test binary itself (liveio_test_probed in
 * tests/agent/test_bpf_host.cpp) and a uretprobe on its twin liveio_test_probed_ret (one
 * probe per function address): counts calls, sums the first argument and the return values
 * from the probed registers. */
#include "counters.bpf.h"

enum { CALLS, ARG_SUM, RETURNS, RET_SUM, SLOTS };

TEST_COUNTERS(probed, SLOTS);

static __always_inline void add(__u32 slot, __u64 v)
{
    counter_add(&probed, slot, v);
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
