// Internals of Mechanism::SyscallRewrite shared by the installer and the assembly entry: the
// per-site stubs through which clone/clone3/vfork are made (see syscall_rewrite.h).
#pragma once

#include <ucontext.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "base/result.h"

#define LIVEIO_STR2(x) #x
#define LIVEIO_STR(x) LIVEIO_STR2(x)

extern "C" void liveio_rewrite_entry();
extern "C" void liveio_rewrite_entry_end();  // the first byte after the entry's code

// While the entry dispatches a call: the entry's rbp (the frame below, whose RewriteFrame
// lies under it), else 0. Initial-exec TLS: read and written by the entry with two moves.
extern "C" __attribute__((visibility("hidden"),
                          tls_model("initial-exec"))) __thread uintptr_t liveio_rewrite_frame;
// The C++ dispatch function's code, which makes the application's syscall itself when it
// passes a call through.
extern "C" __attribute__((visibility("hidden"))) const uint8_t __start_liveio_rw_dispatch[];
extern "C" __attribute__((visibility("hidden"))) const uint8_t __stop_liveio_rw_dispatch[];

namespace liveio::hook {

// What the entry saved of the application at a rewritten site (layout in
// syscall_rewrite_entry.cpp). With rbp = liveio_rewrite_frame:
//   frame = (rbp & -16) - sizeof(RewriteFrame), application rbp = [rbp],
//   return address (site + 2) = [rbp + 136], application rsp at the site = rbp + 144.
struct RewriteFrame {
    uint64_t nr;
    uint64_t args[6];
    uint64_t previous;  // the thread's liveio_rewrite_frame before this call (nested: != 0)
    uint8_t xmm[16][16];
    uint64_t rbx, r12, r13, r14, r15;
    uint64_t padding;

    static RewriteFrame* below(uintptr_t rbp) {
        return reinterpret_cast<RewriteFrame*>((rbp & ~uintptr_t{15}) - sizeof(RewriteFrame));
    }
};
static_assert(sizeof(RewriteFrame) == 368);
static_assert(offsetof(RewriteFrame, previous) == 56 && offsetof(RewriteFrame, xmm) == 64 &&
              offsetof(RewriteFrame, rbx) == 320);
inline constexpr uintptr_t kRewriteReturnAddressOffset = 136;  // from the entry's rbp
inline constexpr uintptr_t kRewriteSiteRspOffset = 144;

// Evacuation: moving threads that sleep in the kernel in a system call the dispatch made on
// their behalf back to their own (restored) syscall instruction, so that uninstall need not
// wait for them (an idle thread's futex wait may never return). A world stop (world_stop.h)
// interrupts their call; this fixup then rewrites the parked thread's context: the registers
// the application had at the site, and either the instruction pointer of the site (the
// kernel had rewound a restartable call: it is made again, now from the application's code)
// or the one after it with the call's result (it had returned, e.g. -EINTR for a call that
// a signal handler interrupts, as any signal would). The call's on_exit never runs.
// `moved` (a std::atomic<unsigned>*, may be null) counts the threads moved. Threads elsewhere
// are left as they are.
void evacuate_fixup(void* moved, ucontext_t* uc);
// Finds the dispatch code's syscall instructions once (allocates): call before a world stop
// whose resume uses evacuate_fixup.
void prepare_evacuation();
// Whether some other thread of this process sleeps in a system call made by the dispatch code
// (from /proc/self/task/*/syscall). Evacuation stops the world only then.
bool threads_sleep_in_dispatch();

// Stubs `syscall; jmp *0(%rip); .quad site+2`, one per rewritten site, looked up by site
// address from the assembly entry without locks. They are unmapped after uninstall once a world
// stop shows no thread in the entry's code (threads in a stub are moved to their site; a vfork
// parent blocked in one cannot be parked, so the world stop itself waits for it), and mapped
// again by the next install. Memory is bounded by the number of distinct sites (kMaxSites).
//
// The process's one instance (the entry reaches it without context, like the Dispatcher).
class RewriteStubs {
public:
    static constexpr size_t kMaxSites = size_t{1} << 16;
    static constexpr size_t kStubSize = 16;

    static RewriteStubs& instance();

    // The stub of `site`, or 0. Lock-free; safe while stubs are being added. Inline: it runs
    // in the entry's stub path, which the release checks by code range.
    uintptr_t find(uintptr_t site) const {
        const Slot* slots = __atomic_load_n(&slots_, __ATOMIC_ACQUIRE);
        if (slots == nullptr) return 0;
        for (size_t i = hash(site), n = 0; n < kSlots; i = (i + 1) % kSlots, ++n) {
            const uintptr_t s = slots[i].site.load(std::memory_order_acquire);
            if (s == site) return slots[i].stub;
            if (s == 0) return 0;
        }
        return 0;
    }

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

    // For a parked thread's fixup: whether `ip` lies in a stub, and where a thread at `ip`
    // continues once the stubs are gone (the site's restored instruction, or the one after).
    bool in_arena(uintptr_t ip) const;
    uintptr_t moved_ip(uintptr_t ip) const;
    // Unmaps the stubs and their table (after uninstall, once no thread can reach them: none
    // in the entry's code, none in a stub after moved_ip). Caller holds mutex().
    void release();
    bool mapped() const { return arena_ != nullptr; }

private:
    struct Slot {
        std::atomic<uintptr_t> site;
        uintptr_t stub;
    };
    static constexpr size_t kSlots = kMaxSites * 2;
    static size_t hash(uintptr_t site) { return (site * 0x9E3779B97F4A7C15ull) >> (64 - 17); }

    Result<void> map_regions();

    std::mutex mutex_;
    Slot* slots_ = nullptr;     // kSlots, read-write
    uint8_t* arena_ = nullptr;  // kMaxSites * kStubSize, read+exec except while committing
    size_t used_ = 0;           // stubs written
    size_t planned_ = 0;        // stubs reserved
};

}  // namespace liveio::hook
