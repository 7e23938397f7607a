/* Shared by the agent tests' BPF programs: an array of u64 counters, an atomic add to one
 * of them, and the x86-64 struct pt_regs prefix the programs read. */
#ifndef LIVEIO_TEST_COUNTERS_BPF_H
#define LIVEIO_TEST_COUNTERS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define TEST_COUNTERS(name, slots)             \
    struct {                                   \
        __uint(type, BPF_MAP_TYPE_ARRAY);      \
        __uint(max_entries, slots);            \
        __type(key, __u32);                    \
        __type(value, __u64);                  \
    } name SEC(".maps")

static __always_inline void counter_add(void *map, __u32 slot, __u64 v)
{
    __u64 *p = bpf_map_lookup_elem(map, &slot);
    if (p)
        __sync_fetch_and_add(p, v);
}

/* x86-64 struct pt_regs up to orig_ax (the 16th 8-byte slot). */
struct pt_regs_min {
    unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax;
};

#endif
