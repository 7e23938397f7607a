// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* A program the verifier must reject: liveio's I/O edge context is read-only. The CLI test
 * checks that `liveio load` reports the agent's verifier message as it is. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/io_edge.h"

SEC("liveio/io_exit")
int store_to_ctx(struct liveio_io_ctx *io)
{
    io->result = 0;
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
