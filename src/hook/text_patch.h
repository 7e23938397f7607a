// Patching code pages in place without a writable and executable mapping, and giving restored
// pages back to the file they came from.
//
// A page is made writable (and not executable) for the write and gets its own protection back
// right after; the caller has every other thread parked (world_stop.h), so no thread executes
// the page meanwhile, and the write itself runs only liveio code and raw syscalls (the page may
// hold libc's memcpy or mprotect). A vfork child cannot run through the page either: its parent
// thread waits for it killably, so a world stop does not complete while one exists.
//
// Writing to a private file mapping gives the process its own copy of the page (and splits the
// mapping: the written part is accounted and carries an anon_vma, so mprotect cannot merge it
// back). Once the original bytes are back, restore_files() maps the file range over each copy
// whose bytes equal the file's, same offset and protection: the page is shared with the page
// cache again. To merge with its neighbours the range must belong to the loader's own mapping
// (a mapping merges only with one of the same struct file), so the mapping before it is grown
// over it (munmap + mremap in place) when it maps the same file just before. Pages whose bytes
// differ (another mechanism still patches them, or the file changed on disk) stay copies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "base/result.h"

namespace liveio::hook {

class TextPages {
public:
    // The pages covering `spans` (address, length), with the protection of their mappings and,
    // when `with_files`, what restore_files() needs (file opened and its page bytes read).
    // Allocates and reads files: call before the world stops.
    static Result<TextPages> covering(const std::vector<std::pair<uintptr_t, size_t>>& spans,
                                      bool with_files);
    TextPages() = default;
    TextPages(TextPages&&) noexcept;
    TextPages& operator=(TextPages&&) noexcept;
    TextPages(const TextPages&) = delete;
    TextPages& operator=(const TextPages&) = delete;
    ~TextPages();

    // Makes every page writable and not executable; false (nothing changed) if one cannot be.
    bool open_for_write() const;
    // Gives every page its own protection back.
    void close_for_write() const;
    // Maps the file over pages whose bytes equal the file's again. Returns how many pages were
    // given back. Raw syscalls only.
    size_t restore_files() const;

    size_t pages() const;

    struct Run {
        uintptr_t start;
        size_t length;
        int prot;
        int fd = -1;          // the mapping's file, checked to be the mapped inode
        uint64_t offset = 0;  // file offset of `start`
        int left_prot = -1;   // the page before maps the same file just before: its protection
        std::vector<uint8_t> file_bytes;
    };

private:
    std::vector<Run> runs_;
};

// Stores `n` bytes with plain byte stores from liveio's own code (never libc's memcpy, which
// may live on a page being written).
void copy_code_bytes(uintptr_t to, const uint8_t* from, size_t n);

}  // namespace liveio::hook
