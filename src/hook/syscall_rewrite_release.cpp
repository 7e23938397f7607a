// What syscall rewriting maps besides the text it patches (page 0 and the per-site stubs) is
// unmapped after uninstall, once a world stop proves that no thread can reach it again.
//
// Page 0: after uninstall no rewritten instruction leads there. A thread parked inside the
// sled is moved to its site's restored instruction (the retired tail's own logic). What a
// world stop cannot move is a context saved in a signal frame: a signal handler that
// interrupted a thread inside the sled returns there when it ends. Every parked thread
// therefore scans the part of its stack in use (from its stack pointer to the end of that
// stack, following signal frames onto other stacks) for x86-64 signal frames (a 16-byte aligned
// ucontext whose fpregs pointer lies just above it and whose saved cs and eflags are those of
// user code) whose saved instruction pointer is in page 0. If one exists, page 0 stays mapped,
// retired (it sends that thread on to its restored instruction when the handler returns): the one
// exception, named by the uninstall report and docs/SECURITY.md. A false match only keeps the page
// too.
//
// Stubs: a parked thread inside a stub is moved to the site's instruction; threads in the
// entry's code (which may be on their way to a stub) make the round inconclusive, and the
// release is tried again.
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "hook/dispatcher.h"
#include "hook/syscall_rewrite.h"
#include "hook/syscall_rewrite_runtime.h"
#include "hook/world_stop.h"

namespace liveio::hook {
namespace {

constexpr uintptr_t kPage = 4096;
constexpr size_t kMaxRanges = 65536;
constexpr size_t kMaxScan = size_t{64} << 20;  // a stack region larger than this is not proven

// The process's mappings, read at the world stop with raw syscalls into storage allocated
// before it.
struct Ranges {
    std::vector<char> text;
    std::vector<std::pair<uintptr_t, uintptr_t>> ranges;

    void prepare() {
        text.assign(size_t{8} << 20, '\0');
        ranges.assign(kMaxRanges, {0, 0});
    }
    size_t read() {
        const long fd =
            raw_syscall(SYS_open, reinterpret_cast<long>("/proc/self/maps"), 0 /* O_RDONLY */);
        if (fd < 0) return 0;
        size_t len = 0;
        for (long n; len < text.size() &&
                     (n = raw_syscall(SYS_read, fd, reinterpret_cast<long>(text.data() + len),
                                      static_cast<long>(text.size() - len))) > 0;)
            len += static_cast<size_t>(n);
        raw_syscall(SYS_close, fd);
        size_t count = 0;
        for (size_t i = 0; i < len && count < kMaxRanges;) {
            auto hex = [&](size_t& at) {
                uintptr_t v = 0;
                for (; at < len; ++at) {
                    const char c = text[at];
                    const int d = c >= '0' && c <= '9'   ? c - '0'
                                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                                         : -1;
                    if (d < 0) break;
                    v = v * 16 + static_cast<uintptr_t>(d);
                }
                return v;
            };
            const uintptr_t lo = hex(i);
            ++i;  // '-'
            const uintptr_t hi = hex(i);
            ranges[count++] = {lo, hi};
            while (i < len && text[i] != '\n') ++i;
            ++i;
        }
        return count;
    }
};

struct ReleaseRound {
    const Ranges* ranges;
    size_t range_count;
    std::atomic<unsigned> moved{0};
    std::atomic<unsigned> busy{0};         // threads in liveio's entry or dispatch code
    std::atomic<unsigned> sled_frames{0};  // signal frames that return into page 0
};

uintptr_t mapping_end(const ReleaseRound& r, uintptr_t at) {
    for (size_t i = 0; i < r.range_count; ++i)
        if (at >= r.ranges->ranges[i].first && at < r.ranges->ranges[i].second)
            return r.ranges->ranges[i].second;
    return 0;
}

bool in_code(uintptr_t ip, const void* begin, const void* end) {
    return ip >= reinterpret_cast<uintptr_t>(begin) && ip < reinterpret_cast<uintptr_t>(end);
}

// A signal frame's ucontext at `uc`: struct rt_sigframe places it right after the restorer,
// its FPU state above it; the saved context is of 64-bit user code (cs 0x33, eflags with the
// always-one bit and interrupts enabled). It reads whatever a stack holds at `uc`, by design
// also bytes no C++ object owns (ASan's redzones around a stopped thread's locals): ASan's
// checks are off here and in scan_stacks, which reads the frames it finds.
__attribute__((no_sanitize("address"))) bool looks_like_signal_frame(const ucontext_t* uc) {
    const auto at = reinterpret_cast<uintptr_t>(uc);
    const auto fp = reinterpret_cast<uintptr_t>(uc->uc_mcontext.fpregs);
    const greg_t* g = uc->uc_mcontext.gregs;
    return uc->uc_flags <= 0xff && fp > at && fp < at + 65536 && (g[REG_CSGSFS] & 0xffff) == 0x33 &&
           (g[REG_EFL] & 0x202) == 0x202;
}

// Scans [from, end of its stack) for signal frames, following each frame's saved stack pointer
// when it lies on another stack. Returns false when a region cannot be bounded.
__attribute__((no_sanitize("address"))) bool scan_stacks(ReleaseRound& round, uintptr_t from,
                                                         uintptr_t alt_lo, uintptr_t alt_hi) {
    uintptr_t pending[4] = {from};
    int npending = 1, scanned = 0;
    while (npending > 0) {
        const uintptr_t start = pending[--npending];
        if (++scanned > 8) return false;
        const uintptr_t end =
            start >= alt_lo && start < alt_hi ? alt_hi : mapping_end(round, start);
        if (end == 0 || end - start > kMaxScan) return false;
        // rt_sigframe is 16-byte aligned minus the restorer: the ucontext is 16-byte aligned.
        for (uintptr_t at = (start + 15) & ~uintptr_t{15}; at + sizeof(ucontext_t) <= end;
             at += 16) {
            const auto* uc = reinterpret_cast<const ucontext_t*>(at);
            if (!looks_like_signal_frame(uc)) continue;
            const auto ip = static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]);
            const auto sp = static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RSP]);
            if (ip < kPage) round.sled_frames.fetch_add(1, std::memory_order_relaxed);
            if ((sp < start || sp >= end) && npending < 4) pending[npending++] = sp;
        }
    }
    return true;
}

void release_fixup(void* raw, ucontext_t* uc) {
    auto& round = *static_cast<ReleaseRound*>(raw);
    evacuate_fixup(&round.moved, uc);
    greg_t* g = uc->uc_mcontext.gregs;
    auto ip = static_cast<uintptr_t>(g[REG_RIP]);
    const RewriteStubs& stubs = RewriteStubs::instance();
    if (ip < kPage) {
        // Inside the sled: [rsp] is the return address the rewritten call pushed. Continue at
        // the restored instruction before it, as the retired tail would. (A call through a null
        // pointer has none: it faults once page 0 is gone, as it would have without liveio.)
        const auto ret = *reinterpret_cast<const uintptr_t*>(g[REG_RSP]);
        uint16_t insn;
        __builtin_memcpy(&insn, reinterpret_cast<const void*>(ret - 2), 2);
        if (insn == 0x050f || insn == 0x340f) {
            g[REG_RIP] = static_cast<greg_t>(ret - 2);
            g[REG_RSP] += 8;
        }
    } else if (stubs.in_arena(ip)) {
        g[REG_RIP] = static_cast<greg_t>(stubs.moved_ip(ip));
    }
    ip = static_cast<uintptr_t>(g[REG_RIP]);
    if (in_code(ip, reinterpret_cast<const void*>(&liveio_rewrite_entry),
                reinterpret_cast<const void*>(&liveio_rewrite_entry_end)) ||
        in_code(ip, __start_liveio_rw_dispatch, __stop_liveio_rw_dispatch))
        round.busy.fetch_add(1, std::memory_order_relaxed);
    stack_t alt{};
    uintptr_t alt_lo = 0, alt_hi = 0;
    if (raw_syscall(SYS_sigaltstack, 0, reinterpret_cast<long>(&alt)) == 0 &&
        !(alt.ss_flags & SS_DISABLE)) {
        alt_lo = reinterpret_cast<uintptr_t>(alt.ss_sp);
        alt_hi = alt_lo + alt.ss_size;
    }
    if (!scan_stacks(round, static_cast<uintptr_t>(g[REG_RSP]), alt_lo, alt_hi))
        round.sled_frames.fetch_add(1, std::memory_order_relaxed);  // not proven: keep the page
}

bool page_zero_mapped() {
    // msync fails with ENOMEM on an unmapped range, whatever the protection.
    return raw_syscall(SYS_msync, 0, kPage, MS_ASYNC) == 0;
}

}  // namespace

Result<void> release_rewrite_memory(UninstallReport& report) {
    if (!page_zero_mapped() && !RewriteStubs::instance().mapped()) return {};
    Ranges ranges;
    ranges.prepare();
    constexpr int kRounds = 100;
    for (int attempt = 0; attempt < kRounds; ++attempt) {
        auto stopped = WorldStop::stop();
        if (!stopped) return stopped.error();
        ++report.world_stops;
        ReleaseRound round{&ranges, ranges.read()};
        (*stopped)->resume(release_fixup, &round);
        report.moved_out += round.moved.load();
        if (round.busy.load() != 0) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            continue;
        }
        // No thread can reach the stubs, nor page 0 unless a signal frame returns there.
        RewriteStubs::instance().release();
        if (round.sled_frames.load() == 0) {
            raw_syscall(SYS_munmap, 0, kPage);
        } else {
            report.kept =
                "page 0 (retired sled): a signal handler interrupted a thread inside the sled and "
                "has not returned; it returns through the page";
        }
        return {};
    }
    return make_error(EBUSY, "threads kept running liveio's syscall entry through " +
                                 std::to_string(kRounds) +
                                 " world stops: its stubs and page 0 stay mapped");
}

}  // namespace liveio::hook
