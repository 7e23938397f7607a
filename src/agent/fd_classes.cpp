#include "agent/fd_classes.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <cstdio>
#include <new>

#include "hook/dispatcher.h"
#include "liveio/io_edge.h"

namespace liveio::agent {

FdInfo classify_fd(int fd, const char* opened_path) {
    // Raw syscalls: this runs inside a hooked call, and must reach the kernel directly.
    using hook::raw_syscall;
    struct stat st {};
    if (fd < 0 || raw_syscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0) return {};
    FdInfo info;
    info.file_id = (static_cast<uint64_t>(st.st_dev) << 32) ^ static_cast<uint64_t>(st.st_ino);
    switch (st.st_mode & S_IFMT) {
        case S_IFSOCK: {
            int domain = 0, type = 0;
            socklen_t len = sizeof domain;
            raw_syscall(SYS_getsockopt, fd, SOL_SOCKET, SO_DOMAIN, reinterpret_cast<long>(&domain),
                        reinterpret_cast<long>(&len));
            len = sizeof type;
            raw_syscall(SYS_getsockopt, fd, SOL_SOCKET, SO_TYPE, reinterpret_cast<long>(&type),
                        reinterpret_cast<long>(&len));
            if ((domain == AF_INET || domain == AF_INET6) && type == SOCK_STREAM)
                info.file_class = LIVEIO_CLASS_TCP;
            else if (domain == AF_UNIX)
                info.file_class = LIVEIO_CLASS_UNIX;
            else
                info.file_class = LIVEIO_CLASS_OTHER;
            break;
        }
        case S_IFIFO: info.file_class = LIVEIO_CLASS_PIPE; break;
        case S_IFREG: {
            if (opened_path != nullptr && opened_path[0] == '/') {
                info.file_class = classify_clickhouse_path(opened_path);
                break;
            }
            char link[64];
            std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
            char path[4096];
            const long n = raw_syscall(SYS_readlink, reinterpret_cast<long>(link),
                                       reinterpret_cast<long>(path), sizeof path);
            info.file_class =
                n > 0 ? classify_clickhouse_path(std::string_view(path, static_cast<size_t>(n)))
                      : static_cast<uint32_t>(LIVEIO_CLASS_FILE);
            break;
        }
        default: info.file_class = LIVEIO_CLASS_OTHER; break;
    }
    return info;
}

FdClassCache::FdClassCache() {
    void* p = ::mmap(nullptr, sizeof(Entry) * kMaxCached, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    entries_ = static_cast<Entry*>(p);  // zeroed pages: every entry "never classified"
}

FdClassCache::~FdClassCache() { ::munmap(entries_, sizeof(Entry) * kMaxCached); }

FdInfo FdClassCache::get(int fd, const char* opened_path) {
    if (fd < 0) return {};
    if (fd >= kMaxCached) return classify_fd(fd, opened_path);
    Entry& e = entries_[fd];
    const uint32_t seq = e.seq.load(std::memory_order_acquire);
    if ((seq & (kWriting | kValid)) == kValid) {
        FdInfo info{e.file_class.load(std::memory_order_relaxed),
                    e.file_id.load(std::memory_order_relaxed)};
        std::atomic_thread_fence(std::memory_order_acquire);
        if (e.seq.load(std::memory_order_relaxed) == seq) return info;
    }
    const FdInfo info = classify_fd(fd, opened_path);
    uint32_t expected = seq;
    if ((seq & kWriting) == 0 &&
        e.seq.compare_exchange_strong(expected, seq | kWriting, std::memory_order_acquire)) {
        e.file_class.store(info.file_class, std::memory_order_relaxed);
        e.file_id.store(info.file_id, std::memory_order_relaxed);
        e.seq.store(((seq & ~3u) + 4) | kValid, std::memory_order_release);
        int high = highest_.load(std::memory_order_relaxed);
        while (fd > high && !highest_.compare_exchange_weak(high, fd, std::memory_order_relaxed)) {
        }
    }
    return info;
}

FdInfo FdClassCache::peek(int fd) const {
    if (fd < 0 || fd >= kMaxCached) return {};
    const Entry& e = entries_[fd];
    const uint32_t seq = e.seq.load(std::memory_order_acquire);
    if ((seq & (kWriting | kValid)) != kValid) return {};
    FdInfo info{e.file_class.load(std::memory_order_relaxed),
                e.file_id.load(std::memory_order_relaxed)};
    std::atomic_thread_fence(std::memory_order_acquire);
    return e.seq.load(std::memory_order_relaxed) == seq ? info : FdInfo{};
}

void FdClassCache::invalidate(int fd) {
    if (fd < 0 || fd >= kMaxCached) return;
    Entry& e = entries_[fd];
    // The generation advances, so a reader that sampled the old value notices. A writer busy
    // meanwhile makes the exchange fail: its result is then stored as valid, and it was
    // computed after this call's object change or before it -- a race the application itself
    // would have between closing a descriptor and using it on another thread.
    uint32_t seq = e.seq.load(std::memory_order_relaxed);
    while ((seq & kValid) && !(seq & kWriting) &&
           !e.seq.compare_exchange_weak(seq, (seq & ~3u) + 4, std::memory_order_release)) {
    }
}

int64_t FdClassCache::position(int fd) const {
    if (fd < 0 || fd >= kMaxCached) return -1;
    const Entry& e = entries_[fd];
    const uint32_t seq = e.seq.load(std::memory_order_acquire);
    if ((seq & (kWriting | kValid)) != kValid) return -1;
    const uint64_t word = e.position.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (e.seq.load(std::memory_order_relaxed) != seq || (word & 0xffffff) != position_tag(seq))
        return -1;
    return static_cast<int64_t>(word >> 24);
}

void FdClassCache::set_position(int fd, int64_t pos) {
    if (fd < 0 || fd >= kMaxCached) return;
    Entry& e = entries_[fd];
    const uint32_t seq = e.seq.load(std::memory_order_acquire);
    if ((seq & (kWriting | kValid)) != kValid) return;
    if (pos < 0 || pos >= kMaxPosition) {
        e.position.store(0, std::memory_order_relaxed);
        return;
    }
    e.position.store(static_cast<uint64_t>(pos) << 24 | position_tag(seq),
                     std::memory_order_relaxed);
}

void FdClassCache::advance_position(int fd, int64_t bytes) {
    const int64_t pos = position(fd);
    if (pos >= 0) set_position(fd, pos + bytes);
}

void FdClassCache::forget_position(int fd) {
    if (fd < 0 || fd >= kMaxCached) return;
    entries_[fd].position.store(0, std::memory_order_relaxed);
}

void FdClassCache::clear_positions() {
    const int high = highest_.load(std::memory_order_relaxed);
    for (int fd = 0; fd <= high; ++fd) entries_[fd].position.store(0, std::memory_order_relaxed);
}

void FdClassCache::clear() {
    const int high = highest_.load(std::memory_order_relaxed);
    for (int fd = 0; fd <= high; ++fd)
        if (entries_[fd].seq.load(std::memory_order_relaxed) & kValid) invalidate(fd);
}

}  // namespace liveio::agent
