// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* The `prefetch` policy. Access detection at the exit edge of reads of data files (the file
 * classes of the `classes` knob, a bit mask of enum liveio_file_class; the catalog's default is
 * ClickHouse column files, CH_BIN). A stream is (thread, descriptor): its cursor (where its
 * next read starts if it reads on, the gap of a stride). What is prefetched is kept per *file*
 * (inode), in windows shared by every stream of the file: a window spans the bytes its readers
 * read and is kept `depth` bytes ahead of the furthest of them. A read that lands inside a
 * window continues it, whichever thread or descriptor made it: ClickHouse query threads that
 * read alternating ranges of one column file, each one jumping over the ranges of the others,
 * together read the file in order, and the window runs ahead of them all (per stream, each
 * jump looked like a new scan, and the threads prefetched each other's ranges twice).
 * Independent cursors of one file (two queries) get windows of their own (up to NR_WINDOWS
 * per file, the least recently used one is replaced). A window's first read is prefetched
 * past only when it filled the whole buffer the caller asked for (a scan: ClickHouse asks for
 * 1 MiB, exact-range point reads ask for what they need); a stream with a constant stride
 * between equal reads gets its next reads prefetched as one batch. A window is left to the
 * kernel while the kernel's own readahead keeps ahead of its readers: before a window's first
 * prefetch, a read whose next bytes are already in the page cache or on their way
 * (liveio_cached counts pages being read in) is read ahead by the kernel, and WILLNEED ranges
 * would only replace that readahead (they carry no readahead mark, so the kernel's window
 * stops growing past them) with a later, shallower one. A window the program took over is
 * topped up, except ranges already cached.
 * The depth adapts to the policy's own feedback (hits, waste, latency):
 * halved while more than a quarter of the prefetched bytes are wasted, halved while the
 * recent latency of its actions per MiB exceeds `latency_pct` percent of the lowest seen (its
 * prefetches queue behind each other: the device or the I/O workers are saturated, and deeper
 * read-ahead only delays the reads the target waits for), doubled only while nearly all
 * prefetched bytes are used, some were used since the last look and latency is near that low.
 *
 * Threads update a file's windows without a lock: a lost update changes what is prefetched,
 * never what a read returns (the target's reads run natively against the page cache).
 *
 * Knobs (liveio policy PID set prefetch KEY=VALUE; indexes below): see docs/POLICIES.md.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/policy.h"

#define KNOB_DEPTH_KB 0
#define KNOB_MIN_DEPTH_KB 1
#define KNOB_MAX_DEPTH_KB 2
#define KNOB_MIN_READ 3
#define KNOB_CLASSES 4
#define KNOB_ADAPT 5
#define KNOB_OPEN_KB 6
#define KNOB_LATENCY_PCT 7
#define KNOB_ADAPT_READS 8
#define KNOB_WAIT_US 9
#define KNOB_SHARED 10

#define NR_OPEN 2
#define NR_OPENAT 257

#define NR_READ 0
#define NR_PREAD64 17

struct stream {
    __u64 file_id;
    __s64 next;       /* where the next read starts if the pattern holds */
    __s64 stride;     /* gap between reads (0: sequential) */
    __s64 until;      /* strided: prefetched up to here */
    __u64 reads;
    __u64 quiet;      /* reads left before the next residency check (the kernel leads) */
    __u64 guessed;    /* `next` was advanced by quiet reads, not read from the file position */
    __u64 win;        /* 1 + the index of the window of its file it read last (0: none) */
    __u64 joins;      /* reads in a row that landed in a window away from its last read */
};

/* A window of a file: the bytes [lo, hi) its readers read so far, prefetched up to `until`. */
struct window {
    __s64 lo;
    __s64 hi;
    __s64 until;
    __u64 owned;  /* 1 once the program prefetched for it: the kernel's readahead stopped */
    __u64 used;   /* the file's clock at its last read (0: free) */
};

#define NR_WINDOWS 4

struct file {
    struct window w[NR_WINDOWS];
    __u64 clock;
};

/* After a read found its stream's next bytes cached, the next QUIET_READS reads of the
 * stream are taken as its sequential continuation without asking the kernel anything (no
 * file position, no residency query): a stream the kernel reads ahead of, or a hot one,
 * costs the program two syscalls every QUIET_READS + 1 reads instead of every read. A jump
 * in between is seen at the next check; a take-over comes at most QUIET_READS reads late. */
#define QUIET_READS 3

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);
    __type(value, struct stream);
} streams SEC(".maps");

/* Keyed by file id (st_dev << 32 ^ st_ino); with shared=0, by stream (every stream its own
 * file: the per-stream windows of before, for comparison). */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);
    __type(value, struct file);
} files SEC(".maps");

/* [0]: current depth in bytes, [1]: reads since the last adaptation, [2]: used, [3]: wasted
 * at the last adaptation, [4]: prefetch ranges queued, [5]: refused by the helper, [6]: the
 * latency floor (ns per MiB of action), [7]: adaptations that halved the depth for latency,
 * [8]: actions and [9]: issued bytes at the last adaptation, [10]: reads left to the kernel
 * (their stream's next bytes found cached, or quiet reads after such a check) and ranges not
 * queued because their pages were already in the page cache (or being read in), [11]: reads
 * that continued a window another stream had opened, [12]: windows opened */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 13);
    __type(key, __u32);
    __type(value, __u64);
} state SEC(".maps");

static __always_inline __u64 *slot(__u32 i)
{
    return bpf_map_lookup_elem(&state, &i);
}

static __always_inline __u64 knob_or(__u32 index, __u64 dflt)
{
    __u64 v = liveio_knob(index);
    return v ? v : dflt;
}

/* Every `adapt_reads` reads (all streams): compare what was used and wasted since the last
 * look, and the recent latency of the policy's actions with the lowest seen. */
static __always_inline __u64 current_depth(void)
{
    __u64 min = knob_or(KNOB_MIN_DEPTH_KB, 1024) << 10;
    __u64 max = knob_or(KNOB_MAX_DEPTH_KB, 32768) << 10;
    __u64 *depth = slot(0), *reads = slot(1), *used0 = slot(2), *wasted0 = slot(3);
    __u64 *floor = slot(6), *latency_cuts = slot(7), *actions0 = slot(8), *issued0 = slot(9);
    if (!depth || !reads || !used0 || !wasted0 || !floor || !latency_cuts || !actions0 || !issued0)
        return min;
    if (*depth == 0)
        *depth = knob_or(KNOB_DEPTH_KB, 4096) << 10;
    __u64 n = __sync_fetch_and_add(reads, 1);
    __u64 every = knob_or(KNOB_ADAPT_READS, 16);
    /* adapt=0 means a fixed depth: read the knob itself (the catalog installs its default). */
    if (liveio_knob(KNOB_ADAPT) != 0 && every > 0 && n % every == every - 1) {
        struct liveio_policy_feedback fb = {};
        liveio_policy_feedback(&fb, sizeof(fb));
        __u64 used = fb.used_bytes - *used0, wasted = fb.wasted_bytes - *wasted0;
        *used0 = fb.used_bytes;
        *wasted0 = fb.wasted_bytes;
        __u64 actions = fb.actions - *actions0, issued = fb.issued_bytes - *issued0;
        *actions0 = fb.actions;
        *issued0 = fb.issued_bytes;
        /* Latency per MiB of action: a larger range takes longer to set up even on an idle
         * device, so only time per byte says whether actions now wait for each other. */
        __u64 lat = 0;
        if (actions > 0 && issued >= actions)
            lat = fb.latency_ns_avg * (1 << 20) / (issued / actions);
        /* The floor follows the lowest recent latency and drifts up by 1/64 of the distance
         * per look, so a lasting change of the machine becomes the new normal. */
        if (lat > 0) {
            if (*floor == 0 || lat < *floor)
                *floor = lat;
            else
                *floor += (lat - *floor) >> 6;
        }
        __u64 congested = lat > 0 && *floor > 0 && lat * 100 > *floor * knob_or(KNOB_LATENCY_PCT, 200);
        __u64 calm = lat == 0 || lat * 4 <= *floor * 5;
        __u64 d = *depth;
        if (wasted * 4 > used + wasted && used + wasted > 0) {
            d >>= 1;
        } else if (congested) {
            d >>= 1;
            __sync_fetch_and_add(latency_cuts, 1);
        } else if (used > 0 && wasted * 16 < used && calm) {
            d <<= 1;
        }
        if (d < min)
            d = min;
        if (d > max)
            d = max;
        *depth = d;
    }
    __u64 d = *depth;
    if (d < min)
        d = min;
    if (d > max)
        d = max;
    return d;
}

static __always_inline void count(__u32 i)
{
    __u64 *c = slot(i);
    if (c)
        __sync_fetch_and_add(c, 1);
}

/* Whether every page of [off, off + len) is in the page cache or being read in: nothing for
 * a prefetch to do there. Unknown (no cachestat: Linux before 6.5) counts as not covered. */
static __always_inline int covered(long fd, __s64 off, __s64 len)
{
    if (len <= 0)
        return 1;
    return liveio_cached(fd, off, len) == len;
}

/* Whether this read waited on the device: slower than `wait_us` per MiB returned (a copy
 * from the page cache is far faster). A read being read in by the kernel's readahead still
 * counts as covered by cachestat, so only the wait says that its window is not enough. */
static __always_inline int waited(const struct liveio_io_ctx *io)
{
    __u64 us = liveio_knob(KNOB_WAIT_US);
    if (us == 0 || io->result <= 0)
        return 0;
    return io->latency_ns * (1 << 20) > us * 1000 * (__u64)io->result;
}

/* Per thread: the data files it opened since its last data read (a part reader being built:
 * 18.16 opens every column of a part before the first read of any). The thread's next data
 * read decides what they get: a read that asked for a scan's buffer (>= 512 KiB; ClickHouse
 * asks 1 MiB when scanning, the exact bytes of a range for a lookup) prefetches the first
 * `open_kb` of each of the others as one batch, since the first read of every column would
 * otherwise wait on the disk one after another; a range read prefetches nothing (a point
 * lookup reads a few KiB of each column, not their starts). */
#define NR_PENDING 32

struct pending_opens {
    __s32 fd[NR_PENDING];
    __u32 n;
    __u32 pad;
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, struct pending_opens);
} pending SEC(".maps");

static __always_inline int data_file(const struct liveio_io_ctx *io)
{
    return io->file_class < 64 && ((knob_or(KNOB_CLASSES, 1u << LIVEIO_CLASS_CH_BIN) >> io->file_class) & 1);
}

static __always_inline void on_open(const struct liveio_io_ctx *io)
{
    /* open_kb=0 switches this off: read the knob itself (the catalog installs its default). */
    if (io->result < 0 || liveio_knob(KNOB_OPEN_KB) == 0 || !data_file(io))
        return;
    __u32 tid = io->tid;
    struct pending_opens *p = bpf_map_lookup_elem(&pending, &tid);
    if (!p) {
        struct pending_opens empty = {};
        bpf_map_update_elem(&pending, &tid, &empty, BPF_ANY);
        p = bpf_map_lookup_elem(&pending, &tid);
        if (!p)
            return;
    }
    __u32 n = p->n;
    if (n < NR_PENDING) {
        p->fd[n & (NR_PENDING - 1)] = (__s32)io->result;
        p->n = n + 1;
    }
}

/* Entries [first, first + 8) of the thread's pending opens, other than `fd` and those whose
 * first `len` bytes are cached already, prefetched as one batch. */
static __always_inline void prefetch_opened(const struct pending_opens *p, __u32 n, __u32 first,
                                            long fd, __u64 len)
{
    struct liveio_prefetch batch[8] = {};
    __u64 k = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        __u32 at = first + i;
        if (at < n && at < NR_PENDING) {
            __s32 other = p->fd[at & (NR_PENDING - 1)];
            if (other != fd) {
                if (covered(other, 0, len)) {
                    count(10);
                } else {
                    batch[i].fd = other;
                    batch[i].len = len;
                    k++;
                }
            }
        }
    }
    if (k == 0)
        return;
    if (liveio_prefetch_batch(batch, sizeof(batch)) > 0)
        count(4);
    else
        count(5);
}

/* The thread's first data read since it opened data files: see `pending`. */
static __always_inline void on_first_read(const struct liveio_io_ctx *io)
{
    __u32 tid = io->tid;
    struct pending_opens *p = bpf_map_lookup_elem(&pending, &tid);
    if (!p || p->n == 0)
        return;
    __u32 n = p->n;
    p->n = 0;
    __u64 len = liveio_knob(KNOB_OPEN_KB) << 10;
    if (len == 0 || io->count < (512 << 10))
        return;
    /* Only a scan from the start of its file: the others then start there too (mark 0). A
     * thread's task of mark ranges in the middle of the part reads each column from that
     * mark's offset, which differs per column and is not known here. */
    __s64 off = io->offset;
    if (off < 0)
        off = liveio_file_pos(io->fd) - io->result;
    if (off != 0)
        return;
    prefetch_opened(p, n, 0, io->fd, len);
    if (n > 8)
        prefetch_opened(p, n, 8, io->fd, len);
    if (n > 16)
        prefetch_opened(p, n, 16, io->fd, len);
    if (n > 24)
        prefetch_opened(p, n, 24, io->fd, len);
}

/* Keeps window `w` `depth` bytes ahead of the furthest read of it, in steps of at least a
 * quarter of the depth (fewer, larger actions), none where the pages are already there. */
static __always_inline void top_up(struct window *w, long fd, __u64 depth)
{
    __s64 from = w->until > w->hi ? w->until : w->hi;
    __s64 to = w->hi + (__s64)depth;
    if (to - from < (__s64)(depth >> 2))
        return;
    if (covered(fd, from, to - from)) {
        w->until = to;
        count(10);
    } else if (liveio_prefetch(fd, from, to - from) == 0) {
        w->until = to;
        w->owned = 1;
        count(4);
    } else {
        count(5);
    }
}

/* Strided stream: the next reads of the same length, one range each (up to 8), as a batch. */
static __always_inline void strided(struct stream *s, const struct liveio_io_ctx *io, __s64 end,
                                    __s64 gap, __u64 depth)
{
    struct liveio_prefetch batch[8] = {};
    __u64 n = 0;
    __s64 len = io->result, step = len + gap;
    __s64 at = s->until > end + gap ? s->until : end + gap;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        if (at + len > end + (__s64)depth)
            break;
        /* A range already cached stays out of the batch (a zero entry is skipped). */
        if (covered(io->fd, at, len)) {
            at += step;
            continue;
        }
        batch[i].fd = io->fd;
        batch[i].offset = at;
        batch[i].len = len;
        at += step;
        n++;
    }
    if (n > 0) {
        long q = liveio_prefetch_batch(batch, sizeof(batch));
        if (q > 0) {
            s->until = at;
            count(4);
        } else {
            count(5);
        }
    }
}

SEC("liveio/io_exit")
int prefetch_on_read(struct liveio_io_ctx *io)
{
    if (io->nr == NR_OPEN || io->nr == NR_OPENAT) {
        on_open(io);
        return 0;
    }
    if (io->nr != NR_READ && io->nr != NR_PREAD64)
        return 0;
    if (io->result <= 0 || io->fd < 0 || !data_file(io))
        return 0;
    on_first_read(io);
    if ((__u64)io->result < knob_or(KNOB_MIN_READ, 4096))
        return 0;

    __u64 key = ((__u64)io->tid << 32) | (__u32)io->fd;
    struct stream *s = bpf_map_lookup_elem(&streams, &key);
    if (s && s->file_id == io->file_id && s->quiet > 0 && (io->offset < 0 || io->offset == s->next)) {
        s->quiet--;
        s->next += io->result;
        s->guessed = 1;
        s->reads++;
        count(10);
        return 0;
    }

    __s64 off = io->offset;
    if (off < 0) {
        long pos = liveio_file_pos(io->fd);
        if (pos < 0)
            return 0;
        off = pos - io->result;
    }
    __s64 end = off + io->result;
    __u64 depth = current_depth();

    int fresh = !s || s->file_id != io->file_id;
    if (fresh) {
        struct stream st = {.file_id = io->file_id, .next = end, .until = end};
        bpf_map_update_elem(&streams, &key, &st, BPF_ANY);
        s = bpf_map_lookup_elem(&streams, &key);
        if (!s)
            return 0;
    }
    __s64 gap = fresh ? -1 : off - s->next;
    s->reads++;
    s->next = end;

    __u64 fkey = liveio_knob(KNOB_SHARED) ? io->file_id : key;
    struct file *f = bpf_map_lookup_elem(&files, &fkey);
    if (!f) {
        struct file empty = {};
        bpf_map_update_elem(&files, &fkey, &empty, BPF_NOEXIST);
        f = bpf_map_lookup_elem(&files, &fkey);
        if (!f)
            return 0;
    }
    __u64 now = ++f->clock;

    /* The window this read continues: it starts inside what the window's readers read or
     * what was prefetched for them. Otherwise the least recently read window (or a free one)
     * is the one a new window replaces. */
    struct window *w = 0, *victim = &f->w[0];
    __u64 w_index = 0, victim_index = 0;
#pragma unroll
    for (int i = 0; i < NR_WINDOWS; i++) {
        struct window *c = &f->w[i];
        __s64 reach = c->until > c->hi ? c->until : c->hi;
        /* The stream's own window also takes its sequential reads past the window's reach
         * (its quiet reads did not move the window). */
        if (!w && c->used && c->lo <= off && (off <= reach || (gap == 0 && s->win == i + 1))) {
            w = c;
            w_index = i;
        }
        if (c->used < victim->used) {
            victim = c;
            victim_index = i;
        }
    }

    if (w) {
        __u64 joins = gap != 0 ? s->joins + 1 : 0;
        s->joins = joins;
        if (gap != 0)
            count(11); /* continues a window, not this stream's own last read */
        s->win = w_index + 1;
        w->used = now;
        if (end > w->hi)
            w->hi = end;
        s->guessed = 0;
        if (w->owned) {
            top_up(w, io->fd, depth);
        } else if (!waited(io) && covered(io->fd, end, io->result)) {
            /* The kernel's readahead is ahead of this reader and the read did not wait:
             * leave it alone. */
            s->quiet = QUIET_READS;
            count(10);
        } else if (gap == 0 || joins >= 2) {
            /* Nothing ahead of a reader that reads on from its last read, or of one that
             * jumps at every read (the kernel reads ahead of no such stream, but its reads
             * land in this window: together with the others it reads the file in order). */
            top_up(w, io->fd, depth);
        }
        /* A first jump into the window: the kernel starts its readahead at the reader's
         * next read if it reads on from here; that read decides. */
        return 0;
    }

    if (gap > 0 && gap == s->stride) {
        strided(s, io, end, gap, depth);
        s->guessed = 0;
        return 0;
    }

    /* A new window here. A stream's first read that filled the caller's whole buffer is a
     * scan: go ahead at once, unless the kernel's readahead already holds the next read's
     * bytes. A jump of a stream is not: the kernel reads ahead of a reader that reads on
     * from there (it read only the bytes asked at the jump), its next read decides. */
    s->joins = 0;
    if (!fresh) {
        /* Remember the gap as a candidate stride (not after quiet reads: their positions
         * were guessed, so the gap is not a stride). */
        s->stride = gap > 0 && !s->guessed ? gap : 0;
        s->until = end;
    }
    s->guessed = 0;
    count(12);
    struct window nw = {.lo = off, .hi = end, .until = end, .used = now};
    __u64 scan = (__u64)io->result == io->count && io->count >= (512 << 10);
    if (scan && fresh) {
        if (covered(io->fd, end, io->result)) {
            s->quiet = QUIET_READS;
            count(10);
        } else if (liveio_prefetch(io->fd, end, depth) == 0) {
            nw.until = end + depth;
            nw.owned = 1;
            count(4);
        } else {
            count(5);
        }
    }
    *victim = nw;
    s->win = victim_index + 1;
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
