// The socket statistics of the built-in net_stats program (bpf/net_stats.bpf.c) as the CLI
// sees them: per TCP socket of the target, receive/send/other counters and message sizes, read
// from its socket_stats map, and the socket's local and peer address found by its inode in
// the target's /proc/PID/net/tcp{,6} (the tables of the target's network namespace).
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/result.h"
#include "liveio/net_stats.h"
#include "observe/stats.h"

namespace liveio::ebpf {
class Map;
}

namespace liveio::observe {

// Slot i counts messages of [2^i, 2^(i+1)) bytes; the last slot from 2^31 bytes up.
using SizeHistogram = std::array<uint64_t, LIVEIO_SIZE_SLOTS>;

// Index of SocketCounters' arrays: enum liveio_io_direction.
struct SocketCounters {
    std::array<Counters, 3> dir{};         // other (connect, accept), receive, send
    std::array<SizeHistogram, 3> sizes{};  // message sizes of successful calls

    static SocketCounters from(const liveio_socket_stats& raw);
    const Counters& recv() const { return dir[LIVEIO_IO_READ]; }
    const Counters& send() const { return dir[LIVEIO_IO_WRITE]; }
};

// Counters accumulated since `before`; histogram slots clamped like delta(Counters).
SocketCounters delta(const SocketCounters& now, const SocketCounters& before);

// One TCP connection of /proc/PID/net/tcp{,6}: addresses as text (IPv4-mapped IPv6 as IPv4).
struct TcpConnection {
    std::string local_addr;
    uint16_t local_port = 0;
    std::string remote_addr;
    uint16_t remote_port = 0;

    std::string local() const;  // "10.231.0.2:9000", "[::1]:9000"
    std::string remote() const;
};

struct SocketRow {
    uint64_t file_id = 0;  // liveio_io_ctx.file_id of the socket
    SocketCounters counters;
    // The addresses net_stats recorded when connect/accept returned; empty for a socket
    // connected before the program was loaded.
    TcpConnection recorded;
};

// The text form of recorded addresses (both families 0: an empty connection).
TcpConnection connection_from(const liveio_sock_addr& local, const liveio_sock_addr& peer);

// Every socket in net_stats' socket_stats map (an LRU hash keyed by file_id). The map must
// have the layout of liveio/net_stats.h: anything else is an error naming what differs.
Result<std::vector<SocketRow>> read_sockets(ebpf::Map& socket_stats);

// Parses the text of /proc/net/tcp or /proc/net/tcp6: connections by socket inode.
Result<std::map<uint64_t, TcpConnection>> parse_proc_net_tcp(const std::string& text);

// The TCP connections of `pid`'s network namespace (both tables), by socket inode.
Result<std::map<uint64_t, TcpConnection>> tcp_connections(pid_t pid);

// The sockfs inode of a socket's file_id (st_dev << 32 ^ st_ino; every socket lives on the one
// sockfs instance, whose device this process reads from a socket of its own).
uint64_t socket_inode(uint64_t file_id);

// A socket's counters with its connection ("" addresses: closed before it was seen open).
struct SocketSample {
    uint64_t file_id = 0;
    TcpConnection connection;
    SocketCounters counters;
};

// The connection of every socket: the addresses recorded at connect/accept where the row has
// them, else the /proc entry found while the socket was open, remembered so a socket's counters
// keep their peer after it closed (its row stays in the map until the LRU drops it).
class SocketPeers {
public:
    explicit SocketPeers(pid_t pid) : pid_(pid) {}
    // The rows with their connections; /proc is read only when a row without recorded
    // addresses is new.
    std::vector<SocketSample> resolve(const std::vector<SocketRow>& rows);

private:
    pid_t pid_;
    std::map<uint64_t, TcpConnection> known_;  // by file_id
};

// Wire form of counters and socket rows in /control/io (see docs/cluster.md) and back.
nlohmann::json to_json(const Counters& c);
Counters counters_from_json(const nlohmann::json& j);
nlohmann::json to_json(const SocketSample& sample);
SocketSample socket_from_json(const nlohmann::json& j);

}  // namespace liveio::observe
