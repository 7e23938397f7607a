// One view and one history of a 3-shard namespace cluster (skipped, with the reason, without
// root, netns rights, clickhouse-server or iproute2): with liveio attached on every node,
// Distributed queries give the exact answers; `cluster top --json` shows every node, the TCP
// traffic of the initiator to each shard named after the shard's node, and disk reads; every
// node's metrics land in its own history table and the Distributed history table returns all
// nodes' rows; Prometheus (the Debian package, run inside a node's namespace) scrapes every
// node's /metrics. Queries and polls are bounded in count and time.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "clickhouse/http_client.h"
#include "clickhouse/server.h"
#include "cluster/cluster_file.h"
#include "cluster/harness.h"
#include "cluster/netns.h"
#include "cluster_test_support.h"
#include "control/command.h"

namespace liveio::cluster {
namespace {

namespace fs = std::filesystem;
using control::run_command;
using namespace test_support;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kRows = 60000;  // small: the machine is shared

// A child process (Prometheus) started by the test and stopped by its pid when it goes.
struct Child {
    pid_t pid = -1;
    ~Child() {
        if (pid <= 0) return;
        ::kill(pid, SIGTERM);
        for (int i = 0; i < 100 && ::waitpid(pid, nullptr, WNOHANG) == 0; ++i)
            std::this_thread::sleep_for(milliseconds(50));
        if (::waitpid(pid, nullptr, WNOHANG) == 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    }
};

pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
        const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (out >= 0) ::dup2(out, 1), ::dup2(out, 2);
        ::execvp(argv[0], argv.data());
        ::_exit(127);
    }
    return pid;
}

using ClusterView = ClusterTest;

TEST_F(ClusterView, TopHistoryAndPrometheusCoverEveryNodeOfAThreeShardCluster) {
    ASSERT_NO_FATAL_FAILURE(
        up({"--shards", "3", "--rows", std::to_string(kRows), "--history-interval", "1s"}, 3));
    auto with = [&](std::vector<std::string> a, milliseconds timeout = milliseconds(300000)) {
        return on_cluster(std::move(a), "60s", timeout);
    };
    const std::string exact = fmt::format("{}\t{}\n", kRows, kRows * (kRows - 1) / 2);
    auto before = query(file.nodes[0], "SELECT count(), sum(WatchID) FROM hits_all");
    ASSERT_TRUE(before) << before.error().message;
    ASSERT_EQ(*before, exact);

    const auto attached = with({"cluster", "attach"});
    if (attached.output.find("Operation not permitted") != std::string::npos)
        GTEST_SKIP() << "cannot attach here: " << attached.output;
    ASSERT_EQ(attached.status, 0) << attached.output;

    // top over an interval in which n0 runs Distributed queries (a bounded number).
    control::CommandOutput top;
    std::thread watcher([&] {
        top =
            with({"cluster", "top", "--json", "--once", "--interval", "3s"}, milliseconds(120000));
    });
    std::this_thread::sleep_for(milliseconds(500));
    for (int i = 0; i < 5; ++i) {
        auto all =
            query(file.nodes[0], "SELECT count(), sum(WatchID) FROM hits_all WHERE URL != ''");
        ASSERT_TRUE(all) << all.error().message;
        auto plain = query(file.nodes[0], "SELECT count(), sum(WatchID) FROM hits_all");
        ASSERT_TRUE(plain) << plain.error().message;
        EXPECT_EQ(*plain, exact);
    }
    watcher.join();
    ASSERT_EQ(top.status, 0) << top.output;
    const json view = json::parse(top.output.substr(0, top.output.find('\n')));
    ASSERT_EQ(view.at("nodes").size(), 3u) << top.output;
    for (const json& node : view.at("nodes")) EXPECT_TRUE(node.value("ok", false)) << node.dump();
    EXPECT_GT(view["nodes"][0].value("queries", uint64_t{0}), 0u) << top.output;
    std::set<std::string> shards_reached;
    uint64_t shard_bytes_in = 0;
    for (const json& p : view.at("peers")) {
        if (p.value("node", "") == "n0" && !p.value("inbound", true) &&
            p.value("service", "") == "native") {
            shards_reached.insert(p.value("peer", ""));
            shard_bytes_in += p.at("recv").value("bytes", uint64_t{0});
        }
        if (p.value("node", "") == "n1" && p.value("inbound", false) &&
            p.value("service", "") == "native") {
            EXPECT_EQ(p.value("peer", ""), "n0") << p.dump();
        }
    }
    EXPECT_EQ(shards_reached, (std::set<std::string>{"n1", "n2"})) << top.output;
    EXPECT_GT(shard_bytes_in, 0u) << top.output;
    uint64_t disk_calls = 0;
    for (const json& node : view.at("nodes"))
        disk_calls += node.at("disk").value("calls", uint64_t{0});
    EXPECT_GT(disk_calls, 0u) << top.output;
    const auto table =
        with({"cluster", "top", "--once", "--interval", "200ms"}, milliseconds(120000));
    EXPECT_EQ(table.status, 0) << table.output;
    EXPECT_NE(table.output.find("disk%"), std::string::npos) << table.output;

    // The history: every node's rows, sockets among them, through the Distributed table.
    std::string hosts;
    const auto deadline = Clock::now() + seconds(30);
    while (Clock::now() < deadline) {
        auto h = query(file.nodes[2],
                       fmt::format("SELECT groupUniqArray(host) FROM {} WHERE kind = 'socket'",
                                   file.history_distributed_table));
        ASSERT_TRUE(h) << h.error().message;
        hosts = *h;
        if (hosts.find("n0") != std::string::npos && hosts.find("n1") != std::string::npos &&
            hosts.find("n2") != std::string::npos)
            break;
        std::this_thread::sleep_for(milliseconds(500));
    }
    EXPECT_NE(hosts.find("'n0'"), std::string::npos) << hosts;
    EXPECT_NE(hosts.find("'n1'"), std::string::npos) << hosts;
    EXPECT_NE(hosts.find("'n2'"), std::string::npos) << hosts;
    auto own = query(file.nodes[1],
                     fmt::format("SELECT uniqExact(host), any(host) FROM {}", file.history_table));
    ASSERT_TRUE(own) << own.error().message;
    EXPECT_EQ(*own, "1\tn1\n") << "a node's own table holds only its rows";

    // Prometheus scrapes every node's /metrics (it runs in n0's namespace: the node addresses
    // exist only there).
    if (::access("/usr/bin/prometheus", X_OK) != 0 || ::access("/usr/bin/promtool", X_OK) != 0) {
        std::printf("prometheus not installed (apt install prometheus): scrape part skipped\n");
    } else {
        const std::string dir = n.root + "/prometheus";
        fs::create_directories(dir);
        std::string targets;
        for (const Node& node : file.nodes)
            targets +=
                fmt::format("{}'{}:{}'", targets.empty() ? "" : ", ", node.host, node.control.port);
        std::ofstream(dir + "/prometheus.yml") << fmt::format(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: liveio\n    "
            "static_configs:\n      - targets: [{}]\n",
            targets);
        Child prom;
        prom.pid =
            spawn({"ip", "netns", "exec", file.nodes[0].netns, "/usr/bin/prometheus",
                   "--config.file=" + dir + "/prometheus.yml",
                   "--storage.tsdb.path=" + dir + "/data", "--web.listen-address=127.0.0.1:19090"},
                  dir + "/prometheus.log");
        ASSERT_GT(prom.pid, 0);
        auto promql = [&](const std::string& expr) -> json {
            auto r = run_command({"ip", "netns", "exec", file.nodes[0].netns, "promtool", "query",
                                  "instant", "-o", "json", "http://127.0.0.1:19090", expr},
                                 milliseconds(20000));
            if (!r || r->status != 0) return json();
            try {
                return json::parse(r->output);
            } catch (const std::exception&) {
                return json();
            }
        };
        json up, sockets;
        const auto until = Clock::now() + seconds(60);
        while (Clock::now() < until) {
            up = promql("up{job=\"liveio\"} == 1");
            sockets = promql("sum by (instance) (liveio_socket_bytes_total)");
            if (up.is_array() && up.size() == 3 && sockets.is_array() && sockets.size() == 3) break;
            std::this_thread::sleep_for(milliseconds(500));
        }
        std::ifstream log(dir + "/prometheus.log");
        const std::string log_text((std::istreambuf_iterator<char>(log)),
                                   std::istreambuf_iterator<char>());
        EXPECT_TRUE(up.is_array() && up.size() == 3) << up.dump() << "\n"
                                                     << log_text.substr(0, 4000);
        EXPECT_TRUE(sockets.is_array() && sockets.size() == 3) << sockets.dump();
    }

    const auto detached = with({"cluster", "detach"});
    EXPECT_EQ(detached.status, 0) << detached.output;
    auto after = query(file.nodes[1], "SELECT count(), sum(WatchID) FROM hits_all");
    ASSERT_TRUE(after) << after.error().message;
    EXPECT_EQ(*after, exact);
    const auto down_out = on_cluster({"cluster", "down"});
    EXPECT_EQ(down_out.status, 0) << down_out.output;
}

}  // namespace
}  // namespace liveio::cluster
