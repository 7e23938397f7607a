// The descriptors a thread's ring takes in the process (the ring's and its eventfd), and what
// happens when the process closes them under us: the call runs natively with the native result,
// the ring is retired (counted), a new one is created after a pause, and a file the process put
// at one of the old numbers is never read, written or closed by us.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <thread>

#include "base/high_fd.h"
#include "uring_redirect/harness.h"

namespace liveio::policy::test {
namespace {

class Descriptors : public RedirectTest {};

// Number -> what /proc/self/fd says it is.
std::map<int, std::string> open_fds() {
    std::map<int, std::string> fds;
    DIR* d = ::opendir("/proc/self/fd");
    if (d == nullptr) return fds;
    const int own = ::dirfd(d);
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.' || std::atoi(e->d_name) == own) continue;
        char target[256] = {};
        const std::string link = std::string("/proc/self/fd/") + e->d_name;
        ::readlink(link.c_str(), target, sizeof target - 1);
        fds[std::atoi(e->d_name)] = target;
    }
    ::closedir(d);
    return fds;
}

TEST_F(Descriptors, ThreadRingAndEventfdSitHighWithCloexec) {
    int fd = make_file(pattern(4096, 21));
    const auto before = open_fds();
    char buf[64];
    ASSERT_EQ(via(SYS_pread64, fd, L(buf), 64, 0), 64);
    ASSERT_EQ(redirected(), 1u);
    const auto after = open_fds();
    int ours = 0;
    for (const auto& [n, what] : after) {
        if (before.count(n)) continue;
        ++ours;
        EXPECT_GE(n, high_fd_base()) << what;
        EXPECT_EQ(::fcntl(n, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC) << what;
        EXPECT_TRUE(what == "anon_inode:[io_uring]" || what == "anon_inode:[eventfd]") << what;
    }
    EXPECT_EQ(ours, 2);  // the thread's ring and its eventfd
}

TEST_F(Descriptors, ProcessClosesOurDescriptorsAndReusesTheNumbers) {
    const auto content = pattern(1 << 14, 22);
    int fd = make_file(content);
    std::vector<char> buf(4096);
    const auto before = open_fds();
    ASSERT_EQ(via(SYS_pread64, fd, L(buf.data()), 4096, 0), 4096);
    ASSERT_EQ(redirected(), 1u);
    // The process closes "everything" above its own descriptors (close_range from our base:
    // what a daemon or a pre-exec cleanup does to all of them) and its next files land on the
    // numbers we had.
    std::vector<int> taken;
    for (const auto& [n, what] : open_fds())
        if (!before.count(n)) taken.push_back(n);
    ASSERT_EQ(taken.size(), 2u);
    for (int n : taken) ASSERT_EQ(::close(n), 0);
    std::vector<int> theirs;
    for (size_t i = 0; i < taken.size(); ++i) {
        int p[2];
        ASSERT_EQ(::pipe(p), 0);
        ASSERT_EQ(::dup2(p[0], taken[i]), taken[i]);
        ::close(p[0]);
        ASSERT_EQ(::write(p[1], "theirs", 6), 6);
        theirs.push_back(p[1]);
    }
    // Same bytes as natively, whatever the ring does.
    for (int i = 0; i < 4; ++i) {
        const long off = 4096L * i;
        ASSERT_EQ(via(SYS_pread64, fd, L(buf.data()), 4096, off), 4096);
        EXPECT_EQ(std::memcmp(buf.data(), content.data() + off, 4096), 0);
    }
    auto st = redirect->stats();
    EXPECT_EQ(st.engines_retired, 1u);
    EXPECT_EQ(st.descriptors_lost, 1u);
    // A new ring after the pause (bounded: at most 2 s of calls).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (redirect->stats().engines_recreated == 0 &&
           std::chrono::steady_clock::now() < deadline) {
        ASSERT_EQ(via(SYS_pread64, fd, L(buf.data()), 4096, 0), 4096);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    st = redirect->stats();
    EXPECT_EQ(st.engines_recreated, 1u);
    const uint64_t redirected_before = st.redirected;
    ASSERT_EQ(via(SYS_pread64, fd, L(buf.data()), 4096, 8192), 4096);
    EXPECT_EQ(std::memcmp(buf.data(), content.data() + 8192, 4096), 0);
    EXPECT_EQ(redirected(), redirected_before + 1);
    redirect.reset();
    // The process's pipes at our old numbers: open, their bytes unread.
    for (size_t i = 0; i < taken.size(); ++i) {
        char got[8] = {};
        EXPECT_EQ(::read(taken[i], got, sizeof got), 6) << "number " << taken[i];
        EXPECT_EQ(std::string(got, 6), "theirs");
        ::close(taken[i]);
        ::close(theirs[i]);
    }
}

}  // namespace
}  // namespace liveio::policy::test
