// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* The `marks` policy: the XRP analogue for column-store point lookups (docs/POLICIES.md).
 *
 * A reader that opens every column file of a part before reading (ClickHouse 18.16's part
 * reader, measured), then reads the same row range of each column one after another, waits on
 * the disk once per column. When a column read names its granule range exactly, this program
 * prefetches the same granule range of every column of the group not yet read in this round,
 * as one batch into the page cache: the reads stay native and find their data cached or in
 * flight.
 *
 * Per thread, a group is the data files opened since the thread's last data read; a round
 * begins at each seek of the group's first column read (the leader). A column read whose
 * blocks hold several granules cannot name the granules (only its block): it batches only
 * the columns cheap to read for all of the block's granules (guess_kb), and a later column's
 * read in the round that names its granules batches the rest. A column whose batched ranges
 * went unread for `unread_max` rounds in a row leaves the batch until it is read again (its
 * range is still computed, so a read of it brings it back).
 *
 * What a granule is, where its bytes are in each column file, and how the marks are learnt is
 * the ClickHouse glue of clickhouse_marks.h. Knob 0, max_kb: most bytes per column and batch;
 * knob 1, unread_max: unread rounds in a row before a column leaves the batch (0: 2); knob 2,
 * guess_kb: at the round's first read that names only a block, the columns whose bytes for
 * all of the block's granules are at most this many KiB are batched at once (0: none); knob 3,
 * part: at the marks-file opens of a part reader (a mark-cache miss), the marks files it will
 * open next are read into the page cache, in parallel, as earlier readers of the table that
 * opened the same columns so far predict (liveio_prefetch_part; 1, the default: so; 2: every marks file of the
 * part at the reader's first open; 0: off). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "liveio/policy.h"
#include "clickhouse_marks.h"

#define KNOB_MAX_KB 0
#define KNOB_UNREAD_MAX 1
#define KNOB_GUESS_KB 2
#define KNOB_PART 3
#define UNREAD_MAX_DEFAULT 2
#define NR_READ 0
#define NR_OPEN 2
#define NR_OPENAT 257
#define MAX_COLUMNS 32

struct member {
    __s64 fd;
    __u64 file_id;
    __u64 unread; /* rounds in a row whose batched range of this column went unread */
};
struct group {
    __u64 marks_slot; /* marks just kept (slot + 1): the next data file opened is their column */
    __u64 marks_id;
    __u64 n, reading;
    __s64 leader, leader_next; /* the group's first column read, where it would continue */
    __u64 leader_id;
    __u64 round_read; /* bit j: member j read in this round */
    __u64 pending;    /* bit j: a range of member j batched (or left out) in this round */
    __u64 batched;    /* this round's batch was issued (or there is no round yet) */
    __u64 guessed;    /* this round's guess was made */
    __u64 marked;     /* some column of the group has kept marks (else no read can batch) */
    __u64 part_asked; /* liveio_prefetch_part asked since the thread's last data read */
    struct member m[MAX_COLUMNS];
    struct liveio_prefetch batch[MAX_COLUMNS];
};

struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 1024); __type(key, __u32); __type(value, struct group); } groups SEC(".maps");
/* [1]: batches, [2]: ranges batched, [3]: ranges left out (column unread), [4]: reads that
 * could not name their granules (several per block), [5]: part readers reported
 * (liveio_prefetch_part at a reader's first marks-file open), [6]: their later opens reported */
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 8); __type(key, __u32); __type(value, __u64); } state SEC(".maps");
/* An all-zero group: the template of a thread's first one (too large for the stack). */
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, struct group); } zero SEC(".maps");

static __always_inline void count(__u32 i, __u64 n)
{
    __u64 *c = bpf_map_lookup_elem(&state, &i);
    if (c)
        __sync_fetch_and_add(c, n);
}

static __always_inline struct group *group_of(__u32 tid, int create)
{
    struct group *g = bpf_map_lookup_elem(&groups, &tid);
    __u32 z = 0;
    struct group *fresh = bpf_map_lookup_elem(&zero, &z);
    if (g || !create || !fresh)
        return g;
    bpf_map_update_elem(&groups, &tid, fresh, BPF_NOEXIST);
    return bpf_map_lookup_elem(&groups, &tid);
}

/* One column of a batch (a bpf_loop callback: verified once, whatever the group's size). */
struct batch_ctx {
    __u32 tid;
    __u64 first, end, cap, n, unread_max, left_out;
    __u64 guess; /* a guess: only columns whose range is at most this (bytes) */
};

static long batch_column(__u32 i, struct batch_ctx *c)
{
    struct group *g = bpf_map_lookup_elem(&groups, &c->tid);
    __u64 j = i;
    asm volatile("" : "+r"(j)); /* keep the mask below: the verifier bounds the index by it */
    j &= MAX_COLUMNS - 1;
    if (!g || i >= MAX_COLUMNS)
        return 1;
    struct member *m = &g->m[j];
    struct liveio_prefetch *p = &g->batch[j];
    __u32 slot;
    /* read or batched already in this round (the column that named the range included) */
    struct marks *b = (g->round_read | g->pending) & (1ULL << j) ? 0 : marks_of(m->file_id, &slot);
    __u64 start = 0, len = 0;
    p->fd = m->fd;
    p->len = 0; /* read already, another part, marks not kept, left out: no range (the helper skips it) */
    if (b && column_range(b, c->n, c->first, c->end, c->cap, &start, &len)) {
        if (c->guess && len > c->guess)
            return 0; /* left to the read that names the granules */
        g->pending |= 1ULL << j;
        if (m->unread >= c->unread_max) {
            c->left_out++;
            return 0;
        }
        p->offset = start;
        p->len = len;
    }
    return 0;
}

static __always_inline void prefetch_columns(struct group *g, __u32 tid, __u64 first, __u64 end, __u64 n,
                                             __u64 guess)
{
    struct batch_ctx c = {.tid = tid, .first = first, .end = end, .n = n, .guess = guess};
    c.cap = liveio_knob(KNOB_MAX_KB);
    c.cap = (c.cap ? c.cap : 1024) << 10;
    if (guess && c.cap > guess)
        c.cap = guess + 1; /* a range longer than the guess shows as guess + 1 */
    c.unread_max = liveio_knob(KNOB_UNREAD_MAX);
    if (!c.unread_max)
        c.unread_max = UNREAD_MAX_DEFAULT;
    __u64 cols = g->n < MAX_COLUMNS ? g->n : MAX_COLUMNS;
    bpf_loop(cols, batch_column, &c, 0);
    long queued = cols > 0 ? liveio_prefetch_batch(g->batch, cols * sizeof(struct liveio_prefetch)) : 0;
    if (queued > 0) {
        count(1, 1);
        count(2, queued);
    }
    if (c.left_out)
        count(3, c.left_out);
}

/* The end of a round: each column whose range was batched counts whether it was read. */
static long close_column(__u32 i, __u32 *tid)
{
    struct group *g = bpf_map_lookup_elem(&groups, tid);
    __u64 j = i;
    asm volatile("" : "+r"(j));
    j &= MAX_COLUMNS - 1;
    if (!g || i >= MAX_COLUMNS)
        return 1;
    struct member *m = &g->m[j];
    if (g->pending & (1ULL << j))
        m->unread = g->round_read & (1ULL << j) ? 0 : m->unread + 1;
    return 0;
}

/* The member index + 1 of the group's column (fd, file_id), 0 if none. */
struct find_ctx {
    __u32 tid;
    __s64 fd;
    __u64 file_id, found;
};

static long find_column(__u32 i, struct find_ctx *c)
{
    struct group *g = bpf_map_lookup_elem(&groups, &c->tid);
    __u64 j = i;
    asm volatile("" : "+r"(j));
    j &= MAX_COLUMNS - 1;
    if (!g || i >= MAX_COLUMNS)
        return 1;
    if (g->m[j].fd != c->fd || g->m[j].file_id != c->file_id)
        return 0;
    c->found = j + 1;
    return 1;
}

/* A data file opened: a column of the thread's current group. */
static __always_inline void on_open(struct liveio_io_ctx *io)
{
    struct group *g = group_of(io->tid, 1);
    if (!g)
        return;
    if (g->reading)
        g->n = g->reading = g->pending = g->marked = 0;
    if (g->marks_slot)
        link_marks(io->file_id, g->marks_id, g->marks_slot - 1);
    g->marks_slot = 0;
    __u32 slot;
    if (marks_of(io->file_id, &slot))
        g->marked = 1;
    __u64 n = g->n;
    if (n < MAX_COLUMNS) {
        struct member *m = &g->m[n & (MAX_COLUMNS - 1)];
        m->fd = io->fd;
        m->file_id = io->file_id;
        m->unread = 0;
        g->n = n + 1;
    }
}

SEC("liveio/io_exit")
int marks_exit(struct liveio_io_ctx *io)
{
    if (io->nr == NR_READ && MARKS_FILE(io) && io->result > 0) {
        struct group *g = group_of(io->tid, 1);
        __u64 slot = keep_marks(io);
        if (g && slot) {
            g->marks_slot = slot;
            g->marks_id = io->file_id;
        }
    } else if ((io->nr == NR_OPEN || io->nr == NR_OPENAT) && io->result >= 0 && COLUMN_FILE(io)) {
        on_open(io);
    } else if ((io->nr == NR_OPEN || io->nr == NR_OPENAT) && io->result >= 0 && MARKS_FILE(io)) {
        /* A mark-cache miss: the part reader being built opens and reads each column's marks
         * in turn, one disk wait each. Every open is reported, the first since the thread's
         * last data read as the reader's first; the worker advises the marks files the reader
         * will open next (part=1), or every one at the first open (part=2). */
        __u64 part = liveio_knob(KNOB_PART);
        struct group *g = part ? group_of(io->tid, 1) : 0;
        if (!g || (g->part_asked && part == 2))
            return 0;
        __u64 flags = g->part_asked ? 0 : LIVEIO_PART_FIRST;
        if (part == 2)
            flags |= LIVEIO_PART_ALL;
        g->part_asked = 1;
        if (liveio_prefetch_part(io->result, io->file_id, flags) == 0)
            count(flags & LIVEIO_PART_FIRST ? 5 : 6, 1);
    }
    return 0;
}

SEC("liveio/io_enter")
int marks_enter(struct liveio_io_ctx *io)
{
    if (io->nr != NR_READ || !COLUMN_FILE(io))
        return 0;
    struct group *g = group_of(io->tid, 0);
    if (!g)
        return 0;
    g->part_asked = 0; /* a data read: the thread's next marks-file open is a new part reader's */
    if (g->n == 0 || !g->marked)
        return 0; /* no column of the group has marks kept (a warm mark cache since the policy
                     went on): nothing to batch, not even a position to ask for */
    if (!g->reading) {
        g->reading = 1;
        g->leader = io->fd;
        g->leader_id = io->file_id;
        g->leader_next = -1;
        g->batched = 1;
    }
    int leader = io->fd == g->leader && io->file_id == g->leader_id;
    long pos = -1;
    if (leader) {
        pos = liveio_file_pos(io->fd);
        if (pos < 0)
            return 0;
        __s64 next = g->leader_next;
        g->leader_next = pos + io->count;
        if (pos != next) { /* a seek, not a scan continuing: a new round */
            __u64 cols = g->n < MAX_COLUMNS ? g->n : MAX_COLUMNS;
            __u32 tid = io->tid;
            bpf_loop(cols, close_column, &tid, 0);
            g->round_read = g->pending = 0;
            g->batched = g->guessed = 0;
        }
    } else if (g->batched && (g->pending & ~g->round_read) == 0) {
        return 0; /* the round's batched columns all read: nothing left to note */
    }
    __u32 slot;
    struct marks *a = marks_of(io->file_id, &slot);
    if (!a && !leader)
        return 0; /* without marks a column neither names granules nor is batched */
    struct find_ctx f = {.tid = io->tid, .fd = io->fd, .file_id = io->file_id};
    bpf_loop(g->n < MAX_COLUMNS ? g->n : MAX_COLUMNS, find_column, &f, 0);
    if (!f.found)
        return 0;
    __u64 j = (f.found - 1) & (MAX_COLUMNS - 1);
    __u64 seen = g->round_read & (1ULL << j);
    g->round_read |= 1ULL << j;
    if (g->batched || seen)
        return 0;
    if (!a)
        return 0;
    if (!leader)
        pos = liveio_file_pos(io->fd);
    __u64 first, end;
    if (pos < 0 || !a || !granules_read(a, slot, pos, io->count, &first, &end))
        return 0;
    if (!granules_exact(a, first, end)) {
        count(4, 1);
        __u64 guess = liveio_knob(KNOB_GUESS_KB) << 10;
        if (!g->guessed && guess)
            prefetch_columns(g, io->tid, first, end, a->n, guess);
        g->guessed = 1;
        return 0;
    }
    g->batched = 1;
    prefetch_columns(g, io->tid, first, end, a->n, 0);
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
