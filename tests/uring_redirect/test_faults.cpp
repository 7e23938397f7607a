// Fault injection (base/fault_points.h) in the io_uring engine under the `uring` executor:
// ring creation failing, io_uring_enter refusing submissions (EAGAIN, EBUSY, EINTR, ENOMEM),
// ops completing with EIO or EAGAIN without transferring anything, reads of regular files
// answered short by the kernel. Each call is made natively on one file and through the
// executor on an identical one: results, errno, file positions and bytes must be the same,
// every injected fault must be counted, and no descriptor may be left behind.
#include <dirent.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <cstring>
#include <thread>

#include "base/fault_points.h"
#include "uring_redirect/harness.h"

namespace liveio::policy::test {
namespace {

using fault::Point;

size_t open_fds() {
    size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
        ::closedir(d);
    }
    return n;
}

class Faults : public RedirectTest {
protected:
    void TearDown() override {
        for (size_t i = 0; i < std::size(fault::kPointNames); ++i)
            fault::plan().arm(static_cast<Point>(i), 0);
        RedirectTest::TearDown();
    }

    // Three preads, native on `fn` and redirected on its copy `fr`, from a thread of their
    // own (a fresh ring); results and bytes compared.
    void preads_on_a_new_thread(int fn, int fr) {
        std::thread([&] {
            std::vector<char> a(4096), b(4096);
            for (long off : {0L, 4096L, 60000L}) {
                EXPECT_EQ(native(SYS_pread64, fn, L(a.data()), a.size(), off),
                          via(SYS_pread64, fr, L(b.data()), b.size(), off));
                EXPECT_TRUE(a == b);
            }
        }).join();
    }

    // The same sequence of reads, writes and seeks on a native and a redirected copy of one
    // file; every result, position and byte compared.
    void compare_file_calls(const char* what) {
        SCOPED_TRACE(what);
        const auto content = pattern((1 << 20) + 777, 7);
        const int fn = make_file(content), fr = make_file(content);
        std::vector<char> a(1 << 20), b(1 << 20);
        const auto wdata = pattern(100000, 9);
        struct Call {
            const char* name;
            long nr, len, off;
        };
        const Call calls[] = {{"read 4096", SYS_read, 4096, 0},
                              {"read 1 MiB to EOF", SYS_read, 1 << 20, 0},
                              {"read at EOF", SYS_read, 4096, 0},
                              {"pread 64 KiB", SYS_pread64, 65536, 1000},
                              {"pread past EOF", SYS_pread64, 8192, (1 << 20) + 700},
                              {"pwrite 100000", SYS_pwrite64, 100000, 5000},
                              {"write 100000", SYS_write, 100000, 0},
                              {"pread what was written", SYS_pread64, 200000, 0}};
        ::lseek(fn, 0, SEEK_SET);
        ::lseek(fr, 0, SEEK_SET);
        for (const Call& c : calls) {
            SCOPED_TRACE(c.name);
            std::fill(a.begin(), a.end(), 'x');
            std::fill(b.begin(), b.end(), 'x');
            const bool w = c.nr == SYS_write || c.nr == SYS_pwrite64;
            const long an = L(w ? wdata.data() : a.data()), ar = L(w ? wdata.data() : b.data());
            const long rn = native(c.nr, fn, an, c.len, c.off);
            const long rr = via(c.nr, fr, ar, c.len, c.off);
            EXPECT_EQ(rn, rr);
            EXPECT_EQ(::lseek(fn, 0, SEEK_CUR), ::lseek(fr, 0, SEEK_CUR));
            EXPECT_TRUE(a == b) << "bytes differ";
        }
    }
};

TEST_F(Faults, SubmissionRefusedIsRetriedAndAnswersStayNative) {
    via(SYS_getpid);  // this thread's ring exists before the faults are armed
    for (Point p :
         {Point::SubmitEagain, Point::SubmitEbusy, Point::SubmitEintr, Point::SubmitEnomem}) {
        const uint64_t injected = fault::plan().injected(p), before = redirected();
        const uint64_t engine_errors = fallbacks(FallbackReason::EngineError);
        fault::plan().arm(p, 3);
        compare_file_calls(fault::kPointNames[static_cast<int>(p)]);
        EXPECT_EQ(fault::plan().injected(p), injected + 3);
        EXPECT_GT(redirected(), before) << "the engine retried: calls still went through io_uring";
        EXPECT_EQ(fallbacks(FallbackReason::EngineError), engine_errors) << "the ring was retired";
    }
}

// ENOMEM on every retry of one submission (more than the engine's bound) retires the ring
// of that thread: its calls, the failed one included, run natively with native answers.
TEST_F(Faults, SubmitEnomemBeyondTheRetryBoundRetiresOnlyThatThreadsRing) {
    const auto content = pattern(65536, 11);
    const int fn = make_file(content), fr = make_file(content);
    const uint64_t injected = fault::plan().injected(Point::SubmitEnomem);
    const uint64_t engine = fallbacks(FallbackReason::EngineError), before = redirected();
    fault::plan().arm(Point::SubmitEnomem, uring::kMaxNomemRetries + 1);
    preads_on_a_new_thread(fn, fr);
    EXPECT_EQ(fault::plan().injected(Point::SubmitEnomem), injected + uring::kMaxNomemRetries + 1);
    EXPECT_EQ(fault::plan().armed(Point::SubmitEnomem), 0u);
    EXPECT_GE(fallbacks(FallbackReason::EngineError), engine + 1);
    // Other threads keep their rings.
    compare_file_calls("after a retired ring");
    EXPECT_GT(redirected(), before);
}

TEST_F(Faults, CompletionErrorsRunTheCallNatively) {
    for (Point p : {Point::CompleteEio, Point::CompleteEagain}) {
        const uint64_t injected = fault::plan().injected(p);
        const uint64_t fallbacks_before = fallbacks(FallbackReason::CompletionError);
        // EAGAIN of a file op is resubmitted by the engine up to kMaxEagainRetries times: arm
        // enough for every call to see it in the end.
        fault::plan().arm(p, p == Point::CompleteEio ? 4 : 16 * (uring::kMaxEagainRetries + 1));
        compare_file_calls(fault::kPointNames[static_cast<int>(p)]);
        EXPECT_GT(fault::plan().injected(p), injected);
        EXPECT_GT(fallbacks(FallbackReason::CompletionError), fallbacks_before);
    }
}

TEST_F(Faults, ShortReadsOfFilesAreContinuedToTheFullCount) {
    const uint64_t injected = fault::plan().injected(Point::CompleteShort);
    const uint64_t continued = redirect->stats().write_continuations;
    fault::plan().arm(Point::CompleteShort, 6);
    compare_file_calls("complete_short");
    EXPECT_EQ(fault::plan().injected(Point::CompleteShort), injected + 6);
    EXPECT_GE(redirect->stats().write_continuations, continued + 1);
}

TEST_F(Faults, ShortInjectionLeavesSocketsAlone) {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    keep(sv[0]);
    keep(sv[1]);
    fault::plan().arm(Point::CompleteShort, 5);
    const auto data = pattern(3000, 3);
    ASSERT_EQ(via(SYS_write, sv[0], L(data.data()), data.size()), 3000);
    std::vector<char> got(3000);
    EXPECT_EQ(via(SYS_read, sv[1], L(got.data()), got.size()), 3000);
    EXPECT_TRUE(got == data);
    EXPECT_EQ(fault::plan().armed(Point::CompleteShort), 5u) << "a socket read was shortened";
}

// A full file system, for real: two equal small tmpfs mounts, one written natively, one
// through the executor, in the same chunks. Each write must get the same answer: whole, then
// short where the space ends, then ENOSPC; the bytes that made it in must be the same.
TEST_F(Faults, FullFileSystemGivesTheSameShortWritesAndEnospc) {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
    std::string mounts[2];
    for (int i = 0; i < 2; ++i) {
        mounts[i] = dir.path + "/full" + std::to_string(i);
        ASSERT_EQ(::mkdir(mounts[i].c_str(), 0700), 0);
        if (::mount("liveio-full", mounts[i].c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=200k") !=
            0) {
            const int e = errno;
            if (i == 1) ::umount2(mounts[0].c_str(), MNT_DETACH);
            GTEST_SKIP() << "cannot mount a tmpfs: " << std::strerror(e);
        }
    }
    const int fn = ::open((mounts[0] + "/f").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    const int fr = ::open((mounts[1] + "/f").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(fn, 0);
    ASSERT_GE(fr, 0);
    const auto data = pattern(48 * 1024 + 100, 13);
    bool saw_short = false, saw_enospc = false;
    for (int i = 0; i < 8; ++i) {
        SCOPED_TRACE(i);
        const bool positional = i % 2 == 1;
        const long nr = positional ? SYS_pwrite64 : SYS_write;
        const long off = positional ? ::lseek(fn, 0, SEEK_CUR) : 0;
        const long rn = native(nr, fn, L(data.data()), data.size(), off);
        const long rr = via(nr, fr, L(data.data()), data.size(), off);
        EXPECT_EQ(rn, rr);
        if (positional && rn > 0) {  // pwrite leaves the position: move both alike
            ::lseek(fn, rn, SEEK_CUR);
            ::lseek(fr, rr, SEEK_CUR);
        }
        saw_short |= rn > 0 && rn < static_cast<long>(data.size());
        saw_enospc |= rn == -ENOSPC;
        EXPECT_EQ(::lseek(fn, 0, SEEK_CUR), ::lseek(fr, 0, SEEK_CUR));
    }
    EXPECT_TRUE(saw_enospc) << "the file system never filled up";
    struct stat sn, sr;
    ASSERT_EQ(::fstat(fn, &sn), 0);
    ASSERT_EQ(::fstat(fr, &sr), 0);
    EXPECT_EQ(sn.st_size, sr.st_size);
    std::vector<char> a(sn.st_size), b(sr.st_size);
    EXPECT_EQ(::pread(fn, a.data(), a.size(), 0), sn.st_size);
    EXPECT_EQ(::pread(fr, b.data(), b.size(), 0), sr.st_size);
    EXPECT_TRUE(a == b);
    RecordProperty("short_write_seen", saw_short ? 1 : 0);
    ::close(fn);
    ::close(fr);
    for (auto& m : mounts) {
        ::umount2(m.c_str(), MNT_DETACH);
        ::rmdir(m.c_str());
    }
}

// Ring creation and a hard submission error (ENOMEM past the retry bound) on fresh threads:
// those threads run natively (counted), with native answers, and their failed rings leave no
// descriptor behind.
TEST_F(Faults, RingCreationAndHardSubmissionErrorsFallBackNatively) {
    const auto content = pattern(65536, 5);
    const int fn = make_file(content), fr = make_file(content);
    const size_t fds_before = open_fds();
    for (Point p : {Point::RingCreate, Point::SubmitEnomem}) {
        SCOPED_TRACE(fault::kPointNames[static_cast<int>(p)]);
        const uint64_t injected = fault::plan().injected(p);
        const uint64_t no_engine = fallbacks(FallbackReason::NoEngine),
                       engine = fallbacks(FallbackReason::EngineError);
        const uint32_t times = p == Point::SubmitEnomem ? uring::kMaxNomemRetries + 1 : 1;
        fault::plan().arm(p, times);
        preads_on_a_new_thread(fn, fr);
        EXPECT_EQ(fault::plan().injected(p), injected + times);
        if (p == Point::RingCreate)
            EXPECT_EQ(fallbacks(FallbackReason::NoEngine), no_engine + 3);
        else
            EXPECT_GE(fallbacks(FallbackReason::EngineError), engine + 1);
    }
    redirect->reclaim_exited();
    EXPECT_EQ(open_fds(), fds_before) << "a failed ring left descriptors behind";
}

}  // namespace
}  // namespace liveio::policy::test
