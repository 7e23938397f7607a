// Internals of Mechanism::SyscallRewrite shared by the installer and the assembly entry: the
// per-site stubs through which clone/clone3/vfork are made (see syscall_rewrite.h).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "base/result.h"

#define LIVEIO_STR2(x) #x
#define LIVEIO_STR(x) LIVEIO_STR2(x)

extern "C" void liveio_rewrite_entry();

namespace liveio::hook {

// Stubs `syscall; jmp *0(%rip); .quad site+2`, one per rewritten site, looked up by site
// address from the assembly entry without locks. They are never freed: a vfork parent may
// sit inside one (blocked in the kernel) long after uninstall, and the same sites are reused
// by the next install. Memory is bounded by the number of distinct sites (kMaxSites).
//
// The process's one instance (the entry reaches it without context, like the Dispatcher).
class RewriteStubs {
public:
    static constexpr size_t kMaxSites = size_t{1} << 16;
    static constexpr size_t kStubSize = 16;

    static RewriteStubs& instance();

    // The stub of `site`, or 0. Lock-free; safe while stubs are being added.
    uintptr_t find(uintptr_t site) const;

    struct Pending {
        uintptr_t site;
        uintptr_t stub;
    };
    // Reserves stubs for the sites that have none yet (may allocate: call before stopping the
    // world). Caller holds mutex().
    Result<std::vector<Pending>> plan(const std::vector<uintptr_t>& sites);
    // Writes and publishes planned stubs with raw syscalls only (safe while the world is
    // stopped). Caller holds mutex().
    Result<void> commit(const std::vector<Pending>& pending);

    // Serializes install and uninstall in the process.
    std::mutex& mutex() { return mutex_; }

private:
    struct Slot {
        std::atomic<uintptr_t> site;
        uintptr_t stub;
    };
    static constexpr size_t kSlots = kMaxSites * 2;
    static size_t hash(uintptr_t site) { return (site * 0x9E3779B97F4A7C15ull) >> (64 - 17); }

    Result<void> map_regions();

    std::mutex mutex_;
    Slot* slots_ = nullptr;        // kSlots, read-write
    uint8_t* arena_ = nullptr;     // kMaxSites * kStubSize, read+exec except while committing
    size_t used_ = 0;              // stubs written
    size_t planned_ = 0;           // stubs reserved
};

}  // namespace liveio::hook
