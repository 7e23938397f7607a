// `liveio demo` end to end, as the README runs it: a private ClickHouse cluster, the query mix
// unpatched and attached, what liveio saw, the mix cold stock vs a policy switched on live,
// detach; and Ctrl-C in the middle. Either way no
// server may survive and the temporary directory must be gone.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "clickhouse/server.h"
#include "liveio_process.h"

namespace liveio::clickhouse {
namespace {

namespace fs = std::filesystem;
using test_support::LiveioProcess;

struct Shard {
    pid_t pid;
    std::string dir;
};

std::vector<Shard> shards_in(const std::string& output) {
    std::vector<Shard> out;
    const std::regex line(R"(shard \d+: pid (\d+), http \d+, native tcp \d+, dir (\S+),)");
    for (auto it = std::sregex_iterator(output.begin(), output.end(), line);
         it != std::sregex_iterator(); ++it)
        out.push_back({std::stoi((*it)[1]), (*it)[2]});
    return out;
}

bool process_exists(pid_t pid) { return ::kill(pid, 0) == 0 || errno != ESRCH; }

void expect_nothing_left(const std::vector<Shard>& shards) {
    for (const auto& s : shards) {
        EXPECT_FALSE(process_exists(s.pid)) << "server " << s.pid << " survived the demo";
        EXPECT_FALSE(fs::exists(fs::path(s.dir).parent_path())) << s.dir << " was not removed";
    }
}

class DemoTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (auto b = find_server_binary(); !b) GTEST_SKIP() << b.error().message;
        if (::geteuid() != 0) GTEST_SKIP() << "attaching to the server (ptrace) needs root here";
    }
};

TEST_F(DemoTest, RunsEndToEndAndLeavesNothingBehind) {
    LiveioProcess demo({"demo", "--rows", "400000", "--rounds", "1"});
    ASSERT_GT(demo.pid(), 0);
    const int status = demo.finish();
    const std::string& out = demo.output();
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
    for (const char* step :
         {"[1/7]", "[2/7]", "[3/7]", "[4/7]", "[5/7]", "[6/7]", "[7/7]", "summary:"})
        EXPECT_NE(out.find(step), std::string::npos) << step << " missing in:\n" << out;
    EXPECT_NE(out.find("400000 rows, "), std::string::npos) << out;
    EXPECT_NE(out.find("attached to "), std::string::npos) << out;
    EXPECT_NE(out.find("detached from "), std::string::npos) << out;
    EXPECT_NE(out.find("liveio-agent.so is unmapped"), std::string::npos) << out;
    // What liveio saw: io_stats' tables (or, with an agent without BPF, its counters) with
    // the server's column reads in them.
    EXPECT_TRUE(out.find(".bin read") != std::string::npos ||
                out.find("calls intercepted per syscall") != std::string::npos)
        << out;
    EXPECT_NE(out.find("\n    read "), std::string::npos) << out;
    // The acceleration step: the policy switched on live, the cold mix measured both ways with
    // every result matching, and the measured speedup printed (whatever it is).
    EXPECT_NE(out.find("$ liveio policy "), std::string::npos) << out;
    EXPECT_NE(out.find("marks cold mix "), std::string::npos) << out;
    EXPECT_TRUE(std::regex_search(
        out, std::regex(R"(cold mix median: stock [0-9.]+ ms, marks [0-9.]+ ms: [0-9.]+x)")))
        << out;
    EXPECT_TRUE(std::regex_search(
        out, std::regex(R"(cold mix with marks switched on live: [0-9.]+x vs stock cold)")))
        << out;
    const auto shards = shards_in(out);
    ASSERT_EQ(shards.size(), 2u) << out;
    expect_nothing_left(shards);
}

TEST_F(DemoTest, CtrlCStopsTheServersAndRemovesTheirFiles) {
    LiveioProcess demo({"demo", "--rows", "4000000"});
    ASSERT_GT(demo.pid(), 0);
    // Interrupted while the data set loads: the longest single request of the demo.
    ASSERT_TRUE(demo.read_until("[2/7]")) << demo.output();
    const auto shards = shards_in(demo.output());
    ASSERT_EQ(shards.size(), 2u) << demo.output();
    ASSERT_EQ(::kill(demo.pid(), SIGINT), 0);
    const int status = demo.finish();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGINT)
        << "status " << status << "\n"
        << demo.output();
    EXPECT_NE(demo.output().find("interrupted"), std::string::npos) << demo.output();
    expect_nothing_left(shards);
}

}  // namespace
}  // namespace liveio::clickhouse
