// The per-thread engine registry: lazy creation, reclaiming exited threads, shutdown while
// other threads run (and sleep in) redirected calls, fork children.
#include <sys/socket.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "uring_redirect/harness.h"

namespace liveio::policy::test {
namespace {

class Registry : public RedirectTest {};

TEST_F(Registry, EnginesAreCreatedLazilyAndReclaimedAfterThreadsExit) {
    int fd = make_file(pattern(4096, 10));
    EXPECT_EQ(redirect->stats().engines_live, 0u);
    char buf[16];
    hook::SyscallCall other{SYS_getpid, {}};
    hook::SyscallResult res;
    EXPECT_FALSE(redirect->execute(other, res));  // not redirected: no ring for it
    EXPECT_EQ(redirect->stats().engines_live, 0u);
    for (int round = 0; round < 3; ++round) {
        std::vector<std::thread> threads;
        for (int i = 0; i < 8; ++i)
            threads.emplace_back([&] { EXPECT_EQ(via(SYS_pread64, fd, L(buf), 16, 0), 16); });
        for (auto& t : threads) t.join();
    }
    EXPECT_EQ(redirect->stats().engines_created, 24u);
    // A joined thread's task may linger for a moment before its id is gone: bounded wait.
    for (int i = 0; i < 5000 && redirect->stats().engines_live > 0; ++i) {
        redirect->reclaim_exited();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    auto st = redirect->stats();
    EXPECT_EQ(st.engines_live, 0u);
    EXPECT_EQ(st.engines_destroyed, 24u);
    EXPECT_EQ(st.redirected, 24u);  // counts of reclaimed threads are kept
}

// The agent pipeline's entry point: the frame carries the call and receives the result.
TEST_F(Registry, CallFrameEntryPoint) {
    const auto content = pattern(100, 14);
    int fd = make_file(content);
    char buf[8] = {};
    hook::CallFrame frame{{SYS_pread64, {fd, L(buf), 8, 3}}};
    ASSERT_TRUE(redirect->execute(frame));
    EXPECT_EQ(frame.result, 8);
    EXPECT_EQ(std::memcmp(buf, content.data() + 3, 8), 0);
    hook::CallFrame other{{SYS_getpid, {}}};
    EXPECT_FALSE(redirect->execute(other));
    EXPECT_EQ(fallbacks(FallbackReason::NotRedirected), 1u);
}

TEST_F(Registry, FullRegistryRunsNatively) {
    redirect.reset();
    options_.max_threads = 1;
    auto created = UringRedirect::create(options_);
    ASSERT_TRUE(created.ok());
    redirect = std::move(*created);
    int fd = make_file(pattern(100, 11));
    char buf[8];
    EXPECT_EQ(via(SYS_pread64, fd, L(buf), 8, 0), 8);  // this thread holds the one slot
    std::thread([&] { EXPECT_EQ(via(SYS_pread64, fd, L(buf), 8, 0), 8); }).join();
    EXPECT_EQ(fallbacks(FallbackReason::NoEngine), 1u);
    EXPECT_EQ(redirected(), 1u);
}

// Shutdown while threads loop over redirected calls and one sleeps in a redirected recv: no
// call fails, the sleeping one finishes natively with the data sent after shutdown.
TEST_F(Registry, ShutdownWhileThreadsRunAndSleep) {
    const auto content = pattern(1 << 16, 12);
    int fd = make_file(content);
    int s[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, s), 0);
    keep(s[0]), keep(s[1]);
    std::atomic<bool> stop{false};
    std::atomic<int> errors{0};
    std::atomic<uint64_t> calls{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
        threads.emplace_back([&] {
            std::vector<char> buf(4096);
            for (int i = 0; i < 200000 && !stop.load(); ++i) {
                long off = (i * 4096L) % static_cast<long>(content.size());
                if (via(SYS_pread64, fd, L(buf.data()), 4096, off) != 4096 ||
                    std::memcmp(buf.data(), content.data() + off, 4096) != 0)
                    errors.fetch_add(1);
                calls.fetch_add(1);
            }
        });
    }
    char rbuf[8] = {};
    long received = 0;
    std::atomic<bool> receiving{false};
    std::thread sleeper([&] {
        receiving = true;
        received = via(SYS_recvfrom, s[1], L(rbuf), sizeof(rbuf), 0);
    });
    while (!receiving.load() || calls.load() < 1000) std::this_thread::yield();
    while (redirect->stats().engines_live < 4) std::this_thread::yield();
    redirect->shutdown();
    EXPECT_EQ(redirect->stats().engines_live, 0u);
    ASSERT_EQ(::send(s[0], "data", 4, 0), 4);
    sleeper.join();
    stop = true;
    for (auto& t : threads) t.join();
    EXPECT_EQ(received, 4);
    EXPECT_EQ(std::string(rbuf, 4), "data");
    EXPECT_EQ(errors.load(), 0);
    EXPECT_GT(fallbacks(FallbackReason::Disabled), 0u);
}

// A fork child never touches its parent's rings.
TEST_F(Registry, ForkChildRunsNatively) {
    int fd = make_file(pattern(100, 13));
    char buf[8];
    ASSERT_EQ(via(SYS_pread64, fd, L(buf), 8, 0), 8);
    pid_t child = ::fork();
    if (child == 0) {
        hook::SyscallCall call{SYS_pread64, {fd, L(buf), 8, 0}};
        hook::SyscallResult res = 0;
        bool taken = redirect->execute(call, res);
        auto st = redirect->stats();
        ::_exit(!taken && st.by_reason[static_cast<int>(FallbackReason::Forked)] == 1 ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT_EQ(via(SYS_pread64, fd, L(buf), 8, 0), 8);
    EXPECT_EQ(redirected(), 2u);
}

}  // namespace
}  // namespace liveio::policy::test
