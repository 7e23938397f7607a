// The policy runtime without the agent: queue, I/O thread, helpers, completion edge,
// budget, accounting, switching off with actions in flight, verifier rejections.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "policy/action_queue.h"
#include "policy_fixture.h"

namespace liveio::policy {
namespace {

using testing::make_runtime;
using testing::PolicyOnFile;
using testing::TempFile;
using testing::TestPolicy;

TEST(ActionQueue, ManyProducersOneConsumerLoseNothing) {
    ActionQueue<uint64_t> q(256);
    constexpr int kProducers = 4, kEach = 20000;
    std::atomic<int> started{0};
    std::vector<std::thread> producers;
    for (int p = 0; p < kProducers; ++p)
        producers.emplace_back([&, p] {
            ++started;
            for (int i = 0; i < kEach;) {
                if (q.push(static_cast<uint64_t>(p) << 32 | static_cast<uint64_t>(i)))
                    ++i;
                else
                    std::this_thread::yield();
            }
        });
    std::vector<int> next(kProducers, 0);
    int total = 0;
    while (total < kProducers * kEach) {
        uint64_t v;
        if (!q.pop(v)) {
            std::this_thread::yield();
            continue;
        }
        const int p = static_cast<int>(v >> 32), i = static_cast<int>(v & 0xffffffff);
        ASSERT_EQ(i, next[p]) << "producer " << p << " out of order";  // FIFO per producer
        ++next[p];
        ++total;
    }
    for (auto& t : producers) t.join();
    uint64_t v;
    EXPECT_FALSE(q.pop(v));
}

TEST(ActionQueue, FullQueueRefuses) {
    ActionQueue<int> q(4);
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(q.push(i));
    EXPECT_FALSE(q.push(99));
    int v;
    EXPECT_TRUE(q.pop(v));
    EXPECT_EQ(v, 0);
    EXPECT_TRUE(q.push(4));
}

TEST(PolicyRuntime, OneRuntimePerProcess) {
    auto rt = make_runtime();
    ASSERT_TRUE(rt);
    auto second = Runtime::create({});
    ASSERT_FALSE(second);
    EXPECT_EQ(second.error().code, EBUSY);
}

TEST(PolicyRuntime, WorkerIsNamedAndUsesIoUring) {
    auto rt = make_runtime();
    ASSERT_TRUE(rt);
    if (!rt->worker().uses_io_uring())
        GTEST_SKIP() << "io_uring unavailable here: the worker runs the engine's fallback";
    char name[32] = {};
    const std::string comm = "/proc/self/task/" + std::to_string(rt->worker().tid()) + "/comm";
    const int fd = ::open(comm.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    ASSERT_GT(::read(fd, name, sizeof name - 1), 0);
    ::close(fd);
    EXPECT_EQ(std::string(name), "liveio-io\n");
}

TEST(PolicyRuntime, PrefetchIsIssuedCountedAndUsed) {
    PolicyOnFile s(1 << 20, 1, {1, 256 << 10, 512 << 10});
    ASSERT_TRUE(s.ok());
    auto& [f, rt, tp] = s;
    const int fd = ::open(f.path().c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    char buf[4096];
    ASSERT_EQ(::read(fd, buf, sizeof buf), 4096);
    EXPECT_EQ(tp->read_exit(fd, 4096), 0);
    rt->worker().barrier();
    const Counters& c = rt->counters(tp->slot);
    EXPECT_EQ(Counters::get(c.actions), 1u);
    EXPECT_EQ(Counters::get(c.issued_bytes), 512u << 10);
    EXPECT_EQ(Counters::get(c.inflight), 0u);
    EXPECT_EQ(Counters::get(c.errors), 0u);
    // One completion: the recent latency (what liveio_policy_feedback reports) is that sample.
    EXPECT_EQ(Counters::get(c.latency_count), 1u);
    EXPECT_GT(Counters::get(c.latency_recent_ns), 0u);
    EXPECT_EQ(Counters::get(c.latency_recent_ns), c.latency_avg_ns());
    // The target reads part of the range: that part is used, the rest wasted when switched off.
    rt->observe_read(testing::file_id_of(fd), 256 << 10, 128 << 10);
    EXPECT_EQ(Counters::get(c.used_bytes), 128u << 10);
    ASSERT_TRUE(rt->disable(tp->slot));
    EXPECT_EQ(Counters::get(c.wasted_bytes), 384u << 10);
    ::close(fd);
}

// Every byte a prefetch issued ends as exactly one of used, wasted or pending; `off` leaves
// nothing pending, actions still queued or in flight when it was asked included, and sorts
// the wasted bytes by residency through the descriptor the prefetch named.
TEST(PolicyRuntime, OffAccountsEveryIssuedByteByResidency) {
    constexpr uint64_t kRange = 256 << 10;
    // Whether this kernel has cachestat (6.5): without it no residency can be measured.
    const bool cachestat = [] {
        TempFile probe;
        probe.write_pattern(4096, 1);
        const int fd = ::open(probe.path().c_str(), O_RDONLY);
        struct {
            uint64_t off, len;
        } range{0, 4096};
        uint64_t cs[5] = {};
        const bool ok = ::syscall(451, fd, &range, cs, 0) == 0;
        ::close(fd);
        return ok;
    }();
    PolicyOnFile s(8 << 20, 9, {1, 0, kRange});
    ASSERT_TRUE(s.ok());
    auto& [f, rt, tp] = s;
    const Counters& c = rt->counters(tp->slot);
    auto issue = [&](int fd, uint64_t first, int n) {
        for (int i = 0; i < n; ++i) {
            ASSERT_TRUE(rt->set_knob(tp->slot, 1, (first + static_cast<uint64_t>(i)) * kRange));
            ASSERT_EQ(tp->read_exit(fd, 1), 0);
        }
    };
    int fd = ::open(f.path().c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    issue(fd, 0, 16);
    rt->worker().barrier();
    ASSERT_EQ(Counters::get(c.issued_bytes), 16 * kRange);
    // While on, the bytes nobody read yet are pending, not missing.
    rt->observe_read(testing::file_id_of(fd), 0, 3 * kRange);
    EXPECT_EQ(Counters::get(c.used_bytes), 3 * kRange);
    EXPECT_EQ(rt->pending_bytes(tp->slot), 13 * kRange);
    EXPECT_EQ(rt->counters_json(tp->slot)["pending_bytes"].get<uint64_t>(), 13 * kRange);
    // More queued with no barrier: off finds them queued or in flight.
    issue(fd, 16, 8);
    ASSERT_TRUE(rt->disable(tp->slot));
    const uint64_t issued = Counters::get(c.issued_bytes), used = Counters::get(c.used_bytes),
                   wasted = Counters::get(c.wasted_bytes);
    EXPECT_EQ(Counters::get(c.inflight), 0u);
    EXPECT_EQ(rt->pending_bytes(tp->slot), 0u);
    EXPECT_EQ(used + wasted, issued) << "issued bytes counted neither used nor wasted";
    EXPECT_EQ(Counters::get(c.actions), 24u);
    EXPECT_EQ(issued + Counters::get(c.drops) * kRange, 24 * kRange);
    // The file was just written: its pages are in the page cache, the descriptor still names it.
    EXPECT_EQ(Counters::get(c.wasted_resident_bytes), cachestat ? wasted : 0u);

    // Again with the descriptor closed before off: residency cannot be measured through it,
    // so every unread byte is wasted and none counted resident.
    ASSERT_TRUE(tp->LoadedPolicy::enable(*rt, "test", tp->on_complete, {1, 0, kRange}));
    const Counters& c2 = rt->counters(tp->slot);
    issue(fd, 0, 4);
    rt->worker().barrier();
    ::close(fd);
    ASSERT_TRUE(rt->disable(tp->slot));
    EXPECT_EQ(Counters::get(c2.issued_bytes), 4 * kRange);
    EXPECT_EQ(Counters::get(c2.wasted_bytes), 4 * kRange);
    EXPECT_EQ(Counters::get(c2.wasted_resident_bytes), 0u);
    EXPECT_EQ(rt->pending_bytes(tp->slot), 0u);
}

TEST(PolicyRuntime, BatchQueuesEveryRange) {
    PolicyOnFile s(1 << 20, 2, {3, 0, 64 << 10});
    ASSERT_TRUE(s.ok());
    auto& [f, rt, tp] = s;
    const int fd = ::open(f.path().c_str(), O_RDONLY);
    EXPECT_EQ(tp->read_exit(fd, 100), 2);
    rt->worker().barrier();
    EXPECT_EQ(Counters::get(rt->counters(tp->slot).issued_bytes), 128u << 10);
    ::close(fd);
}

TEST(PolicyRuntime, CompletionEdgeSeesDataAndIssuesTheNextRead) {
    PolicyOnFile s(4096, 3, {2, 100});
    ASSERT_TRUE(s.ok());
    auto& [f, rt, tp] = s;
    const int fd = ::open(f.path().c_str(), O_RDONLY);
    ASSERT_EQ(tp->read_exit(fd, 1), 0);
    // The first completion queues the second read from the I/O thread itself: two barriers.
    rt->worker().barrier();
    rt->worker().barrier();
    uint64_t want1 = 0, want2 = 0;
    for (int i = 0; i < 8; ++i) {
        reinterpret_cast<char*>(&want1)[i] = TempFile::pattern(3, 100 + i);
        reinterpret_cast<char*>(&want2)[i] = TempFile::pattern(3, 116 + i);
    }
    EXPECT_EQ(tp->seen(1), want1);
    EXPECT_EQ(tp->seen(2), want2);
    EXPECT_EQ(tp->rc(1), -EINVAL) << "a load past the data must be refused";
    EXPECT_EQ(tp->rc(2), 0) << "the completion's own read_async";
    const Counters& c = rt->counters(tp->slot);
    EXPECT_EQ(Counters::get(c.completions), 2u);
    EXPECT_EQ(Counters::get(c.inflight), 0u);
    ::close(fd);
}

TEST(PolicyRuntime, ReadAsyncOfANonRegularFileIsDroppedAndConsumesNothing) {
    auto rt = make_runtime();
    ASSERT_TRUE(rt);
    auto tp = TestPolicy::enable(*rt, {2, 0});
    ASSERT_TRUE(tp);
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    ASSERT_EQ(::write(p[1], "0123456789abcdefXYZ", 19), 19);
    EXPECT_EQ(tp->read_exit(p[0], 1), 0);  // queued: the worker finds out
    rt->worker().barrier();
    EXPECT_EQ(Counters::get(rt->counters(tp->slot).drops), 1u);
    EXPECT_EQ(Counters::get(rt->counters(tp->slot).completions), 0u);
    char buf[32];
    EXPECT_EQ(::read(p[0], buf, sizeof buf), 19) << "the pipe's data was consumed";
    ::close(p[0]);
    ::close(p[1]);
}

TEST(PolicyRuntime, BudgetExhaustionDrops) {
    PolicyOnFile s(1 << 20, 4, {1, 0, 128 << 10}, 64 << 10);
    ASSERT_TRUE(s.ok());
    auto& [f, rt, tp] = s;
    const int fd = ::open(f.path().c_str(), O_RDONLY);
    EXPECT_EQ(tp->read_exit(fd, 1), 0);
    rt->worker().barrier();
    EXPECT_EQ(Counters::get(rt->counters(tp->slot).drops), 1u);
    EXPECT_EQ(Counters::get(rt->counters(tp->slot).issued_bytes), 0u);
    EXPECT_EQ(rt->worker().stats().budget_drops, 1u);
    rt->set_budget(1 << 20);
    EXPECT_EQ(tp->read_exit(fd, 1), 0);
    rt->worker().barrier();
    EXPECT_EQ(Counters::get(rt->counters(tp->slot).issued_bytes), 128u << 10);
    ::close(fd);
}

TEST(PolicyRuntime, HelpersRefuseProgramsOfNoPolicy) {
    PolicyOnFile s(4096, 5, {1, 0, 4096});
    ASSERT_TRUE(s.ok());
    auto& [f, rt, tp] = s;
    ASSERT_TRUE(rt->disable(tp->slot));
    const int fd = ::open(f.path().c_str(), O_RDONLY);
    // Switched off: the program belongs to no policy any more; its knobs read 0 and its
    // actions are refused (-EPERM), so nothing is queued.
    EXPECT_EQ(rt->slot_of(&tp->on_read->program()), nullptr);
    const uint64_t actions = Counters::get(rt->counters(tp->slot).actions);
    EXPECT_EQ(tp->read_exit(fd, 1), 0);
    EXPECT_EQ(Counters::get(rt->counters(tp->slot).actions), actions);
    ::close(fd);
}

TEST(PolicyRuntime, RedirectWithoutExecutorFallsBackCounted) {
    auto rt = make_runtime();
    ASSERT_TRUE(rt);
    auto tp = TestPolicy::enable(*rt, {4});
    ASSERT_TRUE(tp);
    EXPECT_EQ(tp->read_exit(0, 1), -EOPNOTSUPP);
    EXPECT_EQ(Counters::get(rt->counters(tp->slot).fallbacks), 1u);
    uint8_t slot = 99;
    EXPECT_FALSE(Runtime::take_redirect(slot));

    struct Recorder : Redirector {
        int runs = 0;
        bool run(hook::CallFrame& f) override {
            ++runs;
            f.result = 7;
            return true;
        }
    } recorder;
    rt->set_redirector(&recorder);
    EXPECT_EQ(tp->read_exit(0, 1), 0);
    ASSERT_TRUE(Runtime::take_redirect(slot));
    EXPECT_EQ(slot, tp->slot);
    EXPECT_FALSE(Runtime::take_redirect(slot)) << "the request is for one call";
    rt->set_redirector(nullptr);
}

// Thread ids of this process.
std::set<std::string> threads() {
    std::set<std::string> out;
    DIR* d = ::opendir("/proc/self/task");
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') out.insert(e->d_name);
    ::closedir(d);
    return out;
}
size_t open_fds() {
    size_t n = 0;
    DIR* d = ::opendir("/proc/self/fd");
    while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
    return n;
}

TEST(PolicyRuntime, OffDrainsActionsInFlightAndDestroyLeavesNothing) {
    TempFile f;
    f.write_pattern(8 << 20, 6);
    const auto threads_before = threads();
    const size_t fds_before = open_fds();
    {
        auto rt = make_runtime();
        ASSERT_TRUE(rt);
        auto tp = TestPolicy::enable(*rt, {2, 0});  // reads with completions: buffers and own fds
        ASSERT_TRUE(tp);
        const int fd = ::open(f.path().c_str(), O_RDONLY);
        for (int i = 0; i < 500; ++i) tp->read_exit(fd, 1);
        ASSERT_TRUE(rt->disable(tp->slot));
        const Counters& c = rt->counters(tp->slot);
        EXPECT_EQ(Counters::get(c.inflight), 0u) << "off returned with actions in flight";
        EXPECT_EQ(rt->worker().bytes_in_flight(), 0u);
        const uint64_t completions = Counters::get(c.completions);
        rt->worker().barrier();
        EXPECT_EQ(Counters::get(c.completions), completions)
            << "a completion program ran after off";
        ::close(fd);
    }
    EXPECT_EQ(threads(), threads_before) << "the liveio-io thread outlived the runtime";
    EXPECT_EQ(open_fds(), fds_before) << "a descriptor (eventfd, ring, own file) leaked";
}

TEST(PolicyRuntime, FullQueueDropsInsteadOfBlocking) {
    TempFile f;
    f.write_pattern(4096, 7);
    Runtime::Options o;
    o.worker.queue_entries = 4;
    auto rt = Runtime::create(o);
    ASSERT_TRUE(rt);
    auto tp = TestPolicy::enable(**rt, {1, 0, 4096});
    ASSERT_TRUE(tp);
    const int fd = ::open(f.path().c_str(), O_RDONLY);
    for (int i = 0; i < 5000; ++i) tp->read_exit(fd, 1);
    (*rt)->worker().barrier();
    const Counters& c = (*rt)->counters(tp->slot);
    // Every helper call was either queued or refused as a drop, none lost or blocked; the
    // worker takes an action only when it has a ring slot for it, so all queued ones ran.
    EXPECT_EQ(Counters::get(c.actions) + Counters::get(c.drops), 5000u);
    EXPECT_EQ((*rt)->worker().stats().submitted, Counters::get(c.actions));
    EXPECT_EQ(Counters::get(c.inflight), 0u);
    ::close(fd);
}

TEST(PolicyVerifier, MisusedHelpersAreRefusedWithTheirName) {
    auto obj = ebpf::Object::open(std::string(LIVEIO_POLICY_TEST_BPF_DIR) + "/policy_bad.bpf.o");
    ASSERT_TRUE(obj) << obj.error().message;
    ebpf::HelperTable helpers = ebpf::HelperTable::standard();
    ASSERT_TRUE(Runtime::add_helpers(helpers));
    for (const char* name :
         {"load_from_stack", "batch_overrun", "unknown_helper", "load_overrun"}) {
        auto exe = ebpf::Executable::load(obj->program(name).value(), helpers, ebpf::Engine::Jit);
        ASSERT_FALSE(exe) << name << " was accepted";
        SCOPED_TRACE(exe.error().message);
        EXPECT_NE(exe.error().message.find(name), std::string::npos)
            << "the message names the program";
    }
    // And the helper IDs are liveio's, never a kernel helper's: extend() refuses a clash.
    EXPECT_FALSE(Runtime::add_helpers(helpers)) << "registering the IDs twice";
    ebpf::HelperTable kernel_clash;
    ebpf::HelperProto p;
    p.name = "x";
    p.fn = +[](uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ebpf::ExecEnv*) -> uint64_t {
        return 0;
    };
    EXPECT_FALSE(kernel_clash.extend(1, p));
}

TEST(PolicyVerifier, TestPolicyVerifies) {
    auto obj = ebpf::Object::open(std::string(LIVEIO_POLICY_TEST_BPF_DIR) + "/policy_test.bpf.o");
    ASSERT_TRUE(obj) << obj.error().message;
    ebpf::HelperTable helpers = ebpf::HelperTable::standard();
    ASSERT_TRUE(Runtime::add_helpers(helpers));
    for (auto& p : obj->programs()) {
        auto exe = ebpf::Executable::load(p, helpers, ebpf::Engine::Interpreter);
        EXPECT_TRUE(exe) << p->name << ": " << exe.error().message;
    }
    // Without the policy helpers the same object is refused (unknown helper).
    auto plain = ebpf::Executable::load(obj->program("on_read").value(),
                                        ebpf::HelperTable::standard(), ebpf::Engine::Jit);
    EXPECT_FALSE(plain);
}

}  // namespace
}  // namespace liveio::policy
