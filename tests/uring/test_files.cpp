// File ops on both backends, checked against plain syscalls.
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "fixture.h"

namespace liveio::uring::test {
namespace {

class FileOps : public EngineTest {};

TEST_P(FileOps, ReadAtOffsetMatchesPread) {
    std::vector<char> content;
    int fd = make_file(64 << 10, &content);
    std::vector<char> buf(5000);
    EXPECT_EQ(engine->run(Op::read(fd, buf.data(), 5000, 12345)), 5000);
    EXPECT_EQ(0, std::memcmp(buf.data(), content.data() + 12345, 5000));
    // Past EOF: short, then 0.
    EXPECT_EQ(engine->run(Op::read(fd, buf.data(), 5000, (64 << 10) - 100)), 100);
    EXPECT_EQ(engine->run(Op::read(fd, buf.data(), 5000, 64 << 10)), 0);
}

TEST_P(FileOps, WriteAtOffsetVisibleToPread) {
    int fd = make_file(8192);
    const char msg[] = "written through the engine";
    EXPECT_EQ(engine->run(Op::write(fd, msg, sizeof msg, 1000)), static_cast<int>(sizeof msg));
    char back[sizeof msg] = {};
    ASSERT_EQ(::pread(fd, back, sizeof back, 1000), static_cast<ssize_t>(sizeof back));
    EXPECT_STREQ(back, msg);
}

TEST_P(FileOps, OffsetMinusOneUsesAndAdvancesFilePosition) {
    std::vector<char> content;
    int fd = make_file(4096, &content);
    ASSERT_EQ(::lseek(fd, 100, SEEK_SET), 100);
    char buf[50];
    EXPECT_EQ(engine->run(Op::read(fd, buf, 50)), 50);
    EXPECT_EQ(0, std::memcmp(buf, content.data() + 100, 50));
    EXPECT_EQ(::lseek(fd, 0, SEEK_CUR), 150);
    EXPECT_EQ(engine->run(Op::write(fd, "abc", 3)), 3);
    EXPECT_EQ(::lseek(fd, 0, SEEK_CUR), 153);
    char back[3];
    ASSERT_EQ(::pread(fd, back, 3, 150), 3);
    EXPECT_EQ(0, std::memcmp(back, "abc", 3));
}

TEST_P(FileOps, ReadvWritev) {
    std::vector<char> content;
    int fd = make_file(16384, &content);
    char a[100], b[300];
    iovec iov[2] = {{a, sizeof a}, {b, sizeof b}};
    EXPECT_EQ(engine->run(Op::readv(fd, iov, 2, 777)), 400);
    EXPECT_EQ(0, std::memcmp(a, content.data() + 777, 100));
    EXPECT_EQ(0, std::memcmp(b, content.data() + 877, 300));
    char x[] = "hello ", y[] = "vectored world";
    iovec out[2] = {{x, 6}, {y, 14}};
    EXPECT_EQ(engine->run(Op::writev(fd, out, 2, 5000)), 20);
    char back[20];
    ASSERT_EQ(::pread(fd, back, 20, 5000), 20);
    EXPECT_EQ(0, std::memcmp(back, "hello vectored world", 20));
    // File position variant.
    ASSERT_EQ(::lseek(fd, 0, SEEK_SET), 0);
    EXPECT_EQ(engine->run(Op::readv(fd, iov, 2)), 400);
    EXPECT_EQ(0, std::memcmp(a, content.data(), 100));
    EXPECT_EQ(::lseek(fd, 0, SEEK_CUR), 400);
}

TEST_P(FileOps, FixedFilesAndBuffers) {
    std::vector<char> content;
    int fd = make_file(65536, &content);
    std::vector<char> region(8192);
    iovec reg{region.data(), region.size()};
    ASSERT_TRUE(engine->register_files({&fd, 1}).ok());
    ASSERT_TRUE(engine->register_buffers({&reg, 1}).ok());
    EXPECT_EQ(engine->run(Op::read_fixed(0, region.data() + 4096, 4096, 8192, 0).fixed()), 4096);
    EXPECT_EQ(0, std::memcmp(region.data() + 4096, content.data() + 8192, 4096));
    std::memset(region.data(), 'z', 4096);
    EXPECT_EQ(engine->run(Op::write_fixed(0, region.data(), 4096, 0, 0).fixed()), 4096);
    std::vector<char> back(4096);
    ASSERT_EQ(::pread(fd, back.data(), 4096, 0), 4096);
    EXPECT_EQ(back, std::vector<char>(4096, 'z'));
    // Plain read through the fixed-file index.
    char small[10];
    EXPECT_EQ(engine->run(Op::read(0, small, 10, 20000).fixed()), 10);
    EXPECT_EQ(0, std::memcmp(small, content.data() + 20000, 10));
    // Errors: unknown buffer index, unknown file index.
    EXPECT_EQ(engine->run(Op::read_fixed(0, region.data(), 4096, 0, 5).fixed()), -EFAULT);
    EXPECT_EQ(engine->run(Op::read(7, small, 10, 0).fixed()), -EBADF);
}

// Direct descriptors: a file opened into the registered-file table never takes a number in the
// process's descriptor table (what the next open() returns is unchanged), is usable through
// .fixed() and is freed by close_direct(). The fallback has no such table.
TEST_P(FileOps, OpenatDirectTakesNoProcessDescriptor) {
    std::vector<char> content;
    make_file(16384, &content);
    const std::string path = dir.path + "/f0";
    std::vector<int> sparse(4, -1);
    if (GetParam() == BackendKind::Fallback) {
        EXPECT_EQ(engine->run(Op::openat_direct(AT_FDCWD, path.c_str(), O_RDONLY)), -EOPNOTSUPP);
        EXPECT_EQ(engine->run(Op::close_direct(0)), -EOPNOTSUPP);
        const auto range = engine->register_file_alloc_range(0, 4);
        ASSERT_FALSE(range.ok());
        EXPECT_EQ(range.error().code, ENOTSUP);
        return;
    }
    ASSERT_TRUE(engine->register_files(sparse).ok());
    const int probe_before = ::dup(0);
    ASSERT_GE(probe_before, 0);
    ::close(probe_before);
    const int slot = engine->run(Op::openat_direct(AT_FDCWD, path.c_str(), O_RDONLY));
    ASSERT_GE(slot, 0);
    ASSERT_LT(slot, 4);
    const int probe_after = ::dup(0);  // the lowest free number: the same as before the open
    EXPECT_EQ(probe_after, probe_before);
    ::close(probe_after);
    char buf[100];
    EXPECT_EQ(engine->run(Op::read(slot, buf, sizeof buf, 5000).fixed()), 100);
    EXPECT_EQ(0, std::memcmp(buf, content.data() + 5000, sizeof buf));
    EXPECT_EQ(engine->run(Op::fadvise(slot, 0, 0, POSIX_FADV_WILLNEED).fixed()), 0);
    EXPECT_EQ(engine->run(Op::close_direct(static_cast<unsigned>(slot))), 0);
    EXPECT_EQ(engine->run(Op::read(slot, buf, sizeof buf, 0).fixed()), -EBADF);
    // A missing file is the open's error; a full table is -ENFILE.
    EXPECT_EQ(engine->run(Op::openat_direct(AT_FDCWD, (dir.path + "/none").c_str(), O_RDONLY)),
              -ENOENT);
    std::vector<int> slots;
    for (int i = 0; i < 4; ++i)
        slots.push_back(engine->run(Op::openat_direct(AT_FDCWD, path.c_str(), O_RDONLY)));
    std::sort(slots.begin(), slots.end());
    EXPECT_EQ(slots, (std::vector<int>{0, 1, 2, 3}));
    EXPECT_EQ(engine->run(Op::openat_direct(AT_FDCWD, path.c_str(), O_RDONLY)), -ENFILE);
    // An allocation range keeps the slots below it to the caller's own updates.
    for (int slot : slots) EXPECT_EQ(engine->run(Op::close_direct(static_cast<unsigned>(slot))), 0);
    ASSERT_TRUE(engine->register_file_alloc_range(2, 2).ok());
    std::vector<int> ranged;
    for (int i = 0; i < 2; ++i)
        ranged.push_back(engine->run(Op::openat_direct(AT_FDCWD, path.c_str(), O_RDONLY)));
    std::sort(ranged.begin(), ranged.end());
    EXPECT_EQ(ranged, (std::vector<int>{2, 3}));
    EXPECT_EQ(engine->run(Op::openat_direct(AT_FDCWD, path.c_str(), O_RDONLY)), -ENFILE);
}

TEST_P(FileOps, FsyncFdatasync) {
    int fd = make_file(4096);
    EXPECT_EQ(engine->run(Op::fsync(fd)), 0);
    EXPECT_EQ(engine->run(Op::fdatasync(fd)), 0);
    EXPECT_EQ(engine->run(Op::fsync(-1)), -EBADF);
}

TEST_P(FileOps, OpenatStatxClose) {
    std::string name = "opened-by-engine";
    int dirfd = adopt(::open(dir.path.c_str(), O_RDONLY | O_DIRECTORY));
    int fd = engine->run(Op::openat(dirfd, name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0640));
    ASSERT_GE(fd, 0);
    EXPECT_EQ(::write(fd, "12345", 5), 5);
    struct statx sx {};
    EXPECT_EQ(engine->run(Op::statx(dirfd, name.c_str(), 0, STATX_SIZE | STATX_MODE, &sx)), 0);
    struct stat st {};
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(sx.stx_size, 5u);
    EXPECT_EQ(sx.stx_size, static_cast<uint64_t>(st.st_size));
    EXPECT_EQ(sx.stx_mode & 0777, 0640u);
    EXPECT_EQ(engine->run(Op::close(fd)), 0);
    EXPECT_EQ(::fcntl(fd, F_GETFD), -1);  // really closed
    EXPECT_EQ(engine->run(Op::openat(dirfd, name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0640)),
              -EEXIST);
    EXPECT_EQ(engine->run(Op::openat(dirfd, "missing", O_RDONLY)), -ENOENT);
    EXPECT_EQ(engine->run(Op::statx(dirfd, "missing", 0, STATX_SIZE, &sx)), -ENOENT);
}

TEST_P(FileOps, Fadvise) {
    int fd = make_file(65536);
    EXPECT_EQ(engine->run(Op::fadvise(fd, 0, 65536, POSIX_FADV_WILLNEED)), 0);
    EXPECT_EQ(engine->run(Op::fadvise(fd, 0, 65536, 12345)), -EINVAL);
}

TEST_P(FileOps, BatchResultsInOrder) {
    std::vector<char> content;
    int fd = make_file(1 << 20, &content);
    constexpr int kOps = 200;  // more than the SQ (64) and the slots (128): forces chunking
    std::vector<std::vector<char>> bufs(kOps, std::vector<char>(1000));
    std::vector<Op> ops;
    for (int i = 0; i < kOps; ++i) ops.push_back(Op::read(fd, bufs[i].data(), 1000, i * 5003));
    ops.push_back(Op::read(-1, bufs[0].data(), 10, 0));  // one failing op does not disturb others
    auto results = engine->run_batch(ops);
    ASSERT_EQ(results.size(), ops.size());
    for (int i = 0; i < kOps; ++i) {
        ASSERT_EQ(results[i], 1000) << i;
        ASSERT_EQ(0, std::memcmp(bufs[i].data(), content.data() + i * 5003, 1000)) << i;
    }
    EXPECT_EQ(results[kOps], -EBADF);
}

TEST_P(FileOps, WholeReadCollectsShortPipeReads) {
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    adopt(p[0]);
    adopt(p[1]);
    std::string expected;
    for (int i = 0; i < 3; ++i) expected += std::string(1000, static_cast<char>('a' + i));
    std::thread writer([&] {
        for (int i = 0; i < 3; ++i) {
            ASSERT_EQ(::write(p[1], expected.data() + i * 1000, 1000), 1000);
            std::this_thread::sleep_for(std::chrono::milliseconds(20));  // interleaving, not timing
        }
    });
    std::string got(3000, '\0');
    int32_t res = engine->run(Op::read(p[0], got.data(), 3000).whole());
    writer.join();
    EXPECT_EQ(res, 3000);
    EXPECT_EQ(got, expected);
    // Without .whole() a pipe read returns what is there.
    ASSERT_EQ(::write(p[1], "xy", 2), 2);
    EXPECT_EQ(engine->run(Op::read(p[0], got.data(), 3000)), 2);
    // "All of it" stops at EOF and reports what was transferred.
    ASSERT_EQ(::write(p[1], "tail", 4), 4);
    ::close(p[1]);
    fds.pop_back();
    EXPECT_EQ(engine->run(Op::read(p[0], got.data(), 3000).whole()), 4);
}

// Short vectored reads: the remainder spans iovec boundaries, the caller's array is untouched.
TEST_P(FileOps, WholeReadvContinuesAcrossIovecs) {
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    adopt(p[0]);
    adopt(p[1]);
    std::string expected(3000, '\0');
    for (size_t i = 0; i < expected.size(); ++i) expected[i] = static_cast<char>('A' + i % 53);
    std::thread writer([&] {
        for (int i = 0; i < 3; ++i) {
            ASSERT_EQ(::write(p[1], expected.data() + i * 1000, 1000), 1000);
            std::this_thread::sleep_for(std::chrono::milliseconds(20));  // interleaving, not timing
        }
    });
    std::string a(700, '\0'), b(1300, '\0'), c(1000, '\0');
    iovec iov[3] = {{a.data(), a.size()}, {b.data(), b.size()}, {c.data(), c.size()}};
    const iovec before[3] = {iov[0], iov[1], iov[2]};
    int32_t res = engine->run(Op::readv(p[0], iov, 3).whole());
    writer.join();
    EXPECT_EQ(res, 3000);
    EXPECT_EQ(a + b + c, expected);
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(iov[i].iov_base, before[i].iov_base);
        EXPECT_EQ(iov[i].iov_len, before[i].iov_len);
    }
}

// io_uring arms poll instead of returning -EAGAIN for an O_NONBLOCK pipe; the fallback must
// behave the same: the read completes once data arrives.
TEST_P(FileOps, NonblockingEmptyPipeReadWaitsForData) {
    int p[2];
    ASSERT_EQ(::pipe2(p, O_NONBLOCK), 0);
    adopt(p[0]);
    adopt(p[1]);
    char buf[8] = {};
    ASSERT_EQ(engine->prepare(Op::read(p[0], buf, sizeof buf), 5), 0);
    std::vector<Completion> done(2);
    EXPECT_EQ(engine->submit_and_reap(done, 0), 0u);
    EXPECT_EQ(engine->inflight(), 1u);
    ASSERT_EQ(::write(p[1], "ready", 5), 5);
    ASSERT_EQ(engine->reap(done, 1), 1u);
    EXPECT_EQ(done[0].tag, 5u);
    EXPECT_EQ(done[0].res, 5);
    EXPECT_EQ(std::string(buf, 5), "ready");
}

TEST_P(FileOps, AsyncReadsReapedByTag) {
    std::vector<char> content;
    int fd = make_file(256 << 10, &content);
    std::vector<std::vector<char>> bufs(32, std::vector<char>(4096));
    for (uint64_t i = 0; i < 32; ++i)
        ASSERT_EQ(engine->prepare(
                      Op::read(fd, bufs[i].data(), 4096, static_cast<int64_t>(i * 8000)), 1000 + i),
                  0);
    EXPECT_EQ(engine->inflight(), 32u);
    std::vector<Completion> done(64);
    size_t total = 0;
    std::vector<bool> seen(32, false);
    while (total < 32) {
        size_t n = engine->submit_and_reap(done, 1);
        ASSERT_GT(n, 0u);
        for (size_t k = 0; k < n; ++k) {
            uint64_t i = done[k].tag - 1000;
            ASSERT_LT(i, 32u);
            EXPECT_FALSE(seen[i]);
            seen[i] = true;
            EXPECT_EQ(done[k].res, 4096);
            EXPECT_EQ(0, std::memcmp(bufs[i].data(), content.data() + i * 8000, 4096));
        }
        total += n;
    }
    EXPECT_EQ(engine->inflight(), 0u);
    EXPECT_EQ(engine->reap(done, 1), 0u);  // nothing in flight: returns at once
}

TEST_P(FileOps, PrepareBeyondMaxInflightIsBusy) {
    Options o;
    o.sq_entries = 4;
    o.cq_entries = 8;
    make_engine(o);
    if (IsSkipped()) return;
    for (uint64_t i = 0; i < 8; ++i) ASSERT_EQ(engine->prepare(Op::nop(), i), 0);
    EXPECT_EQ(engine->prepare(Op::nop(), 99), -EBUSY);
    // A synchronous op still runs: it waits for a slot; the async completions are kept.
    EXPECT_EQ(engine->run(Op::nop()), 0);
    std::vector<Completion> done(16);
    size_t total = 0;
    while (engine->inflight() > 0)
        total += engine->submit_and_reap({done.data() + total, done.size() - total}, 1);
    EXPECT_EQ(total, 8u);
    std::vector<uint64_t> tags;
    for (size_t i = 0; i < total; ++i) tags.push_back(done[i].tag);
    std::sort(tags.begin(), tags.end());
    EXPECT_EQ(tags, (std::vector<uint64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
}

TEST_P(FileOps, CqOverflowIsDrainedNotLost) {
    Options o;
    o.sq_entries = 4;
    o.cq_entries = 4;
    o.max_inflight = 512;  // let a burst exceed the CQ on purpose
    make_engine(o);
    if (IsSkipped()) return;
    constexpr uint64_t kOps = 500;
    for (uint64_t i = 0; i < kOps; ++i) ASSERT_EQ(engine->prepare(Op::nop(), i), 0);
    engine->submit();
    std::vector<Completion> done(kOps);
    std::vector<int> seen(kOps, 0);
    size_t total = 0;
    while (total < kOps) {
        size_t n = engine->reap({done.data(), done.size()}, 1);
        ASSERT_GT(n, 0u) << "completions lost after " << total;
        for (size_t k = 0; k < n; ++k) {
            ASSERT_LT(done[k].tag, kOps);
            ++seen[done[k].tag];
            EXPECT_EQ(done[k].res, 0);
        }
        total += n;
    }
    for (uint64_t i = 0; i < kOps; ++i) EXPECT_EQ(seen[i], 1) << i;
    EXPECT_EQ(engine->stats().cq_dropped, 0u);
    if (GetParam() == BackendKind::Uring) {
        EXPECT_GT(engine->stats().cq_overflow_flushes, 0u);
    }
}

TEST_P(FileOps, ChainStopsAtFailingOp) {
    int fd = make_file(4096);
    char buf[100];
    std::vector<Op> ops = {
        Op::write(fd, "first", 5, 0), Op::read(-1, buf, 10, 0),  // fails: -EBADF
        Op::write(fd, "third", 5, 10),                           // must not run
    };
    ChainResult r = engine->run_chain(ops);
    ASSERT_EQ(r.results.size(), 3u);
    EXPECT_EQ(r.results[0], 5);
    EXPECT_EQ(r.results[1], -EBADF);
    EXPECT_EQ(r.results[2], -ECANCELED);
    EXPECT_EQ(r.failed_index, 1);
    EXPECT_EQ(r.failed_res, -EBADF);
    char back[5];
    ASSERT_EQ(::pread(fd, back, 5, 10), 5);
    EXPECT_NE(0, std::memcmp(back, "third", 5));
}

TEST_P(FileOps, ChainShortReadCancelsRest) {
    int fd = make_file(4096);
    char buf[200];
    std::vector<Op> ops = {
        Op::read(fd, buf, 100, 0),
        Op::read(fd, buf, 200, 4000),  // only 96 bytes left: short read breaks the chain
        Op::fsync(fd),
        Op::write(fd, "x", 1, 0),
    };
    ChainResult r = engine->run_chain(ops);
    EXPECT_EQ(r.results[0], 100);
    EXPECT_EQ(r.results[1], 96);
    EXPECT_EQ(r.results[2], -ECANCELED);
    EXPECT_EQ(r.results[3], -ECANCELED);
    EXPECT_EQ(r.failed_index, 1);
    EXPECT_EQ(r.failed_res, 96);
}

TEST_P(FileOps, HardChainContinuesAfterFailure) {
    int fd = make_file(4096);
    char buf[10];
    std::vector<Op> ops = {Op::read(-1, buf, 10, 0), Op::write(fd, "hard", 4, 0)};
    ChainResult r = engine->run_chain(ops, ChainKind::Hard);
    EXPECT_EQ(r.results[0], -EBADF);
    EXPECT_EQ(r.results[1], 4);
    EXPECT_EQ(r.failed_index, 0);
    char back[4];
    ASSERT_EQ(::pread(fd, back, 4, 0), 4);
    EXPECT_EQ(0, std::memcmp(back, "hard", 4));
}

TEST_P(FileOps, ChainLongerThanSqIsRejected) {
    Options o;
    o.sq_entries = 4;
    make_engine(o);
    if (IsSkipped()) return;
    std::vector<Op> ops(5, Op::nop());
    ChainResult r = engine->run_chain(ops);
    if (GetParam() == BackendKind::Uring) {
        EXPECT_EQ(r.failed_index, 0);
        EXPECT_EQ(r.failed_res, -E2BIG);
    } else {  // the fallback has no SQ limit: the chain runs
        EXPECT_EQ(r.failed_index, -1);
    }
}

TEST_P(FileOps, TimeoutExpiresWithEtime) { EXPECT_EQ(engine->run(Op::timeout(1'000'000)), -ETIME); }

TEST_P(FileOps, CancelPendingTimeout) {
    ASSERT_EQ(engine->prepare(Op::timeout(60'000'000'000ull), 7),
              0);  // a minute: must be cancelled
    engine->submit();
    EXPECT_EQ(engine->run(Op::cancel(7)), 0);
    std::vector<Completion> done(4);
    size_t n = engine->reap(done, 1);
    ASSERT_EQ(n, 1u);
    EXPECT_EQ(done[0].tag, 7u);
    EXPECT_EQ(done[0].res, -ECANCELED);
    EXPECT_EQ(engine->run(Op::cancel(7)), -ENOENT);  // already gone
}

TEST_P(FileOps, TimeoutsCompleteInDeadlineOrder) {
    ASSERT_EQ(engine->prepare(Op::timeout(40'000'000), 2), 0);
    ASSERT_EQ(engine->prepare(Op::timeout(1'000'000), 1), 0);
    std::vector<Completion> done(4);
    size_t n = engine->submit_and_reap(done, 1);
    ASSERT_GE(n, 1u);
    EXPECT_EQ(done[0].tag, 1u);
    EXPECT_EQ(done[0].res, -ETIME);
    if (n == 1) n += engine->reap({done.data() + 1, 3}, 1);
    ASSERT_EQ(n, 2u);
    EXPECT_EQ(done[1].tag, 2u);
    EXPECT_EQ(done[1].res, -ETIME);
}

// Both timeouts have expired by the time the engine looks (the thread slept past both
// deadlines): they still complete in deadline order, not in submission order.
TEST_P(FileOps, TimeoutsExpiredTogetherCompleteInDeadlineOrder) {
    ASSERT_EQ(engine->prepare(Op::timeout(2'000'000), 2), 0);
    ASSERT_EQ(engine->prepare(Op::timeout(1'000'000), 1), 0);
    engine->submit();
    const timespec past_both{0, 20'000'000};
    ::nanosleep(&past_both, nullptr);
    std::vector<Completion> done(4);
    size_t n = engine->reap(done, 1);
    if (n == 1) n += engine->reap({done.data() + 1, 3}, 1);
    ASSERT_EQ(n, 2u);
    EXPECT_EQ(done[0].tag, 1u);
    EXPECT_EQ(done[1].tag, 2u);
    EXPECT_EQ(done[0].res, -ETIME);
    EXPECT_EQ(done[1].res, -ETIME);
}

// With the default single-issuer ring, another thread's submit is refused by the kernel
// (-EEXIST): the engine must report it, not hang, and refuse later work the same way.
TEST_P(FileOps, UseFromAnotherThreadIsReportedNotHung) {
    int32_t other = 1;
    std::thread([&] { other = engine->run(Op::nop()); }).join();
    if (GetParam() == BackendKind::Fallback) {
        EXPECT_EQ(other, 0);  // plain syscalls have no issuer restriction
        return;
    }
    EXPECT_EQ(other, -EEXIST);
    EXPECT_EQ(engine->run(Op::nop()), -EEXIST);
    EXPECT_EQ(engine->prepare(Op::nop(), 1), -EEXIST);
}

TEST_P(FileOps, SharedIssuerEngineMovesBetweenThreads) {
    Options o;
    o.single_issuer = false;
    make_engine(o);
    if (IsSkipped()) return;
    int32_t other = 1;
    std::thread([&] { other = engine->run(Op::nop()); }).join();
    EXPECT_EQ(other, 0);
    EXPECT_EQ(engine->run(Op::nop()), 0);
}

INSTANTIATE_TEST_SUITE_P(Backends, FileOps,
                         testing::Values(BackendKind::Uring, BackendKind::Fallback), backend_name);

TEST(EngineCreate, EnvironmentForcesFallback) {
    ::setenv("LIVEIO_URING_FALLBACK", "1", 1);
    auto e = Engine::create({});
    ::unsetenv("LIVEIO_URING_FALLBACK");
    ASSERT_TRUE(e.ok());
    EXPECT_EQ((*e)->backend(), BackendKind::Fallback);
    EXPECT_NE((*e)->why_fallback().find("LIVEIO_URING_FALLBACK"), std::string::npos);
}

TEST(EngineCreate, RejectsZeroEntries) {
    Options o;
    o.sq_entries = 0;
    auto e = Engine::create(o);
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.error().code, EINVAL);
}

TEST(EngineCreate, SqpollRingWorks) {
    Options o;
    o.sqpoll = true;
    auto e = Engine::create(o);
    ASSERT_TRUE(e.ok());
    if ((*e)->backend() != BackendKind::Uring)
        GTEST_SKIP() << "SQPOLL unavailable: " << (*e)->why_fallback();
    TempDir dir;
    std::string path = dir.path + "/f";
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT, 0600);
    ASSERT_GE(fd, 0);
    EXPECT_EQ((*e)->run(Op::write(fd, "sqpoll", 6, 0)), 6);
    char back[6];
    EXPECT_EQ((*e)->run(Op::read(fd, back, 6, 0)), 6);
    EXPECT_EQ(0, std::memcmp(back, "sqpoll", 6));
    ::close(fd);
}

}  // namespace
}  // namespace liveio::uring::test
