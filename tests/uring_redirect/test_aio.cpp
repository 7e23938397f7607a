// Linux AIO (io_setup/io_submit/io_getevents/io_destroy) translated to io_uring by the `uring`
// executor: every call compared with the same call on a native context, on real files with
// O_DIRECT and buffered.
#include <linux/aio_abi.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <thread>

#include "child_exit.h"
#include "harness.h"
#include "policy/uring_aio.h"

namespace liveio::policy::test {
namespace {

constexpr size_t kBlock = 4096;

struct AlignedBuffer {
    char* p;
    explicit AlignedBuffer(size_t n) : p(static_cast<char*>(std::aligned_alloc(kBlock, n))) {
        std::memset(p, 0, n);
    }
    AlignedBuffer(const AlignedBuffer&) = delete;
    ~AlignedBuffer() { std::free(p); }
};

iocb make_cb(uint16_t op, int fd, void* buf, uint64_t len, int64_t off, uint64_t data) {
    iocb cb{};
    cb.aio_lio_opcode = op;
    cb.aio_fildes = static_cast<uint32_t>(fd);
    cb.aio_buf = reinterpret_cast<uint64_t>(buf);
    cb.aio_nbytes = len;
    cb.aio_offset = off;
    cb.aio_data = data;
    cb.aio_key = 77;  // the kernel overwrites it with 0
    return cb;
}

bool by_obj(const io_event& a, const io_event& b) { return a.obj < b.obj; }

class AioTest : public RedirectTest {
public:
    // An O_DIRECT descriptor of a file holding `content` (O_DIRECT needs a real file system).
    int direct_file(const std::vector<char>& content, int flags = O_RDWR) {
        int fd = make_file(content, O_RDWR);
        int dfd = ::open(("/proc/self/fd/" + std::to_string(fd)).c_str(), flags | O_DIRECT);
        if (dfd < 0) return -1;
        return keep(dfd);
    }
    // A tracked context, an O_DIRECT file of `blocks` pattern blocks and a buffer as large.
    struct DirectCase {
        std::vector<char> content;
        int fd;
        AlignedBuffer buf;
        aio_context_t ctx;
    };
    std::unique_ptr<DirectCase> direct_case(size_t blocks, uint32_t seed, unsigned nr_events) {
        auto content = pattern(blocks * kBlock, seed);
        const int fd = direct_file(content);
        return std::unique_ptr<DirectCase>(new DirectCase{
            std::move(content), fd, AlignedBuffer(blocks * kBlock), setup_via(nr_events)});
    }
    // Takes `n` events through the executor (io_getevents with min_nr 1 until all arrived),
    // sorted by aio_data.
    long take_sorted(aio_context_t ctx, io_event* ev, long n) {
        long got = 0;
        for (int i = 0; i < 1000 && got < n; ++i) {
            const long r =
                via(SYS_io_getevents, static_cast<long>(ctx), 1, n - got, L(ev + got), 0);
            if (r <= 0) return r;
            got += r;
        }
        std::sort(ev, ev + got,
                  [](const io_event& x, const io_event& y) { return x.data < y.data; });
        return got;
    }
    aio_context_t setup_via(unsigned n) {
        aio_context_t ctx = 0;
        EXPECT_EQ(via(SYS_io_setup, n, L(&ctx)), 0);
        return ctx;
    }
    static aio_context_t setup_native(unsigned n) {
        aio_context_t ctx = 0;
        EXPECT_EQ(native(SYS_io_setup, n, L(&ctx)), 0);
        return ctx;
    }
    AioStats aio() const {
        UringRedirectStats s = redirect->stats();
        AioStats a;
        a.contexts_tracked = s.aio_contexts;
        a.submits = s.aio_submits;
        a.ops = s.aio_ops;
        a.events = s.aio_events;
        a.native_submits = s.aio_native_submits;
        return a;
    }
    // Submits `cbs` (rebuilt per side) and collects `want` events, through the executor and
    // natively; both sides must agree on every result and every event field.
    void compare(const std::function<std::vector<iocb>(int side)>& build, long want_submit,
                 size_t want_events) {
        std::vector<io_event> got[2];
        std::vector<iocb> cbs[2];
        std::vector<iocb*> ptrs[2];
        long submitted[2];
        for (int side = 0; side < 2; ++side) {
            cbs[side] = build(side);
            for (auto& cb : cbs[side]) ptrs[side].push_back(&cb);
            aio_context_t ctx = side == 0 ? setup_via(64) : setup_native(64);
            auto call = [&](long nr, long a0, long a1, long a2, long a3 = 0, long a4 = 0) {
                return side == 0 ? via(nr, a0, a1, a2, a3, a4) : native(nr, a0, a1, a2, a3, a4);
            };
            submitted[side] = call(SYS_io_submit, static_cast<long>(ctx),
                                   static_cast<long>(ptrs[side].size()), L(ptrs[side].data()));
            got[side].resize(want_events);
            size_t have = 0;
            for (int round = 0; round < 1000 && have < want_events; ++round) {
                long r = call(SYS_io_getevents, static_cast<long>(ctx), 1,
                              static_cast<long>(want_events - have), L(got[side].data() + have), 0);
                ASSERT_GT(r, 0);
                have += static_cast<size_t>(r);
            }
            timespec zero{0, 0};
            io_event extra{};
            EXPECT_EQ(call(SYS_io_getevents, static_cast<long>(ctx), 0, 1, L(&extra), L(&zero)), 0);
            EXPECT_EQ(call(SYS_io_destroy, static_cast<long>(ctx), 0, 0), 0);
        }
        EXPECT_EQ(submitted[0], want_submit);
        EXPECT_EQ(submitted[0], submitted[1]);
        for (int side = 0; side < 2; ++side) {
            // obj is the iocb's own address: compare by index into the side's array.
            for (auto& e : got[side])
                e.obj = static_cast<uint64_t>(reinterpret_cast<iocb*>(e.obj) - cbs[side].data());
            std::sort(got[side].begin(), got[side].end(), by_obj);
            for (auto& cb : cbs[side]) EXPECT_EQ(cb.aio_key, 0u);
        }
        ASSERT_EQ(got[0].size(), got[1].size());
        for (size_t i = 0; i < got[0].size(); ++i) {
            EXPECT_EQ(got[0][i].obj, got[1][i].obj) << i;
            EXPECT_EQ(got[0][i].data, got[1][i].data) << i;
            EXPECT_EQ(got[0][i].res, got[1][i].res) << i;
            EXPECT_EQ(got[0][i].res2, got[1][i].res2) << i;
        }
    }
};

TEST_F(AioTest, DirectReadsMatchNativeEventsAndData) {
    auto content = pattern(64 * kBlock + 100, 1);
    int fd = direct_file(content);
    ASSERT_GE(fd, 0);
    AlignedBuffer bufs[2] = {AlignedBuffer(16 * 8 * kBlock), AlignedBuffer(16 * 8 * kBlock)};
    auto build = [&](int side) {
        std::vector<iocb> cbs;
        for (int i = 0; i < 8; ++i)
            cbs.push_back(make_cb(IOCB_CMD_PREAD, fd, bufs[side].p + i * 8 * kBlock, 8 * kBlock,
                                  (i * 9) % 64 * kBlock, 100 + i));
        // Short read at EOF, read past EOF, and an O_DIRECT misalignment (EINVAL as the event).
        cbs.push_back(make_cb(IOCB_CMD_PREAD, fd, bufs[side].p + 8 * 8 * kBlock, 8 * kBlock,
                              64 * kBlock, 200));
        cbs.push_back(
            make_cb(IOCB_CMD_PREAD, fd, bufs[side].p + 9 * 8 * kBlock, kBlock, 80 * kBlock, 201));
        cbs.push_back(
            make_cb(IOCB_CMD_PREAD, fd, bufs[side].p + 10 * 8 * kBlock + 1, kBlock, 0, 202));
        return cbs;
    };
    const AioStats before = aio();
    compare(build, 11, 11);
    EXPECT_EQ(std::memcmp(bufs[0].p, bufs[1].p, 16 * 8 * kBlock), 0);
    EXPECT_EQ(std::memcmp(bufs[0].p, content.data(), 8 * kBlock), 0);
    EXPECT_EQ(aio().ops - before.ops, 11u);
    EXPECT_EQ(aio().events - before.events, 11u);
}

TEST_F(AioTest, DirectWritesAndSyncsLeaveTheSameFile) {
    AlignedBuffer data(8 * kBlock);
    auto bytes = pattern(8 * kBlock, 2);
    std::memcpy(data.p, bytes.data(), bytes.size());
    int fds[2] = {direct_file({}), direct_file({})};
    ASSERT_GE(fds[0], 0);
    ASSERT_GE(fds[1], 0);
    auto build = [&](int side) {
        std::vector<iocb> cbs;
        for (int i = 0; i < 4; ++i)
            cbs.push_back(make_cb(IOCB_CMD_PWRITE, fds[side], data.p + i * 2 * kBlock, 2 * kBlock,
                                  (3 - i) * 2 * kBlock, i));
        return cbs;
    };
    compare(build, 4, 4);
    auto syncs = [&](int side) {
        return std::vector<iocb>{make_cb(IOCB_CMD_FSYNC, fds[side], nullptr, 0, 0, 9),
                                 make_cb(IOCB_CMD_FDSYNC, fds[side], nullptr, 0, 0, 10)};
    };
    compare(syncs, 2, 2);
    std::vector<char> a(8 * kBlock), b(8 * kBlock);
    ASSERT_EQ(::pread(fds[0], data.p, 8 * kBlock, 0), static_cast<ssize_t>(8 * kBlock));
    std::memcpy(a.data(), data.p, a.size());
    ASSERT_EQ(::pread(fds[1], data.p, 8 * kBlock, 0), static_cast<ssize_t>(8 * kBlock));
    std::memcpy(b.data(), data.p, b.size());
    EXPECT_EQ(a, b);
    EXPECT_EQ(std::memcmp(a.data(), bytes.data() + 6 * kBlock, 2 * kBlock), 0);
}

TEST_F(AioTest, SubmissionErrorsAreTheKernelsOwn) {
    auto content = pattern(4 * kBlock, 3);
    int rd = direct_file(content, O_RDONLY);
    ASSERT_GE(rd, 0);
    AlignedBuffer buf(kBlock);
    struct Case {
        const char* what;
        iocb cb;
    } cases[] = {
        {"bad descriptor", make_cb(IOCB_CMD_PREAD, 999, buf.p, kBlock, 0, 1)},
        {"write on a read-only descriptor", make_cb(IOCB_CMD_PWRITE, rd, buf.p, kBlock, 0, 1)},
        {"negative offset", make_cb(IOCB_CMD_PREAD, rd, buf.p, kBlock, -4096, 1)},
        {"unknown opcode", make_cb(99, rd, buf.p, kBlock, 0, 1)},
        {"fsync with a buffer", make_cb(IOCB_CMD_FSYNC, rd, buf.p, 0, 0, 1)},
    };
    for (auto& c : cases) {
        aio_context_t v = setup_via(4), n = setup_native(4);
        iocb a = c.cb, b = c.cb;
        iocb* pa = &a;
        iocb* pb = &b;
        EXPECT_EQ(via(SYS_io_submit, static_cast<long>(v), 1, L(&pa)),
                  native(SYS_io_submit, static_cast<long>(n), 1, L(&pb)))
            << c.what;
        EXPECT_EQ(via(SYS_io_destroy, static_cast<long>(v)), 0);
        EXPECT_EQ(native(SYS_io_destroy, static_cast<long>(n)), 0);
    }
    // Arguments of io_getevents: min_nr > nr, bad event array, bad timeout pointer.
    aio_context_t v = setup_via(4), n = setup_native(4);
    io_event ev{};
    timespec zero{0, 0};
    EXPECT_EQ(via(SYS_io_getevents, static_cast<long>(v), 2, 1, L(&ev), L(&zero)),
              native(SYS_io_getevents, static_cast<long>(n), 2, 1, L(&ev), L(&zero)));
    EXPECT_EQ(via(SYS_io_getevents, static_cast<long>(v), 0, 1, L(&ev), 8),
              native(SYS_io_getevents, static_cast<long>(n), 0, 1, L(&ev), 8));
    iocb a = make_cb(IOCB_CMD_PREAD, rd, buf.p, kBlock, 0, 5);
    iocb* pa = &a;
    ASSERT_EQ(via(SYS_io_submit, static_cast<long>(v), 1, L(&pa)), 1);
    // An unwritable event array: -EFAULT, and the event stays for the next call.
    EXPECT_EQ(via(SYS_io_getevents, static_cast<long>(v), 1, 1, 8, 0), -EFAULT);
    EXPECT_EQ(via(SYS_io_getevents, static_cast<long>(v), 1, 1, L(&ev), 0), 1);
    EXPECT_EQ(ev.data, 5u);
    EXPECT_EQ(ev.res, static_cast<long long>(kBlock));
    // io_cancel of a file read: the kernel has no cancel method (-EINVAL), translated or not.
    ASSERT_EQ(via(SYS_io_submit, static_cast<long>(v), 1, L(&pa)), 1);
    iocb b = a;
    iocb* pb = &b;
    ASSERT_EQ(native(SYS_io_submit, static_cast<long>(n), 1, L(&pb)), 1);
    io_event r1{}, r2{};
    EXPECT_EQ(via(SYS_io_cancel, static_cast<long>(v), L(&a), L(&r1)),
              native(SYS_io_cancel, static_cast<long>(n), L(&b), L(&r2)));
    EXPECT_EQ(via(SYS_io_getevents, static_cast<long>(v), 1, 1, L(&ev), 0), 1);
    EXPECT_EQ(native(SYS_io_getevents, static_cast<long>(n), 1, 1, L(&ev), 0), 1);
    EXPECT_EQ(via(SYS_io_destroy, static_cast<long>(v)), 0);
    EXPECT_EQ(native(SYS_io_destroy, static_cast<long>(n)), 0);
    // A destroyed context: EINVAL everywhere, as natively.
    EXPECT_EQ(via(SYS_io_getevents, static_cast<long>(v), 0, 1, L(&ev), L(&zero)), -EINVAL);
    EXPECT_EQ(via(SYS_io_submit, static_cast<long>(v), 1, L(&pa)), -EINVAL);
}

TEST_F(AioTest, BufferedReadIsCompleteWhenSubmitReturns) {
    auto content = pattern(3 * kBlock, 4);
    int fd = make_file(content);
    std::vector<char> buf(3 * kBlock);
    aio_context_t v = setup_via(4);
    iocb cb = make_cb(IOCB_CMD_PREAD, fd, buf.data(), buf.size(), 0, 1);
    iocb* p = &cb;
    ASSERT_EQ(via(SYS_io_submit, static_cast<long>(v), 1, L(&p)), 1);
    timespec zero{0, 0};
    io_event ev{};
    EXPECT_EQ(via(SYS_io_getevents, static_cast<long>(v), 1, 1, L(&ev), L(&zero)), 1);
    EXPECT_EQ(ev.res, static_cast<long long>(buf.size()));
    EXPECT_EQ(buf, content);
    EXPECT_EQ(via(SYS_io_destroy, static_cast<long>(v)), 0);
}

TEST_F(AioTest, DescriptorClosedRightAfterSubmitStillReads) {
    auto content = pattern(16 * kBlock, 5);
    int fd = direct_file(content);
    ASSERT_GE(fd, 0);
    int dup = ::dup(fd);
    AlignedBuffer buf(16 * kBlock);
    aio_context_t v = setup_via(4);
    iocb cb = make_cb(IOCB_CMD_PREAD, dup, buf.p, 16 * kBlock, 0, 1);
    iocb* p = &cb;
    ASSERT_EQ(via(SYS_io_submit, static_cast<long>(v), 1, L(&p)), 1);
    ::close(dup);
    int other = ::open("/dev/null", O_RDONLY);  // likely reuses the number
    io_event ev{};
    EXPECT_EQ(via(SYS_io_getevents, static_cast<long>(v), 1, 1, L(&ev), 0), 1);
    ::close(other);
    EXPECT_EQ(ev.res, static_cast<long long>(16 * kBlock));
    EXPECT_EQ(std::memcmp(buf.p, content.data(), 16 * kBlock), 0);
    EXPECT_EQ(via(SYS_io_destroy, static_cast<long>(v)), 0);
}

// The target closes every descriptor above 2 (close_range, as before an exec) while the AIO
// bridge runs: nothing of the bridge's can be closed (a ring without a number, a futex
// wake-up), so a later io_submit is still taken by the bridge and its event arrives. With an
// eventfd that the target closed, that io_submit would wait forever for the bridge. In a child
// with a registry of its own (a fork child never uses its parent's); bounded by a kill.
TEST_F(AioTest, TargetClosingAllDescriptorsLeavesTheBridgeWorking) {
    auto probe = uring::Engine::create({.ring_fd = uring::RingFd::Unnumbered});
    if (!probe.ok() || (*probe)->ring_fd_placement() != uring::RingFd::Unnumbered ||
        !(*probe)->features().futex)
        GTEST_SKIP() << "needs a ring without a descriptor number and IORING_OP_FUTEX_WAIT";
    probe->reset();
    const auto content = pattern(2 * kBlock, 9);
    const std::string path = dir.path + "/aio-close-all";
    ::close(liveio::test_data::create_file(path, content, O_RDWR));
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        auto created = UringRedirect::create({});
        if (!created.ok()) ::_exit(10);
        auto own = std::move(*created);
        auto call = [&](long nr, long a0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0) {
            hook::SyscallCall c{nr, {a0, a1, a2, a3, a4, 0}};
            hook::SyscallResult r = 0;
            return own->execute(c, r) ? static_cast<long>(r) : raw_syscall(nr, a0, a1, a2, a3, a4);
        };
        aio_context_t ctx = 0;
        if (call(SYS_io_setup, 4, L(&ctx)) != 0) ::_exit(11);
        std::vector<char> buf(2 * kBlock);
        for (int round = 0; round < 2; ++round) {
            if (round == 1) ::syscall(SYS_close_range, 3u, ~0u, 0u);
            const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
            iocb cb = make_cb(IOCB_CMD_PREAD, fd, buf.data(), buf.size(), 0, 1);
            iocb* p = &cb;
            if (call(SYS_io_submit, static_cast<long>(ctx), 1, L(&p)) != 1) ::_exit(12);
            io_event ev{};
            if (call(SYS_io_getevents, static_cast<long>(ctx), 1, 1, L(&ev), 0) != 1) ::_exit(13);
            if (ev.res != static_cast<long long>(buf.size()) || buf != content) ::_exit(14);
            ::close(fd);
        }
        if (own->stats().aio_ops != 2) ::_exit(15);
        call(SYS_io_destroy, static_cast<long>(ctx));
        ::_exit(0);
    }
    const int status = test_data::exit_status_within(child, 60);
    ASSERT_NE(status, -1) << "an io_submit hung after the target closed its descriptors";
    EXPECT_EQ(status, 0);
}

TEST_F(AioTest, DestroyWaitsForTranslatedOps) {
    auto dc = direct_case(256, 6, 8);
    ASSERT_GE(dc->fd, 0);
    std::vector<iocb> cbs;
    for (int i = 0; i < 8; ++i)
        cbs.push_back(make_cb(IOCB_CMD_PREAD, dc->fd, dc->buf.p + i * 32 * kBlock, 32 * kBlock,
                              i * 32 * kBlock, i));
    std::vector<iocb*> ptrs;
    for (auto& c : cbs) ptrs.push_back(&c);
    ASSERT_EQ(via(SYS_io_submit, static_cast<long>(dc->ctx), 8, L(ptrs.data())), 8);
    EXPECT_EQ(via(SYS_io_destroy, static_cast<long>(dc->ctx)), 0);
    // Every read finished before io_destroy returned: the buffer holds the file.
    EXPECT_EQ(std::memcmp(dc->buf.p, dc->content.data(), 256 * kBlock), 0);
    EXPECT_TRUE(redirect->drain_aio(std::chrono::milliseconds(0)));
}

TEST_F(AioTest, ContextsCreatedBeforeAreAdoptedWithTheirNativeOps) {
    aio_context_t n = setup_native(8);  // created before the policy: unknown to the bridge
    auto content = pattern(2 * kBlock, 7);
    int fd = make_file(content);
    std::vector<char> buf(2 * kBlock);
    iocb early = make_cb(IOCB_CMD_PREAD, fd, buf.data(), kBlock, 0, 1);
    iocb late = make_cb(IOCB_CMD_PREAD, fd, buf.data() + kBlock, kBlock, kBlock, 2);
    iocb* pe = &early;
    iocb* pl = &late;
    // Calls on an unknown context before its first io_submit stay native.
    const uint64_t untracked = fallbacks(FallbackReason::AioUntracked);
    timespec zero{0, 0};
    io_event ev[2]{};
    EXPECT_EQ(via(SYS_io_getevents, static_cast<long>(n), 0, 1, L(ev), L(&zero)), 0);
    EXPECT_EQ(fallbacks(FallbackReason::AioUntracked) - untracked, 1u);
    // A native op in flight (submitted before the policy), then one through the executor.
    ASSERT_EQ(native(SYS_io_submit, static_cast<long>(n), 1, L(&pe)), 1);
    const AioStats before = aio();
    ASSERT_EQ(via(SYS_io_submit, static_cast<long>(n), 1, L(&pl)), 1);
    EXPECT_EQ(aio().ops - before.ops, 1u);
    EXPECT_EQ(aio().contexts_tracked - before.contexts_tracked, 1u);
    ASSERT_EQ(take_sorted(n, ev, 2), 2);
    EXPECT_EQ(ev[0].data, 1u);
    EXPECT_EQ(ev[0].obj, reinterpret_cast<uint64_t>(&early));
    EXPECT_EQ(ev[1].data, 2u);
    EXPECT_EQ(ev[1].obj, reinterpret_cast<uint64_t>(&late));
    EXPECT_EQ(buf, content);
    EXPECT_EQ(via(SYS_io_destroy, static_cast<long>(n)), 0);
}

TEST_F(AioTest, GeteventsInterruptedByAHandledSignalIsEintr) {
    static std::atomic<int> handled{0};
    struct sigaction sa {
    }, old{};
    sa.sa_handler = [](int) { handled.fetch_add(1); };
    sa.sa_flags = SA_RESTART;  // io_getevents returns EINTR regardless
    ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
    aio_context_t v = setup_via(4);
    std::atomic<bool> done{false};
    long result = 1;
    std::thread waiter([&] {
        io_event ev{};
        result = via(SYS_io_getevents, static_cast<long>(v), 1, 1, L(&ev), 0);
        done = true;
    });
    // Signal until the call returns (bounded: 10 s of 1 ms steps).
    for (int i = 0; i < 10000 && !done; ++i) {
        pthread_kill(waiter.native_handle(), SIGUSR1);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    waiter.join();
    sigaction(SIGUSR1, &old, nullptr);
    EXPECT_EQ(result, -EINTR);
    EXPECT_GT(handled.load(), 0);
    EXPECT_EQ(via(SYS_io_destroy, static_cast<long>(v)), 0);
}

TEST_F(AioTest, TimeoutReturnsWhatCompleted) {
    aio_context_t v = setup_via(4);
    io_event ev[2]{};
    timespec ts{0, 20 * 1000 * 1000};
    EXPECT_EQ(via(SYS_io_getevents, static_cast<long>(v), 1, 2, L(ev), L(&ts)), 0);
    auto content = pattern(kBlock, 8);
    int fd = make_file(content);
    std::vector<char> buf(kBlock);
    iocb cb = make_cb(IOCB_CMD_PREAD, fd, buf.data(), kBlock, 0, 1);
    iocb* p = &cb;
    ASSERT_EQ(via(SYS_io_submit, static_cast<long>(v), 1, L(&p)), 1);
    EXPECT_EQ(via(SYS_io_getevents, static_cast<long>(v), 2, 2, L(ev), L(&ts)),
              1);  // fewer than min_nr at the timeout
    EXPECT_EQ(via(SYS_io_destroy, static_cast<long>(v)), 0);
}

TEST_F(AioTest, DrainLeavesNewSubmissionsNativeAndStillDeliversOldOnes) {
    auto dc = direct_case(8, 9, 8);
    ASSERT_GE(dc->fd, 0);
    const int fd = dc->fd;
    const auto& content = dc->content;
    AlignedBuffer& buf = dc->buf;
    const aio_context_t v = dc->ctx;
    iocb a = make_cb(IOCB_CMD_PREAD, fd, buf.p, 4 * kBlock, 0, 1);
    iocb b = make_cb(IOCB_CMD_PREAD, fd, buf.p + 4 * kBlock, 4 * kBlock, 4 * kBlock, 2);
    iocb* pa = &a;
    iocb* pb = &b;
    const AioStats before = aio();
    ASSERT_EQ(via(SYS_io_submit, static_cast<long>(v), 1, L(&pa)), 1);
    EXPECT_FALSE(redirect->drain_aio(std::chrono::milliseconds(0)));  // event not taken yet
    ASSERT_EQ(via(SYS_io_submit, static_cast<long>(v), 1, L(&pb)),
              1);  // native now: a mixed context
    EXPECT_EQ(aio().native_submits - before.native_submits, 1u);
    io_event ev[2]{};
    ASSERT_EQ(take_sorted(v, ev, 2), 2);
    EXPECT_EQ(ev[0].data, 1u);
    EXPECT_EQ(ev[1].data, 2u);
    EXPECT_EQ(ev[0].res, static_cast<long long>(4 * kBlock));
    EXPECT_EQ(ev[1].res, static_cast<long long>(4 * kBlock));
    EXPECT_EQ(std::memcmp(buf.p, content.data(), 8 * kBlock), 0);
    EXPECT_TRUE(redirect->drain_aio(std::chrono::milliseconds(0)));
    EXPECT_EQ(via(SYS_io_destroy, static_cast<long>(v)), 0);
}

TEST_F(AioTest, ShutdownSendsAWaiterWithNothingTranslatedToTheNativeCall) {
    aio_context_t v = setup_via(4);
    std::atomic<bool> done{false};
    long result = 0;
    io_event ev{};
    const uint64_t untracked = fallbacks(FallbackReason::AioUntracked);
    std::thread waiter([&] {
        result = via(SYS_io_getevents, static_cast<long>(v), 1, 1, L(&ev), 0);
        done = true;
    });
    ASSERT_TRUE(redirect->drain_aio(std::chrono::milliseconds(0)));
    redirect->shutdown();  // the waiter leaves the executor and waits in the kernel
    auto content = pattern(kBlock, 10);
    int fd = make_file(content);
    std::vector<char> buf(kBlock);
    iocb cb = make_cb(IOCB_CMD_PREAD, fd, buf.data(), kBlock, 0, 42);
    iocb* p = &cb;
    // A native op on the context completes the native wait, whenever the waiter got there.
    ASSERT_EQ(native(SYS_io_submit, static_cast<long>(v), 1, L(&p)), 1);
    waiter.join();
    EXPECT_TRUE(done);
    EXPECT_EQ(result, 1);
    EXPECT_EQ(ev.data, 42u);
    EXPECT_EQ(ev.res, static_cast<long long>(kBlock));
    EXPECT_EQ(fallbacks(FallbackReason::AioUntracked) - untracked, 1u);
    EXPECT_EQ(native(SYS_io_destroy, static_cast<long>(v)), 0);
}

}  // namespace
}  // namespace liveio::policy::test
