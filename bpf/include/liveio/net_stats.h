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

/* A socket address as recorded at connect/accept: family AF_INET (2) or AF_INET6 (10), 0 when
 * nothing was recorded; port in host byte order; address bytes in network order (IPv4 in
 * addr[0..3]; an IPv4-mapped IPv6 address is recorded as AF_INET, as /proc/net/tcp6 shows it). */
struct liveio_sock_addr {
    liveio_u32 family;
    liveio_u32 port;
    unsigned char addr[16];
};

/* Everything counted on one TCP socket of the target, keyed by its file_id (the socket's inode
 * on sockfs, as liveio_io_ctx.file_id). The local and peer address are recorded when the
 * target's connect or accept returns (liveio_socket_endpoints below), so a socket keeps them
 * after it closed; a socket connected before the program was loaded has none (family 0) and
 * the reader resolves its inode in /proc/PID/net/tcp{,6} while it lives. */
struct liveio_socket_stats {
    struct liveio_io_stats dir[3];            /* by enum liveio_io_direction: other, read, write */
    liveio_u64 sizes[3][LIVEIO_SIZE_SLOTS];   /* message sizes of successful calls, same index */
    struct liveio_sock_addr local;            /* recorded at connect/accept */
    struct liveio_sock_addr peer;
};

/* What liveio_socket_endpoints fills: the socket a connect or accept call connected (for
 * accept the new descriptor's socket), by file_id, with both addresses. */
struct liveio_socket_endpoints {
    liveio_u64 file_id;
    struct liveio_sock_addr local;
    struct liveio_sock_addr peer;
};

/* Helper IDs: the socket block of liveio's range (0x10200..0x102ff).
 *
 * long liveio_socket_endpoints(ctx, out, size): only at a liveio/io_exit of connect that
 * returned 0 or -EINPROGRESS, or of accept/accept4 that returned a descriptor, with that call's
 * context. The peer of connect is the address the target passed (a socket still connecting has
 * no peer the kernel would report), the peer of accept the kernel's getpeername of the new
 * socket; the local address is getsockname. Returns 0; -EINVAL on any other edge or context
 * (out zeroed); -EAFNOSUPPORT for a socket that is not IPv4/IPv6; the -errno of getsockname. */
#define LIVEIO_HELPER_SOCKET_ENDPOINTS 0x10200

#ifndef __cplusplus
static long (*liveio_socket_endpoints)(void *ctx, struct liveio_socket_endpoints *out,
                                       liveio_u32 size) = (void *)LIVEIO_HELPER_SOCKET_ENDPOINTS;
#endif

#ifdef __cplusplus
}  // namespace liveio
#endif

#endif /* LIVEIO_NET_STATS_H */
