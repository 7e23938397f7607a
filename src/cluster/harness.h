// The local cluster harness behind `liveio cluster up/down/status`: shards x replicas
// ClickHouse 18.16 servers, each in its own network namespace with one veth link to a bridge
// in a hub namespace (nothing of the cluster exists in the host's namespace: no address, no
// interface, no route; nodes reach each other and nothing else), links optionally rate-limited
// with tbf, the dataset spread over the shards, a Distributed table over them. Without the
// rights for namespaces the nodes run on loopback ports instead.
//
// Everything the harness makes is recorded in a state file before it is made, so `down`
// removes it even when `up` was killed halfway; the servers outlive `up` (they are never tied
// to it by PDEATHSIG) and `down` stops them.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/result.h"
#include "cluster/cluster_file.h"

namespace liveio::cluster {

// /run/liveio/cluster as root, else $XDG_RUNTIME_DIR/liveio/cluster or /tmp/liveio-UID/cluster.
std::string default_state_root();

struct UpOptions {
    std::string name = "liveio";  // cluster name: remote_servers, namespaces, state directory
    size_t shards = 2;
    size_t replicas = 1;
    std::string rate;  // tc rate ("100mbit", "1gbit"): every node link shaped with tbf; "" unshaped
    std::string subnet = "10.231.0";  // the /24 of the node addresses (first three octets)
    uint64_t rows = 200000;           // dataset rows over all shards; 0: no data
    std::string state_root = default_state_root();
    bool loopback = false;  // loopback ports even when namespaces could be made
    // When set: a `liveio serve` control endpoint is started next to every server, running
    // this executable (see cluster/control.h).
    std::string liveio_exe;
    // How often each endpoint inserts its metrics into the cluster's I/O history.
    std::string history_interval = "5s";
    std::function<void(const std::string&)> log = [](const std::string&) {};
};

// Starts the cluster; returns its cluster file (also written to <state dir>/cluster.json).
// A failure leaves the state recorded: `down` removes what was made.
Result<ClusterFile> up(const UpOptions& options);

struct DownReport {
    bool existed = false;
    std::vector<pid_t> stopped;           // processes that exited on SIGTERM
    std::vector<pid_t> killed;            // processes that needed SIGKILL
    std::vector<std::string> namespaces;  // namespaces deleted
    std::vector<std::string> dirs;        // directories removed
};

// Stops every process, deletes every namespace (with its links and bridge) and removes every
// directory recorded for cluster `name` under `state_root`. Succeeds with existed = false when
// nothing is recorded (idempotent).
Result<DownReport> down(const std::string& name,
                        const std::string& state_root = default_state_root());

// Shapes every node link of namespace cluster `file` (made by `up`) to `rate` each way with
// tbf, as `up --rate` does; "" removes the shaping.
Result<void> set_link_rate(const ClusterFile& file, const std::string& rate);

std::string state_dir(const std::string& name,
                      const std::string& state_root = default_state_root());
// <state dir>/cluster.json.
std::string cluster_file_path(const std::string& name,
                              const std::string& state_root = default_state_root());

// Bits per second of a tc-style rate ("800kbit", "100mbit", "1gbit", "12mbps" in bytes).
Result<uint64_t> parse_rate(const std::string& rate);

// Names of the namespaces cluster `name` uses (hub first); for tests and `down`.
std::vector<std::string> namespace_names(const std::string& name, size_t nodes);

}  // namespace liveio::cluster
