// SPDX-License-Identifier: GPL-2.0
/* Counters in a hash map and an array map, updated by a syscall-type program (runnable in the
 * kernel with BPF_PROG_TEST_RUN, so the kernel-parity test can compare both runtimes) and by a
 * syscall tracepoint program (run in userspace over the kernel's tracepoint context layout). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define SLOTS 8

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} totals SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, SLOTS);
    __type(key, __u32);
    __type(value, __u64);
} hits SEC(".maps");

/* Input of count(): add `amount` to totals[key] and count a hit in slot key % SLOTS. */
struct count_args {
    __u32 key;
    __u32 amount;
    __u64 total;    /* out: totals[key] after the update */
};

SEC("syscall")
int count(struct count_args *args)
{
    __u32 key = args->key;
    __u64 amount = args->amount;
    __u64 *total = bpf_map_lookup_elem(&totals, &key);
    __u64 value;
    if (total) {
        value = *total + amount;
        *total = value;
    } else {
        value = amount;
        if (bpf_map_update_elem(&totals, &key, &value, BPF_NOEXIST))
            return -1;
    }
    __u32 slot = key % SLOTS;
    __u64 *hit = bpf_map_lookup_elem(&hits, &slot);
    if (hit)
        __sync_fetch_and_add(hit, 1);
    args->total = value;
    return (int)(value & 0x7fffffff);
}

/* The kernel's struct trace_event_raw_sys_enter (64 bytes). */
struct sys_enter_ctx {
    __u64 common;
    long id;
    unsigned long args[6];
};

/* write(fd, buf, count): bytes requested per fd. */
SEC("tracepoint/syscalls/sys_enter_write")
int count_write(struct sys_enter_ctx *ctx)
{
    __u32 fd = (__u32)ctx->args[0];
    __u64 bytes = ctx->args[2];
    __u64 *total = bpf_map_lookup_elem(&totals, &fd);
    if (total)
        __sync_fetch_and_add(total, bytes);
    else
        bpf_map_update_elem(&totals, &fd, &bytes, BPF_ANY);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
