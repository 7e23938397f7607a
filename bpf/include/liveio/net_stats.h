/* Map layout of the built-in socket statistics program (bpf/net_stats.bpf.c) shared with the
 * CLI that reads it live (`liveio serve`'s /control/io and /metrics, `liveio cluster top`). */
#ifndef LIVEIO_NET_STATS_H
#define LIVEIO_NET_STATS_H

#include "liveio/io_stats.h"

#ifdef __cplusplus
namespace liveio {
#endif

/* Message sizes: slot i counts calls that moved [2^i, 2^(i+1)) bytes (slot 0 also 0 and 1);
 * the last slot everything from 2^31 bytes up. */
#define LIVEIO_SIZE_SLOTS 32

/* Sockets tracked at once (an LRU map: the least recently used socket's row is dropped). */
#define LIVEIO_NET_SOCKETS 2048

/* Everything counted on one TCP socket of the target, keyed by its file_id (the socket's inode
 * on sockfs, as liveio_io_ctx.file_id): the agent's hot path records no address; the reader
 * resolves the inode to local and peer address in /proc/PID/net/tcp{,6} while it lives. */
struct liveio_socket_stats {
    struct liveio_io_stats dir[3];            /* by enum liveio_io_direction: other, read, write */
    liveio_u64 sizes[3][LIVEIO_SIZE_SLOTS];   /* message sizes of successful calls, same index */
};

#ifdef __cplusplus
}  // namespace liveio
#endif

#endif /* LIVEIO_NET_STATS_H */
