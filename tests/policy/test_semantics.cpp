// A policy never changes what the target's calls return: every semantic case of issue 11 on
// real files, with prefetches and completion reads issued around the target's own calls.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "policy_fixture.h"

namespace liveio::policy {
namespace {

using testing::make_runtime;
using testing::PolicyOnFile;
using testing::TempFile;
using testing::TestPolicy;

std::string contents(const std::string& path) {
    std::string out;
    const int fd = ::open(path.c_str(), O_RDONLY);
    char buf[65536];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
    ::close(fd);
    return out;
}

TEST(PolicySemantics, PositionAndShortReadAtEofUnchanged) {
    TempFile f;
    const uint64_t size = (1 << 20) + 777;
    f.write_pattern(size, 11);
    auto rt = make_runtime();
    ASSERT_TRUE(rt);
    // Prefetch from the current position far past EOF after every read.
    auto tp = TestPolicy::enable(*rt, {1, static_cast<uint64_t>(-1), 8 << 20});
    ASSERT_TRUE(tp);
    const int fd = ::open(f.path().c_str(), O_RDONLY);
    std::vector<char> buf(100000);
    uint64_t pos = 0;
    ssize_t last = 0;
    for (;;) {
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        ASSERT_GE(n, 0);
        if (n == 0) break;
        last = n;
        for (ssize_t i = 0; i < n; ++i)
            ASSERT_EQ(buf[i], TempFile::pattern(11, pos + i)) << "byte " << pos + i;
        pos += static_cast<uint64_t>(n);
        EXPECT_EQ(tp->read_exit(fd, n), 0);
        rt->worker().barrier();  // the prefetch has run before the next read
        EXPECT_EQ(::lseek(fd, 0, SEEK_CUR), static_cast<off_t>(pos)) << "the file position moved";
    }
    EXPECT_EQ(pos, size);
    EXPECT_EQ(static_cast<uint64_t>(last), size % buf.size()) << "the read at EOF was not short";
    ::close(fd);
}

TEST(PolicySemantics, ErrnoOfTheTargetsCallUnchanged) {
    auto rt = make_runtime();
    ASSERT_TRUE(rt);
    auto tp = TestPolicy::enable(*rt, {1, 0, 4096});
    ASSERT_TRUE(tp);
    const int fd = ::open("/dev/null", O_RDONLY);
    ::close(fd);
    EXPECT_EQ(tp->read_exit(fd, -EBADF), 0);  // queued; the worker finds no file
    rt->worker().barrier();
    char c;
    errno = 0;
    EXPECT_EQ(::read(fd, &c, 1), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(Counters::get(rt->counters(tp->slot).drops), 1u);
    // A directory: EISDIR stays EISDIR.
    const int dir = ::open("/tmp", O_RDONLY | O_DIRECTORY);
    EXPECT_EQ(tp->read_exit(dir, -EISDIR), 0);
    rt->worker().barrier();
    errno = 0;
    EXPECT_EQ(::read(dir, &c, 1), -1);
    EXPECT_EQ(errno, EISDIR);
    ::close(dir);
}

TEST(PolicySemantics, TruncatedAndRewrittenAfterPrefetchNeverStale) {
    PolicyOnFile s(4 << 20, 21, {1, 0, 4 << 20});
    ASSERT_TRUE(s.ok());
    auto& [f, rt, tp] = s;
    const int fd = ::open(f.path().c_str(), O_RDWR);
    EXPECT_EQ(tp->read_exit(fd, 1), 0);
    rt->worker().barrier();
    ASSERT_GT(Counters::get(rt->counters(tp->slot).issued_bytes), 0u);
    // Truncate to 1 MiB + 5, rewrite the first 64 KiB with another pattern.
    ASSERT_EQ(::ftruncate(fd, (1 << 20) + 5), 0);
    std::string fresh(65536, '\0');
    for (size_t i = 0; i < fresh.size(); ++i) fresh[i] = TempFile::pattern(22, i);
    ASSERT_EQ(::pwrite(fd, fresh.data(), fresh.size(), 0), 65536);
    const std::string got = contents(f.path());
    ASSERT_EQ(got.size(), (1u << 20) + 5);
    for (size_t i = 0; i < got.size(); ++i)
        ASSERT_EQ(got[i], i < 65536 ? TempFile::pattern(22, i) : TempFile::pattern(21, i))
            << "stale byte " << i;
    // A read at the old size returns 0, not prefetched data.
    char c;
    EXPECT_EQ(::pread(fd, &c, 1, 2 << 20), 0);
    ::close(fd);
}

TEST(PolicySemantics, DescriptorClosedAndReusedWithPrefetchInFlight) {
    TempFile a("a.bin"), b("b.bin");
    a.write_pattern(1 << 20, 31);
    b.write_pattern(1 << 20, 32);
    auto rt = make_runtime();
    ASSERT_TRUE(rt);
    for (uint64_t mode : {1u, 2u}) {  // prefetch, then read with completion edge
        SCOPED_TRACE(mode == 1 ? "prefetch" : "read_async");
        auto tp = TestPolicy::enable(*rt, {mode, 0, 1 << 20});
        ASSERT_TRUE(tp);
        // Reused for a pipe: nothing consumed from it.
        int fd = ::open(a.path().c_str(), O_RDONLY);
        EXPECT_EQ(tp->read_exit(fd, 1), 0);
        ::close(fd);
        int p[2];
        ASSERT_EQ(::pipe(p), 0);
        if (p[0] != fd) {  // make the pipe's read end take the old number
            ASSERT_EQ(::dup2(p[0], fd), fd);
            ::close(p[0]);
            p[0] = fd;
        }
        ASSERT_EQ(::write(p[1], "pipe-data", 9), 9);
        rt->worker().barrier();
        char buf[16];
        EXPECT_EQ(::read(p[0], buf, sizeof buf), 9) << "the pipe lost data";
        ::close(p[0]);
        ::close(p[1]);
        // Reused for another file: its reads return that file.
        fd = ::open(a.path().c_str(), O_RDONLY);
        EXPECT_EQ(tp->read_exit(fd, 1), 0);
        ::close(fd);
        const int fd2 = ::open(b.path().c_str(), O_RDONLY);
        rt->worker().barrier();
        EXPECT_EQ(contents(b.path()), [&] {
            std::string s(1 << 20, '\0');
            for (size_t i = 0; i < s.size(); ++i) s[i] = TempFile::pattern(32, i);
            return s;
        }());
        EXPECT_EQ(::lseek(fd2, 0, SEEK_CUR), 0);
        ::close(fd2);
        ASSERT_TRUE(rt->disable(tp->slot));
    }
}

TEST(PolicySemantics, AppendAndConcurrentWritersSeenExactly) {
    PolicyOnFile s(0, 0, {1, static_cast<uint64_t>(-1), 1 << 20});
    ASSERT_TRUE(s.ok());
    auto& [f, rt, tp] = s;
    constexpr int kWriters = 2, kRecords = 400, kRecord = 1000;
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w)
        writers.emplace_back([&, w] {
            const int fd = ::open(f.path().c_str(), O_WRONLY | O_APPEND);
            std::string rec(kRecord, static_cast<char>('a' + w));
            for (int i = 0; i < kRecords; ++i)
                ASSERT_EQ(::write(fd, rec.data(), rec.size()), kRecord);
            ::close(fd);
        });
    // The reader follows the growing file, prefetching ahead of its position after each read.
    const int fd = ::open(f.path().c_str(), O_RDONLY);
    std::string seen;
    char buf[3000];
    for (int spins = 0; seen.size() < size_t{kWriters} * kRecords * kRecord && spins < 2000000;
         ++spins) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        ASSERT_GE(n, 0);
        if (n == 0) {
            std::this_thread::yield();
            continue;
        }
        seen.append(buf, static_cast<size_t>(n));
        tp->read_exit(fd, n);
    }
    for (auto& t : writers) t.join();
    rt->worker().barrier();
    ::close(fd);
    EXPECT_EQ(seen, contents(f.path()));
    // O_APPEND records never interleave: each 1000-byte record is one letter.
    ASSERT_EQ(seen.size(), size_t{kWriters} * kRecords * kRecord);
    for (size_t r = 0; r < seen.size(); r += kRecord)
        ASSERT_GE(seen.find_first_not_of(seen[r], r), r + kRecord) << "record at " << r;
}

TEST(PolicySemantics, SwitchedOnAndOffUnderConcurrentReadsNeverChangesAByte) {
    TempFile f;
    const uint64_t size = 6 << 20;
    f.write_pattern(size, 41);
    auto rt = make_runtime();
    ASSERT_TRUE(rt);
    std::atomic<TestPolicy*> current{nullptr};
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> bytes_checked{0};
    std::atomic<int> mismatches{0};
    std::vector<std::thread> readers;
    for (int r = 0; r < 3; ++r)
        readers.emplace_back([&, r] {
            const int fd = ::open(f.path().c_str(), O_RDONLY);
            std::vector<char> buf(48 * 1024 + r * 4096);
            for (int round = 0; round < 200 && !stop.load(); ++round) {
                ::lseek(fd, 0, SEEK_SET);
                uint64_t pos = 0;
                for (ssize_t n; (n = ::read(fd, buf.data(), buf.size())) > 0;) {
                    for (ssize_t i = 0; i < n; ++i)
                        if (buf[i] != TempFile::pattern(41, pos + i)) ++mismatches;
                    pos += static_cast<uint64_t>(n);
                    bytes_checked += static_cast<uint64_t>(n);
                    // As the agent does: the program runs only while its policy is on (the
                    // object is unloaded after off); here the test object stays loaded, and
                    // its helpers must refuse after off.
                    if (TestPolicy* tp = current.load()) tp->read_exit(fd, n);
                }
                if (pos != size) ++mismatches;
            }
            ::close(fd);
        });
    std::vector<std::unique_ptr<TestPolicy>> policies;
    for (int i = 0; i < 30; ++i) {
        auto tp = TestPolicy::enable(*rt, {i % 2 ? 2u : 1u, static_cast<uint64_t>(-1), 1 << 20});
        ASSERT_TRUE(tp);
        current.store(tp.get());
        std::this_thread::yield();
        ASSERT_TRUE(rt->disable(tp->slot));
        EXPECT_EQ(Counters::get(rt->counters(tp->slot).inflight), 0u);
        policies.push_back(
            std::move(tp));  // programs may still run on readers until they see the next one
    }
    stop.store(true);
    for (auto& t : readers) t.join();
    current.store(nullptr);
    EXPECT_EQ(mismatches.load(), 0);
    EXPECT_GT(bytes_checked.load(), 0u);
}

}  // namespace
}  // namespace liveio::policy
