#include "hook/world_stop.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>

#include "base/proc_tasks.h"
#include "hook/dispatcher.h"

namespace liveio::hook {
namespace {

// State shared with the signal handler, which gets no other context: process-wide by nature.
std::mutex g_stop_mutex;
std::atomic<int> g_arrived{0};
std::atomic<int> g_departed{0};
// A futex word: parked threads sleep on it (spinning ones took the CPU the threads still to
// arrive needed: on a loaded machine a stop of a busy server then outlasted its deadline).
std::atomic<int> g_released{0};
std::atomic<ContextFixup> g_fixup{nullptr};
std::atomic<void*> g_fixup_context{nullptr};

// While threads are parked nothing may allocate or take library locks (a parked thread may
// hold the malloc or stdio lock), so thread ids are read with raw getdents64 into fixed
// storage.
constexpr int kMaxThreads = 8192;
pid_t g_signaled[kMaxThreads];
int g_signaled_count = 0;
std::atomic<pid_t> g_arrived_tids[kMaxThreads];  // who parked, for the error naming who did not

// Threads that do not arrive within this time are named in the error: they block the signal,
// are stopped, or sleep uninterruptibly (disk I/O) longer than a stop should wait.
constexpr int64_t kStopDeadlineNs = 30'000'000'000;

void release_parked() {
    g_released.store(1, std::memory_order_release);
    raw_syscall(SYS_futex, reinterpret_cast<long>(&g_released), FUTEX_WAKE_PRIVATE, INT32_MAX);
}

void park(int, siginfo_t*, void* uc_raw) {
    const int saved_errno = errno;
    const pid_t tid = static_cast<pid_t>(raw_syscall(SYS_gettid));
    const int index = g_arrived.fetch_add(1, std::memory_order_acq_rel);
    if (index < kMaxThreads) g_arrived_tids[index].store(tid, std::memory_order_relaxed);
    while (g_released.load(std::memory_order_acquire) == 0)
        raw_syscall(SYS_futex, reinterpret_cast<long>(&g_released), FUTEX_WAIT_PRIVATE, 0, 0);
    if (ContextFixup fixup = g_fixup.load(std::memory_order_acquire))
        fixup(g_fixup_context.load(), static_cast<ucontext_t*>(uc_raw));
    g_departed.fetch_add(1, std::memory_order_acq_rel);
    errno = saved_errno;
}

bool thread_alive(pid_t pid, pid_t tid);

int64_t monotonic_ns() {
    timespec ts{};
    raw_syscall(SYS_clock_gettime, CLOCK_MONOTONIC, reinterpret_cast<long>(&ts));
    return ts.tv_sec * 1'000'000'000LL + ts.tv_nsec;
}

// "tid 123 (state D, signal not blocked)" for up to a few signaled threads that have not
// parked, written with raw syscalls into `out` (threads are still parked: no allocation).
void describe_missing(pid_t pid, char* out, size_t size) {
    size_t len = 0;
    auto put = [&](const char* text) {
        while (*text && len + 1 < size) out[len++] = *text++;
    };
    auto put_num = [&](long v) {
        char digits[24];
        int n = 0;
        do digits[n++] = static_cast<char>('0' + v % 10), v /= 10;
        while (v > 0 && n < 23);
        while (n > 0 && len + 1 < size) out[len++] = digits[--n];
    };
    const int arrived = std::min(g_arrived.load(), kMaxThreads);
    int named = 0;
    for (int i = 0; i < g_signaled_count && named < 4; ++i) {
        const pid_t tid = g_signaled[i];
        bool parked = false;
        for (int j = 0; j < arrived && !parked; ++j)
            parked = g_arrived_tids[j].load(std::memory_order_relaxed) == tid;
        if (parked || !thread_alive(pid, tid)) continue;
        char path[64] = "/proc/self/task/";
        size_t p = 16;
        char digits[16];
        int n = 0;
        for (long v = tid; v > 0 && n < 15; v /= 10) digits[n++] = static_cast<char>('0' + v % 10);
        while (n > 0) path[p++] = digits[--n];
        const char* tail = "/status";
        while (*tail) path[p++] = *tail++;
        path[p] = 0;
        char status[4096];
        long got = 0;
        const long fd = raw_syscall(SYS_open, reinterpret_cast<long>(path), O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            got = raw_syscall(SYS_read, fd, reinterpret_cast<long>(status), sizeof status - 1);
            raw_syscall(SYS_close, fd);
        }
        status[got > 0 ? got : 0] = 0;
        char state = '?';
        bool blocked = false;
        if (const char* st = std::strstr(status, "\nState:\t")) state = st[8];
        if (const char* blk = std::strstr(status, "\nSigBlk:\t")) {
            // 16 hex digits, signal N is bit N-1.
            const int bit = world_stop_signal() - 1;
            const char c = blk[9 + 15 - bit / 4];
            const int nibble = c >= 'a' ? c - 'a' + 10 : c - '0';
            blocked = (nibble >> (bit % 4)) & 1;
        }
        put(named ? ", tid " : "tid ");
        put_num(tid);
        put(" (state ");
        const char s[2] = {state, 0};
        put(s);
        put(blocked ? ", signal blocked)" : ")");
        ++named;
    }
    out[len] = 0;
}

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
            // io_uring's workers belong to the thread group but run no user code and take no
            // signal: they would never park.
            if (is_io_uring_worker(pid, tid)) continue;
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
    g_released = 0;
    const int64_t started_ns = monotonic_ns();
    g_fixup = nullptr;

    const pid_t self = static_cast<pid_t>(raw_syscall(SYS_gettid));
    const pid_t pid = static_cast<pid_t>(raw_syscall(SYS_getpid));
    g_signaled_count = 0;
    // Repeat until a listing finds no new thread: a thread being created while we list
    // appears in the next listing, and parked threads create no more.
    for (;;) {
        const int added = signal_new_threads(pid, self);
        if (added < 0) {
            release_parked();
            while (g_departed.load() < g_arrived.load()) raw_syscall(SYS_sched_yield);
            g_stop_mutex.unlock();
            return make_error(EIO, "cannot list /proc/self/task to stop threads");
        }
        for (int spins = 0;; ++spins) {
            int expected = 0;
            for (int i = 0; i < g_signaled_count; ++i) expected += thread_alive(pid, g_signaled[i]);
            if (g_arrived.load() >= expected) break;
            if ((spins & 1023) == 1023 && monotonic_ns() - started_ns > kStopDeadlineNs) {
                static char missing[512];
                describe_missing(pid, missing, sizeof missing);
                release_parked();
                while (g_departed.load() < g_arrived.load()) raw_syscall(SYS_sched_yield);
                g_stop_mutex.unlock();
                return make_error(ETIMEDOUT,
                                  "threads did not stop for patching within 30 s (signal " +
                                      std::to_string(world_stop_signal()) + "): " + missing);
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
    release_parked();
    // Threads that exited while parked never depart; they cannot hold `context` either.
    while (g_departed.load() < g_arrived.load()) raw_syscall(SYS_sched_yield);
    g_stop_mutex.unlock();
}

}  // namespace liveio::hook
