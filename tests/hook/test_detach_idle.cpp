// Uninstall never waits for a thread blocked in the original function a hook called (recv on
// an idle connection, read on an idle pipe): the thread is moved out, keeps sleeping in the
// same call and later returns its result straight to the application. And nothing the
// mechanism mapped remains: no trampoline, no writable+executable mapping at any time.
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hook/interceptor.h"
#include "hook/recording_handler.h"

extern "C" {
ssize_t testio_read(int, void*, size_t);
ssize_t testio_recv(int, void*, size_t);
}

namespace liveio::hook {
namespace {

// The system call thread `tid` sleeps in, or -1 (running or not in a call).
long sleeping_in(pid_t tid) {
    std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/syscall");
    std::string first;
    if (!(in >> first) || first == "running") return -1;
    return std::strtol(first.c_str(), nullptr, 10);
}

struct MapsSummary {
    int anonymous_executable = 0;
    int writable_executable = 0;
    int total = 0;
};

MapsSummary maps_summary() {
    std::ifstream in("/proc/self/maps");
    MapsSummary m;
    for (std::string line; std::getline(in, line);) {
        std::istringstream fields(line);
        std::string range, perms, offset, dev, inode, path;
        fields >> range >> perms >> offset >> dev >> inode >> path;
        ++m.total;
        if (perms[2] == 'x' && inode == "0" && path.empty()) ++m.anonymous_executable;
        if (perms[1] == 'w' && perms[2] == 'x') ++m.writable_executable;
    }
    return m;
}

struct Case {
    const char* name;
    Mechanism mechanism;
    bool socket;
};

class IdleDetach : public ::testing::TestWithParam<Case> {};

// GOT: the test library's imports of read and recv; inline: libc's read and recv.
InterceptOptions options_for(const Case& c) {
    InterceptOptions o;
    o.mechanism = c.mechanism;
    if (c.mechanism == Mechanism::Got)
        o.objects = {"libhook_testio_now.so"};
    else
        o.functions = {"read", "recv"};
    return o;
}

// `call` blocks on an idle descriptor through the hooked function; uninstall must finish while
// it sleeps; the byte written afterwards reaches it.
TEST_P(IdleDetach, UninstallMovesTheSleepingCallOut) {
    const Case c = GetParam();
    int fds[2];
    ASSERT_EQ(c.socket ? socketpair(AF_UNIX, SOCK_STREAM, 0, fds) : pipe(fds), 0);
    const InterceptOptions o = options_for(c);
    const MapsSummary before = maps_summary();
    for (int round = 0; round < 3; ++round) {
        RecordingHandler h;
        auto icpt = Interceptor::install(o, &h);
        ASSERT_TRUE(icpt.ok()) << icpt.error().message;
        EXPECT_EQ(maps_summary().writable_executable, 0) << "a mapping is writable and executable";
        std::atomic<pid_t> tid{0};
        ssize_t got = -2;
        char byte = 0;
        std::thread sleeper([&] {
            tid = static_cast<pid_t>(syscall(SYS_gettid));
            if (c.mechanism == Mechanism::Got)
                got = c.socket ? testio_recv(fds[0], &byte, 1) : testio_read(fds[0], &byte, 1);
            else
                got = c.socket ? recv(fds[0], &byte, 1, 0) : read(fds[0], &byte, 1);
        });
        const long nr = c.socket ? SYS_recvfrom : SYS_read;
        // Bounded by the test's own timeout: the thread gets there unless hooks are broken.
        while (tid.load() == 0 || sleeping_in(tid.load()) != nr)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        ASSERT_TRUE((*icpt)->uninstall().ok());
        const UninstallReport report = (*icpt)->last_uninstall();
        EXPECT_EQ(report.moved_out, 1u) << "round " << round;
        EXPECT_GE(report.world_stops, 1u);
        // Still in the same call, which now returns to the application directly. The world
        // stop interrupted the call and the kernel restarts it: the thread is back asleep in
        // it soon, not necessarily the instant uninstall returns (bounded: 2 s).
        long now_in = sleeping_in(tid.load());
        for (int i = 0; i < 2000 && now_in != nr; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            now_in = sleeping_in(tid.load());
        }
        EXPECT_EQ(now_in, nr);
        ASSERT_EQ(write(fds[1], "q", 1), 1);
        sleeper.join();
        EXPECT_EQ(got, 1);
        EXPECT_EQ(byte, 'q');
        // Its on_exit never ran (the handler may be gone by then); calls after it are not seen.
        for (const Seen& s : h.take()) EXPECT_NE(s.args[0], fds[0]) << "round " << round;
        icpt->reset();
    }
    const MapsSummary after = maps_summary();
    EXPECT_EQ(after.anonymous_executable, before.anonymous_executable) << "trampolines left mapped";
    EXPECT_EQ(after.writable_executable, 0);
    close(fds[0]);
    close(fds[1]);
}

// A call in the original that returns while installed is still seen, result and all.
TEST_P(IdleDetach, CallsReturningWhileInstalledAreSeen) {
    const Case c = GetParam();
    int fds[2];
    ASSERT_EQ(c.socket ? socketpair(AF_UNIX, SOCK_STREAM, 0, fds) : pipe(fds), 0);
    const InterceptOptions o = options_for(c);
    RecordingHandler h;
    auto icpt = Interceptor::install(o, &h);
    ASSERT_TRUE(icpt.ok()) << icpt.error().message;
    std::atomic<pid_t> tid{0};
    ssize_t got = -2;
    char buf[4] = {};
    std::thread sleeper([&] {
        tid = static_cast<pid_t>(syscall(SYS_gettid));
        if (c.mechanism == Mechanism::Got)
            got = c.socket ? testio_recv(fds[0], buf, 3) : testio_read(fds[0], buf, 3);
        else
            got = c.socket ? recv(fds[0], buf, 3, 0) : read(fds[0], buf, 3);
    });
    const long nr = c.socket ? SYS_recvfrom : SYS_read;
    while (tid.load() == 0 || sleeping_in(tid.load()) != nr)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_EQ(write(fds[1], "abc", 3), 3);
    sleeper.join();
    EXPECT_EQ(got, 3);
    EXPECT_EQ(std::string(buf, 3), "abc");
    ASSERT_TRUE((*icpt)->uninstall().ok());
    EXPECT_EQ((*icpt)->last_uninstall().moved_out, 0u);
    int seen = 0;
    for (const Seen& s : h.take())
        if (s.args[0] == fds[0]) {
            ++seen;
            EXPECT_EQ(s.nr, nr);
            EXPECT_EQ(s.result, 3);
        }
    EXPECT_EQ(seen, 1);
    close(fds[0]);
    close(fds[1]);
}

// Uninstall reads /proc/self/maps and the text files: a handler answering every read of the
// process (with 0 bytes) must not see them.
class AnsweringReads : public CallHandler {
public:
    bool on_enter(CallFrame& frame) override {
        if (frame.call.nr != SYS_read) return false;
        frame.result = 0;
        return true;
    }
    void on_exit(CallFrame&) override {}
};

TEST_P(IdleDetach, UninstallWhileTheHandlerAnswersEveryRead) {
    const Case c = GetParam();
    AnsweringReads h;
    auto icpt = Interceptor::install(options_for(c), &h);
    ASSERT_TRUE(icpt.ok()) << icpt.error().message;
    int p[2];
    ASSERT_EQ(pipe(p), 0);
    ASSERT_EQ(write(p[1], "x", 1), 1);
    char b = 0;
    if (c.mechanism == Mechanism::Inline) {
        EXPECT_EQ(read(p[0], &b, 1), 0);  // answered
    }
    auto r = (*icpt)->uninstall();
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(read(p[0], &b, 1), 1);
    EXPECT_EQ(b, 'x');
    close(p[0]);
    close(p[1]);
}

// After install and uninstall, a forked child of the process starts threads and does I/O.
TEST_P(IdleDetach, ForkedChildWorksAfterUninstall) {
    const Case c = GetParam();
    RecordingHandler h;
    for (int round = 0; round < 2; ++round) {
        auto icpt = Interceptor::install(options_for(c), &h);
        ASSERT_TRUE(icpt.ok()) << icpt.error().message;
        char b;
        (void)!read(-1, &b, 1);
        ASSERT_TRUE((*icpt)->uninstall().ok());
    }
    const pid_t child = fork();
    if (child == 0) {
        std::vector<std::thread> threads;
        for (int i = 0; i < 8; ++i)
            threads.emplace_back([] {
                int p[2];
                if (pipe(p) != 0) _exit(3);
                for (int k = 0; k < 100; ++k) {
                    char x = 'a';
                    if (write(p[1], &x, 1) != 1 || read(p[0], &x, 1) != 1) _exit(4);
                    usleep(100);
                }
            });
        for (auto& t : threads) t.join();
        _exit(0);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
}

INSTANTIATE_TEST_SUITE_P(Mechanisms, IdleDetach,
                         ::testing::Values(Case{"GotSocket", Mechanism::Got, true},
                                           Case{"GotPipe", Mechanism::Got, false},
                                           Case{"InlineSocket", Mechanism::Inline, true},
                                           Case{"InlinePipe", Mechanism::Inline, false}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace liveio::hook
