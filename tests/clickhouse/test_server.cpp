// LocalServer and HttpClient against a real clickhouse-server (Debian 18.16) started by the
// test on free ports with a private directory.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "clickhouse/http_client.h"
#include "clickhouse/server.h"

namespace liveio::clickhouse {
namespace {

namespace fs = std::filesystem;

bool process_alive(pid_t pid) { return ::kill(pid, 0) == 0; }

class ServerTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (!find_server_binary()) return;
        auto s = LocalServer::start({});
        if (!s) {
            start_error_ = new std::string(s.error().message);
            return;
        }
        server_ = new LocalServer(std::move(*s));
    }
    static void TearDownTestSuite() {
        delete server_;
        server_ = nullptr;
        delete start_error_;
        start_error_ = nullptr;
    }
    void SetUp() override {
        if (auto b = find_server_binary(); !b) GTEST_SKIP() << b.error().message;
        ASSERT_NE(server_, nullptr) << (start_error_ ? *start_error_ : "no server");
    }
    static inline LocalServer* server_ = nullptr;
    static inline std::string* start_error_ = nullptr;
};

TEST_F(ServerTest, AnswersPingAndVersionOnPrivatePorts) {
    auto c = server_->client();
    ASSERT_TRUE(c.ping()) << c.ping().error().message;
    auto v = c.query("SELECT version()");
    ASSERT_TRUE(v) << v.error().message;
    EXPECT_EQ(v->rfind("18.", 0), 0u) << *v;
    EXPECT_NE(server_->ports().http, 8123);
    EXPECT_NE(server_->ports().tcp, 9000);
    // The server's data lives in our directory, not /var/lib/clickhouse.
    ASSERT_TRUE(c.execute("CREATE DATABASE IF NOT EXISTS private_probe"));
    EXPECT_TRUE(fs::exists(server_->data_path() + "metadata/private_probe.sql"));
    ASSERT_TRUE(c.execute("DROP DATABASE private_probe"));
    EXPECT_TRUE(fs::exists(server_->log_path()));
}

TEST_F(ServerTest, QueryErrorCarriesClickHouseMessageAndCode) {
    auto c = server_->client();
    auto r = c.query("SELECT no_such_column FROM system.one");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EREMOTEIO);
    EXPECT_NE(r.error().message.find("no_such_column"), std::string::npos) << r.error().message;
    EXPECT_EQ(clickhouse_error_code(r.error().message), 47) << r.error().message;

    auto syntax = c.query("SELEKT 1");
    ASSERT_FALSE(syntax);
    EXPECT_EQ(clickhouse_error_code(syntax.error().message), 62) << syntax.error().message;

    // An exception thrown after rows were produced is still an error, not a truncated result.
    auto late = c.query("SELECT throwIf(number = 300000) FROM system.numbers LIMIT 400000");
    ASSERT_FALSE(late);
    EXPECT_EQ(clickhouse_error_code(late.error().message), 395) << late.error().message;

    // The connection stays usable after errors.
    auto ok = c.query("SELECT 1");
    ASSERT_TRUE(ok) << ok.error().message;
    EXPECT_EQ(*ok, "1\n");
}

TEST_F(ServerTest, LargeResultArrivesCompleteOverChunkedReply) {
    auto c = server_->client();
    auto r = c.query_rows("SELECT number, toString(number * 7) FROM system.numbers LIMIT 200000");
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->size(), 200000u);
    for (size_t i = 0; i < r->size(); i += 9973) {
        ASSERT_EQ((*r)[i].size(), 2u);
        EXPECT_EQ((*r)[i][0], std::to_string(i));
        EXPECT_EQ((*r)[i][1], std::to_string(i * 7));
    }
    EXPECT_EQ(r->back()[0], "199999");
}

TEST_F(ServerTest, InsertTabSeparatedAndJSONEachRowRoundTrip) {
    auto c = server_->client();
    ASSERT_TRUE(c.execute("DROP TABLE IF EXISTS rt"));
    auto created =
        c.execute("CREATE TABLE rt (id UInt32, name String, score Float64) ENGINE = Memory");
    ASSERT_TRUE(created) << created.error().message;

    std::string tricky = "tab\there, newline\nthere, back\\slash";
    std::string tsv = "1\t" + tsv_escape(tricky) + "\t0.5\n2\tplain\t-3\n";
    auto ins = c.insert("rt", InsertFormat::TabSeparated, tsv);
    ASSERT_TRUE(ins) << ins.error().message;
    auto ins2 = c.insert("rt", InsertFormat::JSONEachRow,
                         "{\"id\": 3, \"name\": \"json \\\"quoted\\\"\", \"score\": "
                         "1.25}\n{\"id\": 4, \"name\": \"x\", \"score\": 2}\n");
    ASSERT_TRUE(ins2) << ins2.error().message;
    auto ins3 = c.insert("rt", InsertFormat::TabSeparated, "5\tcols\n", {"id", "name"});
    ASSERT_TRUE(ins3) << ins3.error().message;

    auto rows = c.query_rows("SELECT id, name, score FROM rt ORDER BY id");
    ASSERT_TRUE(rows) << rows.error().message;
    ASSERT_EQ(rows->size(), 5u);
    EXPECT_EQ((*rows)[0], (std::vector<std::string>{"1", tricky, "0.5"}));
    EXPECT_EQ((*rows)[1], (std::vector<std::string>{"2", "plain", "-3"}));
    EXPECT_EQ((*rows)[2], (std::vector<std::string>{"3", "json \"quoted\"", "1.25"}));
    EXPECT_EQ((*rows)[3], (std::vector<std::string>{"4", "x", "2"}));
    EXPECT_EQ((*rows)[4], (std::vector<std::string>{"5", "cols", "0"}));

    // Malformed input is refused with the server's message; nothing is inserted.
    auto bad = c.insert("rt", InsertFormat::TabSeparated, "notanumber\tx\t1\n");
    ASSERT_FALSE(bad);
    EXPECT_NE(clickhouse_error_code(bad.error().message), 0) << bad.error().message;
    auto count = c.query("SELECT count() FROM rt");
    ASSERT_TRUE(count) << count.error().message;
    EXPECT_EQ(*count, "5\n");
    EXPECT_TRUE(c.execute("DROP TABLE rt"));
}

// A server that answers each connection's first request and then closes it without saying
// so, as ClickHouse does when keep_alive_timeout expires between two requests.
class OneShotHttpServer {
public:
    OneShotHttpServer() {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
            ::listen(fd_, 8) == 0 &&
            ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
            port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~OneShotHttpServer() {
        ::shutdown(fd_, SHUT_RDWR);
        thread_.join();
        ::close(fd_);
    }
    uint16_t port() const { return port_; }
    int accepted() const { return accepted_.load(); }

private:
    void serve() {
        for (;;) {
            int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0) return;
            accepted_++;
            std::string req;
            char buf[4096];
            while (req.find("\r\n\r\n") == std::string::npos) {
                ssize_t n = ::recv(c, buf, sizeof buf, 0);
                if (n <= 0) break;
                req.append(buf, static_cast<size_t>(n));
            }
            std::string reply =
                "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: Keep-Alive\r\n\r\nOk.\n";
            ::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
            // Wait until the client's next request arrives, then drop it unanswered.
            ::recv(c, buf, sizeof buf, 0);
            ::close(c);
        }
    }
    int fd_ = -1;
    uint16_t port_ = 0;
    std::atomic<int> accepted_{0};
    std::thread thread_;
};

TEST(HttpClientTest, RetriesOnceWhenKeptAliveConnectionWasClosed) {
    OneShotHttpServer fake;
    ASSERT_NE(fake.port(), 0);
    HttpClient c(
        HttpClientOptions{.port = fake.port(), .timeout = std::chrono::milliseconds(10000)});
    for (int i = 0; i < 3; ++i) {
        auto r = c.ping();
        ASSERT_TRUE(r) << "ping " << i << ": " << r.error().message;
    }
    EXPECT_EQ(fake.accepted(), 3) << "each ping after the first needed a fresh connection";
}

TEST_F(ServerTest, ClientReportsRefusedConnectionAndBadHost) {
    auto ports = free_ports(1);
    ASSERT_TRUE(ports) << ports.error().message;
    HttpClient nobody(
        HttpClientOptions{.port = (*ports)[0], .timeout = std::chrono::milliseconds(5000)});
    auto r = nobody.query("SELECT 1");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ECONNREFUSED) << r.error().message;
    EXPECT_NE(r.error().message.find(std::to_string((*ports)[0])), std::string::npos);

    HttpClient bad_host(HttpClientOptions{.host = "not-an-address"});
    auto b = bad_host.ping();
    ASSERT_FALSE(b);
    EXPECT_EQ(b.error().code, EINVAL);
}

TEST(TsvTest, ParseUndoesEscapesAndKeepsEmptyFields) {
    auto rows = parse_tsv("a\\tb\t\tc\\\\d\n\n1\\n2\n");
    ASSERT_EQ(rows.size(), 3u);
    EXPECT_EQ(rows[0], (std::vector<std::string>{"a\tb", "", "c\\d"}));
    EXPECT_EQ(rows[1], (std::vector<std::string>{""}));
    EXPECT_EQ(rows[2], (std::vector<std::string>{"1\n2"}));
    EXPECT_TRUE(parse_tsv("").empty());
    EXPECT_EQ(parse_tsv("x"), (Rows{{"x"}}));
    std::string nasty = std::string("a\tb\nc\\d\re") + '\0';
    EXPECT_EQ(parse_tsv(tsv_escape(nasty) + "\n"), (Rows{{nasty}}));
}

TEST(TsvTest, UrlEncodeAndErrorCode) {
    EXPECT_EQ(url_encode("SELECT 1+1 FORMAT TSV"), "SELECT%201%2B1%20FORMAT%20TSV");
    EXPECT_EQ(url_encode("a-b_c.d~"), "a-b_c.d~");
    EXPECT_EQ(clickhouse_error_code("Code: 62, e.displayText() = DB::Exception: Syntax error"), 62);
    EXPECT_EQ(clickhouse_error_code("no code here"), 0);
}

TEST(LocalServerTest, StartStopRemovesPrivateDirectoryAndLeavesNothingRunning) {
    if (auto b = find_server_binary(); !b) GTEST_SKIP() << b.error().message;
    auto s = LocalServer::start({});
    ASSERT_TRUE(s) << s.error().message;
    pid_t pid = s->pid();
    std::string dir = s->dir();
    EXPECT_TRUE(process_alive(pid));
    EXPECT_TRUE(fs::exists(dir + "/config.xml"));
    EXPECT_GT(s->startup_time().count(), 0);
    auto stopped = s->stop();
    EXPECT_TRUE(stopped) << stopped.error().message;
    EXPECT_FALSE(process_alive(pid));
    EXPECT_FALSE(fs::exists(dir));
    EXPECT_TRUE(s->stop()) << "stop is idempotent";
}

TEST(LocalServerTest, KeepsDataAcrossRestartInGivenDirectory) {
    if (auto b = find_server_binary(); !b) GTEST_SKIP() << b.error().message;
    auto root = fs::temp_directory_path() / ("liveio-ch-test-" + std::to_string(::getpid()));
    fs::remove_all(root);
    {
        auto s = LocalServer::start({.dir = root.string()});
        ASSERT_TRUE(s) << s.error().message;
        auto c = s->client();
        ASSERT_TRUE(c.execute("CREATE TABLE kept (x UInt64) ENGINE = MergeTree ORDER BY x"));
        ASSERT_TRUE(c.execute("INSERT INTO kept SELECT number FROM system.numbers LIMIT 1000"));
        // keep_dir is false but the directory did not exist: removed by stop. Use keep_dir.
        ASSERT_TRUE(s->stop());
        EXPECT_FALSE(fs::exists(root));
    }
    {
        auto s = LocalServer::start({.dir = root.string(), .keep_dir = true});
        ASSERT_TRUE(s) << s.error().message;
        auto c = s->client();
        ASSERT_TRUE(c.execute("CREATE TABLE kept (x UInt64) ENGINE = MergeTree ORDER BY x"));
        ASSERT_TRUE(c.execute("INSERT INTO kept SELECT number FROM system.numbers LIMIT 1000"));
        ASSERT_TRUE(s->stop());
    }
    ASSERT_TRUE(fs::exists(root / "data"));
    {
        // The directory exists now: it is reused and never removed.
        auto s = LocalServer::start({.dir = root.string()});
        ASSERT_TRUE(s) << s.error().message;
        auto sum = s->client().query("SELECT count(), sum(x) FROM kept");
        ASSERT_TRUE(sum) << sum.error().message;
        EXPECT_EQ(*sum, "1000\t499500\n");
        ASSERT_TRUE(s->stop());
    }
    EXPECT_TRUE(fs::exists(root / "data"));
    fs::remove_all(root);
}

TEST(LocalServerTest, BadBinaryAndCrashingServerGiveClearErrors) {
    auto missing = LocalServer::start({.binary = "/nonexistent/clickhouse-server"});
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().message.find("/nonexistent/clickhouse-server"), std::string::npos);

    // /bin/false "starts" and exits at once: the error says so and shows the log tail.
    auto exits = LocalServer::start({.binary = "/bin/false"});
    ASSERT_FALSE(exits);
    EXPECT_NE(exits.error().message.find("exited with status 1"), std::string::npos)
        << exits.error().message;

    if (auto b = find_server_binary(); !b) GTEST_SKIP() << b.error().message;
    // A config the server rejects (a port it cannot bind twice): the server exits and its own
    // complaint is in the error.
    auto ports = free_ports(1);
    ASSERT_TRUE(ports);
    uint16_t p = (*ports)[0];
    auto clash =
        LocalServer::start({.ports = {p, p, p}, .start_timeout = std::chrono::milliseconds(30000)});
    ASSERT_FALSE(clash);
    EXPECT_NE(clash.error().message.find("log tail"), std::string::npos) << clash.error().message;
}

TEST(LocalServerTest, StartTimeoutStopsTheProcess) {
    // /bin/sleep never answers /ping: start gives up after the timeout, and kills it.
    auto sleeper = fs::temp_directory_path() / ("liveio-ch-sleeper-" + std::to_string(::getpid()));
    {
        std::ofstream f(sleeper);
        f << "#!/bin/sh\nexec sleep 600\n";
    }
    fs::permissions(sleeper, fs::perms::owner_all);
    auto s = LocalServer::start({.binary = sleeper.string(),
                                 .start_timeout = std::chrono::milliseconds(500),
                                 .stop_timeout = std::chrono::milliseconds(2000)});
    fs::remove(sleeper);
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().code, ETIMEDOUT) << s.error().message;
    EXPECT_NE(s.error().message.find("/ping"), std::string::npos) << s.error().message;
}

}  // namespace
}  // namespace liveio::clickhouse
