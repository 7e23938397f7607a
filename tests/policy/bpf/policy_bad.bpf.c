// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* Programs the verifier must refuse (tests/policy): each misuses one liveio helper. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/policy.h"

/* liveio_complete_load's first argument must be the context, not stack memory. */
SEC("liveio/io_complete")
int load_from_stack(struct liveio_io_complete_ctx *c)
{
    struct liveio_io_complete_ctx fake = {};
    __u64 word;
    fake.fd = c->fd;
    return liveio_complete_load(&fake, 0, &word, sizeof(word));
}

/* The batch is 2 entries on the stack but claims 4. */
SEC("liveio/io_exit")
int batch_overrun(struct liveio_io_ctx *io)
{
    struct liveio_prefetch b[2] = {};
    volatile unsigned int size = 4 * sizeof(struct liveio_prefetch);
    (void)io;
    return liveio_prefetch_batch(b, size);
}

/* An ID in liveio's policy block that is not a helper. */
static long (*liveio_unknown)(long) = (void *)0x101ff;
SEC("liveio/io_exit")
int unknown_helper(struct liveio_io_ctx *io)
{
    return liveio_unknown(io->fd);
}

/* Writes past an 8-byte buffer: size 16. */
SEC("liveio/io_complete")
int load_overrun(struct liveio_io_complete_ctx *c)
{
    __u64 word;
    return liveio_complete_load(c, 0, &word, 16);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
