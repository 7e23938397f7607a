// SPDX-License-Identifier: GPL-2.0
/* Control flow for the kernel-parity differential: bounded loops with data-dependent exits,
 * a stack array indexed by loop variables, bpf-to-bpf calls (static and global functions,
 * nested), and bpf_loop with a callback that calls a subprogram and updates a map. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct loop_io {
    __u64 x;
    __u64 y;
    __u32 n;
    __u32 pad;
    __u64 out[8];
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 32);
    __type(key, __u32);
    __type(value, __u64);
} buckets SEC(".maps");

/* Global: the kernel verifies it once, on its own, for any scalar argument. */
__noinline int popcount64(__u64 v)
{
    int n = 0;
    for (int i = 0; i < 64; i++) {
        if (!v)
            break;
        n += v & 1;
        v >>= 1;
    }
    return n;
}

static __noinline __u64 mix(__u64 h, __u64 v)
{
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
}

/* Calls two levels deep: mix2 -> mix. */
static __noinline __u64 mix2(__u64 h, __u64 a, __u64 b)
{
    return mix(mix(h, a), b);
}

struct walk {
    __u64 h;
    __u64 x;
    __u32 stop;
};

static int walk_step(__u32 i, void *data)
{
    struct walk *w = data;
    w->h = mix2(w->h, i, w->x);
    w->x = w->x * 6364136223846793005ULL + 1442695040888963407ULL;
    __u32 slot = (__u32)(w->x >> 59);
    __u64 *b = bpf_map_lookup_elem(&buckets, &slot);
    if (b)
        *b += i + 1;
    return i + 1 >= w->stop;
}

SEC("syscall")
int loops(struct loop_io *io)
{
    __u64 x = io->x, y = io->y;
    __u8 sieve[64] = {};
    int primes = 0;

    /* A sieve over a stack array up to a data-dependent limit. */
    __u32 limit = (__u32)(y & 63);
    for (__u32 i = 2; i < 64; i++) {
        if (i > limit)
            break;
        if (sieve[i])
            continue;
        primes++;
        for (__u32 j = i * i; j < 64; j += i)
            sieve[j] = 1;
    }
    io->out[0] = primes;
    io->out[1] = popcount64(x) + popcount64(y) * 100;
    /* Fixed trip count, data-dependent body: a 16-round xorshift. */
    __u64 r = x ^ y;
    for (int i = 0; i < 16; i++) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
    }
    io->out[2] = r;

    __u64 h = 0;
    for (int i = 0; i < 16; i++)
        h = mix(h, (x >> (i * 4)) & 15);
    io->out[3] = h;

    struct walk w = {.h = y, .x = x, .stop = io->n & 63};
    io->out[4] = bpf_loop(io->n & 127, walk_step, &w, 0);
    io->out[5] = w.h;
    io->out[6] = w.x;
    /* A while loop with a counter as its bound. */
    __u64 v = x | 1;
    int k = 0;
    while (k < 40 && (v & 0xff) != 0x01) {
        v = v * 3 + (y & 7);
        k++;
    }
    io->out[7] = v + k;
    return (int)(h ^ w.h);
}

char LICENSE[] SEC("license") = "GPL";
