// Evacuation of threads sleeping in system calls that syscall rewriting makes on their behalf
// (see evacuate_dispatched_calls in syscall_rewrite_runtime.h).
//
// Why: with every syscall instruction routed through liveio, the idle threads of a server
// (futex waits of thread pools, epoll_wait, read on an idle connection) sleep in the kernel
// with liveio's dispatch code as their user-space context. Uninstall restores the
// instructions at once, but those threads would only leave liveio's code when their call
// returns, which may be never; the library could then not be unloaded. Each such thread is
// sent a signal; the kernel interrupts its call and runs our handler, which edits the saved
// context so that sigreturn resumes the application exactly where the call was made.
#include <dirent.h>
#include <signal.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "hook/dispatcher.h"
#include "hook/syscall_rewrite.h"
#include "hook/syscall_rewrite_runtime.h"

namespace liveio::hook {
namespace {

// The syscall instructions of the dispatch code (sorted), found once: the code never changes.
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

// Read by the handler; written only while no evacuation signal can be delivered.
const std::vector<uintptr_t>* g_insns = nullptr;
pid_t g_pid = 0;
std::atomic<int> g_handled{0};
std::atomic<int> g_evacuated{0};

bool is_dispatch_syscall(uintptr_t at) { return std::binary_search(g_insns->begin(), g_insns->end(), at); }

void evacuate_handler(int, siginfo_t* info, void* context) {
    // Only our own tgkill (SI_TKILL from this process) moves anything.
    if (info->si_code != SI_TKILL || info->si_pid != g_pid) return;
    auto* uc = static_cast<ucontext_t*>(context);
    greg_t* g = uc->uc_mcontext.gregs;
    const auto rip = static_cast<uintptr_t>(g[REG_RIP]);
    const uintptr_t rbp = liveio_rewrite_frame;
    // Before the instruction: not yet made, or rewound by the kernel to be made again
    // (SA_RESTART; rax holds the number again). After it: returned, rax holds the result.
    const bool before = is_dispatch_syscall(rip);
    const bool after = !before && is_dispatch_syscall(rip - 2);
    if (rbp != 0 && (before || after)) {
        const RewriteFrame* f = RewriteFrame::below(rbp);
        // A nested call (made by a handler's own code while it dispatched one) returns into
        // that code: leave it, the outer call is moved when it is back in the kernel.
        if (f->previous == 0) {
            const auto site_next = *reinterpret_cast<const uint64_t*>(rbp + kRewriteReturnAddressOffset);
            if (after) {
                // The application registers of the call (the kernel preserved them).
                const int arg_regs[6] = {REG_RDI, REG_RSI, REG_RDX, REG_R10, REG_R8, REG_R9};
                for (int i = 0; i < 6; ++i) g[arg_regs[i]] = static_cast<greg_t>(f->args[i]);
                g[REG_RCX] = static_cast<greg_t>(site_next);  // as `syscall` leaves them
                g[REG_R11] = g[REG_EFL];
            }
            g[REG_RIP] = static_cast<greg_t>(before ? site_next - 2 : site_next);
            g[REG_RSP] = static_cast<greg_t>(rbp + kRewriteSiteRspOffset);
            g[REG_RBP] = *reinterpret_cast<const greg_t*>(rbp);
            g[REG_RBX] = static_cast<greg_t>(f->rbx);
            g[REG_R12] = static_cast<greg_t>(f->r12);
            g[REG_R13] = static_cast<greg_t>(f->r13);
            g[REG_R14] = static_cast<greg_t>(f->r14);
            g[REG_R15] = static_cast<greg_t>(f->r15);
            if (uc->uc_mcontext.fpregs != nullptr) std::memcpy(uc->uc_mcontext.fpregs->_xmm, f->xmm, sizeof f->xmm);
            liveio_rewrite_frame = 0;
            // The counted path of call_raw marked the thread inside and counted it in flight.
            if (Dispatcher::inside()) Dispatcher::instance().abandon_call(Mechanism::SyscallRewrite);
            g_evacuated.fetch_add(1, std::memory_order_relaxed);
        }
    }
    g_handled.fetch_add(1, std::memory_order_release);
}

// A real-time signal nobody handles (SIG_DFL); 0 if there is none.
int free_signal() {
    for (int sig = SIGRTMAX; sig >= SIGRTMIN + 2; --sig) {
        struct sigaction old {};
        if (sigaction(sig, nullptr, &old) == 0 && !(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_DFL) return sig;
    }
    return 0;
}

struct BlockedThread {
    pid_t tid;
    bool blocks_signal;
};

// Threads of this process (but the caller) sleeping in a system call made from the dispatch
// code: /proc/self/task/TID/syscall reads "NR ARGS... SP PC" with PC after the instruction.
std::vector<BlockedThread> threads_in_dispatch(int sig) {
    std::vector<BlockedThread> out;
    const auto self = static_cast<pid_t>(raw_syscall(SYS_gettid));
    DIR* dir = opendir("/proc/self/task");
    if (dir == nullptr) return out;
    while (const dirent* e = readdir(dir)) {
        const pid_t tid = static_cast<pid_t>(std::strtol(e->d_name, nullptr, 10));
        if (tid <= 0 || tid == self) continue;
        std::ifstream in(fmt::format("/proc/self/task/{}/syscall", tid));
        std::vector<std::string> fields;
        for (std::string f; in >> f;) fields.push_back(f);
        if (fields.size() < 3 || fields[0] == "running" || fields[0] == "-1") continue;
        const uintptr_t pc = std::strtoull(fields.back().c_str(), nullptr, 16);
        if (!in_dispatch(pc)) continue;
        bool blocks = false;
        std::ifstream status(fmt::format("/proc/self/task/{}/status", tid));
        for (std::string line; std::getline(status, line);)
            if (line.rfind("SigBlk:", 0) == 0) blocks = (std::strtoull(line.c_str() + 7, nullptr, 16) >> (sig - 1)) & 1;
        out.push_back({tid, blocks});
    }
    closedir(dir);
    return out;
}

}  // namespace

Result<Evacuation> evacuate_dispatched_calls() {
    Evacuation result;
    const int sig = free_signal();
    if (sig == 0) return make_error(EBUSY, "no free real-time signal to move threads out of liveio's syscall path");
    auto blocked = threads_in_dispatch(sig);
    if (blocked.empty()) return result;
    g_insns = &dispatch_syscalls();
    g_pid = getpid();
    g_handled.store(0);
    g_evacuated.store(0);
    struct sigaction action {}, old {};
    action.sa_sigaction = evacuate_handler;
    action.sa_flags = SA_SIGINFO | SA_RESTART;
    sigfillset(&action.sa_mask);
    if (sigaction(sig, &action, &old) != 0) return make_error(errno, fmt::format("sigaction({}): {}", sig, strerror(errno)));
    int sent = 0;
    for (const BlockedThread& t : blocked) {
        if (t.blocks_signal) {
            ++result.left;
            continue;
        }
        if (raw_syscall(SYS_tgkill, g_pid, t.tid, sig) == 0) ++sent;
    }
    // Every signalled thread runs the handler as soon as the kernel interrupts its call.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (g_handled.load(std::memory_order_acquire) < sent && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    // Ignoring first discards a signal still pending (a thread that exited meanwhile cannot
    // have one, but one stopped by a debugger could): restoring SIG_DFL with it pending would
    // kill the process when it is delivered.
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigaction(sig, &ignore, nullptr);
    sigaction(sig, &old, nullptr);
    result.evacuated = g_evacuated.load();
    result.left += sent - g_handled.load();
    return result;
}

}  // namespace liveio::hook
