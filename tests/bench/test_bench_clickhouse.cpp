// `liveio bench clickhouse --quick` end to end: the harness itself. A small data set is
// generated into a private cache directory, the quick query set runs cold and hot under every
// configuration the machine offers, on the idle device and under the contended condition (a
// background fio load on the same disk), and the output must show what the harness promises:
// results compared with stock (no mismatch) in both conditions, the device's figures under
// each, the device readahead restored and the load stopped, the plots, the metric lines. Needs root
// (drop_caches, readahead) and the Debian clickhouse-server.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
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

// Processes whose command line mentions `needle` (the test's private cache directory).
int processes_mentioning(const std::string& needle) {
    int n = 0;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
        const std::string name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::string cmdline = read_file(e.path().string() + "/cmdline");
        std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
        if (cmdline.find(needle) != std::string::npos) ++n;
    }
    return n;
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
    EXPECT_NE(out.find("idle device, fio O_DIRECT io_uring on"), std::string::npos);
    EXPECT_NE(out.find("contended device, fio O_DIRECT io_uring on"), std::string::npos);
    EXPECT_NE(out.find("128 KiB sequential"), std::string::npos);
    // Stock and ClickHouse's O_DIRECT path ran every quick query in both readahead passes;
    // each policy either ran or was reported unavailable with the CLI's error.
    EXPECT_NE(out.find("== readahead 128 KiB: cold =="), std::string::npos);
    // The contended pass: the load ran during it (it did I/O) and ended when the pass did.
    EXPECT_TRUE(std::regex_search(
        out, std::regex("\\n== contended device, readahead [0-9]+ KiB \\(the machine's\\): cold "
                        "and hot ==\\n")));
    std::smatch load;
    ASSERT_TRUE(
        std::regex_search(out, load, std::regex("background load during the pass: ([0-9]+) IOPS")));
    EXPECT_GT(std::stol(load[1].str()), 0);
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
    for (const char* m : {"cold_speedup_geomean", "cold_gap_recovered_pct",
                          "cold_point_lookup_speedup", "hot_slowdown_pct",
                          "first_after_switch_slowdown_pct", "insert_speedup",
                          "clickhouse_glue_loc", "cold_speedup_geomean_contended",
                          "cold_gap_recovered_pct_contended", "cold_point_lookup_speedup_contended",
                          "hot_slowdown_pct_contended", "device_rand4k_qd32_over_qd1_contended"})
        EXPECT_TRUE(std::regex_search(
            out, std::regex(std::string("\\nmetric: ") + m + " ([0-9.+-]+|n/a)\\n")))
            << m;
    // Each hot run follows a recorded first run after its switch; runs.tsv has both.
    EXPECT_NE(out.find("1st after switch"), std::string::npos);
    // Every cold run started with the table out of the page cache (checked with mincore).
    std::smatch resident;
    ASSERT_TRUE(std::regex_search(
        out, resident, std::regex("\\nmetric: cold_start_resident_pct_max ([0-9.]+)\\n")));
    EXPECT_LE(std::stod(resident[1].str()), 1.0);
    // The tables give median [min-max] per configuration.
    EXPECT_TRUE(std::regex_search(out, std::regex("\\nQ1 +\\| +[0-9.]+ \\[[0-9.]+-[0-9.]+\\]")))
        << "cold table row of Q1";
    // ... and per query the device condition it ran under.
    EXPECT_TRUE(std::regex_search(out, std::regex("\\nQ1 +\\| [^\\n]*\\| idle\\n")));
    EXPECT_TRUE(std::regex_search(out, std::regex("\\nPK6 +\\| [^\\n]*\\| contended\\n")));
    std::smatch plot;
    ASSERT_TRUE(std::regex_search(out, plot, std::regex("\\nplot: (\\S+\\.svg)\\n")));
    EXPECT_GT(fs::file_size(plot[1].str()), 1000u);
    ASSERT_TRUE(std::regex_search(out, plot,
                                  std::regex("\\nplot \\(contended device\\): (\\S+\\.svg)\\n")));
    EXPECT_GT(fs::file_size(plot[1].str()), 1000u);

    // The machine's readahead is back, and no server or load of the bench is left (the load's
    // file and the server's directory are under the cache directory).
    EXPECT_EQ(read_file(readahead_file), readahead_before);
    EXPECT_EQ(processes_mentioning(cache), 0);
    std::error_code ec;
    fs::remove_all(cache, ec);
}

}  // namespace
}  // namespace liveio::bench
