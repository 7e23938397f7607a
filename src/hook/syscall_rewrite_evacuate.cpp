// Evacuation of threads sleeping in system calls that syscall rewriting makes on their behalf
// (see evacuate_fixup in syscall_rewrite_runtime.h).
//
// Why: with every syscall instruction routed through liveio, the idle threads of a server
// (futex waits of thread pools, epoll_wait, read on an idle connection) sleep in the kernel
// with liveio's dispatch code as their user-space context. Uninstall restores the
// instructions at once, but those threads would only leave liveio's code when their call
// returns, which may be never; the library could then not be unloaded.
#include <sys/syscall.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#include "base/proc_tasks.h"
#include "hook/dispatcher.h"
#include "hook/syscall_rewrite.h"
#include "hook/syscall_rewrite_runtime.h"

namespace liveio::hook {
namespace {

// The syscall instructions of the dispatch code (sorted), found once: the code never changes.
// Computed by prepare_evacuation() before any world stop that evacuates, read by the fixup.
const std::vector<uintptr_t>& dispatch_syscalls() {
    static const std::vector<uintptr_t> insns = [] {
        const auto* begin = __start_liveio_rw_dispatch;
        const auto size = static_cast<size_t>(__stop_liveio_rw_dispatch - begin);
        auto found = find_syscall_instructions(begin, size, reinterpret_cast<uintptr_t>(begin));
        std::sort(found.begin(), found.end());
        return found;
    }();
    return insns;
}

bool in_dispatch(uintptr_t pc) {
    return pc >= reinterpret_cast<uintptr_t>(__start_liveio_rw_dispatch) &&
           pc < reinterpret_cast<uintptr_t>(__stop_liveio_rw_dispatch);
}

bool is_dispatch_syscall(uintptr_t at) {
    const auto& insns = dispatch_syscalls();
    return std::binary_search(insns.begin(), insns.end(), at);
}

}  // namespace

void evacuate_fixup(void* moved, ucontext_t* uc) {
    greg_t* g = uc->uc_mcontext.gregs;
    const auto rip = static_cast<uintptr_t>(g[REG_RIP]);
    const uintptr_t rbp = liveio_rewrite_frame;
    // Before the instruction: not yet made, or rewound by the kernel to be made again
    // (SA_RESTART; rax holds the number again). After it: returned, rax holds the result.
    const bool before = is_dispatch_syscall(rip);
    const bool after = !before && is_dispatch_syscall(rip - 2);
    if (rbp == 0 || !(before || after)) return;
    const RewriteFrame* f = RewriteFrame::below(rbp);
    // A nested call (made by a handler's own code while it dispatched one) returns into that
    // code: leave it, the outer call is moved when it is back in the kernel.
    if (f->previous != 0) return;
    const auto site_next = *reinterpret_cast<const uint64_t*>(rbp + kRewriteReturnAddressOffset);
    if (after) {
        // The application registers of the call (the kernel preserved them).
        const int arg_regs[6] = {REG_RDI, REG_RSI, REG_RDX, REG_R10, REG_R8, REG_R9};
        for (int i = 0; i < 6; ++i) g[arg_regs[i]] = static_cast<greg_t>(f->args[i]);
        g[REG_RCX] = static_cast<greg_t>(site_next);  // as `syscall` leaves them
        g[REG_R11] = g[REG_EFL];
    }
    g[REG_RIP] = static_cast<greg_t>(before ? site_next - 2 : site_next);
    const uintptr_t resume_sp = rbp + kRewriteSiteRspOffset;
    g[REG_RSP] = static_cast<greg_t>(resume_sp);
#if defined(__SANITIZE_ADDRESS__)
    // The thread leaves its dispatch frames without their epilogues, which would have cleared
    // their redzones in ASan's shadow. Stale redzones there would later be "hit" by reads of
    // memory that uninstrumented writers put at those addresses (the kernel's signal frames, the
    // rewrite stub's frame), so the abandoned range is unpoisoned as a longjmp's would be.
    const auto here = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    if (resume_sp > here)
        __asan_unpoison_memory_region(reinterpret_cast<void*>(here), resume_sp - here);
#endif
    g[REG_RBP] = *reinterpret_cast<const greg_t*>(rbp);
    g[REG_RBX] = static_cast<greg_t>(f->rbx);
    g[REG_R12] = static_cast<greg_t>(f->r12);
    g[REG_R13] = static_cast<greg_t>(f->r13);
    g[REG_R14] = static_cast<greg_t>(f->r14);
    g[REG_R15] = static_cast<greg_t>(f->r15);
    if (uc->uc_mcontext.fpregs != nullptr)
        std::memcpy(uc->uc_mcontext.fpregs->_xmm, f->xmm, sizeof f->xmm);
    liveio_rewrite_frame = 0;
    if (moved != nullptr)
        static_cast<std::atomic<unsigned>*>(moved)->fetch_add(1, std::memory_order_relaxed);
    // The counted path of call_raw marked the thread inside and counted it in flight.
    if (Dispatcher::inside()) Dispatcher::instance().abandon_call(Mechanism::SyscallRewrite);
}

void prepare_evacuation() { (void)dispatch_syscalls(); }

bool threads_sleep_in_dispatch() {
    const auto self = static_cast<pid_t>(raw_syscall(SYS_gettid));
    for (const SleepingThread& t : sleeping_threads(static_cast<pid_t>(raw_syscall(SYS_getpid))))
        if (t.tid != self && in_dispatch(t.pc)) return true;
    return false;
}

}  // namespace liveio::hook
