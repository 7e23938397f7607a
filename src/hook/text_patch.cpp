#include "hook/text_patch.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "base/raw_syscall.h"

namespace liveio::hook {
namespace {

constexpr uintptr_t kPage = 4096;

struct Mapping {
    uintptr_t lo, hi;
    int prot;
    uint64_t offset;
    unsigned dev_major, dev_minor;
    uint64_t inode;
    std::string path;
};

Result<std::vector<Mapping>> read_maps() {
    std::ifstream in("/proc/self/maps");
    if (!in) return make_error(EIO, "cannot read /proc/self/maps");
    std::vector<Mapping> maps;
    for (std::string line; std::getline(in, line);) {
        unsigned long lo, hi, off, ino;
        unsigned maj, min;
        char perms[5] = {};
        int path_at = 0;
        if (sscanf(line.c_str(), "%lx-%lx %4s %lx %x:%x %lu %n", &lo, &hi, perms, &off, &maj, &min,
                   &ino, &path_at) < 7)
            continue;
        const int prot = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
                         (perms[2] == 'x' ? PROT_EXEC : 0);
        std::string path =
            path_at > 0 && static_cast<size_t>(path_at) <= line.size() ? line.substr(path_at) : "";
        maps.push_back({lo, hi, prot, off, maj, min, ino, std::move(path)});
    }
    return maps;
}

}  // namespace

void copy_code_bytes(uintptr_t to, const uint8_t* from, size_t n) {
    // Volatile stores: the compiler must not turn the loop into a memcpy call.
    auto* volatile out = reinterpret_cast<volatile uint8_t*>(to);
    for (size_t i = 0; i < n; ++i) out[i] = from[i];
}

Result<TextPages> TextPages::covering(const std::vector<std::pair<uintptr_t, size_t>>& spans,
                                      bool with_files) {
    auto maps = read_maps();
    if (!maps) return maps.error();
    std::vector<uintptr_t> pages;
    for (auto [at, len] : spans)
        for (uintptr_t p = at & ~(kPage - 1); p < at + std::max<size_t>(len, 1); p += kPage)
            pages.push_back(p);
    std::sort(pages.begin(), pages.end());
    pages.erase(std::unique(pages.begin(), pages.end()), pages.end());

    TextPages out;
    const Mapping* run_map = nullptr;
    for (uintptr_t page : pages) {
        auto m = std::find_if(maps->begin(), maps->end(),
                              [&](const Mapping& mp) { return page >= mp.lo && page < mp.hi; });
        if (m == maps->end())
            return make_error(EFAULT, fmt::format("no mapping covers code page {:#x}", page));
        if (!out.runs_.empty() && run_map == &*m &&
            out.runs_.back().start + out.runs_.back().length == page) {
            out.runs_.back().length += kPage;
            continue;
        }
        run_map = &*m;
        out.runs_.push_back({page, kPage, m->prot, -1, m->offset + (page - m->lo), {}});
    }
    if (!with_files) return out;
    for (Run& run : out.runs_) {
        const Mapping& m = *std::find_if(maps->begin(), maps->end(), [&](const Mapping& mp) {
            return run.start >= mp.lo && run.start < mp.hi;
        });
        if (m.inode == 0 || m.path.empty() || m.path[0] != '/')
            continue;  // anonymous: nothing to give back
        // The path may now name another file (a package upgrade replaced it): use it only when
        // it is still the mapped inode.
        const int fd = ::open(m.path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        struct stat st {};
        if (fstat(fd, &st) != 0 || st.st_ino != m.inode || major(st.st_dev) != m.dev_major ||
            minor(st.st_dev) != m.dev_minor) {
            ::close(fd);
            continue;
        }
        run.file_bytes.resize(run.length);
        const ssize_t n =
            pread(fd, run.file_bytes.data(), run.length, static_cast<off_t>(run.offset));
        if (n != static_cast<ssize_t>(run.length)) {  // a page past the end of the file
            ::close(fd);
            run.file_bytes.clear();
            continue;
        }
        run.fd = fd;
        // The page before: the same file at the offset just before?
        const uintptr_t before = run.start - kPage;
        auto left = std::find_if(maps->begin(), maps->end(), [&](const Mapping& mp) {
            return before >= mp.lo && before < mp.hi;
        });
        if (left != maps->end() && left->inode == m.inode && left->dev_major == m.dev_major &&
            left->dev_minor == m.dev_minor &&
            left->offset + (before - left->lo) + kPage == run.offset)
            run.left_prot = left->prot;
    }
    return out;
}

TextPages::TextPages(TextPages&& o) noexcept : runs_(std::move(o.runs_)) { o.runs_.clear(); }

TextPages& TextPages::operator=(TextPages&& o) noexcept {
    if (this != &o) {
        this->~TextPages();
        new (this) TextPages(std::move(o));
    }
    return *this;
}

TextPages::~TextPages() {
    for (const Run& r : runs_)
        if (r.fd >= 0) ::close(r.fd);
}

bool TextPages::open_for_write() const {
    for (const Run& run : runs_) {
        if (raw_syscall(SYS_mprotect, static_cast<long>(run.start), static_cast<long>(run.length),
                        PROT_READ | PROT_WRITE) == 0)
            continue;
        for (const Run& r : runs_) {
            if (&r == &run) break;
            raw_syscall(SYS_mprotect, static_cast<long>(r.start), static_cast<long>(r.length),
                        r.prot);
        }
        return false;
    }
    return true;
}

void TextPages::close_for_write() const {
    for (const Run& run : runs_)
        raw_syscall(SYS_mprotect, static_cast<long>(run.start), static_cast<long>(run.length),
                    run.prot);
}

namespace {

// Maps [at, at + len) from the file again. When the page before it maps the same file at the
// offset just before (`left_prot` >= 0), that mapping is grown over the range instead
// (munmap, then mremap in place): a fresh mmap would hold its own struct file and never merge
// with its neighbours, while the grown mapping keeps the loader's and merges with the next one.
// The range is never left unmapped: a failed grow maps the file again.
bool map_back(uintptr_t at, size_t len, int prot, int fd, uint64_t offset, int left_prot) {
    auto map_file = [&] {
        return raw_syscall(SYS_mmap, static_cast<long>(at), static_cast<long>(len), prot,
                           MAP_PRIVATE | MAP_FIXED, fd,
                           static_cast<long>(offset)) == static_cast<long>(at);
    };
    if (!map_file()) return false;
    if (left_prot < 0 ||
        raw_syscall(SYS_munmap, static_cast<long>(at), static_cast<long>(len)) != 0)
        return true;
    const uintptr_t left = at - kPage;
    if (raw_syscall(SYS_mremap, static_cast<long>(left), static_cast<long>(kPage),
                    static_cast<long>(kPage + len), 0) != static_cast<long>(left))
        return map_file();
    if (left_prot != prot)
        raw_syscall(SYS_mprotect, static_cast<long>(at), static_cast<long>(len), prot);
    return true;
}

}  // namespace

size_t TextPages::restore_files() const {
    size_t given_back = 0;
    for (const Run& run : runs_) {
        if (run.fd < 0) continue;
        // Maximal ranges of pages whose bytes equal the file's: a page another mechanism still
        // patches keeps its copy, its neighbours do not.
        auto equal = [&](size_t off) {
            const auto* now = reinterpret_cast<const volatile uint8_t*>(run.start + off);
            for (size_t i = 0; i < kPage; ++i)
                if (now[i] != run.file_bytes[off + i]) return false;
            return true;
        };
        for (size_t off = 0; off < run.length;) {
            if (!equal(off)) {
                off += kPage;
                continue;
            }
            size_t end = off + kPage;
            while (end < run.length && equal(end)) end += kPage;
            const int left_prot = off == 0 ? run.left_prot : -1;  // else the page before is a copy
            if (map_back(run.start + off, end - off, run.prot, run.fd, run.offset + off, left_prot))
                given_back += (end - off) / kPage;
            off = end;
        }
    }
    return given_back;
}

size_t TextPages::pages() const {
    size_t n = 0;
    for (const Run& r : runs_) n += r.length / kPage;
    return n;
}

}  // namespace liveio::hook
