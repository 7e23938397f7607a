// SPDX-License-Identifier: GPL-2.0
/* A legacy `maps` section (struct bpf_map_def, pre-BTF objects; libbpf >= 1.0 refuses these,
 * liveio still loads them) and a raw tracepoint program over (regs pointer, syscall id). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct bpf_map_def {
    unsigned int type;
    unsigned int key_size;
    unsigned int value_size;
    unsigned int max_entries;
    unsigned int map_flags;
};

struct bpf_map_def SEC("maps") by_id = {
    .type = BPF_MAP_TYPE_HASH,
    .key_size = sizeof(__u64),
    .value_size = sizeof(__u64),
    .max_entries = 128,
};

struct bpf_map_def SEC("maps") seen = {
    .type = BPF_MAP_TYPE_ARRAY,
    .key_size = sizeof(__u32),
    .value_size = sizeof(__u64),
    .max_entries = 1,
};

SEC("raw_tracepoint/sys_enter")
int on_enter(struct bpf_raw_tracepoint_args *ctx)
{
    __u64 id = ctx->args[1];
    __u64 one = 1;
    __u64 *n = bpf_map_lookup_elem(&by_id, &id);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(&by_id, &id, &one, BPF_NOEXIST);
    __u32 zero = 0;
    __u64 *s = bpf_map_lookup_elem(&seen, &zero);
    if (s)
        __sync_fetch_and_add(s, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
