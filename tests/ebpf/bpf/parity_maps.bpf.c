// SPDX-License-Identifier: GPL-2.0
/* Maps for the kernel-parity differential: hash, array, per-CPU array and per-CPU hash
 * updated in loops; a small hash driven to E2BIG, -EEXIST and -ENOENT with every update flag
 * and deletes (return codes written back to the context); atomics (add/or/and/xor with and
 * without fetch, xchg, cmpxchg) on map values and on .bss, 64-bit always and 32-bit in the
 * -mcpu=v3 build (clang's v1 cannot encode 32-bit atomics with fetch). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct stat {
    __u64 count;
    __u64 sum;
    __u64 max;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 128);
    __type(key, __u32);
    __type(value, struct stat);
} stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} slots SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 8);
    __type(key, __u32);
    __type(value, __u64);
} pcpu SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 32);
    __type(key, __u64);
    __type(value, struct stat);
} pcpu_hash SEC(".maps");

/* Small on purpose: inserts beyond 12 keys fail with -E2BIG. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 12);
    __type(key, __u32);
    __type(value, __u64);
} small SEC(".maps");

struct atoms {
    __u64 add, or, and, xor, xchg, cmpxchg;
    __u32 add32, or32, and32, xor32, xchg32, cmpxchg32;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, struct atoms);
} atomics SEC(".maps");

struct atoms global_atoms;   /* .bss */
__u64 runs;                  /* .bss */

struct map_io {
    __u32 keys[8];
    __u64 value;
    __u64 op;
    __s64 rc[8];
    __u64 old[12];
};

static __always_inline void atomic_ops(struct atoms *a, __u64 v, __u64 *old)
{
    old[0] = __sync_fetch_and_add(&a->add, v);
    old[1] = __sync_fetch_and_or(&a->or, v);
    old[2] = __sync_fetch_and_and(&a->and, v | 0x8000000000000001ULL);
    old[3] = __sync_fetch_and_xor(&a->xor, v);
    old[4] = __sync_lock_test_and_set(&a->xchg, v);
    old[5] = __sync_val_compare_and_swap(&a->cmpxchg, v & 3, v);
    __sync_fetch_and_add(&a->add, 1); /* no fetch: BPF_ADD without BPF_FETCH */
#ifdef LIVEIO_BPF_V3
    __u32 w = (__u32)v;
    old[6] = __sync_fetch_and_add(&a->add32, w);
    old[7] = __sync_fetch_and_or(&a->or32, w);
    old[8] = __sync_fetch_and_and(&a->and32, w | 0x80000001u);
    old[9] = __sync_fetch_and_xor(&a->xor32, w);
    old[10] = __sync_lock_test_and_set(&a->xchg32, w);
    old[11] = __sync_val_compare_and_swap(&a->cmpxchg32, w & 3, w);
    __sync_fetch_and_or(&a->or32, 0x100);
    __sync_fetch_and_and(&a->and32, ~0x2u);
    __sync_fetch_and_xor(&a->xor32, 0x10);
#endif
    __sync_fetch_and_or(&a->or, 0x100);
    __sync_fetch_and_and(&a->and, ~0x2ULL);
    __sync_fetch_and_xor(&a->xor, 0x10);
}

SEC("syscall")
int update(struct map_io *ctx)
{
    /* The kernel refuses context accesses through a moved pointer (a loop walking ctx
     * arrays): work on a stack copy and write it back, as kernel programs do. */
    struct map_io m;
    struct map_io *io = &m;
    __builtin_memcpy(io, ctx, sizeof(m));
    __u64 value = io->value;
    int changed = 0;

    for (int i = 0; i < 8; i++) {
        __u32 key = io->keys[i] & 255; /* past max_entries: some inserts fail */
        struct stat *s = bpf_map_lookup_elem(&stats, &key);
        if (s) {
            s->count++;
            s->sum += value >> i;
            if (value > s->max)
                s->max = value;
        } else {
            struct stat fresh = {.count = 1, .sum = value >> i, .max = value};
            io->rc[i] = bpf_map_update_elem(&stats, &key, &fresh, BPF_NOEXIST);
            changed += io->rc[i] == 0;
        }

        __u32 slot = key & 15;
        __u64 *cell = bpf_map_lookup_elem(&slots, &slot);
        if (cell)
            *cell = *cell * 31 + key;

        __u32 p = key & 7;
        __u64 *pc = bpf_map_lookup_elem(&pcpu, &p);
        if (pc)
            *pc += 1 + (value & 0xff);

        __u64 hkey = key % 24;
        struct stat *ph = bpf_map_lookup_elem(&pcpu_hash, &hkey);
        if (ph) {
            ph->count++;
            ph->sum += key;
        } else {
            struct stat fresh = {.count = 1, .sum = key};
            bpf_map_update_elem(&pcpu_hash, &hkey, &fresh, BPF_ANY);
        }
    }

    /* Return codes of every update flag and of deletes on a small hash. */
    for (int i = 0; i < 4; i++) {
        __u32 key = io->keys[i] % 20;
        __u64 op = (io->op >> (i * 4)) & 3;
        __u64 v = value + i;
        long rc;
        if (op == 3)
            rc = bpf_map_delete_elem(&small, &key);
        else
            rc = bpf_map_update_elem(&small, &key, &v, op); /* BPF_ANY, BPF_NOEXIST, BPF_EXIST */
        io->rc[4 + i] = rc;
    }

    __u32 akey = (__u32)(value >> 62);
    struct atoms *a = bpf_map_lookup_elem(&atomics, &akey);
    if (a)
        atomic_ops(a, value, io->old);
    __u64 scratch[12];
    atomic_ops(&global_atoms, value ^ 0x5a5a, scratch);
    io->old[0] ^= scratch[0];
    __sync_fetch_and_add(&runs, 1);
    __builtin_memcpy(ctx, io, sizeof(m));
    return changed;
}

char LICENSE[] SEC("license") = "GPL";
