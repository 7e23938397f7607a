/* liveio's policy helpers: what a BPF program at an I/O edge may ask liveio to do, and the
 * context of the completion edge. Include it from BPF C (clang -target bpf) and from C++ (the
 * policy runtime implements it).
 *
 * Actions never block the calling thread: they are queued to liveio's I/O thread ("liveio-io",
 * one io_uring ring), which submits them, reaps their completions and runs the completion
 * edge. A full queue or an exhausted memory budget drops the action (the helper returns
 * -EAGAIN / the worker counts a drop). Prefetches only fill the page cache; the target's own
 * calls still run natively, so what they return never depends on a policy.
 *
 * Helper IDs: the policy block of liveio's range (0x10100..0x101ff; the kernel's IDs are
 * < 0x10000, so an object using them fails to load in the kernel with "unknown func"). */
#ifndef LIVEIO_POLICY_H
#define LIVEIO_POLICY_H

#include "liveio/io_edge.h"

#ifdef __cplusplus
namespace liveio {
#endif

#define LIVEIO_HELPER_PREFETCH 0x10100
#define LIVEIO_HELPER_PREFETCH_BATCH 0x10101
#define LIVEIO_HELPER_READ_ASYNC 0x10102
#define LIVEIO_HELPER_REDIRECT 0x10103
#define LIVEIO_HELPER_FILE_POS 0x10104
#define LIVEIO_HELPER_COMPLETE_LOAD 0x10105
#define LIVEIO_HELPER_FEEDBACK 0x10106
#define LIVEIO_HELPER_KNOB 0x10107
#define LIVEIO_HELPER_IO_LOAD 0x10108
#define LIVEIO_HELPER_CACHED 0x10109
#define LIVEIO_HELPER_PREFETCH_PART 0x1010a

/* Flags of liveio_prefetch_part. */
#define LIVEIO_PART_FIRST 1 /* the part reader's first marks-file open (a new reader) */
#define LIVEIO_PART_ALL 2   /* advise every other marks file of the part now, whatever the history */

/* One range of a batch (liveio_prefetch_batch). */
struct liveio_prefetch {
    liveio_s64 fd;
    liveio_s64 offset;
    liveio_u64 len;
};

/* Context of SEC("liveio/io_complete"): a read issued by liveio_read_async has completed.
 * Read-only. The data is reached through liveio_complete_load (bounds-checked), never by
 * pointer: a program can read exactly the `result` bytes the kernel delivered. */
struct liveio_io_complete_ctx {
    liveio_u32 size;      /* sizeof(struct liveio_io_complete_ctx) as the agent knows it */
    liveio_u32 flags;     /* zero */
    liveio_s64 fd;        /* the descriptor the program named (the target's) */
    liveio_s64 offset;    /* file offset of the read */
    liveio_u64 len;       /* bytes asked for */
    liveio_s64 result;    /* bytes read, or -errno (-ESTALE: the fd no longer named that file) */
    liveio_u64 cookie;    /* the program's cookie, as given to liveio_read_async */
    liveio_u64 file_id;   /* st_dev << 32 ^ st_ino of the file read */
    liveio_u64 data_len;  /* bytes readable through liveio_complete_load (= result if > 0) */
};

/* What liveio_policy_feedback fills: the calling policy's own counters, so a program can
 * adapt (e.g. its prefetch depth) to what its actions achieved. */
struct liveio_policy_feedback {
    liveio_u64 actions;         /* actions queued */
    liveio_u64 issued_bytes;    /* bytes of prefetches handed to the kernel */
    liveio_u64 used_bytes;      /* of those, bytes the target read afterwards */
    liveio_u64 wasted_bytes;    /* of those, bytes forgotten without being read */
    liveio_u64 inflight;        /* actions queued or submitted, not completed */
    liveio_u64 drops;           /* actions dropped: queue full, budget, policy switched off,
                                   descriptor closed before the prefetch ran */
    liveio_u64 errors;          /* actions the kernel failed */
    liveio_u64 latency_ns_avg;  /* mean submit-to-completion time of recent actions */
};

#ifdef __cplusplus
static_assert(sizeof(liveio_io_complete_ctx) == 64, "liveio_io_complete_ctx layout is ABI");
static_assert(sizeof(liveio_prefetch) == 24, "liveio_prefetch layout is ABI");
}  // namespace liveio
#else

/* Asks for [offset, offset + len) of the file behind `fd` to be read into the page cache.
 * offset -1: from the descriptor's current position. Returns 0 when queued, -EINVAL for a bad
 * range, -EAGAIN when the queue is full, -EPERM when the policy is off. */
static long (*liveio_prefetch)(long fd, long offset, unsigned long len) = (void *)LIVEIO_HELPER_PREFETCH;
/* Queues every range of `ranges` (an array of struct liveio_prefetch, `size` bytes) as one
 * batch (one submission). Returns how many were queued, or -errno when none was. */
static long (*liveio_prefetch_batch)(const struct liveio_prefetch *ranges, unsigned int size) =
    (void *)LIVEIO_HELPER_PREFETCH_BATCH;
/* Reads [offset, offset + len) (len <= 1 MiB) asynchronously; when it completes, the
 * SEC("liveio/io_complete") program of the same object runs with `cookie` and may read the
 * data and issue the next reads. Returns 0 when queued, -errno otherwise. */
static long (*liveio_read_async)(long fd, long offset, unsigned long len, unsigned long cookie) =
    (void *)LIVEIO_HELPER_READ_ASYNC;
/* At liveio/io_enter: asks that this call run through liveio's io_uring engine instead of
 * natively. Returns 0 when it will be, -EOPNOTSUPP when no executor is installed or the call
 * cannot be redirected (it then runs natively). */
static long (*liveio_redirect)(void) = (void *)LIVEIO_HELPER_REDIRECT;
/* The current file position of `fd` in the calling thread's process, or -errno. At io_exit
 * of read(): the position after the read. In the agent, while an io_exit program is attached,
 * the position the agent tracked from the descriptor's lseek and read calls (no syscall);
 * otherwise, and for a descriptor not seen yet, lseek(fd, 0, SEEK_CUR). A position moved by a
 * call the agent does not see (another descriptor or process sharing the open file
 * description, an unhooked call) is answered from the tracked one until the next lseek: use it
 * for decisions that cost accuracy when wrong, never a result. */
static long (*liveio_file_pos)(long fd) = (void *)LIVEIO_HELPER_FILE_POS;
/* In a liveio/io_complete program: copies `len` bytes of the completed read's data starting at
 * `offset` into `dst`. Returns 0, or -EINVAL when the range is outside the data. */
static long (*liveio_complete_load)(const struct liveio_io_complete_ctx *ctx, unsigned long offset,
                                    void *dst, unsigned int len) = (void *)LIVEIO_HELPER_COMPLETE_LOAD;
/* Fills `out` (`size` bytes) with the calling policy's counters. Returns 0 or -errno. */
static long (*liveio_policy_feedback)(struct liveio_policy_feedback *out, unsigned int size) =
    (void *)LIVEIO_HELPER_FEEDBACK;
/* The value of knob `index` of the calling policy (`liveio policy PID set NAME key=value`),
 * 0 when unset. Knob indexes are those of the policy's catalog entry. */
static unsigned long (*liveio_knob)(unsigned int index) = (void *)LIVEIO_HELPER_KNOB;
/* In a liveio/io_exit program of read() or pread64() that returned bytes: copies `len` bytes of
 * what the call returned, starting at `offset`, into `dst` (the target's buffer is read once,
 * after the kernel filled it; the program cannot write it). Returns 0, or -EINVAL when the
 * range is outside the returned bytes or this is not such an edge (`dst` is then zeroed). */
static long (*liveio_io_load)(const struct liveio_io_ctx *ctx, unsigned long offset, void *dst, unsigned int len) =
    (void *)LIVEIO_HELPER_IO_LOAD;
/* How many bytes of [offset, offset + len) of the file behind `fd` are in the page cache,
 * pages still being read in included (the kernel's readahead, or a prefetch, has them on
 * their way): the kernel's cachestat(2), counted in whole pages, at most `len`. A query only:
 * it reads no data and leaves the file's readahead state alone. Returns -errno when it cannot
 * say (-ENOSYS before Linux 6.5, -EBADF, -EOPNOTSUPP on hugetlbfs). */
static long (*liveio_cached)(long fd, long offset, unsigned long len) = (void *)LIVEIO_HELPER_CACHED;
/* `fd` (the file `file_id`) was just opened on a table part's marks file (a ClickHouse
 * MergeTree part reader being built on a mark-cache miss; the part's manifest names its
 * columns: the ClickHouse glue of src/policy/clickhouse_part.cpp). Call it at every such open
 * of the reader, `flags` LIVEIO_PART_FIRST at its first. The liveio-io thread reads into the
 * page cache, in parallel, by path, through io_uring direct descriptors (no descriptor of the
 * target's is used or created), the marks files the reader will open next: those every earlier
 * reader of the same table that opened the reader's columns so far opened too; none at the
 * first open of a reader never seen before, all at its second (LIVEIO_PART_ALL: all at once). A part begun
 * again within 100 ms (another thread of the query) joins the reader. Returns 0 when queued,
 * -EAGAIN when the queue is full, -EPERM when the policy is off, -EINVAL for unknown flags. */
static long (*liveio_prefetch_part)(long fd, unsigned long file_id, unsigned long flags) =
    (void *)LIVEIO_HELPER_PREFETCH_PART;

#endif

#endif /* LIVEIO_POLICY_H */
