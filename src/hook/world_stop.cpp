#include "hook/world_stop.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <mutex>
#include <string>

#include "hook/dispatcher.h"

namespace liveio::hook {
namespace {

// State shared with the signal handler, which gets no other context: process-wide by nature.
std::mutex g_stop_mutex;
std::atomic<int> g_arrived{0};
std::atomic<int> g_departed{0};
std::atomic<bool> g_released{false};
std::atomic<ContextFixup> g_fixup{nullptr};
std::atomic<void*> g_fixup_context{nullptr};

void park(int, siginfo_t*, void* uc_raw) {
    const int saved_errno = errno;
    g_arrived.fetch_add(1, std::memory_order_acq_rel);
    while (!g_released.load(std::memory_order_acquire)) raw_syscall(SYS_sched_yield);
    if (ContextFixup fixup = g_fixup.load(std::memory_order_acquire))
        fixup(g_fixup_context.load(), static_cast<ucontext_t*>(uc_raw));
    g_departed.fetch_add(1, std::memory_order_acq_rel);
    errno = saved_errno;
}

// While threads are parked nothing may allocate or take library locks (a parked thread may
// hold the malloc or stdio lock), so thread ids are read with raw getdents64 into fixed
// storage.
constexpr int kMaxThreads = 8192;
pid_t g_signaled[kMaxThreads];
int g_signaled_count = 0;

bool already_signaled(pid_t tid) {
    for (int i = 0; i < g_signaled_count; ++i)
        if (g_signaled[i] == tid) return true;
    return false;
}

struct LinuxDirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

bool io_uring_kernel_thread(const char* tid_name);

// Signals every not-yet-signaled thread; returns how many were newly signaled, or -1.
int signal_new_threads(pid_t pid, pid_t self) {
    const long dir = raw_syscall(SYS_open, reinterpret_cast<long>("/proc/self/task"),
                                 O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return -1;
    alignas(8) char buf[4096];
    int added = 0;
    for (;;) {
        const long n = raw_syscall(SYS_getdents64, dir, reinterpret_cast<long>(buf), sizeof buf);
        if (n <= 0) break;
        for (long off = 0; off < n;) {
            auto* e = reinterpret_cast<LinuxDirent64*>(buf + off);
            off += e->d_reclen;
            if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
            pid_t tid = 0;
            for (const char* c = e->d_name; *c; ++c) tid = tid * 10 + (*c - '0');
            if (tid == self || already_signaled(tid) || g_signaled_count == kMaxThreads) continue;
            if (io_uring_kernel_thread(e->d_name)) continue;
            if (raw_syscall(SYS_tgkill, pid, tid, world_stop_signal()) == 0) {
                g_signaled[g_signaled_count++] = tid;
                ++added;
            }
        }
    }
    raw_syscall(SYS_close, dir);
    return added;
}

bool thread_alive(pid_t pid, pid_t tid) { return raw_syscall(SYS_tgkill, pid, tid, 0) == 0; }

// io_uring's kernel threads (io-wq workers "iou-wrk-N", SQPOLL "iou-sqp-N") are tasks of the
// process, listed in /proc/self/task and accepted by tgkill, but they never run user code:
// they cannot park, and need not (they execute no patched instruction).
bool io_uring_kernel_thread(const char* tid_name) {
    char path[64] = "/proc/self/task/";
    size_t at = 16;
    for (const char* c = tid_name; *c && at < sizeof path - 6; ++c) path[at++] = *c;
    for (const char* c = "/comm"; *c; ++c) path[at++] = *c;
    path[at] = '\0';
    const long fd = raw_syscall(SYS_open, reinterpret_cast<long>(path), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char comm[8] = {};
    const long n = raw_syscall(SYS_read, fd, reinterpret_cast<long>(comm), sizeof comm);
    raw_syscall(SYS_close, fd);
    return n >= 4 && comm[0] == 'i' && comm[1] == 'o' && comm[2] == 'u' && comm[3] == '-';
}

WorldStop g_world;

}  // namespace

int world_stop_signal() { return SIGRTMIN + 6; }

Result<WorldStop*> WorldStop::stop() {
    g_stop_mutex.lock();
    struct sigaction sa {};
    sa.sa_sigaction = park;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigfillset(&sa.sa_mask);
    sigaction(world_stop_signal(), &sa, nullptr);
    g_arrived = 0;
    g_departed = 0;
    g_released = false;
    g_fixup = nullptr;

    const pid_t self = static_cast<pid_t>(raw_syscall(SYS_gettid));
    const pid_t pid = static_cast<pid_t>(raw_syscall(SYS_getpid));
    g_signaled_count = 0;
    // Repeat until a listing finds no new thread: a thread being created while we list
    // appears in the next listing, and parked threads create no more.
    for (;;) {
        const int added = signal_new_threads(pid, self);
        if (added < 0) {
            g_released = true;
            g_stop_mutex.unlock();
            return make_error(EIO, "cannot list /proc/self/task to stop threads");
        }
        for (int spins = 0;; ++spins) {
            int expected = 0;
            for (int i = 0; i < g_signaled_count; ++i) expected += thread_alive(pid, g_signaled[i]);
            if (g_arrived.load() >= expected) break;
            if (spins > 20000) {  // seconds of waiting: a thread is blocking the signal
                g_released = true;
                while (g_departed.load() < g_arrived.load()) raw_syscall(SYS_sched_yield);
                g_stop_mutex.unlock();
                return make_error(ETIMEDOUT, "a thread did not stop for patching (signal " +
                                                 std::to_string(world_stop_signal()) +
                                                 " blocked?)");
            }
            if (spins < 100) {
                raw_syscall(SYS_sched_yield);
            } else {
                timespec ts{0, 100000};
                raw_syscall(SYS_nanosleep, reinterpret_cast<long>(&ts), 0);
            }
        }
        if (added == 0) break;
    }
    return &g_world;
}

void WorldStop::resume(ContextFixup fixup, void* context) {
    g_fixup_context = context;
    g_fixup = fixup;
    g_released.store(true, std::memory_order_release);
    // Threads that exited while parked never depart; they cannot hold `context` either.
    while (g_departed.load() < g_arrived.load()) raw_syscall(SYS_sched_yield);
    g_stop_mutex.unlock();
}

}  // namespace liveio::hook
