// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* The `uring` policy: at the enter edge of the blocking I/O calls on descriptors of the file
 * classes in the `classes` mask (1 << enum liveio_file_class; default: every class), ask
 * liveio to perform the call through the calling thread's io_uring ring instead of natively
 * (liveio_redirect). The executor (src/policy/uring_redirect.h) answers with the native
 * call's exact result, or lets the call run natively where it cannot guarantee that. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/policy.h"

#define KNOB_CLASSES 0

SEC("liveio/io_enter")
int uring_on_enter(struct liveio_io_ctx *io)
{
    __u64 classes = liveio_knob(KNOB_CLASSES);
    if (!classes)
        classes = ~0ull;
    if (io->fd < 0 || io->file_class >= 64 || !((classes >> io->file_class) & 1))
        return 0;
    liveio_redirect();
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
