// Ring buffer and perf event output seen by a consumer, tail calls through the Runtime's
// registry and a ProgArray (including the 33-call limit and mixed engines), and bpf_loop,
// through real BPF programs on both engines.
#include <sched.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "helpers_fixture.h"

namespace liveio::ebpf {
namespace {

using test::HelperTest;
using test::s64;

std::shared_ptr<RingBuffer> make_ringbuf(uint32_t bytes) {
    return std::dynamic_pointer_cast<RingBuffer>(test::make_map(MapType::RingBuf, 0, 0, bytes));
}

// Reserve+submit a 16-byte record, reserve+discard an 8-byte one, output 16 bytes from the
// stack, query the available data, and try a reservation larger than the ring.
const char* kRingbufProgram = R"(
    mov %r6, %r1
    lddw %r1, MAP0
    mov %r2, 16
    mov %r3, 0
    call 131
    jeq %r0, 0, no_first
    ldxdw %r1, [%r6]
    stxdw [%r0], %r1
    stdw [%r0+8], 0x2222
    mov %r1, %r0
    mov %r2, 0
    call 132
no_first:
    lddw %r1, MAP0
    mov %r2, 8
    mov %r3, 0
    call 131
    jeq %r0, 0, no_second
    stdw [%r0], 0x3333
    mov %r1, %r0
    mov %r2, 0
    call 133
no_second:
    stdw [%r10-16], 0x5555
    stdw [%r10-8], 0x4444
    lddw %r1, MAP0
    mov %r2, %r10
    add %r2, -16
    mov %r3, 16
    mov %r4, 0
    call 130
    stxdw [%r6+8], %r0
    lddw %r1, MAP0
    mov %r2, 0
    call 134
    stxdw [%r6+16], %r0
    lddw %r1, MAP0
    mov %r2, 0x1000000
    mov %r3, 0
    call 131
    stxdw [%r6+24], %r0
    jeq %r0, 0, done
    mov %r1, %r0
    mov %r2, 0
    call 133
done:
    mov %r0, 0
    exit
)";

TEST_P(HelperTest, RingbufRecordsReachTheConsumer) {
    auto rb = make_ringbuf(4096);
    ASSERT_TRUE(rb);
    const Executable* exe = load(kRingbufProgram, {rb});
    ASSERT_TRUE(exe);
    uint64_t ctx[8] = {0x1111};
    ASSERT_EQ(run(exe, ctx), 0u);
    EXPECT_EQ(ctx[1], 0u) << "ringbuf_output";
    EXPECT_EQ(ctx[2], 24u + 16u + 24u)
        << "BPF_RB_AVAIL_DATA: two records and the discarded one, with headers";
    EXPECT_EQ(ctx[3], 0u) << "a reservation larger than the ring fails";
    EXPECT_EQ(rb->dropped(), 1u);

    // A consumer through its own mapping of the memfd (as the CLI maps it).
    auto shared = open_shared_map(rb->memfd());
    ASSERT_TRUE(shared.ok()) << shared.error().message;
    auto consumer = std::dynamic_pointer_cast<RingBuffer>(shared.value());
    ASSERT_TRUE(consumer);
    std::vector<std::vector<uint64_t>> records;
    consumer->consume([&](const void* data, uint32_t size) {
        std::vector<uint64_t> r(size / 8);
        std::memcpy(r.data(), data, size);
        records.push_back(r);
    });
    ASSERT_EQ(records.size(), 2u) << "the discarded record is skipped";
    EXPECT_EQ(records[0], (std::vector<uint64_t>{0x1111, 0x2222}));
    EXPECT_EQ(records[1], (std::vector<uint64_t>{0x5555, 0x4444}));
    EXPECT_EQ(rb->query(0), 0u) << "consumed";
}

TEST_P(HelperTest, RingbufFromManyThreadsLosesNothing) {
    auto rb = make_ringbuf(1 << 22);
    ASSERT_TRUE(rb);
    const Executable* exe = load(kRingbufProgram, {rb});
    ASSERT_TRUE(exe);
    constexpr int kThreads = 4, kRuns = 2000;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < kRuns; ++i) {
                uint64_t ctx[8] = {static_cast<uint64_t>(t) << 32 | static_cast<uint64_t>(i)};
                run(exe, ctx);
            }
        });
    }
    std::vector<int> next(kThreads, 0);
    size_t seen = 0;
    bool in_order = true;
    auto drain = [&] {
        seen += rb->consume([&](const void* data, uint32_t size) {
            uint64_t first;
            std::memcpy(&first, data, 8);
            if (size == 16 && first != 0x5555) {  // a reserved record: in order per thread
                const auto t = static_cast<size_t>(first >> 32);
                if (t >= next.size() || static_cast<int>(first & 0xffffffff) != next[t]++)
                    in_order = false;
            }
        });
    };
    // The consumer drains while the producers run, as the CLI does.
    std::atomic<bool> done{false};
    std::thread consumer([&] {
        while (!done.load(std::memory_order_acquire)) drain();
        drain();
    });
    for (auto& th : threads) th.join();
    done.store(true, std::memory_order_release);
    consumer.join();
    EXPECT_EQ(seen, size_t{2} * kThreads * kRuns);
    EXPECT_TRUE(in_order);
    EXPECT_EQ(rb->dropped(), static_cast<uint64_t>(kThreads * kRuns))
        << "only the oversized reservations";
}

TEST_P(HelperTest, RingbufHelpersRejectOtherMapsAndBadFlags) {
    auto hash = test::make_map(MapType::Hash, 4, 8, 4);
    ASSERT_TRUE(hash);
    const Executable* exe = load(R"(
        mov %r6, %r1
        stdw [%r10-8], 1
        lddw %r1, MAP0
        mov %r2, %r10
        add %r2, -8
        mov %r3, 8
        mov %r4, 0
        call 130
        stxdw [%r6], %r0
        lddw %r1, MAP1
        mov %r2, %r10
        add %r2, -8
        mov %r3, 8
        mov %r4, 4
        call 130
        stxdw [%r6+8], %r0
        lddw %r1, MAP1
        mov %r2, 8
        mov %r3, 1
        call 131
        stxdw [%r6+16], %r0
        jeq %r0, 0, out
        mov %r1, %r0
        mov %r2, 0
        call 133
    out:
        mov %r0, 0
        exit
    )",
                                 {hash, make_ringbuf(4096)});
    ASSERT_TRUE(exe);
    uint64_t ctx[8] = {};
    ASSERT_EQ(run(exe, ctx), 0u);
    EXPECT_EQ(s64(ctx[0]), -EINVAL) << "output to a hash map";
    EXPECT_EQ(s64(ctx[1]), -EINVAL) << "unknown output flag";
    EXPECT_EQ(ctx[2], 0u) << "reserve with flags != 0";
}

TEST_P(HelperTest, PerfEventOutputReachesTheConsumerWithItsSlot) {
    auto perf = test::make_map(MapType::PerfEventArray, 4, 4, 0);
    ASSERT_TRUE(perf);
    const Executable* exe = load(R"(
        mov %r6, %r1
        stdw [%r10-16], 0x77
        stdw [%r10-8], 0x88
        mov %r1, %r6
        lddw %r2, MAP0
        lddw %r3, 0xffffffff
        mov %r4, %r10
        add %r4, -16
        mov %r5, 16
        call 25
        stxdw [%r6], %r0
        mov %r1, %r6
        lddw %r2, MAP0
        mov %r3, 0
        mov %r4, %r10
        add %r4, -8
        mov %r5, 8
        call 25
        stxdw [%r6+8], %r0
        mov %r1, %r6
        lddw %r2, MAP0
        lddw %r3, 0x7fffffff
        mov %r4, %r10
        add %r4, -8
        mov %r5, 8
        call 25
        stxdw [%r6+16], %r0
        mov %r0, 0
        exit
    )",
                                 {perf});
    ASSERT_TRUE(exe);
    uint64_t ctx[8] = {};
    ASSERT_EQ(run(exe, ctx), 0u);
    EXPECT_EQ(ctx[0], 0u) << "BPF_F_CURRENT_CPU";
    EXPECT_EQ(ctx[1], 0u) << "slot 0";
    EXPECT_EQ(s64(ctx[2]), -E2BIG) << "slot past max_entries";
    auto* events = static_cast<PerfEventArray*>(perf.get());
    std::vector<std::pair<uint32_t, std::vector<uint64_t>>> samples;
    events->consume([&](uint32_t slot, const void* data, uint32_t size) {
        std::vector<uint64_t> v(size / 8);
        std::memcpy(v.data(), data, size);
        samples.emplace_back(slot, v);
    });
    ASSERT_EQ(samples.size(), 2u);
    bool got_current = false, got_zero = false;
    for (const auto& [slot, v] : samples) {
        EXPECT_LT(slot, perf->spec().max_entries);
        if (v == std::vector<uint64_t>{0x77, 0x88}) got_current = true;
        if (v == std::vector<uint64_t>{0x88} && slot == 0) got_zero = true;
    }
    EXPECT_TRUE(got_current);
    EXPECT_TRUE(got_zero);
}

// ctx[0] += `step`; tail call prog_array[`slot`]; when that falls through, return `fallthrough`.
std::string tail_call_program(int step, int slot, int fallthrough) {
    return fmt::format(R"(
        ldxdw %r0, [%r1]
        add %r0, {}
        stxdw [%r1], %r0
        lddw %r2, MAP0
        mov %r3, {}
        call 12
        mov %r0, {}
        exit
    )",
                       step, slot, fallthrough);
}

class TailCallTest : public HelperTest {
protected:
    void SetUp() override {
        HelperTest::SetUp();
        progs_ = test::make_map(MapType::ProgArray, 4, 4, 4);
        ASSERT_TRUE(progs_);
    }
    uint32_t add(const Executable* exe) {
        auto id = rt_->add_program(*exe);
        EXPECT_TRUE(id.ok()) << id.error().message;
        return id.ok() ? id.value() : 0;
    }
    std::shared_ptr<Map> progs_;
};

TEST_P(TailCallTest, ChainStopsAfter33TailCalls) {
    const Executable* self = load(tail_call_program(1, 0, 1000), {progs_});
    ASSERT_TRUE(self);
    const uint32_t id = add(self);
    ASSERT_TRUE(rt_->set_tail_call(*progs_, 0, id).ok());
    uint64_t counter = 0;
    EXPECT_EQ(run(self, &counter, 8), 1000u) << "the 34th tail call falls through";
    EXPECT_EQ(counter, 1u + kMaxTailCalls);
    // The count is per run: a second run gets the full budget again.
    counter = 0;
    EXPECT_EQ(run(self, &counter, 8), 1000u);
    EXPECT_EQ(counter, 1u + kMaxTailCalls);
}

TEST_P(TailCallTest, TargetsReplaceTheCallerAcrossEngines) {
    const Engine other = GetParam() == Engine::Jit ? Engine::Interpreter : Engine::Jit;
    const Executable* entry = load(tail_call_program(1, 1, 1000), {progs_});
    const Executable* middle = load(tail_call_program(10, 2, 2000), {progs_}, nullptr, other);
    const Executable* last = load(
        "ldxdw %r0, [%r1]\nadd %r0, 100\nstxdw [%r1], %r0\nmov %r0, 7\nexit\n", {}, nullptr, other);
    ASSERT_TRUE(entry && middle && last);
    const uint32_t middle_id = add(middle), last_id = add(last);
    ASSERT_TRUE(rt_->set_tail_call(*progs_, 1, middle_id).ok());
    uint64_t counter = 0;
    EXPECT_EQ(run(entry, &counter, 8), 2000u)
        << "slot 2 is empty: the middle program falls through";
    EXPECT_EQ(counter, 11u);

    ASSERT_TRUE(rt_->set_tail_call(*progs_, 2, last_id).ok());
    counter = 0;
    EXPECT_EQ(run(entry, &counter, 8), 7u) << "the last program's r0 is the entry's result";
    EXPECT_EQ(counter, 111u);

    // Another process reads the slot as the program id.
    const uint32_t index = 2;
    uint32_t stored = 0;
    ASSERT_EQ(progs_->copy_value(&index, &stored), 0);
    EXPECT_EQ(stored, last_id);

    rt_->remove_program(last_id);
    counter = 0;
    EXPECT_EQ(run(entry, &counter, 8), 2000u) << "an unregistered program is an empty slot";
    EXPECT_EQ(counter, 11u);

    ASSERT_TRUE(rt_->set_tail_call(*progs_, 1, 0).ok());  // empty slot 1
    counter = 0;
    EXPECT_EQ(run(entry, &counter, 8), 1000u);
    EXPECT_EQ(counter, 1u);

    // Without the runtime's resolver every tail call falls through.
    counter = 0;
    ASSERT_TRUE(rt_->set_tail_call(*progs_, 1, middle_id).ok());
    EXPECT_EQ(entry->run(&counter, 8), 1000u);
    EXPECT_EQ(counter, 1u);
}

TEST_P(TailCallTest, RegistryRejectsBadSlotsAndIds) {
    const Executable* exe = load(tail_call_program(1, 0, 0), {progs_});
    ASSERT_TRUE(exe);
    const uint32_t id = add(exe);
    auto hash = test::make_map(MapType::Hash, 4, 4, 4);
    ASSERT_TRUE(hash);
    auto not_array = rt_->set_tail_call(*hash, 0, id);
    ASSERT_FALSE(not_array.ok());
    EXPECT_NE(not_array.error().message.find("not a program array"), std::string::npos);
    auto out_of_range = rt_->set_tail_call(*progs_, 4, id);
    ASSERT_FALSE(out_of_range.ok());
    EXPECT_EQ(out_of_range.error().code, E2BIG);
    auto unknown = rt_->set_tail_call(*progs_, 0, id + 1);
    ASSERT_FALSE(unknown.ok());
    EXPECT_EQ(unknown.error().code, ENOENT);

    Runtime::Options options;
    options.max_programs = 2;
    auto small = Runtime::create(options);
    ASSERT_TRUE(small.ok());
    ASSERT_TRUE(small.value()->add_program(*exe).ok());
    auto second = small.value()->add_program(*exe);
    ASSERT_TRUE(second.ok());
    auto full = small.value()->add_program(*exe);
    ASSERT_FALSE(full.ok());
    EXPECT_EQ(full.error().code, ENOSPC);
    small.value()->remove_program(second.value());
    auto reused = small.value()->add_program(*exe);
    ASSERT_TRUE(reused.ok());
    EXPECT_EQ(reused.value(), second.value()) << "freed ids are reused";
}

INSTANTIATE_TEST_SUITE_P(Engines, TailCallTest, ::testing::Values(Engine::Interpreter, Engine::Jit),
                         [](const auto& info) { return std::string(engine_name(info.param)); });

// bpf_loop(ctx[0], callback, &acc, ctx[1]): the callback adds index + 1 to acc and stops
// after index 49. r0 -> ctx[2], acc -> ctx[3].
const char* kLoopProgram = R"(
    mov %r6, %r1
    stdw [%r10-8], 0
    ldxdw %r1, [%r6]
    lddw %r2, CALLBACK
    mov %r3, %r10
    add %r3, -8
    ldxdw %r4, [%r6+8]
    call 181
    stxdw [%r6+16], %r0
    ldxdw %r1, [%r10-8]
    stxdw [%r6+24], %r1
    mov %r0, 0
    exit
callback:
    ldxdw %r3, [%r2]
    add %r3, %r1
    add %r3, 1
    stxdw [%r2], %r3
    mov %r0, 0
    jne %r1, 49, next
    mov %r0, 1
next:
    exit
)";

TEST_P(HelperTest, LoopRunsTheCallbackAndHonoursItsLimits) {
    const Executable* exe = load(kLoopProgram);
    ASSERT_TRUE(exe);
    auto loop = [&](uint64_t n, uint64_t flags) {
        uint64_t ctx[8] = {n, flags};
        EXPECT_EQ(run(exe, ctx), 0u);
        return std::pair<int64_t, uint64_t>{s64(ctx[2]), ctx[3]};
    };
    EXPECT_EQ(loop(10, 0), (std::pair<int64_t, uint64_t>{10, 55}));
    EXPECT_EQ(loop(0, 0), (std::pair<int64_t, uint64_t>{0, 0}));
    EXPECT_EQ(loop(1000, 0), (std::pair<int64_t, uint64_t>{50, 1275}))
        << "callback returned 1 at index 49";
    EXPECT_EQ(loop(10, 1), (std::pair<int64_t, uint64_t>{-EINVAL, 0})) << "flags must be 0";
    EXPECT_EQ(loop((1u << 23) + 1, 0), (std::pair<int64_t, uint64_t>{-E2BIG, 0}))
        << "the kernel's BPF_MAX_LOOPS";
}

}  // namespace
}  // namespace liveio::ebpf
