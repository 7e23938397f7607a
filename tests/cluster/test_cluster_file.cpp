// The cluster file, rates, tokens: what `liveio cluster` reads and checks before it touches
// any machine.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "cluster/cluster_file.h"
#include "cluster/control.h"
#include "cluster/harness.h"

namespace liveio::cluster {
namespace {

std::string temp_dir() {
    char tmpl[] = "/tmp/liveio-test-cluster-file-XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    return tmpl;
}

TEST(ClusterFile, RoundTripsNodesAndGroupsReplicasIntoShards) {
    ClusterFile f;
    f.name = "c1";
    for (size_t i = 0; i < 4; ++i) {
        Node n;
        n.name = "n" + std::to_string(i);
        n.shard = i / 2;
        n.replica = i % 2;
        n.host = "10.231.0." + std::to_string(i + 2);
        n.data_dir = "/d/" + n.name;
        if (i == 1) n.netns = "liveio-c1-n1";
        if (i == 2) n.control = {"/s.sock", 9464, "/tok"};
        f.nodes.push_back(n);
    }
    auto back = parse_cluster_file(format_cluster_file(f));
    ASSERT_TRUE(back) << back.error().message;
    ASSERT_EQ(back->nodes.size(), 4u);
    EXPECT_EQ(back->shards(), 2u);
    EXPECT_EQ(back->nodes[1].netns, "liveio-c1-n1");
    EXPECT_EQ(back->nodes[2].control.port, 9464);
    EXPECT_EQ(back->nodes[2].control.token_file, "/tok");
    EXPECT_EQ(back->nodes[3].host, "10.231.0.5");
    const std::string xml = remote_servers_xml(*back);
    EXPECT_NE(xml.find("<c1>"), std::string::npos);
    EXPECT_NE(xml.find("<shard><replica><host>10.231.0.2</host><port>9000</port></replica>"
                       "<replica><host>10.231.0.3</host><port>9000</port></replica></shard>"),
              std::string::npos)
        << xml;
}

TEST(ClusterFile, RejectsMissingShardsAndBadNames) {
    EXPECT_FALSE(parse_cluster_file(
        R"({"name":"c","nodes":[{"name":"a","shard":1,"host":"h"}]})"));  // shard 0 empty
    EXPECT_FALSE(parse_cluster_file(R"({"name":"c","nodes":[]})"));
    EXPECT_FALSE(parse_cluster_file(R"({"name":"c<x>","nodes":[{"name":"a","host":"h"}]})"));
    EXPECT_FALSE(parse_cluster_file(R"({"name":"c","nodes":[{"name":"a","host":"h<"}]})"));
    EXPECT_FALSE(parse_cluster_file("not json"));
    EXPECT_TRUE(parse_cluster_file(R"({"name":"c","nodes":[{"name":"a","host":"192.0.2.9"}]})"));
}

TEST(ClusterRate, ParsesTcUnits) {
    EXPECT_EQ(parse_rate("100mbit").value(), 100'000'000u);
    EXPECT_EQ(parse_rate("1gbit").value(), 1'000'000'000u);
    EXPECT_EQ(parse_rate("12mbps").value(), 96'000'000u);
    EXPECT_EQ(parse_rate("800kbit").value(), 800'000u);
    EXPECT_FALSE(parse_rate("fast"));
    EXPECT_FALSE(parse_rate("100"));
    EXPECT_FALSE(parse_rate("1bit"));
}

TEST(ControlToken, OwnerOnlyFileIsRequired) {
    const std::string dir = temp_dir();
    const std::string path = dir + "/token";
    auto made = ensure_token_file(path);
    ASSERT_TRUE(made) << made.error().message;
    EXPECT_GE(made->size(), 32u);
    auto again = ensure_token_file(path);  // exists: read, not replaced
    ASSERT_TRUE(again);
    EXPECT_EQ(*again, *made);
    ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
    auto refused = read_token_file(path);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, EPERM);
    EXPECT_NE(refused.error().message.find("0644"), std::string::npos) << refused.error().message;
    ASSERT_EQ(::chmod(path.c_str(), 0400), 0);
    EXPECT_TRUE(read_token_file(path));
    ::unlink(path.c_str());
    ::rmdir(dir.c_str());
}

TEST(ControlToken, BearerMustMatchExactly) {
    EXPECT_TRUE(bearer_matches("Bearer abcdefabcdefabcdef", "abcdefabcdefabcdef"));
    EXPECT_FALSE(bearer_matches("Bearer abcdefabcdefabcdeX", "abcdefabcdefabcdef"));
    EXPECT_FALSE(bearer_matches("abcdefabcdefabcdef", "abcdefabcdefabcdef"));
    EXPECT_FALSE(bearer_matches("", "abcdefabcdefabcdef"));
    EXPECT_FALSE(bearer_matches("Bearer ", ""));
}

}  // namespace
}  // namespace liveio::cluster
