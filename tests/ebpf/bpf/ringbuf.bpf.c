// SPDX-License-Identifier: GPL-2.0
/* A ring buffer producer: reserve/submit records, discard some, and bpf_ringbuf_output. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} events SEC(".maps");

struct event {
    __u32 seq;
    __u32 kind;
    __u64 value;
};

struct produce_args {
    __u32 count;    /* records to produce */
    __u32 pad;
};

SEC("syscall")
int produce(struct produce_args *args)
{
    int submitted = 0;
    for (__u32 i = 0; i < args->count && i < 64; i++) {
        if (i % 3 == 2) {
            struct event e = {.seq = i, .kind = 2, .value = (__u64)i << 32};
            if (bpf_ringbuf_output(&events, &e, sizeof(e), 0) == 0)
                submitted++;
            continue;
        }
        struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
        if (!e)
            break;
        e->seq = i;
        e->kind = i % 3;
        e->value = i * 100;
        if (e->kind == 1) {
            bpf_ringbuf_discard(e, 0);
        } else {
            bpf_ringbuf_submit(e, 0);
            submitted++;
        }
    }
    return submitted;
}

char LICENSE[] SEC("license") = "GPL";
