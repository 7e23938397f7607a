// A node of a 3-shard namespace cluster killed in the middle of a Distributed query (skipped,
// with the reason, without root, netns rights, clickhouse-server or iproute2). The query must
// fail as ClickHouse fails it without liveio: a stock run (no agent anywhere) kills one shard's
// server under the same query and gives the reference error; then liveio is attached on every
// node (the uring policy on: the initiator's socket calls go through io_uring) and another
// shard's server is killed under the query. liveio must report the dead nodes down at once
// (`cluster attach`, `stats`, `status`, `top`, each bounded by --timeout), the surviving
// initiator keeps answering, and `cluster down` leaves no namespace, process or directory.
// Every wait is bounded in count and time.
#include <gtest/gtest.h>

#include <signal.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/proc_tasks.h"
#include "clickhouse/http_client.h"
#include "cluster/cluster_file.h"
#include "cluster/harness.h"
#include "cluster/netns.h"
#include "cluster_test_support.h"

namespace liveio::cluster {
namespace {

namespace fs = std::filesystem;
using namespace test_support;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kRows = 30000;  // 10000 per shard: small, the machine is shared

// Reads every shard's rows slowly (2 ms per row in blocks of 100, ~20 s per shard), so that a
// server killed while its part of the query runs dies mid-query. skip_unavailable_shards: a
// shard already dead when the query starts is left out (the liveio run has one), a shard that
// dies during the query fails it. `tag` (true for every row) tells the runs apart in a
// shard's system.processes: a shard may still be running the part of an earlier run whose
// initiator gave up.
std::string slow_query(const std::string& tag) {
    return fmt::format(
        "SELECT count(), sum(WatchID) FROM hits_all WHERE sleepEachRow(0.002) = 0 AND URL != '{}' "
        "SETTINGS max_block_size = 100, skip_unavailable_shards = 1",
        tag);
}

// ClickHouse's codes for a peer lost in the middle of an exchange: the class of errors a
// killed shard gives its initiator (which one depends on where the initiator was when the
// connection broke: reading a packet, or writing one).
bool peer_lost_code(int code) {
    return code == 32       // ATTEMPT_TO_READ_AFTER_EOF
           || code == 209   // SOCKET_TIMEOUT
           || code == 210   // NETWORK_ERROR (connection reset, broken pipe, refused)
           || code == 279;  // ALL_CONNECTION_TRIES_FAILED
}

struct KilledRun {
    bool seen_running = false;  // the victim was running its part of the query when killed
    bool killed = false;        // the victim's server is gone
    Result<std::string> answer = std::string();
};

// Starts slow_query on `initiator`, waits (bounded) until `victim` runs its part of it, kills
// the victim's server (SIGKILL) and returns what the query gave.
KilledRun kill_during_query(const Node& initiator, const Node& victim) {
    KilledRun run;
    const std::string tag = "killed-" + victim.name;
    auto pending =
        std::async(std::launch::async, [&] { return query(initiator, slow_query(tag)); });
    const auto deadline = Clock::now() + seconds(60);
    while (Clock::now() < deadline &&
           pending.wait_for(milliseconds(0)) != std::future_status::ready) {
        auto r = query(victim, fmt::format("SELECT count() FROM system.processes WHERE query "
                                           "LIKE '%{}%' AND query NOT LIKE '%system.processes%'",
                                           tag));
        if (r && std::stoull(*r) > 0) {
            run.seen_running = true;
            break;
        }
        std::this_thread::sleep_for(milliseconds(20));
    }
    ::kill(victim.server_pid, SIGKILL);
    for (int i = 0; i < 500 && process_running(victim.server_pid); ++i)
        std::this_thread::sleep_for(milliseconds(20));
    run.killed = !process_running(victim.server_pid);
    run.answer = pending.get();  // bounded by the client's 60 s timeout
    return run;
}

using ClusterNodeKilled = ClusterTest;

TEST_F(ClusterNodeKilled, QueryFailsAsWithoutLiveioAndTheNodeIsReportedDown) {
    ASSERT_NO_FATAL_FAILURE(
        up({"--shards", "3", "--rows", std::to_string(kRows), "--history-interval", "3600s"}, 3));
    const Node &n0 = file.nodes[0], &n1 = file.nodes[1], &n2 = file.nodes[2];
    std::vector<pid_t> pids;
    for (const Node& node : file.nodes)
        for (pid_t p : processes_in_netns(node.netns)) pids.push_back(p);
    const std::string exact = fmt::format("{}\t{}\n", kRows, kRows * (kRows - 1) / 2);
    auto all = query(n0, "SELECT count(), sum(WatchID) FROM hits_all");
    ASSERT_TRUE(all) << all.error().message;
    ASSERT_EQ(*all, exact);
    // Row r is on shard r % 3: the answers of n0's shard alone and of n0's and n1's.
    uint64_t count[3] = {}, sum[3] = {};
    for (uint64_t r = 0; r < kRows; ++r) ++count[r % 3], sum[r % 3] += r;
    const std::string own_only = fmt::format("{}\t{}\n", count[0], sum[0]);
    const std::string without_n2 = fmt::format("{}\t{}\n", count[0] + count[1], sum[0] + sum[1]);
    auto with = [&](std::vector<std::string> a, const std::string& timeout) {
        return on_cluster(std::move(a), timeout, milliseconds(180000));
    };

    // Stock: no agent anywhere; n2 killed under the query.
    KilledRun stock = kill_during_query(n0, n2);
    ASSERT_TRUE(stock.seen_running) << "n2 never ran its part of the query";
    ASSERT_TRUE(stock.killed);
    ASSERT_FALSE(stock.answer) << "the query survived the kill: " << *stock.answer;
    const int stock_code = clickhouse::clickhouse_error_code(stock.answer.error().message);
    ASSERT_TRUE(peer_lost_code(stock_code)) << stock.answer.error().message;

    // liveio on every node: n2's server is gone, which attach reports; the others attach.
    const auto attached = with({"cluster", "attach", "--policy", "uring"}, "60s");
    if (attached.output.find("Operation not permitted") != std::string::npos)
        GTEST_SKIP() << "cannot attach here: " << attached.output;
    EXPECT_NE(attached.status, 0) << attached.output;
    EXPECT_NE(attached.output.find("n0   ok"), std::string::npos) << attached.output;
    EXPECT_NE(attached.output.find("n1   ok"), std::string::npos) << attached.output;
    EXPECT_NE(attached.output.find("n2   FAIL"), std::string::npos) << attached.output;
    EXPECT_NE(attached.output.find("1 of 3 nodes failed"), std::string::npos) << attached.output;
    auto partial = query(
        n0, "SELECT count(), sum(WatchID) FROM hits_all SETTINGS skip_unavailable_shards = 1");
    ASSERT_TRUE(partial) << partial.error().message;
    EXPECT_EQ(*partial, without_n2) << "n0 and n1 answer for their shards with liveio attached";

    // With liveio: n1 killed under the same query.
    KilledRun live = kill_during_query(n0, n1);
    ASSERT_TRUE(live.seen_running) << "n1 never ran its part of the query";
    ASSERT_TRUE(live.killed);
    ASSERT_FALSE(live.answer) << "the query survived the kill: " << *live.answer;
    const int live_code = clickhouse::clickhouse_error_code(live.answer.error().message);
    EXPECT_TRUE(peer_lost_code(live_code)) << "with liveio: " << live.answer.error().message
                                           << "\nwithout: " << stock.answer.error().message;
    std::printf("killed shard mid-query: Code %d without liveio, Code %d with liveio\n", stock_code,
                live_code);

    // The initiator lives on, liveio still in it, and answers for its own shard.
    auto own = query(
        n0, "SELECT count(), sum(WatchID) FROM hits_all SETTINGS skip_unavailable_shards = 1");
    ASSERT_TRUE(own) << own.error().message;
    EXPECT_EQ(*own, own_only);

    // Every command reports the two dead nodes and returns.
    const auto stats = with({"cluster", "stats"}, "5s");
    EXPECT_NE(stats.status, 0) << stats.output;
    EXPECT_NE(stats.output.find(fmt::format("n0   {}", n0.server_pid)), std::string::npos)
        << stats.output;
    EXPECT_NE(stats.output.find("n1   FAIL"), std::string::npos) << stats.output;
    EXPECT_NE(stats.output.find("n2   FAIL"), std::string::npos) << stats.output;
    EXPECT_NE(stats.output.find("2 of 3 nodes failed"), std::string::npos) << stats.output;
    const auto status = with({"cluster", "status"}, "5s");
    EXPECT_NE(status.status, 0) << status.output;
    EXPECT_NE(status.output.find("2 of 3 nodes down"), std::string::npos) << status.output;
    const auto top = with({"cluster", "top", "--json", "--once", "--interval", "200ms"}, "5s");
    EXPECT_EQ(top.status, 0) << top.output;
    json view;
    try {
        view = json::parse(top.output.substr(0, top.output.find('\n')));
    } catch (const std::exception& e) {
        FAIL() << e.what() << ": " << top.output;
    }
    ASSERT_EQ(view.at("nodes").size(), 3u) << top.output;
    EXPECT_TRUE(view["nodes"][0].value("ok", false)) << top.output;
    for (size_t i : {1u, 2u}) {
        EXPECT_FALSE(view["nodes"][i].value("ok", true)) << top.output;
        EXPECT_NE(view["nodes"][i].value("error", "").find("exited"), std::string::npos)
            << top.output;
    }
    // n0 is attached already: a no-op there (the policies switched to none), FAIL elsewhere.
    const auto again = with({"cluster", "attach"}, "10s");
    EXPECT_NE(again.status, 0) << again.output;
    EXPECT_NE(again.output.find("n0   ok   already attached"), std::string::npos) << again.output;
    EXPECT_NE(again.output.find("n1   FAIL"), std::string::npos) << again.output;
    EXPECT_NE(again.output.find("n2   FAIL"), std::string::npos) << again.output;

    // detach leaves n0 as it was; down leaves nothing of the cluster.
    const auto detached = with({"cluster", "detach"}, "60s");
    EXPECT_NE(detached.output.find("n0   ok"), std::string::npos) << detached.output;
    {
        std::ifstream maps(fmt::format("/proc/{}/maps", n0.server_pid));
        const std::string text((std::istreambuf_iterator<char>(maps)),
                               std::istreambuf_iterator<char>());
        EXPECT_EQ(text.find("liveio-agent.so"), std::string::npos) << "n0 still maps the agent";
    }
    const auto down_out = on_cluster({"cluster", "down"});
    ASSERT_EQ(down_out.status, 0) << down_out.output;
    for (const std::string& ns : namespace_names(n.name, 3)) EXPECT_FALSE(netns_exists(ns)) << ns;
    EXPECT_FALSE(fs::exists(state_dir(n.name, n.root)));
    for (pid_t p : pids) EXPECT_FALSE(process_running(p)) << "process " << p << " still runs";
}

}  // namespace
}  // namespace liveio::cluster
