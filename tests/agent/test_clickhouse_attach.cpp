// `liveio attach` / `detach` on a real clickhouse-server 18.16 (src/clickhouse test bed) while
// a client thread keeps running a fixed query mix over a MergeTree table large enough that the
// queries read column files: every answer during and after the attachment must equal the
// answer of the unpatched server, the agent must count the server's I/O, and the server must
// keep answering after the agent is gone. The server is started as its service is (user
// clickhouse, no GLIBC_TUNABLES): attaching needs no preparation of the target.
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "agent/mmap_min_addr.h"
#include "agent/process_util.h"
#include "clickhouse/dataset.h"
#include "clickhouse/server.h"
#include "control/protocol.h"

namespace liveio::agent {

using control::ControlClient;
namespace {

using nlohmann::json;
using testing::CliResult;
using testing::eventually;
using testing::run_cli;

// Rows of the table: ~24 MB of column files in one part, so range scans and aggregations read
// many blocks of .bin files per query.
constexpr uint64_t kRows = 1'000'000;

std::optional<json> status_json(pid_t pid) {
    const CliResult r = run_cli({"status", std::to_string(pid), "--json"});
    if (r.status != 0) return std::nullopt;
    try {
        return json::parse(r.output);
    } catch (const json::exception&) {
        return std::nullopt;
    }
}

uint64_t calls_of(const json& status, const std::string& syscall) {
    const json calls = status.value("calls", json::object());
    return calls.contains(syscall) ? calls[syscall].value("calls", uint64_t{0}) : 0;
}

// Calls of the system calls a query's file reads go through (18.16 reads column files with
// read() from a file descriptor; pread is counted too in case a build uses it).
uint64_t file_reads(const json& status) {
    return calls_of(status, "read") + calls_of(status, "pread64");
}

bool agent_mapped(pid_t pid) {
    std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
    for (std::string line; std::getline(maps, line);)
        if (line.find("liveio-agent.so") != std::string::npos) return true;
    return false;
}

// Runs the query mix in a loop on its own connection, comparing each answer with the answer
// of the unpatched server.
class QueryLoop {
public:
    QueryLoop(clickhouse::HttpClient client, std::vector<clickhouse::Query> mix,
              std::vector<std::string> baseline)
        : client_(std::move(client)), mix_(std::move(mix)), baseline_(std::move(baseline)) {
        thread_ = std::thread([this] { run(); });
    }
    ~QueryLoop() { stop(); }

    void stop() {
        stop_.store(true);
        if (thread_.joinable()) thread_.join();
    }
    // Full passes over the mix completed so far.
    uint64_t passes() const { return passes_.load(); }
    uint64_t queries() const { return queries_.load(); }
    // Waits until `n` more passes completed (false if the loop stopped answering).
    bool wait_passes(uint64_t n) {
        const uint64_t want = passes() + n;
        return eventually([&] { return passes() >= want || failures() > 0; }, 300000) &&
               failures() == 0;
    }
    size_t failures() const {
        std::lock_guard lock(mu_);
        return failures_.size();
    }
    std::string describe() const {
        std::lock_guard lock(mu_);
        std::string out;
        for (size_t i = 0; i < failures_.size() && i < 10; ++i) out += failures_[i] + "\n";
        return out;
    }

private:
    void run() {
        while (!stop_.load()) {
            for (size_t i = 0; i < mix_.size() && !stop_.load(); ++i) {
                auto got = client_.query(mix_[i].sql);
                queries_.fetch_add(1);
                std::lock_guard lock(mu_);
                if (!got)
                    failures_.push_back(mix_[i].name + ": error: " + got.error().message);
                else if (*got != baseline_[i])
                    failures_.push_back(mix_[i].name + ": answered\n" + got->substr(0, 300) +
                                        "\ninstead of\n" + baseline_[i].substr(0, 300));
            }
            passes_.fetch_add(1);
        }
    }

    clickhouse::HttpClient client_;
    const std::vector<clickhouse::Query> mix_;
    const std::vector<std::string> baseline_;
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> passes_{0}, queries_{0};
    mutable std::mutex mu_;
    std::vector<std::string> failures_;
    std::thread thread_;
};

class ClickHouseAttach : public ::testing::TestWithParam<const char*> {};

TEST_P(ClickHouseAttach, AnswersStayExactWhileAttachedDetachedAndReattached) {
    const std::string mechanism = GetParam();
    auto binary = clickhouse::find_server_binary();
    if (!binary) GTEST_SKIP() << binary.error().message;
    {
        std::ifstream f("/proc/sys/kernel/yama/ptrace_scope");
        int scope = 0;
        if (f >> scope && scope >= 3)
            GTEST_SKIP() << "ptrace is disabled (kernel.yama.ptrace_scope=3)";
        if (scope == 2 && ::geteuid() != 0) GTEST_SKIP() << "ptrace_scope=2 needs CAP_SYS_PTRACE";
    }
    std::optional<testing::MmapMinAddrZero> page_zero;
    if (mechanism == "rewrite") {
        page_zero.emplace();
        if (!page_zero->ok()) GTEST_SKIP() << page_zero->reason();
    }

    clickhouse::ServerOptions so;
    so.binary = *binary;
    so.profile_settings = clickhouse::kProfileSettings;
    // Started as systemd starts the Debian service: user clickhouse (when we are root), only
    // PATH in the environment, so no GLIBC_TUNABLES reserve of static TLS for the agent.
    so.inherit_environment = false;
    so.environment = {clickhouse::kServiceEnvironment};
    so.user = clickhouse::service_user();
    auto server = clickhouse::LocalServer::start(so);
    ASSERT_TRUE(server) << server.error().message;
    {
        std::ifstream env("/proc/" + std::to_string(server->pid()) + "/environ");
        const std::string got((std::istreambuf_iterator<char>(env)),
                              std::istreambuf_iterator<char>());
        EXPECT_EQ(got, std::string(clickhouse::kServiceEnvironment) + '\0');
    }
    auto client = server->client();
    clickhouse::DatasetOptions data;
    data.rows = kRows;
    auto loaded = clickhouse::load(client, data);
    ASSERT_TRUE(loaded) << loaded.error().message;
    ASSERT_EQ(loaded->rows, kRows);

    // The unpatched answers (which must also be the ones computed from the generator).
    const auto mix = clickhouse::query_mix(data, clickhouse::ShardSlice{}, false);
    std::vector<std::string> baseline;
    for (const auto& q : mix) {
        auto got = client.query(q.sql);
        ASSERT_TRUE(got) << q.name << ": " << got.error().message;
        ASSERT_EQ(*got, q.expected) << q.name;
        baseline.push_back(*got);
    }

    const pid_t pid = server->pid();
    const std::string spid = std::to_string(pid);
    QueryLoop loop(server->client(), mix, baseline);
    ASSERT_TRUE(loop.wait_passes(1)) << loop.describe();

    for (int round = 0; round < 2; ++round) {
        SCOPED_TRACE("round " + std::to_string(round) + ", mechanism " + mechanism);
        const CliResult a = run_cli({"attach", spid, "--mechanism", mechanism});
        ASSERT_EQ(a.status, 0) << a.output << "\nserver log:\n" << server->log_tail(60);
        std::printf("clickhouse-server %s: %s", mechanism.c_str(), a.output.c_str());
        RecordProperty("attach_" + mechanism + "_" + std::to_string(round), a.output);
        ASSERT_TRUE(agent_mapped(pid));

        auto first = status_json(pid);
        ASSERT_TRUE(first);
        ASSERT_EQ((*first)["mechanisms"].size(), 1u) << first->dump();
        EXPECT_EQ((*first)["mechanisms"][0]["name"], mechanism);
        const uint64_t reads = file_reads(*first);
        const uint64_t total = calls_of(*first, "total");
        // Queries run while attached: the agent sees the server's file reads, and every answer
        // is still the unpatched one.
        ASSERT_TRUE(loop.wait_passes(2)) << loop.describe() << "\nserver log:\n"
                                         << server->log_tail(60);
        ASSERT_TRUE(eventually([&] {
            auto s = status_json(pid);
            return s && file_reads(*s) > reads && calls_of(*s, "total") > total;
        })) << status_json(pid).value_or(json()).dump();
        const auto later = status_json(pid);
        ASSERT_TRUE(later);
        std::printf("  counted while attached: %s\n",
                    later->value("calls", json::object()).dump().c_str());

        const CliResult d = run_cli({"detach", spid});
        ASSERT_EQ(d.status, 0) << d.output << "\nserver log:\n" << server->log_tail(60);
        std::printf("clickhouse-server %s: %s", mechanism.c_str(), d.output.c_str());
        EXPECT_NE(d.output.find("agent unloaded"), std::string::npos) << d.output;
        EXPECT_FALSE(agent_mapped(pid));
        EXPECT_FALSE(ControlClient::connect(pid)) << "control socket still served after detach";
        ASSERT_TRUE(loop.wait_passes(1)) << loop.describe();
    }

    loop.stop();
    EXPECT_EQ(loop.failures(), 0u) << loop.describe();
    std::printf("  %llu queries checked during and after the attachments\n",
                static_cast<unsigned long long>(loop.queries()));
    ASSERT_TRUE(client.ping()) << server->log_tail();
    auto after = clickhouse::run_mix(client, mix);
    ASSERT_TRUE(after) << after.error().message;
    EXPECT_EQ(after->mismatches, 0u);
    auto stopped = server->stop();
    EXPECT_TRUE(stopped) << stopped.error().message;
}

INSTANTIATE_TEST_SUITE_P(Mechanisms, ClickHouseAttach,
                         ::testing::Values("got", "inline", "rewrite"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace liveio::agent
