// Prefetch of a table part's small per-column files, by path, without a descriptor in the
// target's table (the `liveio_prefetch_part` action, run on the liveio-io thread).
//
// A column store such as ClickHouse's MergeTree opens, for each column a query reads, its index
// file (marks) and reads it whole before it opens the next column's: one disk wait per column
// on a cold cache, none of which a read-ahead of an open descriptor can overlap (the next file
// is not open yet). At the first such open of a part, this action learns the part's columns
// from the part's manifest (clickhouse_part.h: the glue), then, all in parallel through the
// io_uring ring:
//   1. STATX of every column's index file and data file: their dentries and inodes are looked
//      up now (a cold lookup reads directory and inode blocks), so the target's own openat
//      calls find them cached;
//   2. for every index file but the one the target has open: OPENAT into a free slot of the
//      ring's registered-file table (an io_uring direct descriptor: the target's descriptor
//      table never sees it, so no open() of the target returns another number or EMFILE),
//      FADVISE(WILLNEED) of the whole file through that slot, CLOSE of the slot.
// The ops run as batches on the I/O thread (a few io_uring_enter calls per part); the target's
// calls stay native and read what the page cache holds, so results cannot change.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace liveio::uring {
class Engine;
}

namespace liveio::policy {

// Slots of the registered-file table the I/O thread's ring reserves for direct descriptors.
inline constexpr unsigned kDirectFileSlots = 64;

struct PartPrefetchResult {
    int files = 0;         // index files advised
    uint64_t bytes = 0;    // their bytes
    int lookups = 0;       // STATX that found a file
    int errors = 0;        // ops the kernel failed (a missing file included)
    bool skipped = false;  // the same part was prefetched moments ago
};

class PartPrefetcher {
public:
    // `issued(file_id, bytes)`: an index file advised (for the ledger and the counters).
    using Issued = std::function<void(uint64_t file_id, uint64_t bytes)>;

    // The part of the file the target's descriptor `fd` names: its directory's manifest, then
    // the lookups and advice above, at most `max_bytes` in total. Blocks the calling (I/O)
    // thread for the batches. -errno when nothing could be done (not a regular file, no
    // manifest, no direct descriptors on this engine).
    int run(uring::Engine& engine, int fd, uint64_t max_bytes, const Issued& issued,
            PartPrefetchResult& out);

private:
    struct Recent {
        std::string dir;
        uint64_t at_ns = 0;
    };
    // Columns per part directory (parts are immutable: a rewritten part is a new directory).
    std::unordered_map<std::string, std::vector<std::string>> columns_;
    Recent recent_[8];
    unsigned next_recent_ = 0;
    const std::vector<std::string>* columns_of(uring::Engine& engine, const std::string& dir);
};

}  // namespace liveio::policy
