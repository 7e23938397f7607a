// `liveio cluster top`: what every node's `liveio serve` returns on /control/io (cumulative
// io_stats and net_stats counters of its server), turned into one view of the cluster over an
// interval: per node the disk and network traffic and the share of call time spent on each,
// per node and peer the TCP traffic with the peer named as a node of the cluster.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
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

// Which node holds the other end of a connection, from the sockets of one or more samplings of
// every node (in cluster-file order). A connection's other end is the socket whose local
// endpoint is this one's remote endpoint and whose remote endpoint is this one's local one:
// both endpoints, because one local port is not one connection (Linux gives the same
// ephemeral port to connections towards different destinations, and a closed socket keeps its
// endpoints in the statistics while its port is given to the next connection). Endpoints on a
// loopback address are matched only between nodes that share a loopback: the same network
// namespace on the same host.
class ConnectionIndex {
public:
    ConnectionIndex(const ClusterFile& file,
                    std::initializer_list<const std::vector<NodeIoSample>*> samplings);
    // The index of the node holding the other end of node `self`'s connection `c`.
    std::optional<size_t> other_end(size_t self, const observe::TcpConnection& c) const;

private:
    std::string key(size_t node, const std::string& local, const std::string& remote,
                    bool on_loopback) const;
    const ClusterFile& file_;
    std::map<std::string, size_t> holders_;
};

// The cluster's name for the remote end of one socket of node `self`: the node holding the
// other end of the connection (ConnectionIndex: exact, also on shared loopback ports), else
// the node serving on that address and port, else the node with that address (unless it is a
// loopback address), else the address itself. "" for a socket closed before its address was
// seen, "(listening)" for a listening socket (its accept calls).
std::string peer_name(const ClusterFile& file, const ConnectionIndex& index, size_t self,
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
// (its counters are then the totals since its programs were loaded). `later` (cluster-file
// order, entries of nodes not sampled again empty) is a sampling taken after `now` only to
// name peers (see nodes_to_sample_again); its counters are not used.
TopView compute_top(const ClusterFile& file, const std::vector<NodeIoSample>& before,
                    const std::vector<NodeIoSample>& now,
                    const std::vector<NodeIoSample>& later = {});

// The nodes to sample once more, after `now`, so that every connection with traffic in the
// interval is named. The nodes are sampled in parallel, not at one instant: a connection made
// between the samplings of its two ends shows in `now` only at the end sampled later. The
// connecting end is always named (by the node serving on its remote port); the accepting end
// on a native or interserver port needs the other end when its remote address does not name
// one node (a loopback or an address several nodes share). The connecting node's row holds
// the connection's addresses from the moment its connect returned (net_stats records them
// then, and keeps them after the socket closed), so a sampling taken after `now` has it.
// Returns, for every such socket, the ok nodes that could hold its other end; empty when
// every connection is named.
std::vector<size_t> nodes_to_sample_again(const ClusterFile& file,
                                          const std::vector<NodeIoSample>& before,
                                          const std::vector<NodeIoSample>& now);

// One interval of `cluster top`: compute_top of `before` and `now`, sampling the nodes
// nodes_to_sample_again names (`sample` returns cluster-file order, the others empty) first
// when there are any.
using SampleNodes = std::function<std::vector<NodeIoSample>(const std::vector<size_t>& nodes)>;
TopView top_interval(const ClusterFile& file, const std::vector<NodeIoSample>& before,
                     const std::vector<NodeIoSample>& now, const SampleNodes& sample);

// The terminal table and the JSON form (`cluster top --json`).
std::string render_top(const TopView& view);
nlohmann::json top_json(const TopView& view);

}  // namespace liveio::cluster
