// `liveio cluster top`: what every node's `liveio serve` returns on /control/io (cumulative
// io_stats and net_stats counters of its server), turned into one view of the cluster over an
// interval: per node the disk and network traffic and the share of call time spent on each,
// per node and peer the TCP traffic with the peer named as a node of the cluster.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/result.h"
#include "cluster/cluster_file.h"
#include "observe/net_stats.h"
#include "observe/stats.h"

namespace liveio::cluster {

// One node's answer to /control/io (plus its server's query count, read separately).
struct NodeIoSample {
    bool ok = false;
    std::string error;  // why not ok
    uint64_t time_ns = 0;
    std::vector<observe::ClassRow> classes;
    std::vector<observe::SyscallRow> syscalls;
    std::vector<observe::SocketSample> sockets;
    std::optional<uint64_t> queries;  // the server's system.events 'Query' counter
};

// Parses the JSON reply of /control/io; a reply with ok false becomes a sample with its error.
NodeIoSample parse_node_io(const nlohmann::json& reply);

// The cluster's name for the remote end of one socket of node `self`: the node whose own socket
// has that endpoint as its local one (exact, also on loopback ports), else the node serving on
// that address and port, else the node with that address (unless it is a loopback address),
// else the address itself. "" for a socket closed before its address was seen, "(listening)"
// for a listening socket (its accept calls).
std::string peer_name(const ClusterFile& file, const std::vector<NodeIoSample>& samples,
                      const observe::TcpConnection& c);

struct NodeTop {
    std::string node;
    bool ok = false;
    std::string error;
    double seconds = 0;               // length of the interval
    observe::Counters disk;           // files: ClickHouse parts and other regular files
    observe::Counters net_in;         // TCP receives
    observe::Counters net_out;        // TCP sends
    observe::Counters wait;           // epoll_wait: waiting for sockets (and other descriptors)
    std::optional<uint64_t> queries;  // queries the server started in the interval
    // disk time / (disk + TCP call time): where the server's I/O calls spent their time.
    std::optional<double> disk_share() const;
};

struct PeerTop {
    std::string node;      // the node whose sockets these are
    std::string peer;      // peer_name()
    bool inbound = false;  // the peer connected to this node (this node serves)
    std::string service;   // "native", "http", "interserver" or the server port
    size_t sockets = 0;
    observe::Counters recv, send;
    observe::SizeHistogram recv_sizes{}, send_sizes{};
};

struct TopView {
    std::vector<NodeTop> nodes;  // in cluster-file order
    std::vector<PeerTop> peers;  // by node, then peer
};

// The view of the interval between two samplings of every node (in cluster-file order). A
// node that failed in `now` shows its error; one that failed only in `before` counts from zero
// (its counters are then the totals since its programs were loaded).
TopView compute_top(const ClusterFile& file, const std::vector<NodeIoSample>& before,
                    const std::vector<NodeIoSample>& now);

// The terminal table and the JSON form (`cluster top --json`).
std::string render_top(const TopView& view);
nlohmann::json top_json(const TopView& view);

}  // namespace liveio::cluster
