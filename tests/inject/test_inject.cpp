// ptrace injection into real running processes (tests/hook/targets/inject_target.cpp), loading
// tests/hook/targets/inject_probe.c whose constructor/destructor leave marks in a file.
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "inject/inject.h"
#include "inject/inject_test_util.h"

namespace liveio::inject {
namespace {

using testing::slurp;

using testing::kReplyTimeoutMs;
using testing::Target;

int count_lines_starting(const std::string& text, const std::string& word) {
    int n = 0;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (line.rfind(word + " ", 0) == 0) ++n;
    return n;
}

std::string marker_path(const char* name) {
    return "/tmp/liveio_inject_" + std::to_string(getpid()) + "_" + name;
}

// Waits until the thread `tid` sleeps in system call `nr` (from /proc/PID/task/TID/syscall);
// false when the thread is gone.
bool wait_in_syscall(pid_t pid, pid_t tid, long nr) {
    std::string stat = "/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat";
    for (;;) {
        std::string state = slurp(stat);
        auto paren = state.rfind(')');
        if (paren == std::string::npos || paren + 2 >= state.size() || state[paren + 2] == 'Z')
            return false;
        std::istringstream in(
            slurp("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/syscall"));
        long current = -2;
        in >> current;
        if (current == nr) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

TEST(Inject, LoadsIntoBusyMultithreadedTargetAndCallsIntoIt) {
    SKIP_WITHOUT_PTRACE();
    Target target({"3", "2"}, marker_path("busy"));
    ASSERT_TRUE(target.ready());
    auto before = target.progressed_beyond(0);
    ASSERT_TRUE(before.alive);

    InjectStats stats;
    auto lib = inject_library(target.pid(), INJECT_PROBE_PATH, &stats);
    ASSERT_TRUE(lib.ok()) << lib.error().message;
    EXPECT_NE(lib->handle, 0u);
    EXPECT_EQ(stats.threads, 1 + 3 * 2 + 2);
    EXPECT_GE(stats.attempts, 1);
    EXPECT_GT(stats.pause_ms, 0.0);
    EXPECT_EQ(target.marks(), "load " + std::to_string(target.pid()) + "\n");

    auto pid = call_in_target(*lib, "inject_probe_pid", {});
    ASSERT_TRUE(pid.ok()) << pid.error().message;
    EXPECT_EQ(*pid, target.pid());
    auto weighed = call_in_target(*lib, "inject_probe_weigh", {1, 10, 100, 1000, 10000, 100000});
    ASSERT_TRUE(weighed.ok()) << weighed.error().message;
    EXPECT_EQ(*weighed, 1 + 20 + 300 + 4000 + 50000 + 600000);
    auto missing = call_in_target(*lib, "no_such_function", {});
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.error().code, ENOENT);
    EXPECT_NE(missing.error().message.find("no_such_function"), std::string::npos);

    auto unloaded = unload_library(*lib);
    ASSERT_TRUE(unloaded.ok()) << unloaded.error().message;
    EXPECT_EQ(count_lines_starting(target.marks(), "unload"), 1);

    auto after = target.progressed_beyond(before.verified);
    EXPECT_TRUE(after.alive);
    EXPECT_EQ(after.errors, 0u);
    EXPECT_GT(after.verified, before.verified);
}

TEST(Inject, ReinjectionRunsTheConstructorAgain) {
    SKIP_WITHOUT_PTRACE();
    Target target({"1", "1"}, marker_path("again"));
    ASSERT_TRUE(target.ready());
    for (int round = 1; round <= 2; ++round) {
        auto lib = inject_library(target.pid(), INJECT_PROBE_PATH);
        ASSERT_TRUE(lib.ok()) << lib.error().message;
        EXPECT_EQ(count_lines_starting(target.marks(), "load"), round);
        auto unloaded = unload_library(*lib);
        ASSERT_TRUE(unloaded.ok()) << unloaded.error().message;
        EXPECT_EQ(count_lines_starting(target.marks(), "unload"), round);
    }
    auto s = target.status();
    EXPECT_TRUE(s.alive);
    EXPECT_EQ(s.errors, 0u);
}

TEST(Inject, SixtyInjectUnloadCyclesWhileTargetVerifiesItsIo) {
    SKIP_WITHOUT_PTRACE();
    Target target({"2", "2"}, marker_path("cycles"));
    ASSERT_TRUE(target.ready());
    constexpr int kCycles = 60;
    unsigned long long verified = target.progressed_beyond(0).verified;
    for (int i = 0; i < kCycles; ++i) {
        auto lib = inject_library(target.pid(), INJECT_PROBE_PATH);
        ASSERT_TRUE(lib.ok()) << "cycle " << i << ": " << lib.error().message;
        auto unloaded = unload_library(*lib);
        ASSERT_TRUE(unloaded.ok()) << "cycle " << i << ": " << unloaded.error().message;
        if (i % 10 == 9) {
            auto s = target.progressed_beyond(verified);
            ASSERT_TRUE(s.alive) << "cycle " << i;
            ASSERT_EQ(s.errors, 0u) << "cycle " << i;
            verified = s.verified;
        }
    }
    std::string marks = target.marks();
    EXPECT_EQ(count_lines_starting(marks, "load"), kCycles);
    EXPECT_EQ(count_lines_starting(marks, "unload"), kCycles);
}

// A thread executing the library's code (as one that just jumped through a hook) must keep
// the library mapped: the unload waits for it to leave, and reports it when it never does.
TEST(Inject, UnloadWaitsUntilNoThreadExecutesTheLibrary) {
    SKIP_WITHOUT_PTRACE();
    Target target({"1", "1"}, marker_path("spinner"));
    ASSERT_TRUE(target.ready());
    auto lib = inject_library(target.pid(), INJECT_PROBE_PATH);
    ASSERT_TRUE(lib.ok()) << lib.error().message;
    auto started = call_in_target(*lib, "inject_probe_start_spinner", {});
    ASSERT_TRUE(started.ok()) << started.error().message;
    ASSERT_EQ(*started, 0);
    for (;;) {  // the spinner runs: its lap count grows
        auto laps = call_in_target(*lib, "inject_probe_spinner_laps", {});
        ASSERT_TRUE(laps.ok()) << laps.error().message;
        if (*laps > 0) break;
    }

    InjectOptions few;
    few.max_attempts = 4;
    InjectStats stats;
    auto refused = unload_library(*lib, &stats, few);
    ASSERT_FALSE(refused.ok()) << "unloaded the library under a thread executing it";
    EXPECT_EQ(refused.error().code, EAGAIN);
    EXPECT_NE(refused.error().message.find("is executing " + lib->path), std::string::npos)
        << refused.error().message;
    EXPECT_EQ(stats.attempts, 4);
    EXPECT_EQ(count_lines_starting(target.marks(), "unload"), 0);
    auto s = target.status();
    EXPECT_TRUE(s.alive);
    EXPECT_EQ(s.errors, 0u);

    // Once the thread has left (it returns into libc and exits) the unload goes through.
    ASSERT_TRUE(call_in_target(*lib, "inject_probe_stop_spinner", {}).ok());
    auto unloaded = unload_library(*lib, &stats);
    ASSERT_TRUE(unloaded.ok()) << unloaded.error().message;
    EXPECT_EQ(count_lines_starting(target.marks(), "unload"), 1);
    auto after = target.progressed_beyond(s.verified);
    EXPECT_TRUE(after.alive);
    EXPECT_EQ(after.errors, 0u);
}

TEST(Inject, TargetBlockedInReadResumesTheReadTransparently) {
    SKIP_WITHOUT_PTRACE();
    Target target({"0", "0"}, marker_path("blocked"));  // one thread, blocked in read(0, ...)
    ASSERT_TRUE(target.ready());
    ASSERT_TRUE(wait_in_syscall(target.pid(), target.pid(), 0 /* read */));
    InjectStats stats;
    auto lib = inject_library(target.pid(), INJECT_PROBE_PATH, &stats);
    ASSERT_TRUE(lib.ok()) << lib.error().message;
    EXPECT_EQ(stats.threads, 1);
    EXPECT_EQ(count_lines_starting(target.marks(), "load"), 1);
    // The interrupted read() must be waiting again, not have returned EINTR (the target exits
    // then).
    ASSERT_TRUE(wait_in_syscall(target.pid(), target.pid(), 0)) << "the target exited";
    auto s = target.status();
    EXPECT_TRUE(s.alive);
    EXPECT_EQ(s.errors, 0u);
    ASSERT_TRUE(unload_library(*lib).ok());
    EXPECT_TRUE(target.status().alive);
}

TEST(Inject, CallOnThreadInsideComputeLoopPreservesRegistersAndFpState) {
    SKIP_WITHOUT_PTRACE();
    // The main thread spins in registers (integer and SSE) checking invariants; it is the
    // thread the call runs on, so every register must come back exactly.
    Target target({"1", "0", "spin"}, marker_path("spin"));
    ASSERT_TRUE(target.ready());
    for (int i = 0; i < 20; ++i) {
        auto lib = inject_library(target.pid(), INJECT_PROBE_PATH);
        ASSERT_TRUE(lib.ok()) << lib.error().message;
        ASSERT_TRUE(unload_library(*lib).ok());
    }
    auto s = target.progressed_beyond(0);
    EXPECT_TRUE(s.alive);
    EXPECT_EQ(s.errors, 0u);
    EXPECT_EQ(count_lines_starting(target.marks(), "load"), 20);
}

TEST(Inject, ProcessGoneIsReported) {
    pid_t child = fork();
    if (child == 0) _exit(0);
    waitpid(child, nullptr, 0);
    auto lib = inject_library(child, INJECT_PROBE_PATH);
    ASSERT_FALSE(lib.ok());
    EXPECT_EQ(lib.error().code, ESRCH);
    EXPECT_NE(lib.error().message.find("does not exist"), std::string::npos) << lib.error().message;
    EXPECT_EQ(inject_library(-5, INJECT_PROBE_PATH).error().code, EINVAL);
}

TEST(Inject, AlreadyTracedProcessIsNotPermitted) {
    SKIP_WITHOUT_PTRACE();
    Target target({"0", "0"}, marker_path("traced"));
    ASSERT_TRUE(target.ready());
    int ready[2];
    ASSERT_EQ(pipe(ready), 0);
    pid_t tracer = fork();
    if (tracer == 0) {
        char ok = ptrace(PTRACE_SEIZE, target.pid(), nullptr, nullptr) == 0 ? 'y' : 'n';
        if (write(ready[1], &ok, 1) != 1) _exit(1);
        pause();
        _exit(0);
    }
    char ok = 0;
    ASSERT_EQ(read(ready[0], &ok, 1), 1);
    close(ready[0]);
    close(ready[1]);
    ASSERT_EQ(ok, 'y');
    auto lib = inject_library(target.pid(), INJECT_PROBE_PATH);
    kill(tracer, SIGKILL);
    waitpid(tracer, nullptr, 0);
    ASSERT_FALSE(lib.ok());
    EXPECT_EQ(lib.error().code, EPERM);
    EXPECT_NE(lib.error().message.find("already traced by process " + std::to_string(tracer)),
              std::string::npos)
        << lib.error().message;
    EXPECT_TRUE(target.status().alive);
}

TEST(Inject, OtherUsersProcessIsNotPermitted) {
    SKIP_WITHOUT_PTRACE();
    if (geteuid() != 0) GTEST_SKIP() << "needs root to run the injector as another user";
    Target target({"0", "0"}, marker_path("owner"));
    ASSERT_TRUE(target.ready());
    int out[2];
    ASSERT_EQ(pipe(out), 0);
    pid_t child = fork();
    if (child == 0) {
        // Unprivileged injector (nobody) against a root-owned process.
        if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0) _exit(1);
        prctl(PR_SET_DUMPABLE, 1);
        auto lib = inject_library(target.pid(), INJECT_PROBE_PATH);
        std::string msg =
            lib.ok() ? "injected" : std::to_string(lib.error().code) + " " + lib.error().message;
        if (write(out[1], msg.data(), msg.size()) < 0) _exit(1);
        _exit(0);
    }
    close(out[1]);
    std::string msg;
    char buf[512];
    for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) msg.append(buf, n);
    close(out[0]);
    waitpid(child, nullptr, 0);
    EXPECT_EQ(msg.rfind(std::to_string(EPERM) + " ", 0), 0u) << msg;
    EXPECT_NE(msg.find("owned by uid 0"), std::string::npos) << msg;
    EXPECT_EQ(count_lines_starting(target.marks(), "load"), 0);
    EXPECT_TRUE(target.status().alive);
}

TEST(Inject, LibraryErrorsAreClear) {
    SKIP_WITHOUT_PTRACE();
    Target target({"1", "0"}, marker_path("liberr"));
    ASSERT_TRUE(target.ready());

    auto missing = inject_library(target.pid(), "/nonexistent/libnothing.so");
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.error().code, ENOENT);
    EXPECT_NE(missing.error().message.find("/nonexistent/libnothing.so"), std::string::npos);

    // Readable but not a shared object: dlopen fails in the target and its dlerror() is reported.
    std::string junk = marker_path("junk.so");
    {
        std::ofstream out(junk);
        for (int i = 0; i < 64; ++i) out << "this is not an ELF file\n";
    }
    auto bad = inject_library(target.pid(), junk);
    unlink(junk.c_str());
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error().code, ELIBBAD);
    EXPECT_NE(bad.error().message.find("invalid ELF header"), std::string::npos)
        << bad.error().message;

    auto s = target.status();
    EXPECT_TRUE(s.alive);
    EXPECT_EQ(s.errors, 0u);
}

TEST(Inject, LibraryUnreadableByTargetIsRefusedBeforeStopping) {
    SKIP_WITHOUT_PTRACE();
    if (geteuid() != 0) GTEST_SKIP() << "needs root to start a target as another user";
    Target target({"0", "0"}, marker_path("unreadable"), 65534);
    ASSERT_TRUE(target.ready());
    std::string copy = marker_path("private.so");
    {
        std::ifstream src(INJECT_PROBE_PATH, std::ios::binary);
        std::ofstream dst(copy, std::ios::binary);
        dst << src.rdbuf();
    }
    ASSERT_EQ(chmod(copy.c_str(), 0600), 0);
    auto lib = inject_library(target.pid(), copy);
    unlink(copy.c_str());
    ASSERT_FALSE(lib.ok());
    EXPECT_EQ(lib.error().code, EACCES);
    EXPECT_NE(lib.error().message.find("not readable by process"), std::string::npos)
        << lib.error().message;
    EXPECT_TRUE(target.status().alive);
}

// Signals queued to the target and threads created and ended while it is stopped, injected
// into and unloaded from, again and again: every signal is delivered exactly once (real-time
// signals queue, so a lost one shows in the count), every thread is seen or created after the
// stop, and the target's I/O stays exact.
TEST(Inject, SignalsAndThreadChurnDuringInjectionsAreNotLost) {
    SKIP_WITHOUT_PTRACE();
    Target target({"1", "1", "churn"}, marker_path("churn"));
    ASSERT_TRUE(target.ready());
    const pid_t pid = target.pid();
    const unsigned long long churned = target.status().threads_ended;
    constexpr int kCycles = 20, kSignals = 3000;
    std::atomic<bool> cycles_done{false};
    std::atomic<int> queued{0};
    std::thread sender([&] {
        // Paced over the cycles, at most kSignals (far below the pending-signal limit).
        for (int i = 0; i < kSignals && !cycles_done.load(); ++i) {
            sigval v{};
            if (sigqueue(pid, SIGRTMIN, v) == 0) queued.fetch_add(1);
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
    });
    for (int i = 0; i < kCycles; ++i) {
        auto lib = inject_library(pid, INJECT_PROBE_PATH);
        ASSERT_TRUE(lib.ok()) << "cycle " << i << ": " << lib.error().message;
        auto unloaded = unload_library(*lib);
        ASSERT_TRUE(unloaded.ok()) << "cycle " << i << ": " << unloaded.error().message;
    }
    cycles_done = true;
    sender.join();
    // Every queued signal arrives (bounded wait: only a lost signal reaches the bound).
    Target::Status s;
    for (int i = 0; i < kReplyTimeoutMs; ++i) {
        s = target.status();
        if (!s.alive || s.signals >= static_cast<unsigned long long>(queued.load())) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_TRUE(s.alive);
    EXPECT_EQ(s.errors, 0u);
    EXPECT_EQ(s.signals, static_cast<unsigned long long>(queued.load()));
    EXPECT_GT(queued.load(), 0);
    EXPECT_GT(s.threads_ended, churned) << "no thread was created and ended meanwhile";
    const std::string marks = target.marks();
    EXPECT_EQ(count_lines_starting(marks, "load"), kCycles);
    EXPECT_EQ(count_lines_starting(marks, "unload"), kCycles);
}

// The injecting process SIGKILLed (an OOM kill, a user's kill -9) at a point of the remote
// call (src/inject/kill_point.h): while the target's thread runs dlopen/dlclose, or when the
// call has returned and the thread waits to be restored. ptrace detaches a dead tracer's
// threads and they run on: the call's thread must finish the call and continue exactly where
// it was stopped (a spinning thread checking its integer and SSE registers, a thread blocked
// in read() that must be reading again), the library must be either fully loaded or fully
// unloaded, and a later injection must work.
struct InjectorKill {
    const char* point;
    const char* target;  // "spin" or "read"
    bool unload;         // kill the unload instead of the load
};

class InjectorKilled : public ::testing::TestWithParam<InjectorKill> {};

// inject_library (or unload_library of `lib`) in a child process with LIVEIO_KILL_AT=point;
// returns the child's wait status.
int run_injector_killed_at(const char* point, pid_t pid, const InjectedLibrary* lib) {
    pid_t child = fork();
    if (child == 0) {
        setenv("LIVEIO_KILL_AT", point, 1);
        bool ok = lib ? unload_library(*lib).ok() : inject_library(pid, INJECT_PROBE_PATH).ok();
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
}

bool probe_mapped(pid_t pid) {
    return slurp("/proc/" + std::to_string(pid) + "/maps").find("inject_probe") !=
           std::string::npos;
}

int tracer_of(pid_t pid) {
    std::istringstream in(slurp("/proc/" + std::to_string(pid) + "/status"));
    for (std::string line; std::getline(in, line);)
        if (line.rfind("TracerPid:", 0) == 0) return std::stoi(line.substr(10));
    return -1;
}

TEST_P(InjectorKilled, TargetFinishesTheCallAndResumesExactly) {
    SKIP_WITHOUT_PTRACE();
    const InjectorKill c = GetParam();
    const bool reading = std::string(c.target) == "read";
    Target target(
        reading ? std::vector<std::string>{"0", "0"} : std::vector<std::string>{"1", "0", "spin"},
        marker_path(c.point));
    ASSERT_TRUE(target.ready());
    const pid_t pid = target.pid();
    auto still_fine = [&] {
        if (reading) {
            EXPECT_TRUE(wait_in_syscall(pid, pid, 0)) << "the read did not resume";
        }
        auto s = target.status();
        EXPECT_TRUE(s.alive);
        EXPECT_EQ(s.errors, 0u);
    };
    std::optional<InjectedLibrary> lib;
    if (c.unload) {
        auto loaded = inject_library(pid, INJECT_PROBE_PATH);
        ASSERT_TRUE(loaded.ok()) << loaded.error().message;
        lib = *loaded;
    }
    if (reading) {
        ASSERT_TRUE(wait_in_syscall(pid, pid, 0));
    }

    const int status = run_injector_killed_at(c.point, pid, lib ? &*lib : nullptr);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the injector was not killed at " << c.point << " (status " << status << ")";
    still_fine();
    EXPECT_EQ(tracer_of(pid), 0);

    // All or nothing: killed once the call ran, the call completes (the thread may still be
    // finishing it: waited for, bounded); before it, nothing changed.
    const bool call_ran = std::string(c.point) != "inject-stopped";
    const char* mark = c.unload ? "unload" : "load";
    const bool mapped_after = c.unload != call_ran;
    for (int i = 0; call_ran && i < kReplyTimeoutMs; ++i) {
        if (count_lines_starting(target.marks(), mark) == 1 && probe_mapped(pid) == mapped_after)
            break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    const std::string marks = target.marks();
    EXPECT_EQ(count_lines_starting(marks, mark), call_ran ? 1 : 0) << marks;
    EXPECT_EQ(probe_mapped(pid), mapped_after);
    const int references = probe_mapped(pid) ? 2 : 1;

    // A later injection works (the same handle while the first load is still there).
    auto again = inject_library(pid, INJECT_PROBE_PATH);
    ASSERT_TRUE(again.ok()) << again.error().message;
    auto got_pid = call_in_target(*again, "inject_probe_pid", {});
    ASSERT_TRUE(got_pid.ok()) << got_pid.error().message;
    EXPECT_EQ(*got_pid, pid);
    for (int i = 0; i < references; ++i) {
        auto unloaded = unload_library(*again);
        ASSERT_TRUE(unloaded.ok()) << unloaded.error().message;
    }
    EXPECT_FALSE(probe_mapped(pid));
    still_fine();
}

INSTANTIATE_TEST_SUITE_P(Points, InjectorKilled,
                         ::testing::Values(InjectorKill{"inject-stopped", "spin", false},
                                           InjectorKill{"inject-call-running", "spin", false},
                                           InjectorKill{"inject-call-returned", "spin", false},
                                           InjectorKill{"inject-call-running", "read", false},
                                           InjectorKill{"inject-call-returned", "read", false},
                                           InjectorKill{"inject-call-running", "spin", true},
                                           InjectorKill{"inject-call-returned", "spin", true},
                                           InjectorKill{"inject-call-returned", "read", true}),
                         [](const auto& info) {
                             std::string name =
                                 std::string(info.param.unload ? "unload_" : "load_") +
                                 info.param.point + "_" + info.param.target;
                             for (char& ch : name)
                                 if (ch == '-') ch = '_';
                             return name;
                         });

}  // namespace
}  // namespace liveio::inject
