// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* liveio_file_pos at both edges of read and pread64: the agent tests compare what it answered
 * with the file positions the test knows (the host answers from the positions it tracked). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/policy.h"

#define NR_READ 0
#define NR_PREAD64 17

/* [0]: position at the enter edge of the last read/pread64, [1]: at its exit edge,
 * [2]: reads seen, [3]: its descriptor */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __s64);
} positions SEC(".maps");

static __always_inline void put(__u32 slot, __s64 v)
{
    bpf_map_update_elem(&positions, &slot, &v, BPF_ANY);
}

SEC("liveio/io_enter")
int pos_enter(struct liveio_io_ctx *io)
{
    if (io->nr != NR_READ && io->nr != NR_PREAD64)
        return 0;
    put(0, liveio_file_pos(io->fd));
    put(3, io->fd);
    return 0;
}

SEC("liveio/io_exit")
int pos_exit(struct liveio_io_ctx *io)
{
    if (io->nr != NR_READ && io->nr != NR_PREAD64)
        return 0;
    put(1, liveio_file_pos(io->fd));
    /* reads seen: only this thread's edges write the map in the test */
    __u32 slot = 2;
    __s64 *n = bpf_map_lookup_elem(&positions, &slot);
    put(2, n ? *n + 1 : 1);
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
