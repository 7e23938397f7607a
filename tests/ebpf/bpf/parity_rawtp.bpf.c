// SPDX-License-Identifier: GPL-2.0
/* A raw tracepoint program for the kernel-parity differential: the kernel test-runs raw
 * tracepoints with a context of u64 arguments, which is what liveio gives
 * raw_tracepoint/sys_enter programs (args[0] the pt_regs pointer, args[1] the syscall id).
 * Only the id is used; the pointer is not dereferenced. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} ids SEC(".maps");

__u64 total;       /* .bss */
__u64 weird;       /* .bss: ids outside the syscall table */

SEC("raw_tracepoint/sys_enter")
int on_enter(struct bpf_raw_tracepoint_args *ctx)
{
    long id = (long)ctx->args[1];
    __sync_fetch_and_add(&total, 1);
    if (id < 0 || id >= 512) {
        __sync_fetch_and_add(&weird, 1);
        return 1;
    }
    __u32 key = (__u32)id & 63;
    __u64 *n = bpf_map_lookup_elem(&ids, &key);
    if (n) {
        __sync_fetch_and_add(n, (__u64)id + 1);
    } else {
        __u64 first = (__u64)id + 1;
        bpf_map_update_elem(&ids, &key, &first, BPF_ANY);
    }
    return (int)(id * 3);
}

char LICENSE[] SEC("license") = "GPL";
