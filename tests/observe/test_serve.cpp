// `liveio serve` against the real consumers: Debian's Prometheus scraping /metrics (queried
// back through its HTTP API), and the ClickHouse sink inserting into a real server.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "agent/process_util.h"
#include "clickhouse/http_client.h"
#include "clickhouse/server.h"
#include "observe/child.h"

namespace liveio::observe {
namespace {

using agent::testing::eventually;
using agent::testing::read_file;
using agent::testing::temp_path;
using testing_util::Child;

constexpr int kCalls = 300;

struct Target {
    // See kStaticTlsRoom in test_cli.cpp: room for the agent's TLS when serve attaches it.
    Child proc{{LIVEIO_OBSERVE_TARGET_PATH, "--calls", std::to_string(kCalls)},
               {"GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536"}};
    int batches = 0;
    bool ready() {
        return eventually([&] {
                   return proc.out().find("ready") != std::string::npos || proc.exited();
               }) &&
               !proc.exited();
    }
    bool batch() {
        const std::string done = "batch " + std::to_string(++batches) + " done";
        ::kill(proc.pid(), SIGUSR1);
        return eventually(
                   [&] { return proc.out().find(done) != std::string::npos || proc.exited(); }) &&
               !proc.exited();
    }
};

// Starts `liveio serve` for `pid`; the port it listens on, or 0 (with `why` set) if it did not
// get there.
uint16_t start_serve(Child& serve, std::string* why) {
    std::smatch m;
    std::string out;
    const bool up = eventually([&] {
        out = serve.out() + serve.err();
        return std::regex_search(out, m, std::regex("listening on 127\\.0\\.0\\.1:(\\d+)")) ||
               serve.exited();
    });
    if (!up || serve.exited()) {
        *why = out;
        return 0;
    }
    return static_cast<uint16_t>(std::stoi(m[1]));
}

bool cannot_attach(const std::string& out) {
    return out.find("Operation not permitted") != std::string::npos ||
           out.find("ptrace") != std::string::npos ||
           out.find("no BPF support") != std::string::npos;
}

// Prometheus's instant query result: the value of the first series, or nothing.
std::optional<double> prom_query(uint16_t port, const std::string& query) {
    clickhouse::HttpClientOptions o;
    o.port = port;
    o.timeout = std::chrono::milliseconds(5000);
    clickhouse::HttpClient client(o);
    auto r = client.request("GET", "/api/v1/query?query=" + clickhouse::url_encode(query), "");
    if (!r || r->status != 200) return std::nullopt;
    try {
        const auto j = nlohmann::json::parse(r->body);
        const auto& result = j.at("data").at("result");
        if (result.empty()) return std::nullopt;
        return std::stod(result[0].at("value")[1].get<std::string>());
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

TEST(Serve, PrometheusScrapesTheCountsOfAKnownWorkload) {
    const char* prometheus = "/usr/bin/prometheus";
    if (::access(prometheus, X_OK) != 0)
        GTEST_SKIP() << "Debian's prometheus is not installed (apt-get install prometheus)";
    Target target;
    ASSERT_TRUE(target.ready());
    Child serve({LIVEIO_CLI_PATH, "serve", "--listen", "127.0.0.1:0", "--pid",
                 std::to_string(target.proc.pid())});
    std::string why;
    const uint16_t port = start_serve(serve, &why);
    if (port == 0 && cannot_attach(why)) GTEST_SKIP() << "cannot observe here: " << why;
    ASSERT_NE(port, 0) << why;
    ASSERT_TRUE(target.batch());

    auto ports = clickhouse::free_ports(1);
    ASSERT_TRUE(ports) << ports.error().message;
    const std::string dir = temp_path("prometheus");
    std::filesystem::create_directories(dir + "/data");
    {
        std::ofstream cfg(dir + "/prometheus.yml");
        cfg << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
               "scrape_configs:\n  - job_name: liveio\n    static_configs:\n      - targets: "
               "['127.0.0.1:"
            << port << "']\n";
    }
    Child prom({prometheus, "--config.file=" + dir + "/prometheus.yml",
                "--storage.tsdb.path=" + dir + "/data",
                "--web.listen-address=127.0.0.1:" + std::to_string((*ports)[0])});
    const std::string pid = std::to_string(target.proc.pid());
    const std::string sel = "{pid=\"" + pid + "\",syscall=\"pread64\"}";
    std::optional<double> calls;
    const bool scraped = eventually([&] {
        calls = prom_query((*ports)[0], "liveio_syscalls_total" + sel);
        return (calls && *calls == kCalls) || prom.exited();
    });
    if (prom.exited())
        GTEST_SKIP() << "prometheus did not run here: " << prom.err().substr(0, 2000);
    ASSERT_TRUE(scraped) << "last value: " << (calls ? std::to_string(*calls) : "none") << "\n"
                         << prom.err().substr(0, 2000);
    EXPECT_EQ(prom_query((*ports)[0], "liveio_io_bytes_total" + sel), kCalls * 4096.0);
    EXPECT_EQ(prom_query((*ports)[0], "liveio_io_latency_seconds_count" + sel), kCalls);
    // Prometheus computes quantiles from our buckets: a latency, positive and below a second.
    const auto p50 = prom_query(
        (*ports)[0], "histogram_quantile(0.5, liveio_io_latency_seconds_bucket" + sel + ")");
    ASSERT_TRUE(p50);
    EXPECT_GT(*p50, 0);
    EXPECT_LT(*p50, 1);
    EXPECT_EQ(prom_query((*ports)[0], "liveio_target_up{pid=\"" + pid + "\"}"), 1);
    // Prometheus itself judged the scrapes healthy.
    EXPECT_EQ(prom_query((*ports)[0], "up{job=\"liveio\"}"), 1);

    prom.signal(SIGTERM);
    prom.wait();
    std::filesystem::remove_all(dir);
    EXPECT_EQ((serve.signal(SIGTERM), serve.wait()), 0) << serve.err();
    // serve attached, so it detached on exit.
    EXPECT_EQ(read_file("/proc/" + pid + "/maps").find("liveio-agent.so"), std::string::npos);
}

TEST(Serve, ClickHouseSinkStoresTheCountsOfAKnownWorkload) {
    if (!clickhouse::find_server_binary()) GTEST_SKIP() << "clickhouse-server is not installed";
    auto server = clickhouse::LocalServer::start({});
    ASSERT_TRUE(server) << server.error().message;
    Target target;
    ASSERT_TRUE(target.ready());
    const std::string url =
        "clickhouse://127.0.0.1:" + std::to_string(server->ports().http) + "/liveio.io";
    Child serve({LIVEIO_CLI_PATH, "serve", "--listen", "127.0.0.1:0", "--pid",
                 std::to_string(target.proc.pid()), "--sink", url, "--sink-interval", "300ms"});
    std::string why;
    const uint16_t port = start_serve(serve, &why);
    if (port == 0 && cannot_attach(why)) GTEST_SKIP() << "cannot observe here: " << why;
    ASSERT_NE(port, 0) << why;
    ASSERT_TRUE(target.batch());
    ASSERT_TRUE(target.batch());

    auto client = server->client();
    std::string sum;
    const bool stored = eventually([&] {
        auto r = client.query(
            "SELECT sum(calls) FROM liveio.io WHERE kind = 'syscall' AND name = 'pread64' AND pid "
            "= " +
            std::to_string(target.proc.pid()));
        sum = r ? *r : r.error().message;
        return sum == std::to_string(2 * kCalls) + "\n" || serve.exited();
    });
    ASSERT_TRUE(stored) << "sum(calls) = " << sum << "\n" << serve.err();
    auto bytes = client.query(
        "SELECT sum(bytes), min(interval_s) > 0, uniqExact(host) FROM liveio.io WHERE name = "
        "'pwrite64'");
    ASSERT_TRUE(bytes) << bytes.error().message;
    EXPECT_EQ(*bytes, std::to_string(2 * kCalls * 4096) + "\t1\t1\n");
    EXPECT_EQ((serve.signal(SIGTERM), serve.wait()), 0) << serve.err();
}

}  // namespace
}  // namespace liveio::observe
