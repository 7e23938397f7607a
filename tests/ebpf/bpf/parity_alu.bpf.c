// SPDX-License-Identifier: GPL-2.0
/* Arithmetic for the kernel-parity differential: ALU64 and ALU32 (32-bit C types; with
 * -mcpu=v3 these become subregister instructions), division and modulo by zero (BPF defines
 * x / 0 = 0 and x % 0 = x), shifts by every amount, arithmetic shifts of negative values,
 * signed comparisons, sign extension, byte swaps, 64-bit immediates and a branchy classifier.
 * clang before 18 cannot emit signed division (BPF v4), so signed quotients are computed from
 * unsigned ones as BPF programs of that era do. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define NOUT 48

struct alu_io {
    __u64 a, b;           /* in */
    __u64 c, d;           /* in: the low 32 bits are the 32-bit operands */
    __u64 hash;           /* out: FNV-1a of the results */
};

/* The results of the last run, compared with the kernel's as map contents. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64[NOUT]);
} results SEC(".maps");

/* Signed 64-bit quotient with C semantics from unsigned division; 0 for a zero divisor. */
static __always_inline __s64 sdiv64(__s64 x, __s64 y)
{
    __u64 ux = x < 0 ? -(__u64)x : (__u64)x;
    __u64 uy = y < 0 ? -(__u64)y : (__u64)y;
    __u64 q = ux / uy;
    return (x < 0) != (y < 0) ? -(__s64)q : (__s64)q;
}

static __noinline __u64 classify(__u64 v)
{
    /* A comparison ladder clang keeps as branches (no jump tables in BPF). */
    switch (v & 15) {
    case 0: return v >> 3;
    case 1: return v * 5;
    case 2: return v ^ 0x5555;
    case 3: return v + 0x7fffffff;
    case 5: return ~v;
    case 8: return v << 7;
    case 13: return v % 13;
    default: return v | 1;
    }
}

SEC("syscall")
int alu(struct alu_io *io)
{
    __u64 a = io->a, b = io->b;
    __u32 c = (__u32)io->c, d = (__u32)io->d;
    __s64 sa = (__s64)a, sb = (__s64)b;
    __s32 sc = (__s32)c, sd = (__s32)d;
    __u32 zero = 0;
    __u64 *o = bpf_map_lookup_elem(&results, &zero);
    if (!o)
        return 0;

    o[0] = a + b;
    o[1] = a - b;
    o[2] = a * b;
    o[3] = a / b;
    o[4] = a % b;
    o[5] = (a & b) ^ (a | b);
    o[6] = ~a ^ -b;
    o[7] = a << (b & 63);
    o[8] = a >> (b & 63);
    o[9] = (__u64)(sa >> (b & 63));
    o[10] = c + d;
    o[11] = c - d;
    o[12] = c * d;
    o[13] = c / d;
    o[14] = c % d;
    o[15] = (c & d) | (c ^ d) << 1;
    o[16] = c << (d & 31);
    o[17] = c >> (d & 31);
    o[18] = (__u32)(sc >> (d & 31));
    o[19] = __builtin_bswap64(a);
    o[20] = __builtin_bswap32(c);
    o[21] = __builtin_bswap16((__u16)d);
    o[22] = (__u64)(sa < sb) | (__u64)(sa <= sb) << 1 | (__u64)(sa > sb) << 2 | (__u64)(sa >= sb) << 3 |
            (__u64)(a < b) << 4 | (__u64)(a > b) << 5 | (__u64)(a == b) << 6 | (__u64)((a & b) != 0) << 7;
    o[23] = (__u64)(sc < sd) | (__u64)(sc <= sd) << 1 | (__u64)(sc > sd) << 2 | (__u64)(sc >= sd) << 3 |
            (__u64)(c < d) << 4 | (__u64)(c > d) << 5 | (__u64)(c == d) << 6 | (__u64)((c & d) != 0) << 7;
    o[24] = (__u64)(__s64)sc;
    o[25] = (__u64)(__s64)(__s8)a;
    o[26] = (__u64)(__s64)(__s16)b;
    o[27] = a * 0x9e3779b97f4a7c15ULL;
    o[28] = a / 7 + a % 1000;
    o[29] = c / 3 + c % 10;
    o[30] = (__u64)sdiv64(sa, sb);
    o[31] = (__u64)sdiv64(sa, 1000);
    o[32] = a >> 32 | a << 32;
    o[33] = (a + 0xffffffffULL) & 0xfffffffffffULL;
    o[34] = classify(a) + classify(b);
    o[35] = (__u64)(sa < 0 ? -sa : sa);
    o[36] = (__u32)(c * 0x01000193u) ^ (d >> 3);
    o[37] = (__u64)(sc < -5 ? sc * 3 : sc + 9);
    o[38] = a < 0x100000000ULL ? a : (a & 0xffff);
    o[39] = (__u64)(__s32)(c << 16) >> 8;
    o[40] = (__u64)((__s64)(a << 32) >> 40);
    o[41] = b ? a / b * b + a % b : 12345;           /* == a when b != 0 */
    o[42] = (a ^ (a >> 31)) * 0xbf58476d1ce4e5b9ULL;
    o[43] = (__u16)(c + d);
    o[44] = (__u8)(a * 3);
    o[45] = (c >> (d & 7)) & 0x3ff;
    o[46] = (sa >> 63) ^ sb;
    o[47] = a == 0 ? 1 : a & -a;                     /* lowest set bit */

    __u64 h = 0;
    for (int i = 0; i < NOUT; i++)
        h = (h ^ o[i]) * 0x100000001b3ULL;
    io->hash = h;
    return (int)(h ^ (h >> 32));
}

char LICENSE[] SEC("license") = "GPL";
