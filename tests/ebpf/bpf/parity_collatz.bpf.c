// SPDX-License-Identifier: GPL-2.0
/* A bounded loop whose body branches on data: Collatz steps, at most 200. The kernel accepts
 * it (its verifier prunes the loop states because the counter is not precise); kept apart
 * from parity_loops.bpf.c because liveio's verifier is weaker here (see the test). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct collatz_io {
    __u64 x;
    __u64 steps;
};

/* Global: the kernel verifies it once, on its own, for any scalar argument. */
__noinline int collatz(__u64 x)
{
    int steps = 0;
    for (int i = 0; i < 200 && x > 1; i++) {
        x = x & 1 ? 3 * x + 1 : x / 2;
        steps++;
    }
    return steps;
}

SEC("syscall")
int steps(struct collatz_io *io)
{
    io->steps = collatz(io->x & 0xffff);
    return (int)io->steps;
}

char LICENSE[] SEC("license") = "GPL";
