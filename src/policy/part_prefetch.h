// Prefetch of a table part's small per-column files, by path, without a descriptor in the
// target's table (the `liveio_prefetch_part` action, run on the liveio-io thread).
//
// A column store such as ClickHouse's MergeTree opens, for each column a query reads, its index
// file (marks) and reads it whole before it opens the next column's: one disk wait per column
// on a cold cache, none of which a read-ahead of an open descriptor can overlap (the next file
// is not open yet). The program reports every index-file open of a part reader being built;
// this action learns the part's columns from the part's manifest (clickhouse_part.h: the glue)
// and advises the index files the reader will open next:
//   - which ones: the columns that every earlier reader of the same table (the part
//     directory's parent: parts come and go with merges, columns stay) agrees on, among those
//     that opened every column this reader has opened so far (in any order: the threads of a
//     query share the part's marks through the mark cache, so who opens which first varies).
//     No such earlier reader: nothing at the reader's first open (a one-column reader costs
//     nothing), every other column's at its second (a reader of several columns never seen
//     before). `all` (kPartAll): every other column's at the first open, whatever the history.
//   - how: STATX of every column's index and data file at the reader's first open (their
//     dentries and inodes looked up now, the index files' identities learnt); for each file
//     advised, OPENAT into a free slot of the ring's registered-file table (an io_uring direct
//     descriptor: the target's descriptor table never sees it, so no open() of the target
//     returns another number or EMFILE), FADVISE(WILLNEED) of the whole file through that
//     slot, CLOSE of the slot.
// The ops run as batches on the I/O thread (a few io_uring_enter calls per step); the target's
// calls stay native and read what the page cache holds, so results cannot change.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace liveio::uring {
class Engine;
}

namespace liveio::policy {

// Slots of the registered-file table the I/O thread's ring reserves for direct descriptors.
inline constexpr unsigned kDirectFileSlots = 64;

// PartRequest::flags (the program's third argument to liveio_prefetch_part).
inline constexpr uint32_t kPartFirst = 1;  // the reader's first index-file open
inline constexpr uint32_t kPartAll = 2;    // advise every other index file of the part now

// One index-file open of a part reader, as the program saw it.
struct PartRequest {
    int fd = -1;           // the target's descriptor of the index file (may be closed by now)
    uint64_t file_id = 0;  // the file it named at the open (policy/file_id.h)
    uint32_t flags = 0;
};

struct PartPrefetchResult {
    int files = 0;       // index files advised
    uint64_t bytes = 0;  // their bytes
    int lookups = 0;     // STATX that found a file (a missing one is no error: named otherwise)
    int errors = 0;      // opens and advice the kernel failed
};

// One reader's index-file opens of a table's columns, in order, each column once.
struct PartReader {
    uint64_t id = 0;
    std::vector<std::string> opened;
};

// The readers of each table, the most recent first. What the target's queries open is the
// target's, not a policy's: its owner keeps it while policies are switched off and on again
// (the I/O thread and its PartPrefetcher stop with the last policy; IoWorker::Options).
struct PartHistory {
    std::mutex mu;  // one I/O thread at a time; held for a whole request
    std::unordered_map<std::string, std::deque<PartReader>> tables;
    uint64_t next_reader = 1;
};

class PartPrefetcher {
public:
    explicit PartPrefetcher(PartHistory& history) : history_(history) {}

    // `issued(file_id, bytes)`: an index file advised (for the ledger and the counters).
    using Issued = std::function<void(uint64_t file_id, uint64_t bytes)>;

    // One index-file open of a part reader (above): the files advised now, at most
    // `max_bytes` in total. Blocks the calling (I/O) thread for the batches. -errno when
    // nothing could be done (not a regular file, no manifest, an open of a part never begun,
    // no direct descriptors on this engine).
    int run(uring::Engine& engine, const PartRequest& request, uint64_t max_bytes,
            const Issued& issued, PartPrefetchResult& out);

    // Readers remembered per table: the most recent first.
    static constexpr size_t kReadersPerTable = 16;

private:
    using Reader = PartReader;
    struct Part {
        std::string table;
        std::vector<std::string> columns;  // the manifest's
        std::vector<std::string> paths;    // the index files
        std::vector<uint64_t> sizes, ids;  // 0: not found
        // The reader being built (the latest begun).
        uint64_t reader = 0;
        uint64_t begun_ns = 0;
        std::vector<bool> advised;  // per column: advised, or opened by the reader
        bool all = false;           // every column advised
    };

    std::unordered_map<std::string, Part> parts_;        // by part directory
    std::unordered_map<uint64_t, std::string> part_of_;  // index-file id -> part directory
    PartHistory& history_;

    int begin(uring::Engine& engine, const PartRequest& request, Part*& part,
              PartPrefetchResult& out);
    Reader* reader_of(const Part& part);
    std::vector<size_t> predict(const Part& part, const Reader& self) const;
    void advise(uring::Engine& engine, Part& part, const std::vector<size_t>& columns,
                uint64_t max_bytes, const Issued& issued, PartPrefetchResult& out);
};

}  // namespace liveio::policy
