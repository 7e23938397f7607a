// What a file descriptor refers to (enum liveio_file_class of bpf/include/liveio/io_edge.h)
// and a stable id of the open object, cached per descriptor so that the hooked call path does
// a syscall only the first time it meets a descriptor.
//
// Classification: fstat; sockets by SO_DOMAIN/SO_TYPE (TCP, Unix), FIFOs as pipes, regular
// files by their path (readlink of /proc/self/fd/N) through the application glue
// (classify_clickhouse_path, fd_classes_clickhouse.cpp), else LIVEIO_CLASS_FILE.
//
// The cache must learn when a descriptor number starts naming another object: the host calls
// invalidate() for every hooked call that closes or (re)creates a descriptor (close, open,
// openat, dup2, socket, accept, ...). Calls the installed mechanism does not hook (with GOT:
// dup2, socket) cannot be seen, so a number reused through them keeps its old class until
// closed through a hooked call; syscall rewriting sees every call.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>

namespace liveio::agent {

struct FdInfo {
    uint32_t file_class = 0;  // enum liveio_file_class
    uint64_t file_id = 0;     // st_dev << 32 ^ st_ino, 0 unknown
};

// ClickHouse MergeTree classes by file name: *.bin, *.mrk/*.mrk2, primary.idx, other files
// of a part directory or under a data directory; LIVEIO_CLASS_FILE otherwise.
uint32_t classify_clickhouse_path(std::string_view path);

// Classifies a descriptor now (syscalls: fstat, getsockopt or readlink). `opened_path`: the
// absolute path the descriptor was just opened with, if known; a regular file is then
// classified by it instead of by readlink of /proc/self/fd/N (the costliest step of a
// classification). The two differ only where a symbolic link in the path changes a directory's
// or the file's name, which changes what a policy considers a ClickHouse file, never a result.
FdInfo classify_fd(int fd, const char* opened_path = nullptr);

class FdClassCache {
public:
    // Descriptors at or above this are classified on every call (never cached).
    static constexpr int kMaxCached = 1 << 20;

    FdClassCache();
    ~FdClassCache();
    FdClassCache(const FdClassCache&) = delete;
    FdClassCache& operator=(const FdClassCache&) = delete;

    // The cached class of `fd`, classifying it on first use (see classify_fd for
    // `opened_path`). Any thread.
    FdInfo get(int fd, const char* opened_path = nullptr);
    // The cached class of `fd` if there is one, else {} (never a syscall).
    FdInfo peek(int fd) const;
    // `fd` may now name another object.
    void invalidate(int fd);
    // Forgets every descriptor (calls that closed descriptors went unobserved meanwhile).
    void clear();

    // File positions learned from the calls the host sees (lseek's result, read's count),
    // kept with the descriptor's class: a position belongs to the class entry it was recorded
    // under, so invalidate() (close, open, dup ...) drops it too. Never a syscall. A position
    // is what the kernel holds as long as every call moving it passes the host; one moved
    // otherwise (a call the mechanism does not hook, another descriptor or process sharing the
    // open file description) stays wrong until the next lseek or invalidation, so callers use
    // it where a wrong value costs accuracy, never a result.
    // The position recorded for `fd`, or -1.
    int64_t position(int fd) const;
    // Records `pos` for `fd` if the descriptor has a class entry (positions from 2^40 on are
    // not kept: asked for).
    void set_position(int fd, int64_t pos);
    // Advances a recorded position by `bytes` (a read at the file position); nothing when none
    // is recorded.
    void advance_position(int fd, int64_t bytes);
    void forget_position(int fd);
    // Forgets every recorded position (calls went unobserved meanwhile).
    void clear_positions();

private:
    // seq: kWriting while one thread (which won a compare-exchange) writes the fields, kValid
    // once they describe the descriptor, and a generation in the upper bits that every write
    // and invalidation advances, so a reader detects any change between its two loads. A
    // reader that finds no stable value classifies the descriptor itself.
    static constexpr uint32_t kWriting = 1, kValid = 2;
    struct Entry {
        std::atomic<uint32_t> seq{0};
        std::atomic<uint32_t> file_class{0};
        std::atomic<uint64_t> file_id{0};
        // position << 24 | kPositionSet | the low 23 bits of the generation (seq >> 2) it was
        // recorded under: valid while the entry is valid and of that generation (a number
        // reused 2^22 times since would be taken for current); 0 (also the mapped zero pages)
        // is none.
        std::atomic<uint64_t> position{0};
    };
    static constexpr int64_t kMaxPosition = int64_t{1} << 40;
    static constexpr uint64_t kPositionSet = uint64_t{1} << 23;
    static uint64_t position_tag(uint32_t seq) { return kPositionSet | ((seq >> 2) & 0x7fffff); }
    Entry* entries_ = nullptr;
    std::atomic<int> highest_{-1};  // highest descriptor ever cached: clear() stops there  //
                                    // kMaxCached entries, mmap'ed: pages cost memory only once used
};

}  // namespace liveio::agent
