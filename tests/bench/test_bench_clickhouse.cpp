// `liveio bench clickhouse --quick` end to end: the harness itself. A small data set is
// generated into a private cache directory, the quick query set runs cold and hot under every
// configuration the machine offers, and the output must show what the harness promises:
// results compared with stock (no mismatch), the device readahead restored, a plot, the
// metric lines. Needs root (drop_caches, readahead) and the Debian clickhouse-server.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "clickhouse/server.h"
#include "liveio_process.h"
#include "policy/catalog.h"

namespace liveio::bench {
namespace {

namespace fs = std::filesystem;
using test_support::LiveioProcess;

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(BenchClickhouse, QuickRunComparesResultsAndPrintsMetrics) {
    if (::geteuid() != 0)
        GTEST_SKIP()
            << "needs root: cold runs drop the page cache and the bench sets device readahead";
    if (!clickhouse::find_server_binary()) GTEST_SKIP() << "clickhouse-server is not installed";
    char tmpl[] = "/tmp/liveio-bench-ch-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    const std::string cache = tmpl;
    const std::string readahead_file = "/sys/block/vda/queue/read_ahead_kb";
    const std::string readahead_before = read_file(readahead_file);

    LiveioProcess bench({"bench", "clickhouse", "--quick", "--cache-dir", cache});
    const int status = bench.finish();
    const std::string& out = bench.output();
    SCOPED_TRACE(out);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    // The data set was generated and described, the device measured.
    EXPECT_NE(out.find("data set: 300000 rows in 1 part(s)"), std::string::npos);
    EXPECT_NE(out.find("128 KiB sequential"), std::string::npos);
    // Stock and ClickHouse's O_DIRECT path ran every quick query in both readahead passes;
    // each policy either ran or was reported unavailable with the CLI's error.
    EXPECT_NE(out.find("== readahead 128 KiB: cold =="), std::string::npos);
    for (const char* q : {"Q1", "Q3", "Q8", "Q21", "Q37", "Q43", "PK1", "PK6"})
        EXPECT_TRUE(std::regex_search(
            out, std::regex(std::string("\\n  ") + q + " +.*stock [0-9]+/[0-9]+ ms")))
            << q;
    // Every policy of the catalog is a configuration by default.
    for (const auto& def : policy::catalog()) {
        const std::string& policy = def.name;
        const bool ran =
            out.find(std::string("  ") + policy + " ") != std::string::npos &&
            std::regex_search(out, std::regex(std::string(policy) + " [0-9]+/[0-9]+ ms"));
        const bool reported = out.find(policy + ": UNAVAILABLE: `liveio ") != std::string::npos;
        EXPECT_TRUE(ran || reported) << policy;
    }
    // Every result compared with stock's; the merged parts compared byte for byte.
    EXPECT_NE(out.find("metric: result_mismatches 0\n"), std::string::npos);
    EXPECT_NE(out.find("metric: part_mismatches 0\n"), std::string::npos);
    EXPECT_NE(out.find("files identical to stock's"), std::string::npos);
    for (const char* m :
         {"cold_speedup_geomean", "cold_gap_recovered_pct", "cold_point_lookup_speedup",
          "hot_slowdown_pct", "insert_speedup", "clickhouse_glue_loc"})
        EXPECT_TRUE(std::regex_search(
            out, std::regex(std::string("\\nmetric: ") + m + " ([0-9.+-]+|n/a)\\n")))
            << m;
    // Every cold run started with the table out of the page cache (checked with mincore).
    std::smatch resident;
    ASSERT_TRUE(std::regex_search(
        out, resident, std::regex("\\nmetric: cold_start_resident_pct_max ([0-9.]+)\\n")));
    EXPECT_LE(std::stod(resident[1].str()), 1.0);
    // The tables give median [min-max] per configuration.
    EXPECT_TRUE(std::regex_search(out, std::regex("\\nQ1 +\\| +[0-9.]+ \\[[0-9.]+-[0-9.]+\\]")))
        << "cold table row of Q1";
    std::smatch plot;
    ASSERT_TRUE(std::regex_search(out, plot, std::regex("\\nplot: (\\S+\\.svg)\\n")));
    EXPECT_GT(fs::file_size(plot[1].str()), 1000u);

    // The machine's readahead is back, and no server of the bench is left.
    EXPECT_EQ(read_file(readahead_file), readahead_before);
    std::error_code ec;
    fs::remove_all(cache, ec);
}

}  // namespace
}  // namespace liveio::bench
