// Regular files, directories and pipes: the same call sequence natively and through the
// executor, comparing every result, errno, file position and byte.
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <csignal>
#include <cstring>
#include <functional>
#include <thread>

#include "uring_redirect/harness.h"

namespace liveio::policy::test {
namespace {

class Files : public RedirectTest {};

// One step of a sequence, run on a descriptor: returns the call's kernel result.
struct Step {
    const char* what;
    std::function<long(RedirectTest&, bool redirected, int fd, char* buf)> run;
};

// Runs `steps` on two identical files (one natively, one through the executor); compares
// every result, the file position after each step, the bytes read and the final contents.
void differential(Files& t, int native_fd, int redirected_fd, const std::vector<Step>& steps) {
    std::vector<char> a(3 << 20, 'a'), b(3 << 20, 'a');
    for (const Step& s : steps) {
        long rn = s.run(t, false, native_fd, a.data());
        long rr = s.run(t, true, redirected_fd, b.data());
        EXPECT_EQ(rn, rr) << s.what;
        EXPECT_EQ(::lseek(native_fd, 0, SEEK_CUR), ::lseek(redirected_fd, 0, SEEK_CUR)) << s.what;
        EXPECT_TRUE(a == b) << s.what << ": bytes differ";
    }
    struct stat sa {
    }, sb{};
    ::fstat(native_fd, &sa);
    ::fstat(redirected_fd, &sb);
    ASSERT_EQ(sa.st_size, sb.st_size);
    std::vector<char> ca(sa.st_size), cb(sb.st_size);
    ASSERT_EQ(::pread(native_fd, ca.data(), ca.size(), 0), sa.st_size);
    ASSERT_EQ(::pread(redirected_fd, cb.data(), cb.size(), 0), sb.st_size);
    EXPECT_TRUE(ca == cb) << "file contents differ";
}

// Calls `nr` natively or through the executor.
long call(RedirectTest& t, bool redirected, long nr, long a0, long a1 = 0, long a2 = 0, long a3 = 0,
          long a4 = 0) {
    return redirected ? t.via(nr, a0, a1, a2, a3, a4)
                      : RedirectTest::native(nr, a0, a1, a2, a3, a4);
}

TEST_F(Files, ReadsPositionsAndShortReadsMatchNative) {
    const auto content = pattern(1 << 20 | 123, 1);
    int fn = make_file(content, O_RDWR), fr = make_file(content, O_RDWR);
    auto rd = [](size_t len) {
        return [len](RedirectTest& t, bool r, int fd, char* buf) {
            return call(t, r, SYS_read, fd, L(buf), len);
        };
    };
    auto prd = [](size_t len, long off) {
        return [len, off](RedirectTest& t, bool r, int fd, char* buf) {
            return call(t, r, SYS_pread64, fd, L(buf), len, off);
        };
    };
    auto seek = [](long off, int whence) {
        return [off, whence](RedirectTest&, bool, int fd, char*) {
            return static_cast<long>(::lseek(fd, off, whence));
        };
    };
    auto rdv = [](std::vector<size_t> lens, long off) {
        return [lens, off](RedirectTest& t, bool r, int fd, char* buf) {
            std::vector<iovec> iov;
            size_t at = 0;
            for (size_t l : lens) iov.push_back({buf + at + 7, l}), at += l + 13;
            return off < 0 ? call(t, r, SYS_readv, fd, L(iov.data()), iov.size())
                           : call(t, r, SYS_preadv, fd, L(iov.data()), iov.size(), off);
        };
    };
    uint64_t before = redirected();
    differential(*this, fn, fr,
                 {{"read 0", rd(0)},
                  {"read 1", rd(1)},
                  {"read 4096", rd(4096)},
                  {"read 1 MiB", rd(1 << 20)},
                  {"read at EOF, short", rd(1 << 20)},
                  {"read after EOF", rd(4096)},
                  {"seek 10", seek(10, SEEK_SET)},
                  {"pread 4096 @ 5000", prd(4096, 5000)},
                  {"read after pread keeps f_pos", rd(100)},
                  {"pread beyond EOF", prd(4096, 5 << 20)},
                  {"pread straddling EOF", prd(8192, (1 << 20) + 100)},
                  {"readv", rdv({1, 4096, 100000}, -1)},
                  {"preadv", rdv({3, 5, 70000}, 333)},
                  {"preadv at EOF", rdv({4096, 4096}, (1 << 20) + 120)},
                  {"seek end-2", seek(-2, SEEK_END)},
                  {"readv short at EOF", rdv({1, 4096}, -1)}});
    EXPECT_GE(redirected() - before, 14u) << "the calls must go through io_uring, not fall back";
}

TEST_F(Files, WritesPositionsAppendAndSyncMatchNative) {
    const auto content = pattern(100000, 2);
    const auto data = pattern(300000, 3);
    for (int append = 0; append < 2; ++append) {
        SCOPED_TRACE(append ? "O_APPEND" : "plain");
        int flags = O_RDWR | (append ? O_APPEND : 0);
        int fn = make_file(content, flags), fr = make_file(content, flags);
        auto wr = [&](size_t off, size_t len) {
            return [&, off, len](RedirectTest& t, bool r, int fd, char*) {
                return call(t, r, SYS_write, fd, L(data.data() + off), len);
            };
        };
        auto pwr = [&](size_t off, size_t len, long at) {
            return [&, off, len, at](RedirectTest& t, bool r, int fd, char*) {
                return call(t, r, SYS_pwrite64, fd, L(data.data() + off), len, at);
            };
        };
        auto wrv = [&](long at) {
            return [&, at](RedirectTest& t, bool r, int fd, char*) {
                iovec iov[3] = {{const_cast<char*>(data.data()), 10},
                                {const_cast<char*>(data.data() + 50), 0},
                                {const_cast<char*>(data.data() + 999), 65536}};
                return at < 0 ? call(t, r, SYS_writev, fd, L(iov), 3)
                              : call(t, r, SYS_pwritev, fd, L(iov), 3, at);
            };
        };
        auto sync = [](long nr) {
            return [nr](RedirectTest& t, bool r, int fd, char*) { return call(t, r, nr, fd); };
        };
        auto seek = [](long off) {
            return [off](RedirectTest&, bool, int fd, char*) {
                return static_cast<long>(::lseek(fd, off, SEEK_SET));
            };
        };
        uint64_t before = redirected();
        differential(*this, fn, fr,
                     {{"write 0", wr(0, 0)},
                      {"write 4096", wr(0, 4096)},
                      {"seek 50000", seek(50000)},
                      {"write 100000 over EOF", wr(7, 100000)},
                      {"pwrite inside", pwr(3, 5000, 20)},
                      {"pwrite past EOF (hole)", pwr(3, 5000, 400000)},
                      {"write after pwrite", wr(11, 77)},
                      {"writev", wrv(-1)},
                      {"pwritev", wrv(1234)},
                      {"fsync", sync(SYS_fsync)},
                      {"fdatasync", sync(SYS_fdatasync)}});
        EXPECT_EQ(redirected() - before, 10u);
    }
}

TEST_F(Files, Preadv2AndPwritev2WithoutFlagsMatchNative) {
    const auto content = pattern(200000, 5);
    const auto data = pattern(70000, 6);
    int fn = make_file(content), fr = make_file(content);
    // x86-64: preadv2(fd, iov, iovcnt, pos_l, pos_h, flags); pos_l carries the whole offset.
    auto v2 = [&](long nr, long at, long flags) {
        return [&, nr, at, flags](RedirectTest& t, bool r, int fd, char* buf) {
            iovec iov[2] = {
                {nr == SYS_preadv2 ? buf + 5 : const_cast<char*>(data.data()), 4000},
                {nr == SYS_preadv2 ? buf + 9000 : const_cast<char*>(data.data() + 100), 60000}};
            hook::SyscallCall c{nr, {fd, L(iov), 2, at, 0, flags}};
            hook::SyscallResult res = 0;
            if (r && t.redirect->execute(c, res)) return static_cast<long>(res);
            return raw_syscall(nr, fd, L(iov), 2, at, 0, flags);
        };
    };
    const uint64_t before = redirected();
    const uint64_t flagged = fallbacks(FallbackReason::Flags);
    differential(*this, fn, fr,
                 {{"preadv2 at 1000", v2(SYS_preadv2, 1000, 0)},
                  {"preadv2 at the file position (-1)", v2(SYS_preadv2, -1, 0)},
                  {"preadv2 again at the position, moved", v2(SYS_preadv2, -1, 0)},
                  {"preadv2 straddling EOF", v2(SYS_preadv2, 190000, 0)},
                  {"preadv2 offset -2: EINVAL", v2(SYS_preadv2, -2, 0)},
                  {"pwritev2 at 5000", v2(SYS_pwritev2, 5000, 0)},
                  {"pwritev2 at the position (-1)", v2(SYS_pwritev2, -1, 0)},
                  {"pwritev2 past EOF", v2(SYS_pwritev2, 300000, 0)},
                  {"preadv2 RWF_HIPRI runs natively", v2(SYS_preadv2, 0, RWF_HIPRI)}});
    EXPECT_EQ(redirected() - before, 7u);
    EXPECT_EQ(fallbacks(FallbackReason::Flags) - flagged, 1u);
}

TEST_F(Files, ErrorsMatchNative) {
    const auto content = pattern(8192, 4);
    int rw = make_file(content);
    std::string ro_path = dir.path + "/ro";
    int wo = keep(::open(ro_path.c_str(), O_WRONLY | O_CREAT, 0600));
    int dirfd = keep(::open(dir.path.c_str(), O_RDONLY | O_DIRECTORY));
    int pathfd = keep(::open(ro_path.c_str(), O_PATH));
    int direct = keep(::open(ro_path.c_str(), O_RDWR | O_DIRECT));
    const int closed = 987;  // no such descriptor
    ASSERT_EQ(::fcntl(closed, F_GETFD), -1);
    int pipefd[2];
    ASSERT_EQ(::pipe(pipefd), 0);
    keep(pipefd[0]), keep(pipefd[1]);
    // A buffer whose second page is inaccessible.
    char* pages = static_cast<char*>(
        ::mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(pages, MAP_FAILED);
    ASSERT_EQ(::mprotect(pages + 4096, 4096, PROT_NONE), 0);
    char buf[8192];
    iovec bad_iov[2] = {{buf, 10}, {reinterpret_cast<void*>(8), 10}};
    struct Case {
        const char* what;
        long nr, a0, a1, a2, a3;
    };
    const Case cases[] = {
        {"read bad fd", SYS_read, -1, L(buf), 10, 0},
        {"read closed fd", SYS_read, closed, L(buf), 10, 0},
        {"read write-only fd", SYS_read, wo, L(buf), 10, 0},
        {"write read-only... O_PATH fd", SYS_write, pathfd, L(buf), 10, 0},
        {"read O_PATH fd", SYS_read, pathfd, L(buf), 10, 0},
        {"read directory", SYS_read, dirfd, L(buf), 10, 0},
        {"pread directory", SYS_pread64, dirfd, L(buf), 10, 0},
        {"read into NULL", SYS_pread64, rw, 0, 10, 0},
        {"read into unmapped", SYS_pread64, rw, 8, 10, 0},
        {"pread negative offset", SYS_pread64, rw, L(buf), 10, -1},
        {"pread -2", SYS_pread64, rw, L(buf), 10, -2},
        {"pwrite negative offset", SYS_pwrite64, rw, L(buf), 10, -5},
        {"write from unmapped", SYS_pwrite64, rw, 8, 10, 100},
        {"pread on pipe", SYS_pread64, pipefd[0], L(buf), 10, 0},
        {"pwrite on pipe", SYS_pwrite64, pipefd[1], L(buf), 10, 0},
        {"readv bad iovec", SYS_preadv, rw, L(bad_iov), 2, 0},
        {"readv iov NULL", SYS_readv, rw, 0, 2, 0},
        {"readv iovcnt 0", SYS_readv, rw, L(buf), 0, 0},
        {"readv iovcnt 1025", SYS_readv, rw, L(bad_iov), 1025, 0},
        {"O_DIRECT misaligned", SYS_pread64, direct, L(buf + 1), 511, 0},
        {"fsync pipe", SYS_fsync, pipefd[1], 0, 0, 0},
        {"fsync bad fd", SYS_fsync, -1, 0, 0, 0},
        {"fdatasync directory", SYS_fdatasync, dirfd, 0, 0, 0},
        {"write directory", SYS_write, dirfd, L(buf), 1, 0},
    };
    for (const Case& c : cases) {
        long n = native(c.nr, c.a0, c.a1, c.a2, c.a3);
        long r = via(c.nr, c.a0, c.a1, c.a2, c.a3);
        EXPECT_EQ(n, r) << c.what;
        EXPECT_EQ(::lseek(rw, 0, SEEK_CUR), 0) << c.what;
    }
    // A read whose buffer runs into an inaccessible page: the part that fits, as natively.
    long n = native(SYS_pread64, rw, L(pages + 4000), 1000, 0);
    long r = via(SYS_pread64, rw, L(pages + 4000), 1000, 0);
    EXPECT_EQ(n, r) << "read straddling an inaccessible page";
    long wn = native(SYS_pwrite64, rw, L(pages + 4000), 1000, 0);
    long wr = via(SYS_pwrite64, rw, L(pages + 4000), 1000, 0);
    EXPECT_EQ(wn, wr) << "write straddling an inaccessible page";
    ::munmap(pages, 8192);
    EXPECT_GT(redirected(), 10u);
    EXPECT_GT(fallbacks(FallbackReason::Arguments), 0u);
}

TEST_F(Files, PipesMatchNative) {
    int a[2], b[2];
    ASSERT_EQ(::pipe(a), 0);
    ASSERT_EQ(::pipe(b), 0);
    for (int fd : {a[0], a[1], b[0], b[1]}) keep(fd);
    char buf[100];
    // Data available: partial reads return what is there.
    ASSERT_EQ(::write(a[1], "hello", 5), 5);
    ASSERT_EQ(::write(b[1], "hello", 5), 5);
    EXPECT_EQ(native(SYS_read, a[0], L(buf), 100), via(SYS_read, b[0], L(buf), 100));
    EXPECT_EQ(native(SYS_read, a[0], L(buf), 0), via(SYS_read, b[0], L(buf), 0));
    EXPECT_EQ(native(SYS_write, a[1], L(buf), 0), via(SYS_write, b[1], L(buf), 0));
    EXPECT_EQ(native(SYS_lseek, a[0], 0, SEEK_CUR), -ESPIPE);
    // O_NONBLOCK, empty: EAGAIN, not a wait.
    ASSERT_EQ(::fcntl(a[0], F_SETFL, O_NONBLOCK), 0);
    ASSERT_EQ(::fcntl(b[0], F_SETFL, O_NONBLOCK), 0);
    uint64_t nb = fallbacks(FallbackReason::Nonblocking);
    EXPECT_EQ(native(SYS_read, a[0], L(buf), 10), -EAGAIN);
    EXPECT_EQ(via(SYS_read, b[0], L(buf), 10), -EAGAIN);
    EXPECT_EQ(fallbacks(FallbackReason::Nonblocking), nb + 1);
    // O_NONBLOCK with data: redirected, same bytes.
    ASSERT_EQ(::write(b[1], "xyz", 3), 3);
    uint64_t before = redirected();
    EXPECT_EQ(via(SYS_read, b[0], L(buf), 10), 3);
    EXPECT_EQ(redirected(), before + 1);
    EXPECT_EQ(std::string(buf, 3), "xyz");
    // EOF after the writer closes.
    ::close(b[1]);
    EXPECT_EQ(via(SYS_read, b[0], L(buf), 10), 0);
    // No reader: EPIPE and one SIGPIPE, as natively.
    ::close(a[0]);
    int c[2];
    ASSERT_EQ(::pipe(c), 0);
    ::close(c[0]);
    keep(c[1]);
    static std::atomic<int> sigpipes{0};
    struct sigaction sa {
    }, old{};
    sa.sa_handler = [](int) { sigpipes.fetch_add(1); };
    ::sigaction(SIGPIPE, &sa, &old);
    sigpipes = 0;
    EXPECT_EQ(native(SYS_write, a[1], L(buf), 10), -EPIPE);
    EXPECT_EQ(sigpipes.load(), 1);
    EXPECT_EQ(via(SYS_write, c[1], L(buf), 10), -EPIPE);
    EXPECT_EQ(sigpipes.load(), 2);
    ::sigaction(SIGPIPE, &old, nullptr);
}

// A blocking write larger than the pipe: write(2) waits until all of it is in; io_uring would
// return the first chunk. The executor continues and returns the whole count.
TEST_F(Files, BlockingPipeWriteIsWhole) {
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    keep(p[0]), keep(p[1]);
    const auto data = pattern(1 << 20, 5);
    std::vector<char> got;
    std::thread reader([&] {
        char buf[7000];
        for (;;) {
            ssize_t n = ::read(p[0], buf, sizeof(buf));
            if (n <= 0) break;
            got.insert(got.end(), buf, buf + n);
            if (got.size() >= data.size()) break;
        }
    });
    EXPECT_EQ(via(SYS_write, p[1], L(data.data()), data.size()), static_cast<long>(data.size()));
    reader.join();
    EXPECT_TRUE(got == data);
    EXPECT_GT(redirect->stats().write_continuations, 0u);
}

// Threads reading and writing one file through their own rings, each at its own offsets.
TEST_F(Files, ConcurrentReadersAndWriters) {
    constexpr size_t kBlock = 4096, kBlocks = 512;
    const auto content = pattern(kBlock * kBlocks, 6);
    int fd = make_file(content);
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            std::vector<char> buf(kBlock);
            uint32_t x = 12345u + static_cast<uint32_t>(t);
            for (int i = 0; i < 2000; ++i) {
                x ^= x << 13, x ^= x >> 17, x ^= x << 5;
                size_t block = x % kBlocks;
                if (t < 2) {  // readers
                    long n = via(SYS_pread64, fd, L(buf.data()), kBlock,
                                 static_cast<long>(block * kBlock));
                    if (n != static_cast<long>(kBlock) ||
                        std::memcmp(buf.data(), content.data() + block * kBlock, kBlock) != 0)
                        mismatches.fetch_add(1);
                } else {  // writers put back the same bytes, so readers always see `content`
                    long n = via(SYS_pwrite64, fd, L(content.data() + block * kBlock), kBlock,
                                 static_cast<long>(block * kBlock));
                    if (n != static_cast<long>(kBlock)) mismatches.fetch_add(1);
                }
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(mismatches.load(), 0);
    EXPECT_EQ(redirected(), 8000u);
    EXPECT_EQ(redirect->stats().engines_created, 4u);
}

TEST_F(Files, PositionCallsCanBeKeptNative) {
    redirect.reset();
    options_.position_calls = false;
    auto created = UringRedirect::create(options_);
    ASSERT_TRUE(created.ok());
    redirect = std::move(*created);
    int fd = make_file(pattern(100, 7));
    char buf[10];
    EXPECT_EQ(via(SYS_read, fd, L(buf), 10), 10);
    EXPECT_EQ(fallbacks(FallbackReason::Disabled), 1u);
    EXPECT_EQ(via(SYS_pread64, fd, L(buf), 10, 0), 10);
    EXPECT_EQ(redirected(), 1u);
}

}  // namespace
}  // namespace liveio::policy::test
