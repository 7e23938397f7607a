// The `prefetch` policy program (bpf/policies/prefetch.bpf.c) on real files, run as the agent
// runs it at the exit edge of each read(): a stream whose next bytes the page cache already
// holds (the kernel's readahead is ahead of it, or the data is hot) is left to the kernel and
// queues nothing; a stream whose next bytes are not there is prefetched and then kept topped
// up.
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "policy/catalog.h"
#include "policy_fixture.h"

namespace liveio::policy {
namespace {

using testing::file_id_of;
using testing::make_runtime;
using testing::TempFile;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint32_t kStateSkipped = 10;  // prefetch.bpf.c: state[10], ranges found cached
constexpr uint32_t kStateJoined = 11;   // state[11]: reads continuing another stream's window
constexpr uint32_t kStateWindows = 12;  // state[12]: windows opened

// Pages of [off, off + len) of `fd` in the page cache (cachestat(2), Linux 6.5), or -1.
long cached_pages(int fd, uint64_t off, uint64_t len) {
    struct {
        uint64_t off, len;
    } range{off, len};
    uint64_t stat[5] = {};
    if (::syscall(451, fd, &range, stat, 0) != 0) return -1;
    return static_cast<long>(stat[0]);
}

// The prefetch object switched on in `rt` with the catalog's default knobs.
struct PrefetchPolicy : testing::LoadedPolicy {
    ebpf::Executable* on_read = nullptr;
    Runtime* rt = nullptr;

    static std::unique_ptr<PrefetchPolicy> enable(Runtime& rt) {
        auto p = std::make_unique<PrefetchPolicy>();
        if (!p->load(std::string(LIVEIO_BPF_DIR) + "/policies/prefetch.bpf.o",
                     {"prefetch_on_read"}))
            return nullptr;
        p->on_read = p->exes[0].get();
        p->rt = &rt;
        std::vector<uint64_t> knobs;
        for (const KnobDef& k : find_policy("prefetch").value()->knobs) {
            if (k.index < 0) continue;
            if (knobs.size() <= static_cast<size_t>(k.index)) knobs.resize(k.index + 1);
            knobs[k.index] = k.default_value;
        }
        if (!p->LoadedPolicy::enable(rt, "prefetch", nullptr, std::move(knobs))) return nullptr;
        return p;
    }
    // read(fd, buf, n) by this thread, then what the agent does at its exit edge: the ledger
    // sees the bytes read, then the program runs (a column file).
    // `tid` (0: this thread's) stands for the thread that read: the program keys its streams
    // by (thread, descriptor).
    ssize_t read_and_exit(int fd, std::string& buf, uint32_t tid = 0) {
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n > 0)
            rt->observe_read(file_id_of(fd), static_cast<uint64_t>(::lseek(fd, 0, SEEK_CUR) - n),
                             static_cast<uint64_t>(n));
        liveio_io_ctx io = testing::io_exit_ctx(0, fd, buf.size(), n, LIVEIO_CLASS_CH_BIN);
        if (tid != 0) io.tid = tid;
        run(*on_read, io);
        return n;
    }
};

// A column file of `size` bytes written through the page cache and opened; cold: written back
// and dropped from the cache first. Returns the descriptor, or -1 with `skip` saying why the
// page cache is not in the state asked for (or cannot be asked: cachestat is Linux 6.5).
int open_column(const TempFile& f, uint64_t size, bool cold, std::string& skip) {
    f.write_pattern(size, 3);
    const int fd = ::open(f.path().c_str(), O_RDONLY);
    if (fd < 0) {
        ADD_FAILURE() << "open " << f.path();
        return -1;
    }
    if (cold && (::fdatasync(fd) != 0 || ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0))
        ADD_FAILURE() << "cannot drop " << f.path() << " from the page cache";
    const long cached = cached_pages(fd, 0, size);
    if (cached < 0)
        skip = "no cachestat(2) (Linux 6.5): residency is unknown";
    else if (cold && cached > 0)
        skip = "the file stayed in the page cache after DONTNEED";
    else if (!cold && cached < static_cast<long>(size / 4096))
        skip = "the file just written is not all in the page cache (memory pressure)";
    if (skip.empty()) return fd;
    ::close(fd);
    return -1;
}

// The runtime and the policy switched on in it; false (failure recorded) when a part failed.
struct PrefetchOn {
    std::unique_ptr<Runtime> rt = make_runtime();
    std::unique_ptr<PrefetchPolicy> p = rt ? PrefetchPolicy::enable(*rt) : nullptr;
    bool ok() const { return rt && p; }
    const Counters& counters() const { return rt->counters(p->slot); }
};

TEST(PrefetchPolicy, AStreamWhoseNextBytesAreCachedQueuesNothing) {
    TempFile f("UserID.bin");
    std::string skip;
    const int fd = open_column(f, 16 * kMiB, false, skip);
    if (!skip.empty()) GTEST_SKIP() << skip;
    ASSERT_GE(fd, 0);
    PrefetchOn on;
    ASSERT_TRUE(on.ok());
    auto& [rt, p] = on;

    // A whole-buffer scan of a hot file: before, its first read alone queued `depth` bytes.
    std::string buf(kMiB, '\0');
    for (int i = 0; i < 12; ++i) ASSERT_EQ(p->read_and_exit(fd, buf), static_cast<ssize_t>(kMiB));
    rt->worker().barrier();
    const Counters& c = on.counters();
    EXPECT_EQ(Counters::get(c.actions), 0u);
    EXPECT_EQ(Counters::get(c.issued_bytes), 0u);
    EXPECT_EQ(p->u64("state", kStateSkipped), 12u);  // every read: next bytes found cached
    ::close(fd);
}

TEST(PrefetchPolicy, AStreamWhoseNextBytesAreNotCachedIsPrefetchedAndToppedUp) {
    TempFile f("UserID.bin");
    std::string skip;
    const int fd = open_column(f, 32 * kMiB, true, skip);
    if (!skip.empty()) GTEST_SKIP() << skip;
    ASSERT_GE(fd, 0);
    // No kernel readahead on this descriptor: a read brings in only its own pages, so what
    // follows it is in the cache only if the policy prefetched it.
    ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM), 0);
    PrefetchOn on;
    ASSERT_TRUE(on.ok());
    auto& [rt, p] = on;
    const Counters& c = on.counters();

    std::string buf(kMiB, '\0');
    ASSERT_EQ(p->read_and_exit(fd, buf), static_cast<ssize_t>(kMiB));
    rt->worker().barrier();
    EXPECT_EQ(Counters::get(c.actions), 1u);  // [1 MiB, 1 MiB + depth)
    EXPECT_GT(Counters::get(c.issued_bytes), 0u);
    EXPECT_GT(cached_pages(fd, kMiB, kMiB), 0);

    // The stream is the policy's now: later reads find their bytes cached (prefetched), and
    // the window is still topped up ahead of them.
    for (int i = 0; i < 6; ++i) ASSERT_EQ(p->read_and_exit(fd, buf), static_cast<ssize_t>(kMiB));
    rt->worker().barrier();
    EXPECT_GT(Counters::get(c.actions), 1u);
    EXPECT_GT(Counters::get(c.used_bytes), 0u);
    ::close(fd);
}

// Whether buf[0, n) holds bytes [off, off + n) of the pattern file (seed 3, open_column's).
bool pattern_at(const std::string& buf, uint64_t off, ssize_t n) {
    for (ssize_t i = 0; i < n; ++i)
        if (buf[static_cast<size_t>(i)] != TempFile::pattern(3, off + static_cast<uint64_t>(i)))
            return false;
    return true;
}

// Two descriptors of one cold column file of `size` bytes, as two threads of a query hold
// them, both without kernel readahead: what a read finds cached beyond its own pages, the
// policy put there. Closed with the object. `on`: the policy, switched on after the files.
struct TwoReaders {
    TempFile f{"URL.bin"};
    std::string skip;
    int a = -1, b = -1;
    PrefetchOn on;
    explicit TwoReaders(uint64_t size) {
        a = open_column(f, size, true, skip);
        if (a < 0) return;
        b = ::open(f.path().c_str(), O_RDONLY);
        EXPECT_GE(b, 0);
        EXPECT_EQ(::posix_fadvise(a, 0, 0, POSIX_FADV_RANDOM), 0);
        EXPECT_EQ(::posix_fadvise(b, 0, 0, POSIX_FADV_RANDOM), 0);
    }
    ~TwoReaders() {
        if (a >= 0) ::close(a);
        if (b >= 0) ::close(b);
    }
    bool ok() const { return a >= 0 && b >= 0 && on.ok() && !::testing::Test::HasFailure(); }
};

// 18.16 opens every column file of a part before it reads any of them: the thread's next data
// read decides what the others get. A lookup's range read prefetches none of them, nor does a
// scan that starts in the middle of its file (the others' offsets are unknown); a scan's 1 MiB
// read from the start of its file prefetches the start of each of the others.
TEST(PrefetchPolicy, ColumnsOpenedTogetherArePrefetchedAtAScanFromTheStartOnly) {
    constexpr int kColumns = 4;
    std::vector<std::unique_ptr<TempFile>> files;
    std::vector<int> fds;
    std::string skip;
    for (int i = 0; i < kColumns && skip.empty(); ++i) {
        files.push_back(std::make_unique<TempFile>("C" + std::to_string(i) + ".bin"));
        const int fd = open_column(*files.back(), 4 * kMiB, true, skip);
        if (fd >= 0) fds.push_back(fd);
    }
    if (!skip.empty()) {
        for (int fd : fds) ::close(fd);
        GTEST_SKIP() << skip;
    }
    PrefetchOn on;
    ASSERT_TRUE(on.ok());
    auto& [rt, p] = on;
    auto open_all = [&] {
        for (int fd : fds) {
            liveio_io_ctx io = testing::io_exit_ctx(SYS_openat, fd, 0, fd, LIVEIO_CLASS_CH_BIN);
            p->run(*p->on_read, io);
        }
    };
    auto others_cached = [&] {
        long pages = 0;
        for (int i = 1; i < kColumns; ++i) pages += std::max(0L, cached_pages(fds[i], 0, kMiB));
        return pages;
    };

    open_all();
    std::string lookup(4096, '\0');
    ASSERT_EQ(p->read_and_exit(fds[0], lookup), 4096);
    rt->worker().barrier();
    EXPECT_EQ(Counters::get(on.counters().actions), 0u);
    EXPECT_EQ(others_cached(), 0);

    open_all();  // the thread's next part reader, a task starting at a mark inside the part
    std::string scan(kMiB, '\0');
    ASSERT_EQ(::lseek(fds[0], 2 * kMiB, SEEK_SET), static_cast<off_t>(2 * kMiB));
    ASSERT_EQ(p->read_and_exit(fds[0], scan), static_cast<ssize_t>(kMiB));
    rt->worker().barrier();
    EXPECT_EQ(others_cached(), 0);

    open_all();  // and one from the start of the part
    ASSERT_EQ(::lseek(fds[0], 0, SEEK_SET), 0);
    ASSERT_EQ(p->read_and_exit(fds[0], scan), static_cast<ssize_t>(kMiB));
    rt->worker().barrier();
    for (int i = 1; i < kColumns; ++i)
        EXPECT_GT(cached_pages(fds[i], 0, kMiB), 0) << "column " << i;
    for (int fd : fds) ::close(fd);
}

// Two query threads of one part, as ClickHouse runs them: each with its own descriptor, each
// reading every other 2 MiB range of the column file, read by read in turn. Together they
// read the file in order: the window the first read opened is continued by both, kept ahead
// of the furthest of them, and no byte is prefetched twice (per thread, each jump over the
// other's range looked like a new scan).
TEST(PrefetchPolicy, ThreadsReadingAlternatingRangesOfAFileShareOneWindow) {
    constexpr uint64_t kSize = 16 * kMiB, kRange = 2 * kMiB;
    TwoReaders r(kSize);
    if (!r.skip.empty()) GTEST_SKIP() << r.skip;
    ASSERT_TRUE(r.ok());
    const int a = r.a, b = r.b;
    auto& [rt, p] = r.on;
    const Counters& c = r.on.counters();

    std::string buf(kMiB, '\0');
    for (uint64_t pair = 0; pair < kSize / (2 * kRange); ++pair) {
        const uint64_t lo[2] = {2 * pair * kRange, (2 * pair + 1) * kRange};
        const int fds[2] = {a, b};
        for (int t = 0; t < 2; ++t) ::lseek(fds[t], static_cast<off_t>(lo[t]), SEEK_SET);
        for (uint64_t at = 0; at < kRange; at += kMiB) {
            for (int t = 0; t < 2; ++t) {
                const ssize_t n = p->read_and_exit(fds[t], buf, 1000 + static_cast<uint32_t>(t));
                ASSERT_EQ(n, static_cast<ssize_t>(kMiB));
                ASSERT_TRUE(pattern_at(buf, lo[t] + at, n)) << "bytes at " << lo[t] + at;
                // The range is in the ledger before the read that uses it (the order timing
                // would otherwise decide).
                rt->worker().barrier();
            }
        }
    }
    EXPECT_EQ(p->u64("state", kStateWindows), 1u) << "a jump over the other thread's range "
                                                     "opened a window of its own";
    EXPECT_GT(p->u64("state", kStateJoined), 0u);
    EXPECT_GT(Counters::get(c.actions), 1u);
    const uint64_t issued = Counters::get(c.issued_bytes);
    EXPECT_GT(issued, 0u);
    EXPECT_LE(issued, kSize - kMiB) << "bytes prefetched twice";
    ASSERT_TRUE(rt->disable(p->slot));
    // Every prefetched byte lay ahead of one of the readers, and they read the whole file.
    EXPECT_EQ(Counters::get(c.used_bytes), issued);
    EXPECT_EQ(Counters::get(c.wasted_bytes), 0u);
}

// Two cursors far apart in one file (two queries scanning it): each keeps a window of its
// own, prefetched ahead of it, instead of taking each other's place at every read.
TEST(PrefetchPolicy, CursorsFarApartInAFileKeepWindowsOfTheirOwn) {
    constexpr uint64_t kSize = 32 * kMiB, kSecond = 16 * kMiB;
    TwoReaders r(kSize);
    if (!r.skip.empty()) GTEST_SKIP() << r.skip;
    ASSERT_TRUE(r.ok());
    auto& [rt, p] = r.on;
    ASSERT_EQ(::lseek(r.b, static_cast<off_t>(kSecond), SEEK_SET), static_cast<off_t>(kSecond));

    std::string buf(kMiB, '\0');
    for (int i = 0; i < 4; ++i) {
        ASSERT_EQ(p->read_and_exit(r.a, buf, 1000), static_cast<ssize_t>(kMiB));
        ASSERT_TRUE(pattern_at(buf, static_cast<uint64_t>(i) * kMiB, kMiB));
        ASSERT_EQ(p->read_and_exit(r.b, buf, 1001), static_cast<ssize_t>(kMiB));
        ASSERT_TRUE(pattern_at(buf, kSecond + static_cast<uint64_t>(i) * kMiB, kMiB));
        rt->worker().barrier();
    }
    EXPECT_EQ(p->u64("state", kStateWindows), 2u);
    EXPECT_EQ(p->u64("state", kStateJoined), 0u);
    // Both are prefetched ahead: the next MiB of each is in the page cache.
    EXPECT_GT(cached_pages(r.a, 4 * kMiB, kMiB), 0);
    EXPECT_GT(cached_pages(r.b, kSecond + 4 * kMiB, kMiB), 0);
}

}  // namespace
}  // namespace liveio::policy
