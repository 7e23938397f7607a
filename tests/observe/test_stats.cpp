// Snapshots, deltas across counter resets, percentiles of log2 histograms, and reading real
// io_stats-layout maps (created in shared memory and opened again as the CLI does).
#include <gtest/gtest.h>

#include <cmath>

#include "ebpf/map.h"
#include "observe/stats.h"

namespace liveio::observe {
namespace {

Histogram hist_with(std::initializer_list<std::pair<size_t, uint64_t>> slots) {
    Histogram h{};
    for (auto [slot, n] : slots) h[slot] = n;
    return h;
}

TEST(Percentile, EmptyHistogramHasNone) {
    EXPECT_FALSE(percentile_ns(Histogram{}, 0.5).has_value());
}

TEST(Percentile, SingleSlotInterpolatesWithinItsBounds) {
    // 100 calls in [1024, 2048): the median is halfway, p99 near the top.
    const Histogram h = hist_with({{10, 100}});
    EXPECT_DOUBLE_EQ(*percentile_ns(h, 0.5), 1024 + 0.5 * 1024);
    EXPECT_DOUBLE_EQ(*percentile_ns(h, 0.99), 1024 + 0.99 * 1024);
    EXPECT_DOUBLE_EQ(*percentile_ns(h, 1.0), 2048);
}

TEST(Percentile, PicksTheSlotHoldingTheRank) {
    // 90 fast calls in [256, 512), 10 slow ones in [1M, 2M) ns.
    const Histogram h = hist_with({{8, 90}, {20, 10}});
    const double p50 = *percentile_ns(h, 0.5);
    EXPECT_GE(p50, 256);
    EXPECT_LT(p50, 512);
    const double p99 = *percentile_ns(h, 0.99);
    EXPECT_GE(p99, 1 << 20);
    EXPECT_LE(p99, 1 << 21);
    // p90 is the last fast call: the top of the fast slot.
    EXPECT_DOUBLE_EQ(*percentile_ns(h, 0.90), 512);
}

TEST(Percentile, SlotZeroStartsAtZeroAndLastSlotIsOpen) {
    EXPECT_DOUBLE_EQ(*percentile_ns(hist_with({{0, 4}}), 0.5), 1.0);  // [0, 2)
    const Histogram last = hist_with({{LIVEIO_HIST_SLOTS - 1, 3}});
    EXPECT_DOUBLE_EQ(*percentile_ns(last, 0.99),
                     static_cast<double>(uint64_t{1} << (LIVEIO_HIST_SLOTS - 1)));
    EXPECT_FALSE(slot_high_ns(LIVEIO_HIST_SLOTS - 1).has_value());
    EXPECT_EQ(*slot_high_ns(0), 2u);
    EXPECT_EQ(slot_low_ns(0), 0u);
    EXPECT_EQ(slot_low_ns(5), 32u);
}

// Interpolation alone puts the median of one 1500 ns call at 2048 ns (the rank is the
// bucket's only call: its top), above the only call.
TEST(Percentile, NeverAboveTheSlowestCallTheSumAllows) {
    const Histogram one = hist_with({{10, 1}});
    EXPECT_DOUBLE_EQ(*percentile_ns(one, 0.5), 2048);  // without the sum: bucket interpolation
    EXPECT_DOUBLE_EQ(*percentile_ns(one, 0.5, 1500), 1500);
    EXPECT_DOUBLE_EQ(*percentile_ns(one, 0.99, 1500), 1500);
    EXPECT_DOUBLE_EQ(*max_latency_bound_ns(one, 1500), 1500);
    // 99 calls of 257 ns and one of 1100 ns: the slow one took at most the sum minus 99 * 256.
    const Histogram h = hist_with({{8, 99}, {10, 1}});
    const uint64_t sum = 99 * 257 + 1100;
    EXPECT_DOUBLE_EQ(*max_latency_bound_ns(h, sum), 1199);
    EXPECT_DOUBLE_EQ(*percentile_ns(h, 1.0), 2048);
    EXPECT_DOUBLE_EQ(*percentile_ns(h, 1.0, sum), 1199);
    EXPECT_LT(*percentile_ns(h, 0.5, sum), 512);  // the fast slot's quantiles are untouched
    // The open last slot gets a finite bound from the sum.
    const Histogram last = hist_with({{LIVEIO_HIST_SLOTS - 1, 1}});
    EXPECT_DOUBLE_EQ(*max_latency_bound_ns(last, 5'000'000'000), 5e9);
    EXPECT_FALSE(max_latency_bound_ns(Histogram{}, 100).has_value());
}

// A read racing with the program can see a call in a slot before its latency reaches the sum:
// the bound then stays at the slot's lower bound instead of going below it.
TEST(Percentile, RacingReadNeverGoesBelowTheSlot) {
    const Histogram h = hist_with({{10, 2}});
    EXPECT_DOUBLE_EQ(*max_latency_bound_ns(h, 1200), 1024);
    EXPECT_DOUBLE_EQ(*percentile_ns(h, 0.99, 1200), 1024);
}

TEST(Percentile, TinyQuantileIsTheFirstCall) {
    const Histogram h = hist_with({{3, 1}, {12, 1000}});
    const double p = *percentile_ns(h, 0.0001);
    EXPECT_GE(p, 8);
    EXPECT_LE(p, 16);
}

Counters counters(uint64_t calls, uint64_t bytes, Histogram h = {}) {
    Counters c;
    c.calls = calls;
    c.bytes = bytes;
    c.hist = h;
    for (auto n : h) c.latency_ns += n * 100;
    return c;
}

TEST(Delta, SubtractsFieldByField) {
    const Counters before = counters(10, 1000, hist_with({{4, 10}}));
    const Counters now = counters(25, 4000, hist_with({{4, 20}, {6, 5}}));
    const Counters d = delta(now, before);
    EXPECT_EQ(d.calls, 15u);
    EXPECT_EQ(d.bytes, 3000u);
    EXPECT_EQ(d.hist[4], 10u);
    EXPECT_EQ(d.hist[6], 5u);
    EXPECT_EQ(d.latency_ns, 1500u);
}

TEST(Delta, CounterResetTakesTheNewCountersWhole) {
    // The object was reloaded between the reads: it counted 7 calls since.
    const Counters before = counters(1000, 1 << 20, hist_with({{9, 1000}}));
    const Counters now = counters(7, 70, hist_with({{9, 7}}));
    const Counters d = delta(now, before);
    EXPECT_EQ(d.calls, 7u);
    EXPECT_EQ(d.bytes, 70u);
    EXPECT_EQ(d.hist[9], 7u);
    const Rates r = rates(d, 0.5);
    EXPECT_DOUBLE_EQ(r.calls_per_s, 14.0);
    EXPECT_DOUBLE_EQ(r.bytes_per_s, 140.0);
}

TEST(Delta, FieldsLaggingCallsNeverWrap) {
    // A read racing with the program: calls already counted, a slot not yet.
    Counters before = counters(10, 100, hist_with({{4, 10}}));
    Counters now = counters(11, 100, hist_with({{4, 10}}));
    now.latency_ns = before.latency_ns - 1;  // torn
    const Counters d = delta(now, before);
    EXPECT_EQ(d.calls, 1u);
    EXPECT_EQ(d.latency_ns, 0u);
}

TEST(Delta, SnapshotRowsMatchByKeyAndEmptyRowsDrop) {
    Snapshot before, now;
    before.time_ns = 1'000'000'000;
    now.time_ns = 3'000'000'000;
    before.syscalls = {{17, "pread64", counters(5, 50)}, {0, "read", counters(3, 30)}};
    now.syscalls = {{0, "read", counters(3, 30)},
                    {17, "pread64", counters(9, 90)},
                    {18, "pwrite64", counters(2, 20)}};
    now.classes = {{LIVEIO_CLASS_FILE, LIVEIO_IO_READ, counters(9, 90)}};
    const Snapshot d = delta(now, before);
    EXPECT_EQ(d.time_ns, 2'000'000'000u);
    ASSERT_EQ(d.syscalls.size(), 2u);  // read had no calls in the interval
    EXPECT_EQ(d.find_syscall("pread64")->counters.calls, 4u);
    EXPECT_EQ(d.find_syscall("pwrite64")->counters.calls, 2u);
    EXPECT_EQ(d.find_syscall("read"), nullptr);
    ASSERT_EQ(d.classes.size(), 1u);
    EXPECT_EQ(d.total().calls, 6u);
    EXPECT_EQ(d.total().bytes, 60u);
}

std::shared_ptr<ebpf::Map> stats_map(const char* name, uint32_t entries) {
    ebpf::MapSpec spec;
    spec.name = name;
    spec.type = ebpf::MapType::Array;
    spec.key_size = 4;
    spec.value_size = sizeof(liveio_io_stats);
    spec.max_entries = entries;
    auto m = ebpf::create_map(spec);
    EXPECT_TRUE(m) << m.error().message;
    return m ? m.value() : nullptr;
}

TEST(ReadSnapshot, ReadsRowsWithCallsThroughASharedMapping) {
    auto sys = stats_map("syscall_stats", LIVEIO_MAX_SYSCALL_NR);
    auto cls = stats_map("class_stats", LIVEIO_CLASS_KEYS);
    ASSERT_TRUE(sys && cls);
    // What the program does, through lookup() pointers as BPF code would.
    const uint32_t pread_nr = 17;
    auto* pread = static_cast<liveio_io_stats*>(sys->lookup(&pread_nr));
    ASSERT_NE(pread, nullptr);
    pread->calls = 3;
    pread->bytes = 3 * 4096;
    pread->latency_ns = 3000;
    pread->hist[9] = 3;
    const uint32_t key = LIVEIO_CLASS_KEY(LIVEIO_CLASS_CH_BIN, LIVEIO_IO_READ);
    auto* bin = static_cast<liveio_io_stats*>(cls->lookup(&key));
    ASSERT_NE(bin, nullptr);
    bin->calls = 3;
    bin->hist[9] = 3;

    // The CLI's view: the same memory mapped from the memfd.
    auto sys_view = ebpf::open_shared_map(sys->memfd());
    auto cls_view = ebpf::open_shared_map(cls->memfd());
    ASSERT_TRUE(sys_view && cls_view);
    auto snap = read_snapshot(**sys_view, cls_view->get());
    ASSERT_TRUE(snap) << snap.error().message;
    ASSERT_EQ(snap->syscalls.size(), 1u);
    EXPECT_EQ(snap->syscalls[0].name, "pread64");
    EXPECT_EQ(snap->syscalls[0].counters.bytes, 3u * 4096);
    ASSERT_EQ(snap->classes.size(), 1u);
    EXPECT_EQ(class_name(snap->classes[0].file_class), ".bin");
    EXPECT_EQ(direction_name(snap->classes[0].direction), "read");
    EXPECT_GT(snap->time_ns, 0u);

    // Live: a later write shows in the next read.
    pread->calls = 4;
    auto again = read_snapshot(**sys_view, nullptr);
    ASSERT_TRUE(again);
    EXPECT_EQ(again->syscalls[0].counters.calls, 4u);
}

TEST(ReadSnapshot, RejectsMapsOfAnotherLayout) {
    ebpf::MapSpec spec;
    spec.name = "counts";
    spec.type = ebpf::MapType::Array;
    spec.key_size = 4;
    spec.value_size = 8;
    spec.max_entries = 4;
    auto m = ebpf::create_map(spec);
    ASSERT_TRUE(m);
    auto snap = read_snapshot(**m, nullptr);
    ASSERT_FALSE(snap);
    EXPECT_NE(snap.error().message.find("'counts'"), std::string::npos) << snap.error().message;
    EXPECT_NE(snap.error().message.find("8-byte values"), std::string::npos)
        << snap.error().message;
}

TEST(Names, SyscallsClassesDirections) {
    EXPECT_EQ(syscall_name(17), "pread64");
    EXPECT_EQ(syscall_name(18), "pwrite64");
    EXPECT_EQ(class_name(LIVEIO_CLASS_CH_MRK), ".mrk");
    EXPECT_EQ(class_name(LIVEIO_CLASS_CH_PRIMARY), "primary.idx");
    EXPECT_EQ(class_name(LIVEIO_CLASS_TCP), "tcp");
    EXPECT_EQ(class_name(77), "class_77");
    // Table labels: no "unknown other" or "ch-other other".
    EXPECT_EQ(class_label(LIVEIO_CLASS_UNKNOWN, LIVEIO_IO_OTHER), "unclassified: other calls");
    EXPECT_EQ(class_label(LIVEIO_CLASS_CH_OTHER, LIVEIO_IO_OTHER), "CH other files: other calls");
    EXPECT_EQ(class_label(LIVEIO_CLASS_CH_BIN, LIVEIO_IO_READ), "CH .bin reads");
    EXPECT_EQ(class_label(LIVEIO_CLASS_TCP, LIVEIO_IO_WRITE), "tcp writes");
    EXPECT_EQ(direction_name(LIVEIO_IO_WRITE), "write");
}

}  // namespace
}  // namespace liveio::observe
