#include "policy/part_prefetch.h"

#include <fcntl.h>
#include <linux/fadvise.h>
#include <linux/stat.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <cstdio>

#include "base/raw_syscall.h"
#include "policy/clickhouse_part.h"
#include "policy/file_id.h"
#include "uring/engine.h"

namespace liveio::policy {
namespace {

// Opens of the part's files: never a FIFO's blocking open, a terminal or a symlink's target.
// (No O_CLOEXEC: a direct descriptor is in no process table, and the kernel refuses the flag.)
constexpr int kOpenFlags = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW;
// The largest manifest read (18.16's columns.txt: ~30 bytes per column).
constexpr uint32_t kMaxManifest = 256 << 10;
// A part prefetched this recently is not prefetched again (the other threads of one query,
// each opening the same part's marks on a mark-cache miss).
constexpr uint64_t kRecentNs = 100'000'000;
constexpr size_t kMaxPartsRemembered = 4096;
// One FADVISE covers at most this much (its length is 32-bit in the SQE).
constexpr uint64_t kMaxAdvice = uint64_t{1} << 30;

// The directory of the file behind `fd` ("" when unknown or the file was deleted).
std::string directory_of(int fd) {
    char link[40];
    std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    char path[4096];
    const long n = liveio::raw_syscall(SYS_readlinkat, AT_FDCWD, reinterpret_cast<long>(link),
                                       reinterpret_cast<long>(path), sizeof path);
    if (n <= 0 || n >= static_cast<long>(sizeof path) || path[0] != '/') return {};
    std::string p(path, static_cast<size_t>(n));
    if (p.ends_with(" (deleted)")) return {};
    return p.substr(0, p.rfind('/'));
}

uint64_t file_id_of(const struct statx& st) {
    return file_id(makedev(st.stx_dev_major, st.stx_dev_minor), st.stx_ino);
}

}  // namespace

const std::vector<std::string>* PartPrefetcher::columns_of(uring::Engine& engine,
                                                           const std::string& dir) {
    if (auto it = columns_.find(dir); it != columns_.end()) return &it->second;
    const std::string path = dir + "/" + clickhouse::kPartManifest;
    const int slot = engine.run(uring::Op::openat_direct(AT_FDCWD, path.c_str(), kOpenFlags));
    if (slot < 0) return nullptr;
    std::string text(kMaxManifest, '\0');
    const int n = engine.run(uring::Op::read(slot, text.data(), kMaxManifest, 0).fixed());
    engine.run(uring::Op::close_direct(static_cast<unsigned>(slot)));
    if (n <= 0 || static_cast<uint32_t>(n) == kMaxManifest) return nullptr;
    text.resize(static_cast<size_t>(n));
    if (columns_.size() >= kMaxPartsRemembered) columns_.clear();
    return &(columns_[dir] = clickhouse::part_columns(text));
}

int PartPrefetcher::run(uring::Engine& engine, int fd, uint64_t max_bytes, const Issued& issued,
                        PartPrefetchResult& out) {
    out = {};
    if (engine.backend() != uring::BackendKind::Uring) return -EOPNOTSUPP;  // no direct descriptors
    const uint64_t trigger = regular_file_id(fd);
    if (trigger == 0) return -EBADF;
    const std::string dir = directory_of(fd);
    if (dir.empty()) return -ENOENT;
    const uint64_t now = liveio::raw_monotonic_ns();
    for (const Recent& r : recent_) {
        if (r.dir == dir && now - r.at_ns < kRecentNs) {
            out.skipped = true;
            return 0;
        }
    }
    recent_[next_recent_++ % std::size(recent_)] = {dir, now};
    const std::vector<std::string>* columns = columns_of(engine, dir);
    if (columns == nullptr || columns->empty()) return -ENOENT;

    // 1. Every column's index and data file looked up at once.
    const size_t n = columns->size();
    std::vector<std::string> paths(2 * n);
    std::vector<struct statx> st(2 * n);
    std::vector<uring::Op> ops;
    for (size_t i = 0; i < n; ++i) {
        const std::string base = dir + "/" + clickhouse::column_file_base((*columns)[i]);
        paths[2 * i] = base + clickhouse::kIndexSuffix;
        paths[2 * i + 1] = base + clickhouse::kDataSuffix;
    }
    for (size_t i = 0; i < 2 * n; ++i)
        ops.push_back(uring::Op::statx(AT_FDCWD, paths[i].c_str(), AT_SYMLINK_NOFOLLOW,
                                       STATX_TYPE | STATX_SIZE | STATX_INO, &st[i]));
    std::vector<int32_t> res = engine.run_batch(ops);

    // 2. The index files other than the one the target has open: opened as direct descriptors.
    std::vector<size_t> wanted;
    uint64_t total = 0;
    for (size_t i = 0; i < 2 * n; ++i) {
        if (res[i] < 0) {
            ++out.errors;
            continue;
        }
        ++out.lookups;
        if (i % 2 != 0 || !S_ISREG(st[i].stx_mode) || st[i].stx_size == 0 ||
            file_id_of(st[i]) == trigger || st[i].stx_size > kMaxAdvice ||
            total + st[i].stx_size > max_bytes || wanted.size() >= kDirectFileSlots)
            continue;
        total += st[i].stx_size;
        wanted.push_back(i);
    }
    ops.clear();
    for (size_t i : wanted)
        ops.push_back(uring::Op::openat_direct(AT_FDCWD, paths[i].c_str(), kOpenFlags));
    const std::vector<int32_t> slots = engine.run_batch(ops);

    // 3. WILLNEED of each whole file through its slot, then the slots closed.
    ops.clear();
    std::vector<size_t> advised;
    for (size_t k = 0; k < wanted.size(); ++k) {
        if (slots[k] < 0) {
            ++out.errors;
            continue;
        }
        const auto& s = st[wanted[k]];
        ops.push_back(
            uring::Op::fadvise(slots[k], 0, static_cast<uint32_t>(s.stx_size), POSIX_FADV_WILLNEED)
                .fixed());
        advised.push_back(k);
    }
    res = engine.run_batch(ops);
    ops.clear();
    for (size_t j = 0; j < advised.size(); ++j) {
        const size_t k = advised[j];
        const auto& s = st[wanted[k]];
        ops.push_back(uring::Op::close_direct(static_cast<unsigned>(slots[k])));
        if (res[j] < 0) {
            ++out.errors;
            continue;
        }
        ++out.files;
        out.bytes += s.stx_size;
        issued(file_id_of(s), s.stx_size);
    }
    for (int32_t r : engine.run_batch(ops))
        if (r < 0) ++out.errors;
    return 0;
}

}  // namespace liveio::policy
