// Where a ring's descriptor lives (Options::ring_fd): a ring without a number leaves the
// process's descriptor table as it was and keeps working when the process closes every
// descriptor; a numbered ring sits high with FD_CLOEXEC, fails cleanly once the process closed
// it, and never closes the file the process put at its number afterwards.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <string>
#include <thread>

#include "base/high_fd.h"
#include "temp_files.h"
#include "uring/engine.h"

namespace liveio::uring::test {
namespace {

std::set<int> open_fds() {
    std::set<int> fds;
    DIR* d = ::opendir("/proc/self/fd");
    if (d == nullptr) return fds;
    const int own = ::dirfd(d);
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] != '.' && std::atoi(e->d_name) != own) fds.insert(std::atoi(e->d_name));
    ::closedir(d);
    return fds;
}

std::unique_ptr<Engine> ring(RingFd where) {
    Options o;
    o.ring_fd = where;
    auto e = Engine::create(o);
    if (!e.ok() || (*e)->backend() != BackendKind::Uring) return nullptr;
    return std::move(*e);
}

// Writes `text` to a new file through the engine and reads it back: both go through the ring.
void round_trip(Engine& engine, const std::string& path, const std::string& text) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(engine.run(Op::write(fd, text.data(), static_cast<uint32_t>(text.size()), 0)),
              static_cast<int32_t>(text.size()));
    std::string back(text.size(), '\0');
    EXPECT_EQ(engine.run(Op::read(fd, back.data(), static_cast<uint32_t>(back.size()), 0)),
              static_cast<int32_t>(text.size()));
    EXPECT_EQ(back, text);
    ::close(fd);
}

TEST(RingFd, UnnumberedRingTakesNoDescriptorAndWorks) {
    if (!ring(RingFd::High)) GTEST_SKIP() << "io_uring unusable here";
    test_data::TempDir dir("liveio-ringfd");
    const std::set<int> before = open_fds();
    const RingFdCounts counts_before = ring_fd_counts();
    auto engine = ring(RingFd::Unnumbered);
    ASSERT_NE(engine, nullptr);
    if (engine->ring_fd_placement() != RingFd::Unnumbered)
        GTEST_SKIP() << "kernel refused IORING_SETUP_REGISTERED_FD_ONLY|NO_MMAP (errno "
                     << ring_fd_counts().last_refusal << ")";
    EXPECT_EQ(engine->ring_fd(), -1);
    EXPECT_EQ(open_fds(), before);
    EXPECT_EQ(ring_fd_counts().unnumbered, counts_before.unnumbered + 1);
    round_trip(*engine, dir.path + "/a", "through a ring without a number");
    // Resources registered through the ring's index: a sparse table, a slot, an eventfd.
    ASSERT_TRUE(engine->register_files_sparse(4).ok());
    const int fd = ::open((dir.path + "/a").c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(engine->register_files_update(2, std::span<const int>(&fd, 1)), 1);
    char buf[7] = {};
    EXPECT_EQ(engine->run(Op::read(2, buf, 7, 0).fixed()), 7);
    EXPECT_EQ(std::string(buf, 7), "through");
    ::close(fd);
    const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ASSERT_TRUE(engine->register_eventfd(efd).ok());
    EXPECT_EQ(engine->run(Op::nop()), 0);
    uint64_t signalled = 0;
    EXPECT_EQ(::read(efd, &signalled, sizeof signalled), 8);
    EXPECT_GE(signalled, 1u);
    engine.reset();
    ::close(efd);
    EXPECT_EQ(open_fds(), before);
}

// A process closing every descriptor (close_range(3, ~0U), as before an exec) cannot take a
// ring without a number away from us. In a child: the test process keeps its descriptors.
TEST(RingFd, UnnumberedRingSurvivesCloseRange) {
    auto probe = ring(RingFd::Unnumbered);
    if (!probe || probe->ring_fd_placement() != RingFd::Unnumbered)
        GTEST_SKIP() << "no ring without a descriptor number here";
    probe.reset();
    test_data::TempDir dir("liveio-ringfd");
    const std::string path = dir.path + "/b";
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        auto engine = ring(RingFd::Unnumbered);
        if (!engine) ::_exit(2);
        ::syscall(SYS_close_range, 3u, ~0u, 0u);
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        const char text[] = "still here";
        int32_t w = engine->run(Op::write(fd, text, sizeof text, 0));
        char back[sizeof text] = {};
        int32_t r = engine->run(Op::read(fd, back, sizeof back, 0));
        ::_exit(w == sizeof text && r == sizeof text && std::memcmp(back, text, sizeof text) == 0
                    ? 0
                    : 1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(RingFd, NumberedRingSitsHighWithCloexec) {
    auto engine = ring(RingFd::High);
    if (!engine) GTEST_SKIP() << "io_uring unusable here";
    EXPECT_EQ(engine->ring_fd_placement(), RingFd::High);
    EXPECT_GE(engine->ring_fd(), high_fd_base());
    EXPECT_EQ(::fcntl(engine->ring_fd(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    auto low = ring(RingFd::Low);
    ASSERT_NE(low, nullptr);
    EXPECT_LT(low->ring_fd(), high_fd_base());
}

// The process closes the ring's number and puts a file of its own there: the engine's calls
// fail with an error (no hang, nothing written to that file) and its destructor leaves the
// process's file open.
TEST(RingFd, NumberClosedAndReusedByTheProcess) {
    auto engine = ring(RingFd::High);
    if (!engine) GTEST_SKIP() << "io_uring unusable here";
    test_data::TempDir dir("liveio-ringfd");
    const int number = engine->ring_fd();
    ASSERT_EQ(::close(number), 0);
    const int file = ::open((dir.path + "/c").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(file, 0);
    ASSERT_EQ(::dup2(file, number), number);
    ::close(file);
    EXPECT_LT(engine->run(Op::nop()), 0);
    EXPECT_NE(engine->hard_error(), 0);
    engine.reset();
    EXPECT_GE(::fcntl(number, F_GETFD), 0) << "the engine closed the process's file";
    struct stat st {};
    ASSERT_EQ(::fstat(number, &st), 0);
    EXPECT_EQ(st.st_size, 0);
    ::close(number);
}

// A wake-up source without a descriptor: a futex wait armed in the ring completes when another
// thread wakes the word, or at once when the word is not the expected value.
TEST(RingFd, FutexWaitInTheRing) {
    auto engine = ring(RingFd::Unnumbered);
    if (!engine) GTEST_SKIP() << "io_uring unusable here";
    if (!engine->features().futex) GTEST_SKIP() << "no IORING_OP_FUTEX_WAIT (Linux < 6.7)";
    alignas(4) static uint32_t word = 0;
    ASSERT_EQ(engine->prepare(Op::futex_wait(&word, 1), 7), 0);  // 0 != 1: at once
    Completion c[1];
    ASSERT_EQ(engine->submit_and_reap(c, 1), 1u);
    EXPECT_EQ(c[0].res, -EAGAIN);
    ASSERT_EQ(engine->prepare(Op::futex_wait(&word, 0), 8), 0);
    ASSERT_EQ(engine->submit(), 1);
    EXPECT_EQ(engine->reap(c, 0), 0u);  // armed: nothing completes by itself
    std::thread waker([] {
        __atomic_store_n(&word, 1, __ATOMIC_SEQ_CST);
        ::syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    });
    ASSERT_EQ(engine->reap(c, 1), 1u);
    waker.join();
    EXPECT_EQ(c[0].tag, 8u);
    EXPECT_EQ(c[0].res, 0);
}

TEST(HighFd, MovesAboveTheBaseAndKeepsOthersAlone) {
    const int low = ::eventfd(0, 0);
    ASSERT_GE(low, 0);
    const int high = move_high(low);
    EXPECT_GE(high, high_fd_base());
    EXPECT_EQ(::fcntl(high, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    EXPECT_LT(::fcntl(low, F_GETFD), 0);  // the low number is free again
    const FdIdentity id = fd_identity(high);
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    ::close(high);
    ASSERT_EQ(::dup2(p[0], high), high);
    EXPECT_FALSE(close_if_same(high, id));  // a pipe now: not ours to close
    EXPECT_GE(::fcntl(high, F_GETFD), 0);
    ::close(high);
    ::close(p[0]);
    ::close(p[1]);
}

}  // namespace
}  // namespace liveio::uring::test
