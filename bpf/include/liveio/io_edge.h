/* liveio's own I/O edge: the context of SEC("liveio/io_enter") and SEC("liveio/io_exit")
 * programs. Include it from BPF C (clang -target bpf) and from C++ (the agent fills it).
 *
 * Why a context of our own, beside the kernel's syscall tracepoints: the agent sits in the
 * target, so at every hooked I/O call it already knows what a kernel tracepoint program would
 * have to reconstruct with maps and probe reads: the latency of the call (no enter/exit pairing
 * map), the class of the file behind the descriptor (a ClickHouse column file, a mark file, a
 * socket to another shard), and whether liveio served the call through io_uring.
 *
 * The context is read-only (the verifier rejects stores) and 8-byte aligned. Fields are only
 * ever appended; `size` lets a program built against a newer header detect an older agent. */
#ifndef LIVEIO_IO_EDGE_H
#define LIVEIO_IO_EDGE_H

#ifdef __cplusplus
#include <cstdint>
namespace liveio {
typedef uint32_t liveio_u32;
typedef uint64_t liveio_u64;
typedef int64_t liveio_s64;
#else
typedef unsigned int liveio_u32;
typedef unsigned long long liveio_u64;
typedef long long liveio_s64;
#endif

/* What the descriptor of a call refers to. The classification runs once per descriptor (at
 * open/accept/connect, or on first use for descriptors opened before attach) and is cached.
 * The ClickHouse classes come from the ClickHouse glue in the agent (file-name suffixes of a
 * MergeTree part); other servers see LIVEIO_CLASS_FILE for their files. */
enum liveio_file_class {
    LIVEIO_CLASS_UNKNOWN = 0,      /* not yet classified, or no descriptor (e.g. sync) */
    LIVEIO_CLASS_FILE = 1,         /* regular file, no finer class */
    LIVEIO_CLASS_CH_BIN = 2,       /* ClickHouse column data: *.bin */
    LIVEIO_CLASS_CH_MRK = 3,       /* ClickHouse marks: *.mrk, *.mrk2 */
    LIVEIO_CLASS_CH_PRIMARY = 4,   /* ClickHouse primary index: primary.idx */
    LIVEIO_CLASS_CH_OTHER = 5,     /* other files inside a ClickHouse data directory */
    LIVEIO_CLASS_TCP = 6,          /* TCP socket (IPv4 or IPv6) */
    LIVEIO_CLASS_UNIX = 7,         /* Unix-domain socket */
    LIVEIO_CLASS_PIPE = 8,         /* pipe or FIFO */
    LIVEIO_CLASS_OTHER = 9,        /* anything else: eventfd, device, ... */
    LIVEIO_CLASS_COUNT = 10
};

enum liveio_io_direction {
    LIVEIO_IO_OTHER = 0,  /* lseek, fsync, close, ... */
    LIVEIO_IO_READ = 1,   /* read, pread64, readv, preadv, recvfrom, recvmsg */
    LIVEIO_IO_WRITE = 2   /* write, pwrite64, writev, pwritev, sendto, sendmsg */
};

/* Bits of liveio_io_ctx.flags. */
#define LIVEIO_IO_VIA_URING 0x1u   /* the call was served through liveio's io_uring engine */

struct liveio_io_ctx {
    liveio_u32 size;        /* sizeof(struct liveio_io_ctx) as the agent knows it */
    liveio_u32 tid;         /* thread id of the caller (gettid) */
    liveio_u64 nr;          /* x86-64 syscall number, e.g. 17 for pread64 */
    liveio_s64 fd;          /* file descriptor, -1 where the call has none */
    liveio_s64 offset;      /* explicit file offset; -1 for "current position" and sockets */
    liveio_u64 count;       /* bytes requested (sum of the iovecs for vector calls) */
    liveio_s64 result;      /* io_exit: what the kernel returned (bytes or -errno); io_enter: 0 */
    liveio_u64 start_ns;    /* CLOCK_MONOTONIC at entry, the clock of bpf_ktime_get_ns() */
    liveio_u64 latency_ns;  /* io_exit: duration of the call; io_enter: 0 */
    liveio_u64 file_id;     /* stable id of the open object: st_dev << 32 ^ st_ino, 0 unknown */
    liveio_u32 file_class;  /* enum liveio_file_class */
    liveio_u32 direction;   /* enum liveio_io_direction */
    liveio_u32 flags;       /* LIVEIO_IO_* bits */
    liveio_u32 reserved;    /* zero */
};

#ifdef __cplusplus
static_assert(sizeof(liveio_io_ctx) == 88, "liveio_io_ctx layout is ABI");
}  // namespace liveio
#endif

#endif /* LIVEIO_IO_EDGE_H */
