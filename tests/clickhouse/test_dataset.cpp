// The sample data set and its query mix: the generator against values a real 18.16 server
// computed from the SQL formula, loading into a server and a 2-shard cluster, and every query
// of the mix answering exactly what the C++ side computed independently.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "clickhouse/dataset.h"
#include "clickhouse/server.h"

namespace liveio::clickhouse {
namespace {

namespace fs = std::filesystem;

TEST(Dataset, GeneratorMatchesTheFormulaAsClickHouseEvaluatesIt) {
    // Row 1000 as `SELECT * FROM hits WHERE WatchID = 1000` printed it on 18.16.
    const Hit h = make_hit(1000);
    EXPECT_EQ(h.watch_id, 1000u);
    EXPECT_EQ(h.counter_id, 0u);
    EXPECT_EQ(h.user_id, 797719u);
    EXPECT_EQ(h.event_time, kEventTimeBase + 1000);
    EXPECT_EQ(h.region_id, 223u);
    EXPECT_EQ(h.duration, 3463u);
    EXPECT_EQ(h.is_refresh, 1);
    EXPECT_EQ(h.url, "https://example.org/1000/item?id=1000");
    const Hit g = make_hit(123457);
    EXPECT_EQ(g.counter_id, 457u);
    EXPECT_EQ(g.is_refresh, 0);
    EXPECT_EQ(g.url, "https://example.org/3385/item?id=123457");
}

TEST(Dataset, MixHasEveryKindAndOnlyRowsTheShardHolds) {
    DatasetOptions o;
    o.rows = 100000;
    const auto local = query_mix(o, ShardSlice{1, 2}, false);
    const auto full = query_mix(o, ShardSlice{1, 2}, true);
    std::set<QueryKind> kinds;
    std::set<std::string> names;
    for (const auto& q : full) {
        kinds.insert(q.kind);
        EXPECT_TRUE(names.insert(q.name).second) << "duplicate query name " << q.name;
        EXPECT_FALSE(q.expected.empty()) << q.name;
        EXPECT_EQ(q.expected.back(), '\n') << q.name;
    }
    EXPECT_EQ(kinds.size(), 4u);
    for (const auto& q : local) {
        EXPECT_NE(q.kind, QueryKind::Distributed) << q.name;
        if (q.kind == QueryKind::PointLookup) {
            // The looked-up WatchID is odd: shard 1 of 2 holds it.
            const uint64_t id = std::stoull(q.expected.substr(0, q.expected.find('\t')));
            EXPECT_EQ(id % 2, 1u) << q.sql;
        }
    }
    EXPECT_GT(full.size(), local.size());
}

TEST(Dataset, LoadRejectsAShardOutsideTheCluster) {
    HttpClient client(HttpClientOptions{.port = 1});
    auto r = load(client, DatasetOptions{}, ShardSlice{2, 2});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EINVAL);
    EXPECT_NE(r.error().message.find("shard 2 of 2"), std::string::npos) << r.error().message;
}

class DatasetServerTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (auto b = find_server_binary(); !b) GTEST_SKIP() << b.error().message;
    }
};

std::string describe(const MixRun& run) {
    std::string out;
    for (const auto& q : run.queries)
        if (!q.matched) out += q.name + " returned:\n" + q.got.substr(0, 400) + "\n";
    return out;
}

TEST_F(DatasetServerTest, SingleServerLoadsOnePartWithColumnFilesAndAnswersTheMix) {
    ServerOptions so;
    so.profile_settings = kProfileSettings;
    auto server = LocalServer::start(so);
    ASSERT_TRUE(server) << server.error().message;
    auto client = server->client();
    DatasetOptions o;
    o.rows = 300000;
    auto report = load(client, o);
    ASSERT_TRUE(report) << report.error().message;
    EXPECT_EQ(report->rows, o.rows);
    EXPECT_EQ(report->parts, 1u);
    EXPECT_GT(report->bytes_on_disk, 1u << 20);

    // The part on disk has what the queries read: column data, marks, primary index.
    std::set<std::string> files;
    for (const auto& part :
         fs::directory_iterator(server->data_path() + "data/default/" + o.table)) {
        if (!part.is_directory() || part.path().filename() == "detached") continue;
        for (const auto& f : fs::directory_iterator(part.path())) files.insert(f.path().filename());
    }
    for (const char* f : {"URL.bin", "URL.mrk", "WatchID.bin", "CounterID.mrk", "primary.idx"})
        EXPECT_TRUE(files.count(f)) << f;

    const auto mix = query_mix(o, ShardSlice{}, false);
    auto run = run_mix(client, mix);
    ASSERT_TRUE(run) << run.error().message;
    EXPECT_EQ(run->mismatches, 0u) << describe(*run);
    EXPECT_EQ(run->queries.size(), mix.size());

    // After the caches are dropped the same answers come back from the files.
    ASSERT_TRUE(drop_caches(client, o));
    run = run_mix(client, mix);
    ASSERT_TRUE(run) << run.error().message;
    EXPECT_EQ(run->mismatches, 0u) << describe(*run);

    // A wrong expectation is reported, with what the server said.
    auto wrong = mix;
    wrong[0].expected = "0\n";
    run = run_mix(client, wrong);
    ASSERT_TRUE(run);
    EXPECT_EQ(run->mismatches, 1u);
    EXPECT_FALSE(run->queries[0].matched);
    EXPECT_EQ(run->queries[0].got, mix[0].expected);

    // A query the server rejects fails the run and names the query.
    auto broken = mix;
    broken[1].sql = "SELECT no_such_column FROM " + o.table;
    auto failed = run_mix(client, broken);
    ASSERT_FALSE(failed);
    EXPECT_NE(failed.error().message.find(broken[1].name), std::string::npos)
        << failed.error().message;
}

TEST_F(DatasetServerTest, ClusterAnswersLocalAndDistributedQueriesOnEveryShard) {
    ClusterOptions co;
    co.server.profile_settings = kProfileSettings;
    auto cluster = LocalCluster::start(co);
    ASSERT_TRUE(cluster) << cluster.error().message;
    DatasetOptions o;  // the full size the demo and the benchmark use
    auto report = load(*cluster, o);
    ASSERT_TRUE(report) << report.error().message;
    EXPECT_EQ(report->rows, o.rows);
    EXPECT_EQ(report->parts, cluster->size());
    std::printf("loaded %llu rows (%.1f MB) into %zu shards in %lld ms\n",
                static_cast<unsigned long long>(report->rows), report->bytes_on_disk / 1e6,
                cluster->size(), static_cast<long long>(report->elapsed.count()));
    for (size_t i = 0; i < cluster->size(); ++i) {
        auto client = cluster->shard(i).client();
        const auto mix = query_mix(o, ShardSlice{i, cluster->size()}, true);
        auto run = run_mix(client, mix);
        ASSERT_TRUE(run) << "shard " << i << ": " << run.error().message;
        EXPECT_EQ(run->mismatches, 0u) << "shard " << i << ":\n" << describe(*run);
        std::printf("shard %zu: %zu queries in %.0f ms\n", i, mix.size(),
                    run->elapsed.count() / 1e6);
    }
}

}  // namespace
}  // namespace liveio::clickhouse
