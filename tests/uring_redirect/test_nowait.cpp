// Page-cache hits first (uring_redirect.h): reads of descriptors the hint calls regular files
// are made as preadv2(RWF_NOWAIT) before the ring. The same call sequences natively and
// through the executor, comparing every result, errno, file position and byte, with files in
// the page cache, partly evicted, and descriptors the hint wrongly calls files.
#include <sys/mman.h>
#include <sys/stat.h>

#include <cstring>
#include <functional>

#include "uring_redirect/harness.h"

namespace liveio::policy::test {
namespace {

class Nowait : public RedirectTest {
public:
    void SetUp() override {
        RedirectTest::SetUp();
        if (IsSkipped() || HasFatalFailure()) return;
        // Every descriptor is a "regular file" to the hint: pipes and directories test a
        // stale hint.
        redirect->set_regular_hint([](const void*, int) { return true; }, nullptr);
    }
    uint64_t nowait_reads() const { return redirect->stats().nowait_reads; }
};

// Pages of [off, off + len) of `fd` resident in the page cache (mincore of a mapping).
size_t resident_pages(int fd, size_t off, size_t len) {
    void* p = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(off));
    if (p == MAP_FAILED) return 0;
    std::vector<unsigned char> vec((len + 4095) / 4096);
    size_t n = 0;
    if (::mincore(p, len, vec.data()) == 0)
        for (unsigned char v : vec) n += v & 1;
    ::munmap(p, len);
    return n;
}

// Evicts [off, off + len) of a clean file from the page cache.
void evict(int fd, size_t off, size_t len) {
    ASSERT_EQ(::fdatasync(fd), 0);
    ASSERT_EQ(
        ::posix_fadvise(fd, static_cast<off_t>(off), static_cast<off_t>(len), POSIX_FADV_DONTNEED),
        0);
}

struct Step {
    const char* what;
    long nr, a1_offset_in_buf, len, off;  // read: off unused
};

// The steps on two files of the same content (one natively, one through the executor):
// results, positions and bytes compared after each.
void compare(Nowait& t, int fn, int fr, const std::vector<Step>& steps) {
    std::vector<char> a(3 << 20, 'a'), b(3 << 20, 'a');
    for (const Step& s : steps) {
        if (s.nr == SYS_lseek) {
            ASSERT_EQ(::lseek(fn, s.off, SEEK_SET), ::lseek(fr, s.off, SEEK_SET)) << s.what;
            continue;
        }
        const long n = s.nr == SYS_read
                           ? RedirectTest::native(SYS_read, fn, L(a.data()), s.len)
                           : RedirectTest::native(SYS_pread64, fn, L(a.data()), s.len, s.off);
        const long r = s.nr == SYS_read ? t.via(SYS_read, fr, L(b.data()), s.len)
                                        : t.via(SYS_pread64, fr, L(b.data()), s.len, s.off);
        EXPECT_EQ(n, r) << s.what;
        EXPECT_EQ(::lseek(fn, 0, SEEK_CUR), ::lseek(fr, 0, SEEK_CUR)) << s.what;
        EXPECT_TRUE(a == b) << s.what << ": bytes differ";
    }
}

TEST_F(Nowait, CachedReadsPositionsAndEndOfFileMatchNative) {
    const auto content = pattern(1 << 20 | 123, 11);
    const int fn = make_file(content), fr = make_file(content);
    const uint64_t before = nowait_reads(), ring_before = redirected();
    compare(*this, fn, fr,
            {{"read 0", SYS_read, 0, 0, 0},
             {"read 1", SYS_read, 0, 1, 0},
             {"read 4096", SYS_read, 0, 4096, 0},
             {"read 1 MiB, short at the end", SYS_read, 0, 1 << 20, 0},
             {"read at the end", SYS_read, 0, 4096, 0},
             {"seek 10", SYS_lseek, 0, 0, 10},
             {"pread 4096 @ 5000", SYS_pread64, 0, 4096, 5000},
             {"read after pread keeps the position", SYS_read, 0, 100, 0},
             {"pread beyond the end", SYS_pread64, 0, 4096, 5 << 20},
             {"pread straddling the end", SYS_pread64, 0, 8192, (1 << 20) + 100}});
    EXPECT_GE(nowait_reads() - before, 8u) << "page-cache hits answered without the ring";
    EXPECT_EQ(redirected() - ring_before, 0u);
    EXPECT_EQ(redirect->stats().engines_created, 0u) << "no ring for a thread whose reads hit";
}

TEST_F(Nowait, PartlyEvictedFilesReadTheRestAndMissesGoThroughTheRing) {
    // Resident: the first 2 MiB; evicted: the rest (2 MiB-aligned: the page cache may hold
    // the file in folios that large, and only whole ones are dropped). No readahead, so the
    // bytes read next stay the only ones brought in.
    const size_t size = 8 << 20, kept = 2 << 20;
    const auto content = pattern(size, 12);
    const int fn = make_file(content), fr = make_file(content);
    ASSERT_EQ(::posix_fadvise(fr, 0, 0, POSIX_FADV_RANDOM), 0);
    evict(fr, kept, size - kept);
    if (resident_pages(fr, kept, size - kept) != 0)
        GTEST_SKIP() << "POSIX_FADV_DONTNEED left pages of a clean file cached here";
    const uint64_t hits = nowait_reads(), ring = redirected();
    const long k = static_cast<long>(kept), z = static_cast<long>(size);
    compare(*this, fn, fr,
            {{"seek to 8 KiB before the evicted part", SYS_lseek, 0, 0, k - 8192},
             {"read across the evicted boundary (short page-cache answer, rest read)", SYS_read, 0,
              64 << 10, 0},
             {"pread of evicted bytes (a miss: the ring)", SYS_pread64, 0, 16 << 10, 2 * k},
             {"read of evicted bytes at the position (a miss: the ring)", SYS_read, 0, 8192, 0},
             {"pread across the end of the evicted file", SYS_pread64, 0, 1 << 20, z - 4096}});
    // Every call answered by the executor, from the page cache or through the ring (which
    // one a miss takes depends on how fast the device answers the read-in RWF_NOWAIT starts).
    const uint64_t cached = nowait_reads() - hits, through_ring = redirected() - ring;
    EXPECT_EQ(cached + through_ring, 4u);
    EXPECT_GE(cached, 1u) << "the boundary read";
    RecordProperty("through_ring", static_cast<int>(through_ring));
}

// Every descriptor that cannot be read (read and pread alike), and buffers the kernel cannot
// fill: errors, partial counts and the position as natively.
TEST_F(Nowait, ErrorsMatchNative) {
    const int rw = make_file(pattern(8192, 13));
    const std::string wo_path = dir.path + "/wo";
    int pipefd[2];
    ASSERT_EQ(::pipe(pipefd), 0);
    keep(pipefd[0]), keep(pipefd[1]);
    ASSERT_EQ(::fcntl(987, F_GETFD), -1);
    const std::vector<std::pair<const char*, int>> unreadable = {
        {"bad fd", -1},
        {"closed fd", 987},
        {"write-only fd", keep(::open(wo_path.c_str(), O_WRONLY | O_CREAT, 0600))},
        {"O_PATH fd", keep(::open(wo_path.c_str(), O_PATH))},
        {"directory", keep(::open(dir.path.c_str(), O_RDONLY | O_DIRECTORY))},
        {"pipe (pread)", pipefd[0]},
    };
    char* pages = static_cast<char*>(
        ::mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(pages, MAP_FAILED);
    ASSERT_EQ(::mprotect(pages + 4096, 4096, PROT_NONE), 0);
    char buf[64];
    auto both = [&](const std::string& what, long nr, int fd, long b, long len, long off) {
        ASSERT_EQ(::lseek(rw, 0, SEEK_SET), 0);
        const long n = native(nr, fd, b, len, off);
        const off_t pn = ::lseek(rw, 0, SEEK_CUR);
        ASSERT_EQ(::lseek(rw, 0, SEEK_SET), 0);
        EXPECT_EQ(n, via(nr, fd, b, len, off)) << what;
        EXPECT_EQ(pn, ::lseek(rw, 0, SEEK_CUR)) << what;
    };
    for (const auto& [what, fd] : unreadable) {
        if (fd != pipefd[0]) both(std::string("read, ") + what, SYS_read, fd, L(buf), 10, 0);
        both(std::string("pread, ") + what, SYS_pread64, fd, L(buf), 10, 0);
    }
    for (long nr : {SYS_read, SYS_pread64}) {
        const std::string call = nr == SYS_read ? "read" : "pread";
        both(call + " into NULL", nr, rw, 0, 10, 0);
        both(call + " into an unmapped page", nr, rw, 8, 10, 0);
        both(call + " straddling an inaccessible page", nr, rw, L(pages + 4000), 1000, 0);
    }
    both("pread at -2", SYS_pread64, rw, L(buf), 10, -2);
    ::munmap(pages, 8192);
}

// A descriptor the hint calls a file that is a pipe: what read(2) on the pipe returns.
TEST_F(Nowait, AStaleHintOnAPipeReturnsWhatThePipeHas) {
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    keep(p[0]), keep(p[1]);
    char buf[100];
    ASSERT_EQ(::write(p[1], "hello", 5), 5);
    EXPECT_EQ(via(SYS_read, p[0], L(buf), sizeof buf), 5) << "the bytes there, as read(2)";
    EXPECT_EQ(std::memcmp(buf, "hello", 5), 0);
    ASSERT_EQ(::write(p[1], "abc", 3), 3);
    EXPECT_EQ(via(SYS_read, p[0], L(buf), 2), 2);
    EXPECT_EQ(via(SYS_read, p[0], L(buf), sizeof buf), 1);
    ::close(p[1]);
    EXPECT_EQ(via(SYS_read, p[0], L(buf), sizeof buf), 0) << "end of the pipe";
}

class NowaitOff : public Nowait {
public:
    void SetUp() override {
        options_.nowait_first = false;
        Nowait::SetUp();
    }
};

TEST_F(NowaitOff, EveryReadGoesThroughTheRing) {
    const auto content = pattern(100000, 14);
    const int fr = make_file(content);
    char buf[4096];
    const uint64_t ring = redirected();
    EXPECT_EQ(via(SYS_pread64, fr, L(buf), sizeof buf, 0), 4096);
    EXPECT_EQ(via(SYS_read, fr, L(buf), sizeof buf), 4096);
    EXPECT_EQ(nowait_reads(), 0u);
    EXPECT_EQ(redirected() - ring, 2u);
}

}  // namespace
}  // namespace liveio::policy::test
