// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* A program the verifier must reject: it reads past the end of its context
 * (struct liveio_io_ctx is 88 bytes). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("liveio/io_exit")
int reads_past_ctx(void *ctx)
{
    return *(volatile long *)((char *)ctx + 256);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
