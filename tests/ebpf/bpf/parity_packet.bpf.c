// SPDX-License-Identifier: GPL-2.0
/* A packet parser for the kernel-parity differential, written as an XDP program would be but
 * as SEC("syscall") with the frame in its context: liveio gives xdp_md/__sk_buff programs no
 * readable context (the kernel rewrites their field accesses), while syscall programs run
 * with the same bytes in both runtimes. The frame is copied into a map value so the parser
 * can use variable offsets (the kernel allows none into a syscall context). Ethernet (one
 * optional 802.1Q tag), IPv4 with options and header checksum, IPv6, TCP/UDP ports; flows
 * counted in a hash map, protocols in a per-CPU array, drops by reason in an array. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define FRAME_MAX 256

struct frame {
    __u32 len;
    __u32 verdict;        /* out: XDP_PASS (2) or XDP_DROP (1) */
    __u64 flow_packets;   /* out: packets of this flow so far */
    __u8 data[FRAME_MAX];
};

struct flow {
    __u32 src, dst;       /* IPv4, or the folded IPv6 addresses */
    __u16 sport, dport;
    __u8 proto;
    __u8 pad[3];
};

struct flow_stat {
    __u64 packets;
    __u64 bytes;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct frame);
} scratch SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, struct flow);
    __type(value, struct flow_stat);
} flows SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, __u64);
} protocols SEC(".maps");

enum drop_reason { DROP_SHORT = 0, DROP_ETHERTYPE, DROP_IP_HEADER, DROP_CHECKSUM, DROP_L4, DROP_REASONS };

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, DROP_REASONS);
    __type(key, __u32);
    __type(value, __u64);
} drops SEC(".maps");

static __always_inline int drop(struct frame *out, __u32 reason)
{
    __u64 *n = bpf_map_lookup_elem(&drops, &reason);
    if (n)
        __sync_fetch_and_add(n, 1);
    out->verdict = XDP_DROP;
    return XDP_DROP;
}

/* The IPv4 header checksum over ihl 32-bit words at `off` of the frame; 0 when valid. */
static __noinline __u32 ipv4_checksum(const struct frame *f, __u32 off, __u32 ihl)
{
    __u32 sum = 0;
    for (__u32 i = 0; i < 15 * 2; i++) {
        if (i >= ihl * 2)
            break;
        __u32 at = off + i * 2;
        if (at + 1 >= FRAME_MAX)
            break;
        sum += (__u32)f->data[at] << 8 | f->data[at + 1];
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return ~sum & 0xffff;
}

static __always_inline __u16 be16_at(const struct frame *f, __u32 off)
{
    if (off + 1 >= FRAME_MAX)
        return 0;
    return (__u16)f->data[off] << 8 | f->data[off + 1];
}

static __always_inline __u32 be32_at(const struct frame *f, __u32 off)
{
    return (__u32)be16_at(f, off) << 16 | be16_at(f, off + 2);
}

SEC("syscall")
int parse(struct frame *in)
{
    __u32 zero = 0;
    struct frame *f = bpf_map_lookup_elem(&scratch, &zero);
    if (!f)
        return -1;
    __builtin_memcpy(f, in, sizeof(*f));
    __u32 len = f->len;
    if (len > FRAME_MAX)
        len = FRAME_MAX;
    in->flow_packets = 0;

    if (len < ETH_HLEN)
        return drop(in, DROP_SHORT);
    __u32 off = 12;
    __u16 proto = be16_at(f, off);
    off += 2;
    if (proto == ETH_P_8021Q) {
        if (len < off + 4)
            return drop(in, DROP_SHORT);
        proto = be16_at(f, off + 2);
        off += 4;
    }

    struct flow key = {};
    __u32 l4;
    if (proto == ETH_P_IP) {
        if (len < off + 20)
            return drop(in, DROP_SHORT);
        __u8 vihl = f->data[off & (FRAME_MAX - 1)];
        __u32 ihl = vihl & 15;
        if (vihl >> 4 != 4 || ihl < 5 || len < off + ihl * 4)
            return drop(in, DROP_IP_HEADER);
        if (ipv4_checksum(f, off, ihl) != 0)
            return drop(in, DROP_CHECKSUM);
        key.proto = f->data[(off + 9) & (FRAME_MAX - 1)];
        key.src = be32_at(f, off + 12);
        key.dst = be32_at(f, off + 16);
        l4 = off + ihl * 4;
    } else if (proto == ETH_P_IPV6) {
        if (len < off + 40)
            return drop(in, DROP_SHORT);
        if (f->data[off & (FRAME_MAX - 1)] >> 4 != 6)
            return drop(in, DROP_IP_HEADER);
        key.proto = f->data[(off + 6) & (FRAME_MAX - 1)];
        for (__u32 i = 0; i < 4; i++) {
            key.src ^= be32_at(f, off + 8 + i * 4);
            key.dst ^= be32_at(f, off + 24 + i * 4);
        }
        l4 = off + 40;
    } else {
        return drop(in, DROP_ETHERTYPE);
    }

    if (key.proto == IPPROTO_TCP || key.proto == IPPROTO_UDP) {
        if (len < l4 + (key.proto == IPPROTO_TCP ? 20 : 8))
            return drop(in, DROP_L4);
        key.sport = be16_at(f, l4);
        key.dport = be16_at(f, l4 + 2);
    }

    __u32 p = key.proto;
    __u64 *pc = bpf_map_lookup_elem(&protocols, &p);
    if (pc)
        *pc += 1;

    struct flow_stat *st = bpf_map_lookup_elem(&flows, &key);
    if (st) {
        __sync_fetch_and_add(&st->packets, 1);
        __sync_fetch_and_add(&st->bytes, len);
        in->flow_packets = st->packets;
    } else {
        struct flow_stat fresh = {.packets = 1, .bytes = len};
        bpf_map_update_elem(&flows, &key, &fresh, BPF_NOEXIST);
        in->flow_packets = 1;
    }
    in->verdict = XDP_PASS;
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
