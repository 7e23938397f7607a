// The cluster file: the nodes of one ClickHouse cluster as `liveio cluster` addresses them
// (JSON). `liveio cluster up` writes one for the servers it starts; for servers on other
// machines an operator writes it by hand, and status/attach/detach/stats work the same:
//
//   {
//     "name": "liveio",                      remote_servers cluster name
//     "table": "hits", "distributed_table": "hits_all",
//     "history_table": "liveio.io_history", "history_distributed_table": "liveio.io_history_all",
//     "nodes": [
//       {"name": "n0", "shard": 0, "replica": 0,
//        "host": "10.231.0.2",               address the other nodes and liveio reach it on
//        "http_port": 8123, "tcp_port": 9000, "interserver_port": 9009,
//        "data_dir": "/var/lib/clickhouse",  the server's directory on its machine
//        "netns": "liveio-x-n0",             optional: a local namespace the host is reached in
//        "server_pid": 1234,                 optional: the server's pid on its machine
//        "control": {"socket": "/path.sock", optional: the node's `liveio serve` endpoint,
//                    "port": 9470,           local socket and/or TCP port on `host`
//                    "token_file": "/path"}} bearer token for the TCP endpoint
//     ]
//   }
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "base/result.h"

namespace liveio::cluster {

struct NodeControl {
    std::string socket;      // unix socket path on the node's machine ("" none)
    uint16_t port = 0;       // TCP port on the node's host (0 none)
    std::string token_file;  // file holding the bearer token for the TCP endpoint
};

struct Node {
    std::string name;
    size_t shard = 0;
    size_t replica = 0;
    std::string host;
    uint16_t http_port = 8123;
    uint16_t tcp_port = 9000;
    uint16_t interserver_port = 9009;
    std::string data_dir;
    std::string netns;
    pid_t server_pid = 0;
    NodeControl control;
};

struct ClusterFile {
    std::string name = "liveio";
    std::string table = "hits";
    std::string distributed_table = "hits_all";
    // The I/O history: every node's `liveio serve` inserts its metrics into history_table
    // (the sink's MergeTree, observe/sink.h) on its own server; history_distributed_table is
    // the Distributed table over all of them. "" when the cluster has no history sink.
    std::string history_table = "liveio.io_history";
    std::string history_distributed_table = "liveio.io_history_all";
    std::vector<Node> nodes;

    size_t shards() const;
};

Result<ClusterFile> parse_cluster_file(const std::string& text);
std::string format_cluster_file(const ClusterFile& file);
Result<ClusterFile> read_cluster_file(const std::string& path);

// Writes `text` to `path` through a temporary file renamed over it (and fsynced), so a reader
// (or a harness killed mid-write) sees the old or the new content, never a mix. `mode` is
// the file's permission bits.
Result<void> write_file_atomic(const std::string& path, const std::string& text,
                               mode_t mode = 0600);

// The <remote_servers> section naming every node of `file` by host and tcp_port: cluster
// `file.name` with the replicas of a shard grouped in one <shard>, and cluster
// every_node_cluster(file) with every node a shard of its own (for the I/O history).
std::string remote_servers_xml(const ClusterFile& file);
// "<name>_nodes".
std::string every_node_cluster(const ClusterFile& file);

}  // namespace liveio::cluster
