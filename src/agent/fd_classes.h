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

// Classifies a descriptor now (syscalls: fstat, getsockopt or readlink).
FdInfo classify_fd(int fd);

class FdClassCache {
public:
    // Descriptors at or above this are classified on every call (never cached).
    static constexpr int kMaxCached = 1 << 20;

    FdClassCache();
    ~FdClassCache();
    FdClassCache(const FdClassCache&) = delete;
    FdClassCache& operator=(const FdClassCache&) = delete;

    // The cached class of `fd`, classifying it on first use. Any thread.
    FdInfo get(int fd);
    // The cached class of `fd` if there is one, else {} (never a syscall).
    FdInfo peek(int fd) const;
    // `fd` may now name another object.
    void invalidate(int fd);
    // Forgets every descriptor (calls that closed descriptors went unobserved meanwhile).
    void clear();

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
    };
    Entry* entries_ = nullptr;
    std::atomic<int> highest_{-1};  // highest descriptor ever cached: clear() stops there  //
                                    // kMaxCached entries, mmap'ed: pages cost memory only once used
};

}  // namespace liveio::agent
