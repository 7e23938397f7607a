#include "policy/part_prefetch.h"

#include <fcntl.h>
#include <linux/fadvise.h>
#include <linux/stat.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#include <algorithm>
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
// A part begun this recently is not begun again (the other threads of one query, each
// opening the same part's marks on a mark-cache miss): their opens join its reader.
constexpr uint64_t kRecentNs = 100'000'000;
constexpr size_t kMaxPartsRemembered = 4096;
constexpr size_t kMaxTablesRemembered = 1024;
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

// The column names of the manifest in `dir`; empty when there is none.
std::vector<std::string> read_manifest(uring::Engine& engine, const std::string& dir) {
    const std::string path = dir + "/" + clickhouse::kPartManifest;
    const int slot = engine.run(uring::Op::openat_direct(AT_FDCWD, path.c_str(), kOpenFlags));
    if (slot < 0) return {};
    std::string text(kMaxManifest, '\0');
    const int n = engine.run(uring::Op::read(slot, text.data(), kMaxManifest, 0).fixed());
    engine.run(uring::Op::close_direct(static_cast<unsigned>(slot)));
    if (n <= 0 || static_cast<uint32_t>(n) == kMaxManifest) return {};
    text.resize(static_cast<size_t>(n));
    return clickhouse::part_columns(text);
}

}  // namespace

int PartPrefetcher::run(uring::Engine& engine, const PartRequest& request, uint64_t max_bytes,
                        const Issued& issued, PartPrefetchResult& out) {
    out = {};
    if (engine.backend() != uring::BackendKind::Uring) return -EOPNOTSUPP;  // no direct descriptors
    std::lock_guard lock(history_.mu);
    Part* part = nullptr;
    const auto known = part_of_.find(request.file_id);
    if ((request.flags & kPartFirst) != 0 || known == part_of_.end()) {
        if (const int rc = begin(engine, request, part, out); rc < 0) return rc;
    } else {
        part = &parts_.at(known->second);
    }
    const auto at = std::find(part->ids.begin(), part->ids.end(), request.file_id);
    if (at == part->ids.end()) return -ENOENT;
    const auto column = static_cast<size_t>(at - part->ids.begin());
    part->advised[column] = true;  // the target reads it now
    Reader* self = reader_of(*part);
    if (self != nullptr && std::find(self->opened.begin(), self->opened.end(),
                                     part->columns[column]) == self->opened.end())
        self->opened.push_back(part->columns[column]);
    if (part->all) return 0;
    std::vector<size_t> next;
    if ((request.flags & kPartAll) != 0 || self == nullptr) {
        for (size_t i = 0; i < part->columns.size(); ++i)
            if (!part->advised[i]) next.push_back(i);
        part->all = true;
    } else {
        next = predict(*part, *self);
    }
    advise(engine, *part, next, max_bytes, issued, out);
    return 0;
}

int PartPrefetcher::begin(uring::Engine& engine, const PartRequest& request, Part*& part,
                          PartPrefetchResult& out) {
    std::string dir;
    if (const auto known = part_of_.find(request.file_id); known != part_of_.end()) {
        dir = known->second;
    } else {
        // The descriptor may have been closed, or reused for another file, since the open.
        if (request.file_id == 0 || regular_file_id(request.fd) != request.file_id) return -EBADF;
        dir = directory_of(request.fd);
        if (dir.empty()) return -ENOENT;
    }
    const uint64_t now = liveio::raw_monotonic_ns();
    if (const auto it = parts_.find(dir);
        it != parts_.end() && it->second.begun_ns != 0 && now - it->second.begun_ns < kRecentNs) {
        part = &it->second;  // another thread of the same query: its opens join the reader
        return 0;
    }
    if (parts_.size() >= kMaxPartsRemembered && !parts_.contains(dir)) {
        parts_.clear();
        part_of_.clear();
    }
    Part& p = parts_[dir];
    if (p.columns.empty()) {
        p.columns = read_manifest(engine, dir);
        if (p.columns.empty()) {
            parts_.erase(dir);
            return -ENOENT;
        }
        p.table = clickhouse::table_of(dir);
        for (const std::string& c : p.columns)
            p.paths.push_back(dir + "/" + clickhouse::column_file_base(c));
    }

    // Every column's index and data file looked up at once: the index files' sizes and
    // identities (a later open of one names its column), and the inodes the target's own
    // opens will need.
    const size_t n = p.columns.size();
    std::vector<std::string> paths(2 * n);
    std::vector<struct statx> st(2 * n);
    std::vector<uring::Op> ops;
    for (size_t i = 0; i < n; ++i) {
        paths[2 * i] = p.paths[i] + clickhouse::kIndexSuffix;
        paths[2 * i + 1] = p.paths[i] + clickhouse::kDataSuffix;
    }
    for (size_t i = 0; i < 2 * n; ++i)
        ops.push_back(uring::Op::statx(AT_FDCWD, paths[i].c_str(), AT_SYMLINK_NOFOLLOW,
                                       STATX_TYPE | STATX_SIZE | STATX_INO, &st[i]));
    const std::vector<int32_t> res = engine.run_batch(ops);
    p.sizes.assign(n, 0);
    p.ids.assign(n, 0);
    for (size_t i = 0; i < 2 * n; ++i) {
        if (res[i] < 0) continue;  // a column whose files are named otherwise: one lookup lost
        ++out.lookups;
        if (i % 2 != 0 || !S_ISREG(st[i].stx_mode)) continue;
        p.sizes[i / 2] = st[i].stx_size;
        p.ids[i / 2] = file_id_of(st[i]);
        part_of_[p.ids[i / 2]] = dir;
    }
    p.begun_ns = now;
    p.advised.assign(n, false);
    for (size_t i = 0; i < n; ++i) p.advised[i] = p.sizes[i] == 0;  // nothing to advise
    p.all = false;

    // The reader's record, the table's newest (none for `all`: its later opens are not
    // reported). The part's previous reader is finished: an older record of the same columns
    // goes (the history keeps distinct readers).
    part = &p;
    const Reader* prev = reader_of(p);
    const uint64_t prev_id = prev != nullptr ? prev->id : 0;
    const std::vector<std::string> done =
        prev != nullptr ? prev->opened : std::vector<std::string>{};
    p.reader = 0;
    if ((request.flags & kPartAll) != 0) return 0;
    if (history_.tables.size() >= kMaxTablesRemembered && !history_.tables.contains(p.table))
        history_.tables.clear();
    std::deque<Reader>& readers = history_.tables[p.table];
    if (prev_id != 0)
        std::erase_if(readers,
                      [&](const Reader& r) { return r.id != prev_id && r.opened == done; });
    readers.push_front({history_.next_reader++, {}});
    if (readers.size() > kReadersPerTable) readers.pop_back();
    p.reader = readers.front().id;
    return 0;
}

PartPrefetcher::Reader* PartPrefetcher::reader_of(const Part& part) {
    const auto t = history_.tables.find(part.table);
    if (t == history_.tables.end()) return nullptr;
    for (Reader& r : t->second)
        if (r.id == part.reader) return &r;
    return nullptr;
}

// The part's columns not advised yet that every other reader of the table that opened all
// of `self`'s columns so far also opened. No such reader: nothing while `self` has opened one
// column (most likely a one-column reader), every column from its second on. The order of the
// opens does not count: the threads of one query build their readers of a part at once, and
// which thread opens which marks file first (the other finds it in the mark cache) varies.
std::vector<size_t> PartPrefetcher::predict(const Part& part, const Reader& self) const {
    auto opened = [](const Reader& r, const std::string& column) {
        return std::find(r.opened.begin(), r.opened.end(), column) != r.opened.end();
    };
    std::vector<const Reader*> alike;
    for (const Reader& r : history_.tables.at(part.table))
        if (r.id != self.id && std::all_of(self.opened.begin(), self.opened.end(),
                                           [&](const std::string& c) { return opened(r, c); }))
            alike.push_back(&r);
    std::vector<size_t> next;
    for (size_t i = 0; i < part.columns.size(); ++i) {
        if (part.advised[i]) continue;
        const bool every = std::all_of(alike.begin(), alike.end(), [&](const Reader* r) {
            return opened(*r, part.columns[i]);
        });
        if (alike.empty() ? self.opened.size() >= 2 : every) next.push_back(i);
    }
    return next;
}

// Each column's index file: opened as a direct descriptor, WILLNEED of the whole file through
// it, the slot closed; each step one batch.
void PartPrefetcher::advise(uring::Engine& engine, Part& part, const std::vector<size_t>& columns,
                            uint64_t max_bytes, const Issued& issued, PartPrefetchResult& out) {
    std::vector<size_t> wanted;
    uint64_t total = 0;
    for (size_t i : columns) {
        const uint64_t size = part.sizes[i];
        if (size == 0 || size > kMaxAdvice || total + size > max_bytes ||
            wanted.size() >= kDirectFileSlots)
            continue;
        total += size;
        wanted.push_back(i);
        part.advised[i] = true;
    }
    if (std::all_of(part.advised.begin(), part.advised.end(), [](bool a) { return a; }))
        part.all = true;
    if (wanted.empty()) return;
    std::vector<std::string> paths;
    std::vector<uring::Op> ops;
    for (size_t i : wanted) paths.push_back(part.paths[i] + clickhouse::kIndexSuffix);
    for (const std::string& path : paths)
        ops.push_back(uring::Op::openat_direct(AT_FDCWD, path.c_str(), kOpenFlags));
    const std::vector<int32_t> slots = engine.run_batch(ops);

    ops.clear();
    std::vector<size_t> opened;
    for (size_t k = 0; k < wanted.size(); ++k) {
        if (slots[k] < 0) {
            ++out.errors;
            continue;
        }
        const auto len = static_cast<uint32_t>(part.sizes[wanted[k]]);
        ops.push_back(uring::Op::fadvise(slots[k], 0, len, POSIX_FADV_WILLNEED).fixed());
        opened.push_back(k);
    }
    const std::vector<int32_t> res = engine.run_batch(ops);
    ops.clear();
    for (size_t j = 0; j < opened.size(); ++j) {
        const size_t k = opened[j];
        ops.push_back(uring::Op::close_direct(static_cast<unsigned>(slots[k])));
        if (res[j] < 0) {
            ++out.errors;
            continue;
        }
        ++out.files;
        out.bytes += part.sizes[wanted[k]];
        issued(part.ids[wanted[k]], part.sizes[wanted[k]]);
    }
    for (int32_t r : engine.run_batch(ops))
        if (r < 0) ++out.errors;
}

}  // namespace liveio::policy
