// Fault injection (base/fault_points.h) in the io_uring engine under the `uring` executor:
// ring creation failing, io_uring_enter refusing submissions (EAGAIN, EBUSY, EINTR, ENOMEM),
// ops completing with EIO or EAGAIN without transferring anything, reads of regular files
// answered short by the kernel. Each call is made natively on one file and through the
// executor on an identical one: results, errno, file positions and bytes must be the same,
// every injected fault must be counted, and no descriptor may be left behind.
#include <dirent.h>
#include <sys/socket.h>
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
    for (Point p : {Point::SubmitEagain, Point::SubmitEbusy, Point::SubmitEintr}) {
        const uint64_t injected = fault::plan().injected(p), before = redirected();
        fault::plan().arm(p, 3);
        compare_file_calls(fault::kPointNames[static_cast<int>(p)]);
        EXPECT_EQ(fault::plan().injected(p), injected + 3);
        EXPECT_GT(redirected(), before) << "the engine retried: calls still went through io_uring";
    }
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

// Ring creation and a hard submission error on fresh threads: those threads run natively
// (counted), with native answers, and their failed rings leave no descriptor behind.
TEST_F(Faults, RingCreationAndHardSubmissionErrorsFallBackNatively) {
    const auto content = pattern(65536, 5);
    const int fn = make_file(content), fr = make_file(content);
    const size_t fds_before = open_fds();
    for (Point p : {Point::RingCreate, Point::SubmitEnomem}) {
        SCOPED_TRACE(fault::kPointNames[static_cast<int>(p)]);
        const uint64_t injected = fault::plan().injected(p);
        const uint64_t no_engine = fallbacks(FallbackReason::NoEngine),
                       engine = fallbacks(FallbackReason::EngineError);
        fault::plan().arm(p, 1);
        std::thread([&] {
            std::vector<char> a(4096), b(4096);
            for (long off : {0L, 4096L, 60000L}) {
                EXPECT_EQ(native(SYS_pread64, fn, L(a.data()), a.size(), off),
                          via(SYS_pread64, fr, L(b.data()), b.size(), off));
                EXPECT_TRUE(a == b);
            }
        }).join();
        EXPECT_EQ(fault::plan().injected(p), injected + 1);
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
