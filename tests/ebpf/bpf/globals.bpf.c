// SPDX-License-Identifier: GPL-2.0
/* Global data: .rodata (const volatile, set before load), .data (initialized), .bss (zeroed),
 * each an array map of one element that programs reach through lddw map-value relocations. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

const volatile __u64 scale = 3;        /* .rodata */
__u64 base = 1000;                     /* .data */
__u64 calls;                           /* .bss */
__u64 last_input;                      /* .bss, second variable: a non-zero offset */
__u32 history[4] = {1, 2, 3, 4};       /* .data, indexed */

struct io {
    __u64 in;
    __u64 out;
};

SEC("syscall")
int apply(struct io *io)
{
    __u64 n = __sync_fetch_and_add(&calls, 1) + 1;
    last_input = io->in;
    history[n & 3] = (__u32)io->in;
    io->out = base + io->in * scale + n;
    base += 1;
    return (int)n;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
