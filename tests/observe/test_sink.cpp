// The ClickHouse sink: URL parsing, the rows it writes, and a round trip through a real
// ClickHouse server (the Debian package, private test bed) read back with SELECT.
#include <gtest/gtest.h>

#include "clickhouse/server.h"
#include "observe/sink.h"

namespace liveio::observe {
namespace {

TEST(SinkUrl, ParsesHostPortDatabaseTable) {
    auto t = parse_sink_url("clickhouse://127.0.0.1:9123/metrics.io");
    ASSERT_TRUE(t) << t.error().message;
    EXPECT_EQ(t->host, "127.0.0.1");
    EXPECT_EQ(t->port, 9123);
    EXPECT_EQ(t->database, "metrics");
    EXPECT_EQ(t->table, "io");
    auto d = parse_sink_url("clickhouse://localhost/db.t");
    ASSERT_TRUE(d) << d.error().message;
    EXPECT_EQ(d->host, "127.0.0.1");
    EXPECT_EQ(d->port, 8123);
}

TEST(SinkUrl, ErrorsNameWhatIsWrong) {
    auto expect = [](const char* url, const char* fragment) {
        auto t = parse_sink_url(url);
        ASSERT_FALSE(t) << url;
        EXPECT_NE(t.error().message.find(fragment), std::string::npos) << t.error().message;
    };
    expect("http://127.0.0.1/db.t", "scheme");
    expect("clickhouse://127.0.0.1:8123", "no /db.table");
    expect("clickhouse://127.0.0.1:99999/db.t", "bad port");
    expect("clickhouse://127.0.0.1:x/db.t", "bad port");
    expect("clickhouse://example.com/db.t", "numeric IPv4");
    expect("clickhouse://127.0.0.1/table", "db.table");
    expect("clickhouse://127.0.0.1/db.t;DROP", "bad table");
    expect("clickhouse://127.0.0.1/1db.t", "bad database");
}

Snapshot interval() {
    Snapshot s;
    Counters pread;
    pread.calls = 300;
    pread.bytes = 300 * 4096;
    pread.hist[10] = 300;
    pread.latency_ns = 300 * 1500;
    Counters fsync;
    fsync.calls = 2;
    fsync.errors = 1;
    fsync.hist[20] = 2;
    fsync.latency_ns = 2 * 1'500'000;
    s.syscalls = {{17, "pread64", pread}, {74, "fsync", fsync}};
    s.classes = {{LIVEIO_CLASS_CH_BIN, LIVEIO_IO_READ, pread}};
    return s;
}

TEST(SinkRows, OneRowPerSyscallAndClassInColumnOrder) {
    const Snapshot d = interval();
    const std::string tsv = sink_rows_tsv({1700000000, "host\tA", 42, "clickhouse-serv", 10.0, &d});
    const auto rows = clickhouse::parse_tsv(tsv);
    ASSERT_EQ(rows.size(), 3u) << tsv;
    ASSERT_EQ(rows[0].size(), 16u);
    EXPECT_EQ(rows[0][0], "1700000000");
    EXPECT_EQ(rows[0][1], "host\tA");  // escaped on the way, back after parsing
    EXPECT_EQ(rows[0][4], "syscall");
    EXPECT_EQ(rows[0][5], "pread64");
    EXPECT_EQ(rows[0][8], "300");
    EXPECT_EQ(rows[0][14].substr(0, 4), "2037");  // p99: rank 297 of 300 in [1024, 2048)
    EXPECT_EQ(rows[2][4], "class");
    EXPECT_EQ(rows[2][5], ".bin");
    EXPECT_EQ(rows[2][6], "read");
    EXPECT_EQ(sink_rows_tsv({1, "h", 1, "c", 1.0, nullptr}), "");
}

TEST(ClickHouseSink, CreatesTheTableAndInsertsRowsThatSelectBack) {
    if (!clickhouse::find_server_binary()) GTEST_SKIP() << "clickhouse-server is not installed";
    auto server = clickhouse::LocalServer::start({});
    ASSERT_TRUE(server) << server.error().message;
    auto target = parse_sink_url("clickhouse://127.0.0.1:" + std::to_string(server->ports().http) +
                                 "/liveio.io_metrics");
    ASSERT_TRUE(target) << target.error().message;
    auto sink = ClickHouseSink::open(*target);
    ASSERT_TRUE(sink) << sink.error().message;
    // Opening again finds the table there (IF NOT EXISTS), as a restarted serve does.
    ASSERT_TRUE(ClickHouseSink::open(*target));

    const Snapshot d = interval();
    auto written = sink->write({1700000000, "testhost", 4242, "target", 10.0, &d});
    ASSERT_TRUE(written) << written.error().message;
    EXPECT_EQ(*written, 3u);
    const Snapshot empty;
    auto none = sink->write({1700000010, "testhost", 4242, "target", 10.0, &empty});
    ASSERT_TRUE(none) << none.error().message;
    EXPECT_EQ(none.value(), 0u);

    auto client = server->client();
    auto rows = client.query_rows(
        "SELECT toUnixTimestamp(time), host, pid, kind, name, direction, calls, errors, bytes, "
        "length(hist), "
        "hist[11], round(p50_ns) FROM liveio.io_metrics ORDER BY kind, name");
    ASSERT_TRUE(rows) << rows.error().message;
    ASSERT_EQ(rows->size(), 3u);
    const auto& cls = (*rows)[0];
    EXPECT_EQ(cls[3], "class");
    EXPECT_EQ(cls[4], ".bin");
    EXPECT_EQ(cls[5], "read");
    const auto& fsync = (*rows)[1];
    EXPECT_EQ(fsync[4], "fsync");
    EXPECT_EQ(fsync[6], "2");
    EXPECT_EQ(fsync[7], "1");
    const auto& pread = (*rows)[2];
    EXPECT_EQ(pread[0], "1700000000");
    EXPECT_EQ(pread[1], "testhost");
    EXPECT_EQ(pread[2], "4242");
    EXPECT_EQ(pread[4], "pread64");
    EXPECT_EQ(pread[6], "300");
    EXPECT_EQ(pread[8], std::to_string(300 * 4096));
    EXPECT_EQ(pread[9], std::to_string(LIVEIO_HIST_SLOTS));
    EXPECT_EQ(pread[10], "300");  // ClickHouse arrays are 1-based: slot 10
    EXPECT_EQ(pread[11], "1536");
    auto engine = client.query(
        "SELECT engine FROM system.tables WHERE database = 'liveio' AND name = 'io_metrics'");
    ASSERT_TRUE(engine);
    EXPECT_EQ(*engine, "MergeTree\n");
}

TEST(ClickHouseSink, UnreachableServerIsAClearError) {
    auto ports = clickhouse::free_ports(1);
    ASSERT_TRUE(ports);
    auto target = parse_sink_url("clickhouse://127.0.0.1:" + std::to_string((*ports)[0]) + "/db.t");
    ASSERT_TRUE(target);
    auto sink = ClickHouseSink::open(*target);
    ASSERT_FALSE(sink);
    EXPECT_NE(sink.error().message.find("sink clickhouse://127.0.0.1:"), std::string::npos)
        << sink.error().message;
}

}  // namespace
}  // namespace liveio::observe
