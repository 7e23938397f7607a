// Terminal tables, JSON and bpftrace-style histograms.
#include <gtest/gtest.h>

#include "observe/format.h"

namespace liveio::observe {
namespace {

TEST(Format, LatencyAndCounts) {
    EXPECT_EQ(format_latency(std::nullopt), "-");
    EXPECT_EQ(format_latency(850), "850ns");
    EXPECT_EQ(format_latency(12345), "12.3us");
    EXPECT_EQ(format_latency(4.56e6), "4.56ms");
    EXPECT_EQ(format_latency(1.2e9), "1.2s");
    EXPECT_EQ(format_count(0), "0");
    EXPECT_EQ(format_count(999), "999");
    EXPECT_EQ(format_count(12000), "12.0K");
    EXPECT_EQ(format_count(3.4e6), "3.40M");
    EXPECT_EQ(format_count(2048, true), "2.00K");
}

TEST(Format, HistogramLikeBpftrace) {
    Histogram h{};
    h[9] = 140;
    h[11] = 35;
    const std::string out = format_histogram("pread64", h);
    EXPECT_EQ(
        out,
        "@pread64 (latency, ns):\n"
        "[512, 1K)                 140 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
        "[1K, 2K)                    0 |                                                    |\n"
        "[2K, 4K)                   35 |@@@@@@@@@@@@@                                       |\n");
    EXPECT_EQ(format_histogram("x", Histogram{}), "@x (latency, ns):\n(no calls)\n");
    Histogram edges{};
    edges[0] = 1;
    edges[LIVEIO_HIST_SLOTS - 1] = 1;
    const std::string e = format_histogram("edges", edges);
    EXPECT_NE(e.find("[0, 2)"), std::string::npos) << e;
    EXPECT_NE(e.find("[2G, ...)"), std::string::npos) << e;
}

Snapshot sample() {
    Snapshot s;
    Counters pread, write;
    pread.calls = 2000;
    pread.bytes = 2000 * 4096;
    pread.hist[10] = 2000;
    pread.latency_ns = 2000 * 1500;
    write.calls = 10;
    write.bytes = 10;
    write.errors = 1;
    write.hist[14] = 10;
    write.latency_ns = 10 * 20000;
    s.syscalls = {{1, "write", write}, {17, "pread64", pread}};
    s.classes = {{LIVEIO_CLASS_CH_BIN, LIVEIO_IO_READ, pread}};
    return s;
}

TEST(Format, TablesSortBusiestFirstWithRatesOrTotals) {
    const std::string rates = format_tables(sample(), 2.0);
    EXPECT_NE(rates.find("CALLS/s"), std::string::npos);
    EXPECT_LT(rates.find("pread64"), rates.find("write"));
    EXPECT_NE(rates.find("1.00K"), std::string::npos) << rates;  // 2000 calls over 2 s
    EXPECT_NE(rates.find("3.91"), std::string::npos) << rates;   // 4000 KiB/s in MB/s
    EXPECT_NE(rates.find(".bin read"), std::string::npos) << rates;
    const std::string totals = format_tables(sample(), 0);
    EXPECT_NE(totals.find("CALLS "), std::string::npos);
    EXPECT_NE(totals.find("2000"), std::string::npos) << totals;
    EXPECT_NE(totals.find("total"), std::string::npos) << totals;
    const std::string one = format_tables(sample(), 0, 1);
    EXPECT_EQ(one.find("write "), std::string::npos) << one;
    EXPECT_NE(format_tables(Snapshot{}, 1.0).find("(no calls)"), std::string::npos);
}

TEST(Format, JsonCarriesCountsPercentilesAndRates) {
    const auto j = to_json(sample(), 2.0);
    EXPECT_EQ(j["interval_s"], 2.0);
    ASSERT_EQ(j["syscalls"].size(), 2u);
    const auto& pread = j["syscalls"][1];
    EXPECT_EQ(pread["name"], "pread64");
    EXPECT_EQ(pread["nr"], 17);
    EXPECT_EQ(pread["calls"], 2000);
    EXPECT_EQ(pread["calls_per_s"], 1000.0);
    EXPECT_EQ(pread["p50_ns"], 1536.0);
    EXPECT_EQ(pread["hist"][10], 2000);
    EXPECT_EQ(j["classes"][0]["class"], ".bin");
    EXPECT_EQ(j["total"]["calls"], 2010);
    EXPECT_TRUE(to_json(Snapshot{}, 0)["interval_s"].is_null());
    EXPECT_TRUE(to_json(Snapshot{}, 0)["total"]["p50_ns"].is_null());
}

}  // namespace
}  // namespace liveio::observe

namespace liveio::observe {
namespace {

TEST(Format, DurationsParseWithUnits) {
    EXPECT_DOUBLE_EQ(parse_seconds("1s").value(), 1.0);
    EXPECT_DOUBLE_EQ(parse_seconds("500ms").value(), 0.5);
    EXPECT_DOUBLE_EQ(parse_seconds("250us").value(), 250e-6);
    EXPECT_DOUBLE_EQ(parse_seconds("2m").value(), 120.0);
    EXPECT_DOUBLE_EQ(parse_seconds("1.5").value(), 1.5);
    for (const char* bad : {"", "s", "1h", "-1s", "0", "abc", "1e9", "nan"}) {
        auto r = parse_seconds(bad);
        EXPECT_FALSE(r) << bad;
    }
    EXPECT_NE(parse_seconds("1h").error().message.find("'1h'"), std::string::npos);
}

}  // namespace
}  // namespace liveio::observe
