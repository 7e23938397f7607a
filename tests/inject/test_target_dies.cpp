// The target process dies while a library is injected into it or unloaded from it: SIGKILLed
// at each point of the injection (src/inject/kill_point.h, LIVEIO_KILL_AT=target:POINT), or
// by the injected library's own constructor (exit_group, abort on the call's thread, abort or
// SIGKILL from another thread: tests/inject/targets/inject_dying.c), with the call on the main
// thread ("spin") or on another one ("join": the main thread waits in pthread_join).
//
// A dying process reports its main thread to its tracer only once every other thread has been
// reaped, and those threads are the tracer's own tracees: an injector that waits for one thread
// at a time never returns. Here the injector (a child process, as `liveio attach` is to the
// target) must return a clear error, and must have reaped its tracees before it exits: the
// target's parent (this test) collects the target's exit status while the injector still lives.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
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

using testing::Target;
using testing::wait_bounded;

// Bound on waiting for the injector's answer and the target's end: only reached on a hang
// (the failure this file tests for), never a timing check.
constexpr int kHangBoundMs = 60000;

std::string describe_status(int status) {
    if (WIFEXITED(status)) return "exited " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
    return "status " + std::to_string(status);
}

// An injection (or unload) run in a child process that stays alive, holding whatever it still
// traces, until told to exit.
class Injector {
public:
    Injector(pid_t pid, const char* library, const std::optional<InjectedLibrary>& loaded,
             const std::string& kill_at) {
        EXPECT_EQ(pipe2(answer_, O_CLOEXEC), 0);
        EXPECT_EQ(pipe2(go_, O_CLOEXEC), 0);
        child_ = fork();
        if (child_ == 0) {
            close(answer_[0]);
            close(go_[1]);
            if (!kill_at.empty()) setenv("LIVEIO_KILL_AT", kill_at.c_str(), 1);
            Result<void> r = loaded ? unload_library(*loaded) : [&]() -> Result<void> {
                auto lib = inject_library(pid, library);
                if (!lib) return lib.error();
                return {};
            }();
            std::string msg = r ? "0 ok" : std::to_string(r.error().code) + " " + r.error().message;
            if (write(answer_[1], msg.data(), msg.size()) < 0) _exit(2);
            close(answer_[1]);
            char c;
            if (read(go_[0], &c, 1) < 0) _exit(3);
            _exit(0);
        }
        close(answer_[1]);
        close(go_[0]);
    }
    ~Injector() {
        if (child_ > 0) {
            kill(child_, SIGKILL);
            waitpid(child_, nullptr, 0);
        }
        close(answer_[0]);
        close(go_[1]);
    }
    // The result line ("CODE message"); nullopt when the injector did not answer in time.
    std::optional<std::string> answer() {
        std::string msg;
        for (;;) {
            pollfd p{answer_[0], POLLIN, 0};
            if (poll(&p, 1, kHangBoundMs) != 1) return std::nullopt;
            char buf[512];
            ssize_t n = read(answer_[0], buf, sizeof buf);
            if (n <= 0) return msg;
            msg.append(buf, static_cast<size_t>(n));
        }
    }
    // Lets the injector exit; its exit status.
    std::optional<int> finish() {
        close(go_[1]);
        go_[1] = -1;
        auto status = wait_bounded(child_, kHangBoundMs);
        if (status) child_ = -1;
        return status;
    }

private:
    pid_t child_ = -1;
    int answer_[2] = {-1, -1}, go_[2] = {-1, -1};
};

struct TargetDeath {
    const char* name;
    const char* layout;       // "spin": call on the main thread; "join": on another thread
    const char* dying_mode;   // INJECT_DYING_MODE: the dying library's constructor kills it
    const char* kill_target;  // kill point where the injector SIGKILLs the target
    bool unload;              // the unload of an injected probe instead of a load
    const char* dies_with;    // how the error names the end: "signal 9", "status 3"...
    int status;               // the target's wait status as its parent sees it
};

void PrintTo(const TargetDeath& c, std::ostream* os) { *os << c.name; }

class TargetDies : public ::testing::TestWithParam<TargetDeath> {};

TEST_P(TargetDies, InjectionReturnsAnErrorAndLeavesNoZombie) {
    SKIP_WITHOUT_PTRACE();
    const TargetDeath c = GetParam();
    // 2 pipe pairs and a file thread: 6 threads besides the main one.
    Target target({"2", "1", c.layout},
                  "/tmp/liveio_dying_" + std::to_string(getpid()) + "_" + c.name, 0, c.dying_mode);
    ASSERT_TRUE(target.ready());
    const pid_t target_pid = target.pid();

    std::optional<InjectedLibrary> loaded;
    if (c.unload) {
        auto lib = inject_library(target.pid(), INJECT_PROBE_PATH);
        ASSERT_TRUE(lib.ok()) << lib.error().message;
        loaded = *lib;
    }
    const bool dying_library = *c.dying_mode != '\0';
    Injector injector(target.pid(), dying_library ? INJECT_DYING_PATH : INJECT_PROBE_PATH, loaded,
                      *c.kill_target ? std::string("target:") + c.kill_target : "");
    const auto answer = injector.answer();
    ASSERT_TRUE(answer.has_value())
        << "the injector did not return within " << kHangBoundMs << " ms after the target died";
    EXPECT_EQ(answer->rfind(std::to_string(ESRCH) + " ", 0), 0u) << *answer;
    EXPECT_NE(answer->find("process " + std::to_string(target.pid()) + " died"), std::string::npos)
        << *answer;
    EXPECT_NE(answer->find(c.dies_with), std::string::npos) << *answer;

    // The injector still lives: the target's exit reaches its parent only if the injector
    // reaped every thread it traced.
    const auto status = target.reap(kHangBoundMs);
    ASSERT_TRUE(status.has_value())
        << "the target's exit did not reach its parent: its threads are still held by the "
           "injector";
    EXPECT_EQ(describe_status(*status), describe_status(c.status));
    const auto injector_status = injector.finish();
    ASSERT_TRUE(injector_status.has_value());
    EXPECT_TRUE(WIFEXITED(*injector_status) && WEXITSTATUS(*injector_status) == 0)
        << describe_status(*injector_status);

    if (dying_library) {
        // The case ran where it says: the call on the main thread or on another one.
        std::istringstream marks(target.marks());
        std::string word;
        pid_t pid = 0, tid = 0;
        ASSERT_TRUE(marks >> word >> pid >> tid) << target.marks();
        EXPECT_EQ(pid, target_pid);
        if (std::string(c.layout) == "spin") {
            EXPECT_EQ(tid, pid);
        } else {
            EXPECT_NE(tid, pid);
        }
    }
}

constexpr int kKilled = SIGKILL;  // wait status of a process killed by SIGKILL
constexpr int kAborted = SIGABRT;
constexpr int kExited3 = 3 << 8;

INSTANTIATE_TEST_SUITE_P(
    Points, TargetDies,
    ::testing::Values(
        TargetDeath{"seized_spin", "spin", "", "inject-seized", false, "signal 9", kKilled},
        TargetDeath{"seized_join", "join", "", "inject-seized", false, "signal 9", kKilled},
        TargetDeath{"stopped_join", "join", "", "inject-stopped", false, "signal 9", kKilled},
        TargetDeath{"call_running_spin", "spin", "", "inject-call-running", false, "signal 9",
                    kKilled},
        TargetDeath{"call_running_join", "join", "", "inject-call-running", false, "signal 9",
                    kKilled},
        TargetDeath{"call_returned_spin", "spin", "", "inject-call-returned", false, "signal 9",
                    kKilled},
        TargetDeath{"call_returned_join", "join", "", "inject-call-returned", false, "signal 9",
                    kKilled},
        TargetDeath{"ctor_exits_spin", "spin", "exit", "", false, "status 3", kExited3},
        TargetDeath{"ctor_aborts_join", "join", "abort", "", false, "signal 6", kAborted},
        TargetDeath{"ctor_thread_aborts_spin", "spin", "abort-thread", "", false, "signal 6",
                    kAborted},
        TargetDeath{"ctor_thread_aborts_join", "join", "abort-thread", "", false, "signal 6",
                    kAborted},
        TargetDeath{"ctor_thread_kills_join", "join", "kill-thread", "", false, "signal 9",
                    kKilled},
        TargetDeath{"unload_stopped_join", "join", "", "inject-stopped", true, "signal 9", kKilled},
        TargetDeath{"unload_call_running_spin", "spin", "", "inject-call-running", true, "signal 9",
                    kKilled},
        TargetDeath{"unload_call_returned_join", "join", "", "inject-call-returned", true,
                    "signal 9", kKilled}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace liveio::inject
