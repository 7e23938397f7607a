/* clickhouse-glue: ClickHouse MergeTree marks for the `marks` policy (bpf/policies/marks.bpf.c).
 *
 * A column `X` of a part is `X.bin` (compressed blocks) and `X.mrk`: per granule (8192 rows)
 * 16 bytes, the offset of the granule's block in `X.bin` and its offset in the decompressed
 * block. 18.16 reads a `.mrk` whole on a mark-cache miss, then opens the `.bin`; a read of
 * granules [i, k) of a column starts at mark i and ends where 18.16's MergeTreeReader ends it.
 * Everything here is ClickHouse-specific; scripts/clickhouse-glue-loc counts it. */
#ifndef LIVEIO_CLICKHOUSE_MARKS_H
#define LIVEIO_CLICKHOUSE_MARKS_H

/* The file classes of the agent's ClickHouse classification (src/agent/fd_classes_clickhouse.cpp). */
#define MARKS_FILE(io) ((io)->file_class == LIVEIO_CLASS_CH_MRK)
#define COLUMN_FILE(io) ((io)->file_class == LIVEIO_CLASS_CH_BIN)
#define MAX_MARKS 8192 /* granules kept per column (a part of 64M rows at 8192 rows a granule) */
#define MARK_SLOTS 64

struct marks {
    __u64 file_id; /* the .mrk file these marks are from; 0 while being written */
    __u64 n;
    __u64 mark[MAX_MARKS * 2]; /* per granule: offset in the .bin, offset in the decompressed block */
};
struct marks_link {
    __u64 mrk_id;
    __u64 slot;
};

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, MARK_SLOTS); __type(key, __u32); __type(value, struct marks); } marks SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 4096); __type(key, __u64); __type(value, __u64); } mrk_slots SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 4096); __type(key, __u64); __type(value, struct marks_link); } bin_marks SEC(".maps");
/* [0]: the next slot to fill */
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u64); } mark_next SEC(".maps");

/* A .mrk read whole (io_exit): its marks kept in a slot. Returns the slot + 1, 0 if not kept. */
static __always_inline __u64 keep_marks(struct liveio_io_ctx *io)
{
    __u64 id = io->file_id, len = io->result, slot;
    __u64 *kept = bpf_map_lookup_elem(&mrk_slots, &id);
    __u32 key = 0;
    __u64 *next = bpf_map_lookup_elem(&mark_next, &key);
    if (!next || !MARKS_FILE(io) || len < 16 || len > MAX_MARKS * 16 || len % 16 ||
        io->count != len)
        return 0;
    slot = kept ? *kept : __sync_fetch_and_add(next, 1) % MARK_SLOTS;
    if (!kept)
        bpf_map_update_elem(&mrk_slots, &id, &slot, BPF_ANY);
    key = slot;
    struct marks *mk = bpf_map_lookup_elem(&marks, &key);
    if (!mk)
        return 0;
    mk->file_id = 0;
    if (liveio_io_load(io, 0, mk->mark, len) != 0)
        return 0;
    mk->n = len / 16;
    mk->file_id = id;
    return slot + 1;
}

/* The column whose .bin is `bin_id` has the marks of .mrk `mrk_id` (kept in `slot`). */
static __always_inline void link_marks(__u64 bin_id, __u64 mrk_id, __u64 slot)
{
    struct marks_link l = {.mrk_id = mrk_id, .slot = slot};
    bpf_map_update_elem(&bin_marks, &bin_id, &l, BPF_ANY);
}

/* The marks of the column whose .bin is `bin_id`, if still kept. */
static __always_inline struct marks *marks_of(__u64 bin_id, __u32 *slot)
{
    struct marks_link *l = bpf_map_lookup_elem(&bin_marks, &bin_id);
    if (!l)
        return 0;
    *slot = l->slot;
    struct marks *mk = bpf_map_lookup_elem(&marks, slot);
    return mk && mk->file_id == l->mrk_id && mk->n <= MAX_MARKS ? mk : 0;
}

static __always_inline __u64 mark_at(struct marks *mk, __u64 g)
{
    return mk->mark[(g & (MAX_MARKS - 1)) * 2];
}

/* A binary search over the kept marks of a slot, one step per bpf_loop iteration (the verifier
 * checks a step once; unrolled, every outcome of every step would be a path of its own). */
struct marks_search {
    __u32 slot;
    __u64 off, lo, hi;
};

static long search_step(__u32 i, struct marks_search *s)
{
    struct marks *mk = bpf_map_lookup_elem(&marks, &s->slot);
    if (!mk || s->lo >= s->hi)
        return 1;
    __u64 mid = (s->lo + s->hi) / 2;
    if (mark_at(mk, mid) < s->off)
        s->lo = mid + 1;
    else
        s->hi = mid;
    return 0;
}

/* The first granule whose block starts at or after `off`. */
static __always_inline __u64 lower_bound(struct marks *mk, __u32 slot, __u64 off)
{
    struct marks_search s = {.slot = slot, .off = off, .lo = 0, .hi = mk->n};
    bpf_loop(14, search_step, &s, 0);
    return s.lo;
}

/* Where a read of granules [.., k) of a column ends: on to the end of the block granule k
 * starts in when it does not start a block (0: unknown, the end of the file). */
static __always_inline __u64 range_end(struct marks *mk, __u64 k)
{
    if (k >= mk->n)
        return 0;
    __u64 off = mark_at(mk, k);
    if (mk->mark[(k & (MAX_MARKS - 1)) * 2 + 1] == 0)
        return off;
#pragma unroll
    for (int j = 1; j <= 8; j++)
        if (k + j < mk->n && mark_at(mk, k + j) != off)
            return mark_at(mk, k + j);
    return 0;
}

/* A read of `count` bytes at `pos` of the column with marks `a`: the granules [*first, *end)
 * it covers. Returns 0 when `pos` is not a mark (the read continues a block, no new range). */
static __always_inline int granules_read(struct marks *a, __u32 slot, __u64 pos, __u64 count, __u64 *first,
                                         __u64 *end)
{
    *first = lower_bound(a, slot, pos);
    *end = lower_bound(a, slot, pos + count);
    return *first < a->n && mark_at(a, *first) == pos;
}

/* Whether a read of granules [first, end) of a column (granules_read) names them: its first and
 * its last block each start one granule. A block holding several granule starts (small values:
 * a Date column's 64 KiB block is 4 granules) is read whole for any of them, so the read names
 * the block, not the granules the reader wants. */
static __always_inline int granules_exact(struct marks *a, __u64 first, __u64 end)
{
    if (end <= first || end > a->n || end > MAX_MARKS)
        return 0;
    if (end - first == 1)
        return 1;
    return mark_at(a, first + 1) != mark_at(a, first) && mark_at(a, end - 1) != mark_at(a, end - 2);
}

/* The bytes of column `b` a read of granules [first, end) covers, at most `cap`. Returns 0 when
 * `b` is not a column of the same part (another granule count). */
static __always_inline int column_range(struct marks *b, __u64 n, __u64 first, __u64 end, __u64 cap,
                                        __u64 *start, __u64 *len)
{
    if (b->n != n)
        return 0;
    __u64 hi = range_end(b, end);
    *start = mark_at(b, first);
    *len = hi > *start && hi - *start < cap ? hi - *start : cap;
    return 1;
}

#endif /* LIVEIO_CLICKHOUSE_MARKS_H */
