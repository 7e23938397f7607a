// SPDX-License-Identifier: GPL-2.0
/* bpf-to-bpf calls: a static subprogram in the program's own section, global functions in
 * .text (calling each other), and bpf_loop with a callback (lddw of a function address). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct calc {
    __u64 n;
    __u64 result;
};

/* In .text: reached through a call relocation. Global, so the kernel verifies it on its own. */
__noinline int square_plus(int x, int y)
{
    return x * x + y;
}

__noinline int sum_squares(int n)
{
    int total = 0;
    for (int i = 1; i <= n && i <= 16; i++)
        total = square_plus(i, total);
    return total;
}

/* Static and in the program's section: a call the compiler resolves without relocation. */
static __noinline __u64 triple(__u64 v)
{
    return v * 3;
}

struct loop_ctx {
    __u64 acc;
    __u64 limit;
};

static int loop_step(__u32 index, void *data)
{
    struct loop_ctx *c = data;
    c->acc += index * index;
    return index + 1 >= c->limit ? 1 : 0;
}

SEC("syscall")
int compute(struct calc *c)
{
    int n = (int)(c->n & 15);
    __u64 r = triple((__u64)sum_squares(n));
    c->result = r;
    return (int)r;
}

SEC("syscall")
int looped(struct calc *c)
{
    struct loop_ctx lc = {.acc = 0, .limit = c->n & 255};
    long iterations = bpf_loop(100, loop_step, &lc, 0);
    c->result = lc.acc;
    return (int)iterations;
}

char LICENSE[] SEC("license") = "GPL";
