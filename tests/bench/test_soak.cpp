// `liveio soak clickhouse`, short: ~45 s of attach cycles with every mechanism on a loaded
// ClickHouse started as its service is (user clickhouse, no GLIBC_TUNABLES), bounded by the
// command's own deadline. The soak must pass and print its metrics: no failed or wrong query,
// no lost row, cycles of every mechanism, nothing of liveio left in the server.
#include <gtest/gtest.h>
#include <unistd.h>

#include <regex>
#include <string>

#include "clickhouse/server.h"
#include "liveio_process.h"

namespace liveio::bench {
namespace {

using test_support::LiveioProcess;

TEST(SoakClickhouse, ShortSoakPassesWithEveryMechanism) {
    if (::geteuid() != 0)
        GTEST_SKIP()
            << "needs root: ptrace of a server of another user, vm.mmap_min_addr for rewrite";
    if (!clickhouse::find_server_binary()) GTEST_SKIP() << "clickhouse-server is not installed";
    LiveioProcess soak({"soak", "clickhouse", "--minutes", "0.75", "--rows", "200000",
                        "--warmup-seconds", "8", "--step-ms", "400"});
    const int status = soak.finish();
    const std::string& out = soak.output();
    SCOPED_TRACE(out);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT_NE(out.find("\nsoak passed\n"), std::string::npos);
    // Started as the service would be: only PATH in its environment.
    EXPECT_TRUE(std::regex_search(out, std::regex(R"(environment PATH=\S+ \n)")));
    EXPECT_NE(out.find("metric: soak_failed_queries 0\n"), std::string::npos);
    EXPECT_NE(out.find("metric: soak_lost_rows 0\n"), std::string::npos);
    EXPECT_NE(out.find("metric: soak_control_failures 0\n"), std::string::npos);
    EXPECT_NE(out.find("metric: soak_leaked_fds 0\n"), std::string::npos);
    EXPECT_NE(out.find("metric: soak_leaked_threads 0\n"), std::string::npos);
    EXPECT_TRUE(
        std::regex_search(out, std::regex(R"(\nmetric: soak_target_rss_growth_mb -?[0-9.]+\n)")));
    std::smatch cycles;
    ASSERT_TRUE(std::regex_search(
        out, cycles,
        std::regex(R"(attach cycles: (\d+) \(got (\d+), inline (\d+)(, rewrite (\d+))?\))")));
    EXPECT_GE(std::stoi(cycles[2]), 1);
    EXPECT_GE(std::stoi(cycles[3]), 1);
    // rewrite is left out only when vm.mmap_min_addr cannot be lowered, and the soak says so.
    if (cycles[5].matched)
        EXPECT_GE(std::stoi(cycles[5]), 1);
    else
        EXPECT_NE(out.find("note: mechanism rewrite left out"), std::string::npos);
    EXPECT_NE(out.find("metric: soak_attach_cycles " + cycles[1].str() + "\n"), std::string::npos);
    EXPECT_NE(out.find("CHECK TABLE soak_log: passed"), std::string::npos);
}

}  // namespace
}  // namespace liveio::bench
