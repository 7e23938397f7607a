// `liveio cluster` end to end on this machine: a 2-shard ClickHouse 18.16 cluster in network
// namespaces made by the harness (skipped, with the reason, without root or netns rights or
// without clickhouse-server), queried through its Distributed table; its traffic stays on the
// bridge inside the namespaces; the control endpoints refuse TCP requests without the token;
// `down` removes every namespace, process and directory, also after the harness was killed
// halfway through `up`. Each test uses its own cluster name and state root, so runs of other
// engineers on the machine are never touched.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/proc_tasks.h"
#include "clickhouse/http_client.h"
#include "clickhouse/server.h"
#include "cluster/cluster_file.h"
#include "cluster/control.h"
#include "cluster/harness.h"
#include "cluster/netns.h"
#include "cluster_test_support.h"
#include "control/command.h"

namespace liveio::cluster {
namespace {

namespace fs = std::filesystem;
using control::run_checked;
using control::run_command;
using namespace test_support;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr uint64_t kRows = 100000;  // small: the machine is shared

std::vector<std::string> cluster_namespaces(const std::string& name) {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/run/netns", ec))
        if (e.path().filename().string().starts_with("liveio-" + name + "-"))
            out.push_back(e.path().filename());
    return out;
}

uint64_t bridge_port_bytes(const std::string& hub, const std::string& port) {
    auto out = run_checked({"ip", "-n", hub, "-s", "-j", "link", "show", "dev", port});
    if (!out) return 0;
    const json j = json::parse(*out);
    return j.at(0).at("stats64").at("rx").at("bytes").get<uint64_t>() +
           j.at(0).at("stats64").at("tx").at("bytes").get<uint64_t>();
}

bool host_has_address_in(const std::string& prefix) {
    ifaddrs* ifs = nullptr;
    if (::getifaddrs(&ifs) != 0) return false;
    bool found = false;
    for (ifaddrs* i = ifs; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
        char buf[INET_ADDRSTRLEN];
        ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf,
                    sizeof buf);
        found |= std::string(buf).starts_with(prefix);
    }
    ::freeifaddrs(ifs);
    return found;
}

// The first IPv4 address of the host's own namespace that is not loopback, or "".
std::string host_address() {
    ifaddrs* ifs = nullptr;
    if (::getifaddrs(&ifs) != 0) return "";
    std::string found;
    for (ifaddrs* i = ifs; i && found.empty(); i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
        char buf[INET_ADDRSTRLEN];
        ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf,
                    sizeof buf);
        if (!std::string(buf).starts_with("127.")) found = buf;
    }
    ::freeifaddrs(ifs);
    return found;
}

// Waits (bounded) until `pid` is in the stopped state ('T' in /proc/PID/stat).
bool stopped_within(pid_t pid, seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        std::ifstream in(fmt::format("/proc/{}/stat", pid));
        std::string line;
        std::getline(in, line);
        const size_t paren = line.rfind(')');
        if (paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'T')
            return true;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(milliseconds(10));
    }
}

// Whatever `down` removes: nothing of the cluster may remain.
void expect_gone(const std::string& name, const std::string& root, const std::vector<pid_t>& pids) {
    EXPECT_TRUE(cluster_namespaces(name).empty());
    EXPECT_FALSE(fs::exists(state_dir(name, root)));
    for (pid_t pid : pids) EXPECT_FALSE(process_running(pid)) << "process " << pid << " still runs";
}

using NetnsCluster = ClusterTest;
using LoopbackCluster = LoopbackClusterTest;

TEST_F(NetnsCluster, DistributedQueryStaysInsideTheNamespacesAndDownRemovesEverything) {
    ASSERT_NO_FATAL_FAILURE(
        up({"--shards", "2", "--rows", std::to_string(kRows), "--rate", "200mbit"}, 2));
    EXPECT_NE(up_output.output.find("netem"), std::string::npos)
        << "the missing delay must be said: " << up_output.output;
    std::vector<pid_t> pids;
    for (const Node& node : file.nodes) {
        EXPECT_FALSE(node.netns.empty());
        EXPECT_GT(node.server_pid, 0);
        pids.push_back(node.server_pid);
        for (pid_t p : processes_in_netns(node.netns)) pids.push_back(p);
    }

    // Each shard holds its slice; the Distributed table on either node sums both exactly.
    uint64_t local_rows = 0;
    for (const Node& node : file.nodes) {
        auto c = query(node, "SELECT count() FROM hits");
        ASSERT_TRUE(c) << c.error().message;
        EXPECT_EQ(std::stoull(*c), kRows / 2);
        local_rows += std::stoull(*c);
    }
    EXPECT_EQ(local_rows, kRows);
    const std::string hub = "liveio-" + n.name + "-hub";
    const uint64_t before = bridge_port_bytes(hub, "n1");
    for (const Node& node : file.nodes) {
        auto all = query(node, "SELECT count(), sum(WatchID) FROM hits_all");
        ASSERT_TRUE(all) << all.error().message;
        EXPECT_EQ(*all, fmt::format("{}\t{}\n", kRows, kRows * (kRows - 1) / 2))
            << "on " << node.name;
    }
    // n0's query reached shard 1 over the bridge port of n1 (and n1's answered n0's over it).
    EXPECT_GT(bridge_port_bytes(hub, "n1"), before);

    // Nothing of the cluster in the host's namespace, and no way out of a node's namespace.
    EXPECT_FALSE(host_has_address_in("10.231.0."));
    auto routes =
        run_checked({"ip", "-n", file.nodes[0].netns, "-4", "route", "show", "table", "all"});
    ASSERT_TRUE(routes) << routes.error().message;
    EXPECT_EQ(routes->find("default"), std::string::npos) << *routes;
    if (const std::string host = host_address(); !host.empty()) {
        auto scope = NetnsScope::enter(file.nodes[0].netns);
        ASSERT_TRUE(scope);
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(22);
        ::inet_pton(AF_INET, host.c_str(), &sa.sin_addr);
        EXPECT_NE(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
        EXPECT_EQ(errno, ENETUNREACH) << "a node reached the host's " << host;
        ::close(fd);
    }

    // Control over TCP: refused without the token or with a wrong one, served with it.
    const Node& n0 = file.nodes[0];
    ASSERT_EQ(n0.control.port, kControlPort);
    auto bare = control_request_tcp(n0, "GET", "/control/ping", "", "", milliseconds(10000));
    ASSERT_TRUE(bare) << bare.error().message;
    EXPECT_EQ(bare->status, 401);
    EXPECT_NE(bare->body.find("Bearer"), std::string::npos) << bare->body;
    auto wrong = control_request_tcp(n0, "POST", "/control/detach", "{}", std::string(48, 'a'),
                                     milliseconds(10000));
    ASSERT_TRUE(wrong) << wrong.error().message;
    EXPECT_EQ(wrong->status, 401);
    EXPECT_NE(wrong->body.find("wrong bearer token"), std::string::npos) << wrong->body;
    auto token = read_token_file(n0.control.token_file);
    ASSERT_TRUE(token) << token.error().message;
    auto good = control_request_tcp(n0, "GET", "/control/ping", "", *token, milliseconds(10000));
    ASSERT_TRUE(good) << good.error().message;
    EXPECT_EQ(good->status, 200) << good->body;
    EXPECT_EQ(json::parse(good->body).value("target", 0), n0.server_pid);
    // /metrics stays open to scrapers.
    auto metrics = control_request_tcp(n0, "GET", "/metrics", "", "", milliseconds(10000));
    ASSERT_TRUE(metrics) << metrics.error().message;
    EXPECT_EQ(metrics->status, 200);

    const auto status = on_cluster({"cluster", "status"}, "20s");
    EXPECT_EQ(status.status, 0) << status.output;

    const auto down_out = on_cluster({"cluster", "down"});
    ASSERT_EQ(down_out.status, 0) << down_out.output;
    expect_gone(n.name, n.root, pids);
    const auto again = on_cluster({"cluster", "down"});
    EXPECT_EQ(again.status, 0) << again.output;
    EXPECT_NE(again.output.find("nothing"), std::string::npos) << again.output;
}

// ClickHouse servers whose command line names `dir` (their --config-file is inside it).
std::vector<pid_t> servers_under(const std::string& dir) {
    std::vector<pid_t> pids;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
        const std::string name = e.path().filename();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::ifstream in(e.path() / "cmdline");
        const std::string cmdline((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
        if (cmdline.starts_with("clickhouse-server") &&
            cmdline.find(dir + "/") != std::string::npos)
            pids.push_back(std::stoi(name));
    }
    return pids;
}

// Starts `liveio cluster up`, SIGKILLs it as soon as a server of the cluster runs (servers
// started, their pids perhaps not recorded yet, data not loaded, the state not "up"), then
// checks that `down` removes everything, the orphaned servers included.
void kill_up_midway_then_down(const Names& n, bool loopback) {
    std::vector<std::string> args{LIVEIO_CLI_PATH, "cluster",  "up", "--name", n.name,  "--root",
                                  n.root,          "--shards", "2",  "--rows", "100000"};
    if (loopback) args.push_back("--loopback");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t harness = ::fork();
    ASSERT_GE(harness, 0);
    if (harness == 0) {
        const int null = ::open("/dev/null", O_WRONLY);
        ::dup2(null, 1);
        ::dup2(null, 2);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    std::vector<pid_t> seen;
    const auto deadline = std::chrono::steady_clock::now() + seconds(120);
    while (std::chrono::steady_clock::now() < deadline && seen.empty()) {
        seen = servers_under(state_dir(n.name, n.root));
        if (seen.empty()) std::this_thread::sleep_for(milliseconds(10));
    }
    ::kill(harness, SIGKILL);
    int status = 0;
    ::waitpid(harness, &status, 0);
    ASSERT_FALSE(seen.empty()) << "no server appeared in 120 s";
    EXPECT_TRUE(WIFSIGNALED(status)) << "the harness finished before it was killed";
    if (!loopback) {
        EXPECT_FALSE(cluster_namespaces(n.name).empty());
    }
    // What was started lives on after the harness died.
    EXPECT_TRUE(process_running(seen[0]));
    const auto down_out = cli({"cluster", "down", "--name", n.name, "--root", n.root});
    ASSERT_EQ(down_out.status, 0) << down_out.output;
    for (pid_t p : servers_under(state_dir(n.name, n.root))) seen.push_back(p);
    expect_gone(n.name, n.root, seen);
}

TEST_F(NetnsCluster, DownAfterTheHarnessWasKilledMidUpRemovesEverything) {
    kill_up_midway_then_down(n, /*loopback=*/false);
}

// A server that cannot start (here: the "server" exits at once) fails `up`, and `up` removes
// the namespaces and directories it had made before it reports.
TEST_F(NetnsCluster, FailedUpRemovesWhatItMade) {
    auto r = run_command({"env", "CLICKHOUSE_SERVER=/bin/false", LIVEIO_CLI_PATH, "cluster", "up",
                          "--name", n.name, "--root", n.root, "--rows", "1000"},
                         milliseconds(120000));
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_NE(r->status, 0) << r->output;
    EXPECT_NE(r->output.find("during startup"), std::string::npos) << r->output;
    EXPECT_NE(r->output.find("removed again"), std::string::npos) << r->output;
    expect_gone(n.name, n.root, {});
}

// The control endpoints across nodes: attach (with a policy), stats, detach on every node,
// Distributed answers exact throughout; a node whose endpoint stops answering is reported as
// such while the others answer.
TEST_F(NetnsCluster, AttachStatsDetachOnEveryNodeAndAStoppedNodeIsReported) {
    ASSERT_NO_FATAL_FAILURE(up({"--shards", "2", "--rows", "20000"}, 2));
    const std::string exact = fmt::format("{}\t{}\n", 20000, uint64_t{20000} * 19999 / 2);
    auto with = [&](std::vector<std::string> a, std::vector<std::string> extra = {}) {
        a.insert(a.end(), extra.begin(), extra.end());
        return on_cluster(std::move(a), "60s");
    };

    const auto attached = with({"cluster", "attach"}, {"--policy", "prefetch"});
    const bool cannot = attached.output.find("Operation not permitted") != std::string::npos ||
                        attached.output.find("no BPF object") != std::string::npos;
    if (cannot) GTEST_SKIP() << "cannot attach here: " << attached.output;
    ASSERT_EQ(attached.status, 0) << attached.output;
    EXPECT_NE(attached.output.find("n0   ok"), std::string::npos) << attached.output;
    EXPECT_NE(attached.output.find("n1   ok"), std::string::npos) << attached.output;
    for (int i = 0; i < 3; ++i) {
        auto all = query(file.nodes[0], "SELECT count(), sum(WatchID) FROM hits_all");
        ASSERT_TRUE(all) << all.error().message;
        EXPECT_EQ(*all, exact);
    }
    const auto stats = with({"cluster", "stats", "--json"});
    ASSERT_EQ(stats.status, 0) << stats.output;
    const json per_node = json::parse(stats.output);
    for (const Node& node : file.nodes) {
        const json& s = per_node.at(node.name);
        EXPECT_EQ(s.value("pid", 0), node.server_pid);
        // Both shards answered n0's Distributed queries, through their intercepted calls.
        EXPECT_GT(s.at("calls").at("total").value("calls", uint64_t{0}), 0u) << node.name;
        bool prefetch_on = false;
        for (const json& p : s.at("policies").at("policies"))
            prefetch_on |= p.value("name", "") == "prefetch" && p.value("on", false);
        EXPECT_TRUE(prefetch_on) << node.name;
    }

    // Attached already: the same attach again changes nothing and says so on every node;
    // other policies are switched live; another mechanism is refused, naming what to run.
    const auto same = with({"cluster", "attach"}, {"--policy", "prefetch"});
    EXPECT_EQ(same.status, 0) << same.output;
    for (const Node& node : file.nodes)
        EXPECT_NE(same.output.find(fmt::format("{}   ok   already attached to {}: mechanism got",
                                               node.name, node.server_pid)),
                  std::string::npos)
            << same.output;
    EXPECT_NE(same.output.find("prefetch (unchanged)"), std::string::npos) << same.output;
    const auto switched = with({"cluster", "attach"}, {"--policy", "marks"});
    EXPECT_EQ(switched.status, 0) << switched.output;
    EXPECT_NE(switched.output.find("policy prefetch off"), std::string::npos) << switched.output;
    const auto other = with({"cluster", "attach"}, {"--mechanism", "inline"});
    EXPECT_NE(other.status, 0) << other.output;
    EXPECT_NE(other.output.find("n0   FAIL"), std::string::npos) << other.output;
    EXPECT_NE(other.output.find("then liveio attach"), std::string::npos) << other.output;
    EXPECT_NE(other.output.find("liveio cluster detach, then liveio cluster attach -m inline"),
              std::string::npos)
        << other.output;
    const auto now_on = with({"cluster", "stats"});
    EXPECT_EQ(now_on.status, 0) << now_on.output;
    for (const Node& node : file.nodes)
        EXPECT_NE(now_on.output.find(fmt::format("{}   {}", node.name, node.server_pid)),
                  std::string::npos)
            << now_on.output;
    EXPECT_EQ(now_on.output.find("prefetch"), std::string::npos) << now_on.output;
    EXPECT_NE(now_on.output.find("marks"), std::string::npos) << now_on.output;
    auto exact_again = query(file.nodes[0], "SELECT count(), sum(WatchID) FROM hits_all");
    ASSERT_TRUE(exact_again) << exact_again.error().message;
    EXPECT_EQ(*exact_again, exact);

    // n1's endpoint stops answering (SIGSTOP): its report says so, n0's is complete.
    pid_t serve_n1 = 0;
    for (pid_t p : processes_in_netns(file.nodes[1].netns))
        if (p != file.nodes[1].server_pid) serve_n1 = p;
    ASSERT_GT(serve_n1, 0);
    ::kill(serve_n1, SIGSTOP);
    ASSERT_TRUE(stopped_within(serve_n1, seconds(10))) << "SIGSTOP did not stop n1's endpoint";
    const auto partial = on_cluster({"cluster", "stats"}, "2s", milliseconds(60000));
    ::kill(serve_n1, SIGCONT);
    EXPECT_NE(partial.status, 0) << partial.output;
    EXPECT_NE(partial.output.find("n1   FAIL unreachable"), std::string::npos) << partial.output;
    EXPECT_NE(partial.output.find("1 of 2 nodes failed"), std::string::npos) << partial.output;
    EXPECT_NE(partial.output.find(fmt::format("n0   {}", file.nodes[0].server_pid)),
              std::string::npos)
        << partial.output;

    const auto detached = with({"cluster", "detach"});
    ASSERT_EQ(detached.status, 0) << detached.output;
    EXPECT_NE(detached.output.find("agent unloaded"), std::string::npos) << detached.output;
    auto after = query(file.nodes[1], "SELECT count(), sum(WatchID) FROM hits_all");
    ASSERT_TRUE(after) << after.error().message;
    EXPECT_EQ(*after, exact);
    for (const Node& node : file.nodes) {
        std::ifstream maps(fmt::format("/proc/{}/maps", node.server_pid));
        const std::string text((std::istreambuf_iterator<char>(maps)),
                               std::istreambuf_iterator<char>());
        EXPECT_EQ(text.find("liveio-agent.so"), std::string::npos)
            << node.name << " still maps the agent";
    }
    // A server that stops answering: status names it down, the other up, and returns.
    ::kill(file.nodes[1].server_pid, SIGSTOP);
    ASSERT_TRUE(stopped_within(file.nodes[1].server_pid, seconds(10)))
        << "SIGSTOP did not stop the server";
    const auto status = on_cluster({"cluster", "status"}, "2s", milliseconds(60000));
    ::kill(file.nodes[1].server_pid, SIGCONT);
    EXPECT_NE(status.status, 0) << status.output;
    EXPECT_NE(status.output.find("1 of 2 nodes down"), std::string::npos) << status.output;
    EXPECT_NE(status.output.find("DOWN"), std::string::npos) << status.output;

    const auto down_out = on_cluster({"cluster", "down"});
    EXPECT_EQ(down_out.status, 0) << down_out.output;
}

// The same on loopback: no namespace to search, the servers are found by their directory.
TEST_F(LoopbackCluster, DownAfterTheHarnessWasKilledMidUpRemovesEverything) {
    kill_up_midway_then_down(n, /*loopback=*/true);
}

// Without namespaces (forced with --loopback, what a user without root gets): the nodes on
// loopback ports, the same Distributed answer, the same complete `down`.
TEST_F(LoopbackCluster, DistributedQueryAndDown) {
    ASSERT_NO_FATAL_FAILURE(up({"--shards", "2", "--rows", "10000"}, 2));
    EXPECT_NE(up_output.output.find("loopback ports"), std::string::npos) << up_output.output;
    std::vector<pid_t> pids;
    for (const Node& node : file.nodes) {
        EXPECT_TRUE(node.netns.empty());
        EXPECT_EQ(node.host, "127.0.0.1");
        EXPECT_EQ(node.control.port, 0) << "no TCP control without namespaces";
        pids.push_back(node.server_pid);
    }
    auto all = query(file.nodes[1], "SELECT count(), sum(WatchID) FROM hits_all");
    ASSERT_TRUE(all) << all.error().message;
    EXPECT_EQ(*all, fmt::format("{}\t{}\n", 10000, uint64_t{10000} * 9999 / 2));
    const auto status = on_cluster({"cluster", "status"}, "20s");
    EXPECT_EQ(status.status, 0) << status.output;
    const auto down_out = on_cluster({"cluster", "down"});
    ASSERT_EQ(down_out.status, 0) << down_out.output;
    expect_gone(n.name, n.root, pids);
}

}  // namespace
}  // namespace liveio::cluster
