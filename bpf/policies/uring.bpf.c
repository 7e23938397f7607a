// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* The `uring` policy: at the enter edge of the Linux AIO calls (io_setup .. io_destroy), and
 * of the blocking I/O calls on descriptors of the file classes in the `classes` mask (1 << enum liveio_file_class; default: every class), ask
 * liveio to perform the call through the calling thread's io_uring ring instead of natively
 * (liveio_redirect). The executor (src/policy/uring_redirect.h) answers with the native
 * call's exact result, or lets the call run natively where it cannot guarantee that. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/policy.h"

#define KNOB_CLASSES 0
#define KNOB_NO_AIO 1

/* x86-64 numbers of the Linux AIO calls the executor translates (it needs every call on a
 * context it tracks: the descriptors are inside the iocbs, so classes do not apply). */
#define NR_IO_SETUP 206
#define NR_IO_DESTROY 207
#define NR_IO_GETEVENTS 208
#define NR_IO_SUBMIT 209
#define NR_IO_PGETEVENTS 333

/* The calls the executor performs through the ring (src/policy/uring_redirect.h); asking for
 * any other (lseek, open, close ...) would only count a fallback. */
static __always_inline int redirectable(__u64 nr)
{
    switch (nr) {
    case 0:   /* read */
    case 1:   /* write */
    case 17:  /* pread64 */
    case 18:  /* pwrite64 */
    case 19:  /* readv */
    case 20:  /* writev */
    case 295: /* preadv */
    case 296: /* pwritev */
    case 327: /* preadv2 */
    case 328: /* pwritev2 */
    case 74:  /* fsync */
    case 75:  /* fdatasync */
    case 44:  /* sendto */
    case 45:  /* recvfrom */
    case 47:  /* recvmsg */
        return 1;
    }
    return 0;
}

SEC("liveio/io_enter")
int uring_on_enter(struct liveio_io_ctx *io)
{
    __u64 nr = io->nr;
    if (nr == NR_IO_SETUP || nr == NR_IO_DESTROY || nr == NR_IO_GETEVENTS || nr == NR_IO_SUBMIT ||
        nr == NR_IO_PGETEVENTS) {
        /* no_aio only stops new contexts from being tracked: calls on tracked ones still
         * reach the executor, which alone can deliver their events. */
        if (nr != NR_IO_SETUP || !liveio_knob(KNOB_NO_AIO))
            liveio_redirect();
        return 0;
    }
    if (!redirectable(nr))
        return 0;
    __u64 classes = liveio_knob(KNOB_CLASSES);
    if (!classes)
        classes = ~0ull;
    if (io->fd < 0 || io->file_class >= 64 || !((classes >> io->file_class) & 1))
        return 0;
    liveio_redirect();
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
