// SPDX-License-Identifier: GPL-2.0
/* A valid kernel object whose map type liveio does not implement (BPF_MAP_TYPE_STACK_TRACE):
 * the loader must refuse it by name. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_STACK_TRACE);
    __uint(max_entries, 16);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, 127 * sizeof(__u64));
} stacks SEC(".maps");

SEC("syscall")
int touch(void *ctx)
{
    __u32 key = 0;
    return bpf_map_lookup_elem(&stacks, &key) != 0;
}

char LICENSE[] SEC("license") = "GPL";
