// The socket rows of net_stats as the CLI reads them: the addresses recorded at connect/accept
// (struct liveio_socket_stats' local/peer) become the row's connection, before and instead of
// a /proc lookup, so a socket that closed before the reader looked keeps its peer.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include <gtest/gtest.h>

#include "ebpf/map.h"
#include "observe/net_stats.h"

namespace liveio::observe {
namespace {

liveio_sock_addr sock_addr(int family, const char* text, uint16_t port) {
    liveio_sock_addr a{};
    a.family = static_cast<uint32_t>(family);
    a.port = port;
    EXPECT_EQ(::inet_pton(family, text, a.addr), 1) << text;
    return a;
}
liveio_sock_addr v4(const char* text, uint16_t port) { return sock_addr(AF_INET, text, port); }
liveio_sock_addr v6(const char* text, uint16_t port) { return sock_addr(AF_INET6, text, port); }

TEST(RecordedPeer, AddressesBecomeTheConnectionText) {
    const TcpConnection c = connection_from(v4("10.231.0.2", 41000), v4("10.231.0.3", 9000));
    EXPECT_EQ(c.local(), "10.231.0.2:41000");
    EXPECT_EQ(c.remote(), "10.231.0.3:9000");
    const TcpConnection c6 = connection_from(v6("fd00::2", 50000), v6("::1", 9000));
    EXPECT_EQ(c6.local(), "[fd00::2]:50000");
    EXPECT_EQ(c6.remote(), "[::1]:9000");
    const TcpConnection none = connection_from(liveio_sock_addr{}, liveio_sock_addr{});
    EXPECT_EQ(none.local(), "");
    EXPECT_EQ(none.remote(), "");
    EXPECT_EQ(none.remote_port, 0);
}

TEST(RecordedPeer, RowsOfClosedSocketsKeepTheirRecordedPeer) {
    ebpf::MapSpec spec;
    spec.name = "socket_stats";
    spec.type = ebpf::MapType::LruHash;
    spec.key_size = sizeof(uint64_t);
    spec.value_size = sizeof(liveio_socket_stats);
    spec.max_entries = 16;
    auto map = ebpf::create_map(spec);
    ASSERT_TRUE(map) << map.error().message;
    // Two sockets that no longer exist anywhere (file ids no inode of /proc/net/tcp has): one
    // with addresses recorded at connect, one connected before the program was loaded.
    const uint64_t recorded_id = 0x7fff'0000'0000'0001ull, unrecorded_id = 0x7fff'0000'0000'0002ull;
    liveio_socket_stats row{};
    row.dir[LIVEIO_IO_READ].calls = 2;
    row.local = v4("127.0.0.1", 50123);
    row.peer = v4("127.0.0.1", 9000);
    ASSERT_EQ((*map)->update(&recorded_id, &row, 0), 0);
    liveio_socket_stats bare{};
    bare.dir[LIVEIO_IO_WRITE].calls = 1;
    ASSERT_EQ((*map)->update(&unrecorded_id, &bare, 0), 0);

    auto view = ebpf::open_shared_map((*map)->memfd());
    ASSERT_TRUE(view) << view.error().message;
    auto rows = read_sockets(**view);
    ASSERT_TRUE(rows) << rows.error().message;
    ASSERT_EQ(rows->size(), 2u);
    SocketPeers peers(::getpid());
    const auto samples = peers.resolve(*rows);
    ASSERT_EQ(samples.size(), 2u);
    for (const auto& s : samples) {
        if (s.file_id == recorded_id) {
            EXPECT_EQ(s.connection.local(), "127.0.0.1:50123");
            EXPECT_EQ(s.connection.remote(), "127.0.0.1:9000");
            EXPECT_EQ(s.counters.recv().calls, 2u);
        } else {
            EXPECT_EQ(s.file_id, unrecorded_id);
            EXPECT_EQ(s.connection.remote(), "");  // closed before anyone saw it open
        }
    }
}

}  // namespace
}  // namespace liveio::observe
