// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* Built-in socket statistics at liveio's I/O edge: for every TCP socket of the target, the
 * calls, errors, bytes and log2 latency histogram of its receives, sends and other calls
 * (connect, accept), and the log2 histogram of the message sizes moved. Keyed by the socket's
 * file_id. When connect or accept returns, the socket's local and peer address are recorded
 * in its row (for accept in the new socket's row), so a short-lived connection keeps its peer
 * after it closed; `liveio serve` shows them (or resolves sockets older than the program in
 * /proc), `liveio cluster top` names the peer after the cluster's nodes. Calls on anything but
 * a TCP socket return before any map access.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/net_stats.h"
#include "liveio/stats.bpf.h"

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, LIVEIO_NET_SOCKETS);
    __type(key, __u64);
    __type(value, struct liveio_socket_stats);
} socket_stats SEC(".maps");

/* x86-64 syscall numbers of the calls that connect a socket. */
#define NR_CONNECT 42
#define NR_ACCEPT 43
#define NR_ACCEPT4 288

static __always_inline struct liveio_socket_stats *socket_row(__u64 file)
{
    struct liveio_socket_stats *s = bpf_map_lookup_elem(&socket_stats, &file);
    if (!s) {
        static const struct liveio_socket_stats zero;
        /* NOEXIST: another thread may have created the entry meanwhile; then use it. */
        bpf_map_update_elem(&socket_stats, &file, &zero, BPF_NOEXIST);
        s = bpf_map_lookup_elem(&socket_stats, &file);
    }
    return s;
}

/* connect (0, or -EINPROGRESS on a non-blocking socket) and accept (a descriptor): the
 * addresses of the connected socket go into its row, which the call's own accounting may not
 * have created (accept counts on the listening socket). */
static __always_inline void record_endpoints(struct liveio_io_ctx *io)
{
    if (io->nr == NR_CONNECT) {
        if (io->result != 0 && io->result != -115 /* EINPROGRESS */)
            return;
    } else if (io->nr == NR_ACCEPT || io->nr == NR_ACCEPT4) {
        if (io->result < 0)
            return;
    } else {
        return;
    }
    struct liveio_socket_endpoints e;
    if (liveio_socket_endpoints(io, &e, sizeof(e)) != 0 || e.file_id == 0)
        return;
    struct liveio_socket_stats *s = socket_row(e.file_id);
    if (!s)
        return;
    s->local = e.local;
    s->peer = e.peer;
}

SEC("liveio/io_exit")
int net_stats(struct liveio_io_ctx *io)
{
    if (io->file_class != LIVEIO_CLASS_TCP || io->file_id == 0)
        return 0;
    struct liveio_socket_stats *s = socket_row(io->file_id);
    if (!s)
        return 0;
    __u32 dir = io->direction;
    if (dir > LIVEIO_IO_WRITE)
        return 0;
    int failed = io->result < 0;
    __u64 bytes = dir != LIVEIO_IO_OTHER && io->result > 0 ? io->result : 0;
    liveio_stats_add(&s->dir[dir], io->latency_ns, bytes, failed);
    if (!failed && dir != LIVEIO_IO_OTHER) {
        __u32 slot = liveio_log2(bytes);
        if (slot >= LIVEIO_SIZE_SLOTS)
            slot = LIVEIO_SIZE_SLOTS - 1;
        __sync_fetch_and_add(&s->sizes[dir][slot], 1);
    }
    if (dir == LIVEIO_IO_OTHER)
        record_endpoints(io);
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
