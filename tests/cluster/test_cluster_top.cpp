// The pieces of `liveio cluster top` and the socket statistics that need no cluster: the
// /proc/net/tcp parser, the /control/io wire form, naming a socket's peer after the cluster's
// nodes (exact on loopback ports too), and the interval view computed from two samplings.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include <fmt/format.h>

#include "cluster/cluster_file.h"
#include "cluster/top.h"
#include "observe/net_stats.h"
#include "observe/prometheus.h"
#include "observe/sink.h"

namespace liveio::cluster {
namespace {

using observe::SocketSample;
using observe::TcpConnection;

TEST(ProcNetTcp, ParsesIpv4AndMappedIpv6ConnectionsByInode) {
    const std::string v4 =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode\n"
        "   0: 0100007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        "
        "0 1254 1 0 100 0 0 10 0\n"
        "   1: 0200E70A:A1B2 0300E70A:2328 01 00000000:00000000 00:00000000 00000000     0        "
        "0 98765 1 0 20 4 30 10 -1\n"
        "   2: 0200E70A:A1B3 0300E70A:2328 06 00000000:00000000 03:00000000 00000000     0        "
        "0 0 3 0\n";
    auto rows = observe::parse_proc_net_tcp(v4);
    ASSERT_TRUE(rows) << rows.error().message;
    ASSERT_EQ(rows->size(), 2u);  // the TIME_WAIT row has no inode
    EXPECT_EQ(rows->at(1254).local(), "127.0.0.1:9000");
    EXPECT_EQ(rows->at(98765).local(), "10.231.0.2:41394");
    EXPECT_EQ(rows->at(98765).remote(), "10.231.0.3:9000");

    const std::string v6 =
        "  sl  local_address                         remote_address                        st "
        "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C350 01 "
        "00000000:00000000 00:00000000 00000000  0 0 4242 1 0\n"
        "   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C351 01 "
        "00000000:00000000 00:00000000 00000000  0 0 4343 1 0\n";
    rows = observe::parse_proc_net_tcp(v6);
    ASSERT_TRUE(rows) << rows.error().message;
    EXPECT_EQ(rows->at(4242).local(), "127.0.0.1:8080");
    EXPECT_EQ(rows->at(4242).remote(), "127.0.0.1:50000");
    EXPECT_EQ(rows->at(4343).local(), "[::1]:8080");

    EXPECT_FALSE(
        observe::parse_proc_net_tcp("header\n 0: XYZ:0000 00000000:0000 0A 0:0 0:0 0 0 0 77 1\n"));
}

TEST(ProcNetTcp, OwnSocketIsFoundByTheInodeOfItsFileId) {
    // A listening socket of this process: its file_id as the agent computes it maps back to
    // the inode /proc/self/net/tcp lists.
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(::listen(fd, 1), 0);
    socklen_t len = sizeof a;
    ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
    struct stat st {};
    ASSERT_EQ(::fstat(fd, &st), 0);
    const uint64_t file_id =
        (static_cast<uint64_t>(st.st_dev) << 32) ^ static_cast<uint64_t>(st.st_ino);
    auto table = observe::tcp_connections(::getpid());
    ASSERT_TRUE(table) << table.error().message;
    auto it = table->find(observe::socket_inode(file_id));
    ASSERT_NE(it, table->end());
    EXPECT_EQ(it->second.local(), fmt::format("127.0.0.1:{}", ntohs(a.sin_port)));
    ::close(fd);
}

SocketSample sock(uint64_t id, std::string la, uint16_t lp, std::string ra, uint16_t rp,
                  uint64_t recv_bytes, uint64_t send_bytes) {
    SocketSample s;
    s.file_id = id;
    s.connection = {std::move(la), lp, std::move(ra), rp};
    auto& r = s.counters.dir[LIVEIO_IO_READ];
    r.calls = recv_bytes ? 2 : 0;
    r.bytes = recv_bytes;
    r.latency_ns = 2000;
    r.hist[10] = r.calls;
    auto& w = s.counters.dir[LIVEIO_IO_WRITE];
    w.calls = send_bytes ? 1 : 0;
    w.bytes = send_bytes;
    w.latency_ns = 1000;
    w.hist[9] = w.calls;
    s.counters.sizes[LIVEIO_IO_READ][12] = r.calls;
    s.counters.sizes[LIVEIO_IO_WRITE][8] = w.calls;
    return s;
}

ClusterFile loopback_cluster(uint16_t nodes = 2) {
    ClusterFile f;
    f.name = "t";
    for (uint16_t i = 0; i < nodes; ++i) {
        Node n;
        n.name = fmt::format("n{}", i);
        n.shard = i;
        n.host = "127.0.0.1";
        n.http_port = static_cast<uint16_t>(18123 + i);
        n.tcp_port = static_cast<uint16_t>(19000 + i);
        n.interserver_port = static_cast<uint16_t>(19009 + i);
        f.nodes.push_back(n);
    }
    return f;
}

TEST(ClusterTop, SocketWireFormRoundTrips) {
    const SocketSample s = sock(77, "10.231.0.2", 41000, "10.231.0.3", 9000, 5000, 300);
    const SocketSample back = observe::socket_from_json(observe::to_json(s));
    EXPECT_EQ(back.file_id, 77u);
    EXPECT_EQ(back.connection.remote(), "10.231.0.3:9000");
    EXPECT_EQ(back.connection.local(), "10.231.0.2:41000");
    EXPECT_EQ(back.counters.recv().bytes, 5000u);
    EXPECT_EQ(back.counters.send().hist[9], 1u);
    EXPECT_EQ(back.counters.sizes[LIVEIO_IO_READ][12], 2u);
}

TEST(ClusterTop, PeersAreNamedByTheOtherSideOfTheConnectionEvenOnLoopbackPorts) {
    const ClusterFile f = loopback_cluster();
    std::vector<NodeIoSample> now(2);
    now[0].ok = now[1].ok = true;
    // n0 connected to n1's native port from 127.0.0.1:50000; n1 holds the other end.
    now[0].sockets = {sock(1, "127.0.0.1", 50000, "127.0.0.1", 19001, 9000, 100)};
    now[1].sockets = {
        sock(2, "127.0.0.1", 19001, "127.0.0.1", 50000, 100, 9000),
        sock(3, "127.0.0.1", 18124, "127.0.0.1", 60000, 50, 20)};  // a client outside the cluster
    const ConnectionIndex index(f, {&now});
    EXPECT_EQ(peer_name(f, index, 0, now[0].sockets[0].connection), "n1");
    EXPECT_EQ(peer_name(f, index, 1, now[1].sockets[0].connection), "n0");
    EXPECT_EQ(peer_name(f, index, 1, now[1].sockets[1].connection), "127.0.0.1");
    EXPECT_EQ(peer_name(f, index, 0, TcpConnection{}), "");
    EXPECT_EQ(peer_name(f, index, 1, TcpConnection{"0.0.0.0", 19001, "0.0.0.0", 0}), "(listening)");

    ClusterFile ns;
    ns.nodes = {Node{.name = "a", .host = "10.231.0.2"}, Node{.name = "b", .host = "10.231.0.3"}};
    const ConnectionIndex none(ns, {});
    // An address of the cluster, on a port none of its sockets shows: the node of that address.
    EXPECT_EQ(peer_name(ns, none, 0, TcpConnection{"10.231.0.2", 9000, "10.231.0.3", 45000}), "b");
    EXPECT_EQ(peer_name(ns, none, 0, TcpConnection{"10.231.0.2", 9000, "10.231.0.9", 45000}),
              "10.231.0.9");
}

// On a shared loopback one local port is not one connection: Linux gives the same ephemeral
// port to connections towards different destinations, and a closed socket keeps its endpoints
// in the statistics after the port went to another connection. Only the connection's both
// endpoints name the node at its other end.
TEST(ClusterTop, APortSharedByConnectionsToOtherDestinationsDoesNotNameThePeer) {
    const ClusterFile f = loopback_cluster(3);
    std::vector<NodeIoSample> now(3);
    for (auto& s : now) s.ok = true;
    // n2 initiated a query to n1 from port 50000; n0 used port 50000 too, towards n2's HTTP
    // port (another destination), and holds a closed socket that once had it towards n1's HTTP.
    now[2].sockets = {sock(1, "127.0.0.1", 50000, "127.0.0.1", 19001, 900, 90)};
    now[1].sockets = {sock(2, "127.0.0.1", 19001, "127.0.0.1", 50000, 90, 900)};
    now[0].sockets = {sock(3, "127.0.0.1", 50000, "127.0.0.1", 18125, 10, 10),
                      sock(4, "127.0.0.1", 50000, "127.0.0.1", 18124, 10, 10)};
    const ConnectionIndex index(f, {&now});
    EXPECT_EQ(peer_name(f, index, 1, now[1].sockets[0].connection), "n2");
    EXPECT_EQ(peer_name(f, index, 2, now[2].sockets[0].connection), "n1");
    // A client outside the cluster on a port some node also uses: not taken for that node.
    EXPECT_EQ(
        peer_name(f, index, 1,
                  TcpConnection{"127.0.0.1", f.nodes[1].interserver_port, "127.0.0.1", 50000}),
        "127.0.0.1");

    // In namespaces every node has its own loopback: the same endpoints in two namespaces are
    // two unrelated connections.
    ClusterFile ns;
    ns.nodes = {Node{.name = "a", .host = "10.231.0.2", .netns = "x-n0"},
                Node{.name = "b", .host = "10.231.0.3", .netns = "x-n1"}};
    std::vector<NodeIoSample> in_ns(2);
    in_ns[1].sockets = {sock(5, "127.0.0.1", 41000, "127.0.0.1", 8123, 1, 1)};
    in_ns[0].sockets = {sock(6, "127.0.0.1", 8123, "127.0.0.1", 41000, 1, 1),
                        sock(7, "10.231.0.2", 45000, "10.231.0.3", 9000, 1, 1)};
    in_ns[1].sockets.push_back(sock(8, "10.231.0.3", 9000, "10.231.0.2", 45000, 1, 1));
    const ConnectionIndex scoped(ns, {&in_ns});
    EXPECT_EQ(peer_name(ns, scoped, 0, in_ns[0].sockets[0].connection), "127.0.0.1");
    EXPECT_EQ(peer_name(ns, scoped, 1, in_ns[1].sockets[1].connection), "a");
    EXPECT_EQ(peer_name(ns, scoped, 0, in_ns[0].sockets[1].connection), "b");
}

// The nodes are sampled in parallel, not at one instant: a connection made between the
// samplings of its two ends shows only at the accepting end, whose remote 127.0.0.1:port names
// no node on a shared loopback. The nodes that could hold the other end are sampled again,
// and that sampling names it within the same interval.
TEST(ClusterTop, AConnectionMadeWhileTheNodesWereSampledIsNamedFromASecondSampling) {
    const ClusterFile f = loopback_cluster(3);
    std::vector<NodeIoSample> before(3), now(3), later(3);
    for (auto* v : {&before, &now}) {
        for (auto& s : *v) s.ok = true;
    }
    // n1 accepted n0's connection after n0 had been sampled; a client (not a node) queries
    // n1 over HTTP; n2 has an old connection from n0 without traffic in the interval.
    now[1].sockets = {sock(1, "127.0.0.1", 19001, "127.0.0.1", 50000, 100, 9000),
                      sock(2, "127.0.0.1", 18124, "127.0.0.1", 50001, 10, 10),
                      sock(3, "127.0.0.1", 19001, "127.0.0.1", 50002, 0, 0)};
    now[2].sockets = {sock(4, "127.0.0.1", 19002, "127.0.0.1", 50003, 10, 10)};
    before[2].sockets = now[2].sockets;
    EXPECT_EQ(nodes_to_sample_again(f, before, now), (std::vector<size_t>{0, 2}));
    EXPECT_EQ(compute_top(f, before, now).peers.at(1).peer, "127.0.0.1");  // unnamed without it
    later[0].ok = true;
    later[0].sockets = {sock(5, "127.0.0.1", 50000, "127.0.0.1", 19001, 9000, 100)};
    const TopView v = top_interval(f, before, now, [&](const std::vector<size_t>& nodes) {
        EXPECT_EQ(nodes, (std::vector<size_t>{0, 2}));
        return later;
    });
    ASSERT_EQ(v.peers.size(), 2u) << render_top(v);
    EXPECT_EQ(v.peers[0].node, "n1");
    EXPECT_EQ(v.peers[0].peer, "127.0.0.1");  // the HTTP client
    EXPECT_EQ(v.peers[0].service, "http");
    EXPECT_EQ(v.peers[1].peer, "n0");
    EXPECT_TRUE(v.peers[1].inbound);
    EXPECT_EQ(v.peers[1].recv.bytes, 100u);  // counters from `now`, not from the later sampling
    EXPECT_TRUE(v.nodes[0].ok);

    // Once both ends are in the samplings, or the remote address names the node, nothing is
    // sampled again.
    now[0].sockets = later[0].sockets;
    EXPECT_TRUE(nodes_to_sample_again(f, before, now).empty());
    ClusterFile ns;
    ns.nodes = {Node{.name = "a", .host = "10.231.0.2", .tcp_port = 9000, .netns = "x-n0"},
                Node{.name = "b", .host = "10.231.0.3", .tcp_port = 9000, .netns = "x-n1"}};
    std::vector<NodeIoSample> ns_before(2), ns_now(2);
    for (auto& s : ns_now) s.ok = true;
    ns_now[1].sockets = {sock(6, "10.231.0.3", 9000, "10.231.0.2", 45000, 10, 10)};
    EXPECT_TRUE(nodes_to_sample_again(ns, ns_before, ns_now).empty());
    // In namespaces a loopback connection is the node's own: no other node can hold its end.
    ns_now[1].sockets = {sock(7, "127.0.0.1", 9000, "127.0.0.1", 45000, 10, 10)};
    EXPECT_TRUE(nodes_to_sample_again(ns, ns_before, ns_now).empty());
}

TEST(ClusterTop, IntervalViewTakesDeltasPerNodeAndPeer) {
    const ClusterFile f = loopback_cluster();
    std::vector<NodeIoSample> before(2), now(2);
    for (auto* v : {&before, &now})
        for (auto& s : *v) s.ok = true;
    before[0].time_ns = 1'000'000'000;
    now[0].time_ns = 3'000'000'000;
    before[0].queries = 10;
    now[0].queries = 14;
    observe::Counters bin;
    bin.calls = 10;
    bin.bytes = 1 << 20;
    bin.latency_ns = 3'000'000;
    before[0].classes = {{LIVEIO_CLASS_CH_BIN, LIVEIO_IO_READ, bin}};
    bin.calls = 30;
    bin.bytes = 3 << 20;
    bin.latency_ns = 9'000'000;
    now[0].classes = {{LIVEIO_CLASS_CH_BIN, LIVEIO_IO_READ, bin}};
    before[0].sockets = {sock(1, "127.0.0.1", 50000, "127.0.0.1", 19001, 1000, 100)};
    now[0].sockets = {sock(1, "127.0.0.1", 50000, "127.0.0.1", 19001, 9000, 100)};
    now[0].sockets[0].counters.dir[LIVEIO_IO_READ].calls = 6;  // 4 receives in the interval
    now[0].sockets[0].counters.dir[LIVEIO_IO_READ].latency_ns = 2'000'000;
    now[1].sockets = {sock(2, "127.0.0.1", 19001, "127.0.0.1", 50000, 100, 9000)};
    now[1].ok = true;
    before[1].ok = false;  // n1 answered only now: its totals are the interval's
    NodeIoSample down;
    down.error = "unreachable: connect: Connection refused";

    const TopView v = compute_top(f, before, now);
    ASSERT_EQ(v.nodes.size(), 2u);
    EXPECT_DOUBLE_EQ(v.nodes[0].seconds, 2.0);
    EXPECT_EQ(v.nodes[0].queries, 4u);
    EXPECT_EQ(v.nodes[0].disk.calls, 20u);
    EXPECT_EQ(v.nodes[0].disk.bytes, 2u << 20);
    EXPECT_EQ(v.nodes[0].net_in.calls, 0u);  // class rows carry TCP totals; none given here
    ASSERT_EQ(v.peers.size(), 2u);
    const PeerTop& out = v.peers[0];
    EXPECT_EQ(out.node, "n0");
    EXPECT_EQ(out.peer, "n1");
    EXPECT_FALSE(out.inbound);
    EXPECT_EQ(out.service, "native");
    EXPECT_EQ(out.recv.calls, 4u);
    EXPECT_EQ(out.recv.bytes, 8000u);
    EXPECT_EQ(out.send.calls, 0u);
    const PeerTop& in = v.peers[1];
    EXPECT_EQ(in.node, "n1");
    EXPECT_EQ(in.peer, "n0");
    EXPECT_TRUE(in.inbound);
    EXPECT_EQ(in.send.bytes, 9000u);

    now[1] = down;
    const TopView d = compute_top(f, before, now);
    EXPECT_FALSE(d.nodes[1].ok);
    EXPECT_NE(render_top(d).find("n1    DOWN unreachable"), std::string::npos) << render_top(d);
    EXPECT_EQ(top_json(d)["nodes"][1]["error"], down.error);
}

TEST(ClusterTop, DiskShareIsDiskTimeOverDiskAndTcpCallTime) {
    NodeTop t;
    EXPECT_FALSE(t.disk_share());
    t.disk.latency_ns = 300;
    t.net_in.latency_ns = 600;
    t.net_out.latency_ns = 100;
    t.wait.latency_ns = 1'000'000;  // waiting is shown apart, not in the share
    EXPECT_DOUBLE_EQ(*t.disk_share(), 0.3);
}

TEST(ClusterHistory, SinkRowsCarryEverySocketDirectionWithItsPeer) {
    observe::Snapshot empty;
    std::vector<SocketSample> sockets = {
        sock(1, "10.231.0.2", 41000, "10.231.0.3", 9000, 5000, 300), SocketSample{}};
    sockets[1].counters.dir[LIVEIO_IO_OTHER].calls = 1;  // a connect on a socket closed unseen
    const std::string rows =
        observe::sink_rows_tsv({100, "n0", 42, "clickhouse-serv", 1.0, &empty, &sockets});
    EXPECT_NE(
        rows.find("100\tn0\t42\tclickhouse-serv\tsocket\t10.231.0.3:9000\tread\t1\t2\t0\t5000\t"),
        std::string::npos)
        << rows;
    EXPECT_NE(rows.find("socket\t10.231.0.3:9000\twrite\t1\t1\t0\t300\t"), std::string::npos)
        << rows;
    EXPECT_NE(rows.find("socket\tclosed\tother\t"), std::string::npos) << rows;
    EXPECT_EQ(std::count(rows.begin(), rows.end(), '\n'), 3);
}

TEST(SocketMetrics, PrometheusShowsEachSocketOnceAndSumsTheClosedOnes) {
    observe::ProcessMetrics m;
    m.pid = 7;
    m.comm = "clickhouse-serv";
    m.up = true;
    m.sockets = {sock(1, "10.231.0.2", 41000, "10.231.0.3", 9000, 5000, 300), SocketSample{},
                 SocketSample{}};
    m.sockets[1].counters.dir[LIVEIO_IO_READ].calls = 2;
    m.sockets[1].counters.dir[LIVEIO_IO_READ].bytes = 10;
    m.sockets[1].counters.dir[LIVEIO_IO_READ].hist[3] = 2;
    m.sockets[2].counters.dir[LIVEIO_IO_READ].calls = 3;
    m.sockets[2].counters.dir[LIVEIO_IO_READ].bytes = 20;
    m.sockets[2].counters.dir[LIVEIO_IO_READ].hist[4] = 3;
    auto parsed = observe::parse_prometheus(observe::render_prometheus({m}));
    ASSERT_TRUE(parsed) << parsed.error().message;
    auto bytes = parsed->value("liveio_socket_bytes_total",
                               {{"remote", "10.231.0.3:9000"}, {"direction", "read"}});
    ASSERT_TRUE(bytes) << bytes.error().message;
    EXPECT_EQ(*bytes, 5000);
    auto closed =
        parsed->value("liveio_socket_bytes_total", {{"remote", ""}, {"direction", "read"}});
    ASSERT_TRUE(closed) << closed.error().message;  // one series, not two
    EXPECT_EQ(*closed, 30);
    auto count = parsed->value("liveio_socket_latency_seconds_count",
                               {{"remote", ""}, {"direction", "read"}});
    ASSERT_TRUE(count) << count.error().message;
    EXPECT_EQ(*count, 5);
}

TEST(ClusterHistory, RemoteServersNameEveryNodeAsItsOwnShardForTheHistory) {
    ClusterFile f;
    f.name = "c";
    f.nodes = {Node{.name = "n0", .shard = 0, .replica = 0, .host = "10.0.0.2"},
               Node{.name = "n1", .shard = 0, .replica = 1, .host = "10.0.0.3"}};
    const std::string xml = remote_servers_xml(f);
    EXPECT_NE(xml.find("<c>\n            "
                       "<shard><replica><host>10.0.0.2</host><port>9000</port></"
                       "replica><replica><host>10.0.0.3"),
              std::string::npos)
        << xml;
    EXPECT_NE(xml.find("<c_nodes>\n            "
                       "<shard><replica><host>10.0.0.2</host><port>9000</port></replica></shard>\n"
                       "            <shard><replica><host>10.0.0.3</host>"),
              std::string::npos)
        << xml;
}

}  // namespace
}  // namespace liveio::cluster
