// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* Test policy for tests/policy: what the io_exit program does is chosen by knob 0.
 *   1: liveio_prefetch(fd, knob1, knob2)
 *   2: liveio_read_async(fd, knob1, 16, cookie 1); the completion stores the first 8 bytes
 *      read under its cookie and, for cookie 1, issues the next read (offset + 16, cookie 2)
 *   3: liveio_prefetch_batch of two ranges [knob1, +knob2) and [knob1 + 2*knob2, +knob2)
 *   4: liveio_redirect()
 * Results of helpers go to `rc` [0] (last return), completions to `seen` by cookie. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/policy.h"

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __s64);
} rc SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 8);
    __type(key, __u32);
    __type(value, __u64);
} seen SEC(".maps");

static __always_inline void put_rc(__u32 i, __s64 v)
{
    __s64 *p = bpf_map_lookup_elem(&rc, &i);
    if (p)
        *p = v;
}

SEC("liveio/io_exit")
int on_read(struct liveio_io_ctx *io)
{
    __u64 mode = liveio_knob(0);
    long r = 0;
    if (mode == 1) {
        r = liveio_prefetch(io->fd, liveio_knob(1), liveio_knob(2));
    } else if (mode == 2) {
        r = liveio_read_async(io->fd, liveio_knob(1), 16, 1);
    } else if (mode == 3) {
        struct liveio_prefetch b[2] = {
            {.fd = io->fd, .offset = liveio_knob(1), .len = liveio_knob(2)},
            {.fd = io->fd, .offset = liveio_knob(1) + 2 * liveio_knob(2), .len = liveio_knob(2)},
        };
        r = liveio_prefetch_batch(b, sizeof(b));
    } else if (mode == 4) {
        r = liveio_redirect();
    }
    put_rc(0, r);
    return 0;
}

SEC("liveio/io_complete")
int on_complete(struct liveio_io_complete_ctx *c)
{
    __u64 word = 0;
    __u32 key = c->cookie & 7;
    if (c->result >= 8 && liveio_complete_load(c, 0, &word, sizeof(word)) == 0) {
        __u64 *p = bpf_map_lookup_elem(&seen, &key);
        if (p)
            *p = word;
    }
    /* Past the data: must be refused. */
    put_rc(1, liveio_complete_load(c, c->data_len, &word, sizeof(word)));
    if (c->cookie == 1)
        put_rc(2, liveio_read_async(c->fd, c->offset + 16, 16, 2));
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
