// A private ClickHouse test bed: the Debian clickhouse-server 18.16 started on free loopback
// ports with its own data, log and tmp directories and a config.xml/users.xml written here, so
// nothing from /etc/clickhouse-server, /var/lib/clickhouse or the user's system is read or
// touched. LocalCluster starts N such servers that know each other as the shards of one
// cluster (remote_servers), for Distributed tables and shard-to-shard traffic.
//
// 18.16 runs as root without complaint as long as the data directory belongs to the user it
// runs as (it refuses when the owner differs), which holds because we create the directory.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "base/result.h"
#include "clickhouse/http_client.h"

namespace liveio::clickhouse {

struct ServerPorts {
    uint16_t http = 0;
    uint16_t tcp = 0;          // native protocol; shards talk to each other through it
    uint16_t interserver = 0;  // replication fetches (unused by the test bed, but must be free)
};

struct ServerOptions {
    // The server executable; empty: find_server_binary().
    std::string binary;
    // Directory holding config, data, logs and tmp. Empty: a fresh directory under $TMPDIR
    // (or /tmp). A directory that does not exist yet is created and, unless keep_dir, removed
    // by stop(); an existing directory is never removed.
    std::string dir;
    bool keep_dir = false;
    // Ports; any left 0 is chosen free. When all three were chosen here and the server fails
    // to bind one (another process took it meanwhile), start() retries with new ports.
    ServerPorts ports;
    // Addresses the server listens on (each a <listen_host>), and the one replicas are told to
    // fetch parts from. A server in a network namespace of `liveio cluster` listens on its
    // node address as well as on loopback.
    std::vector<std::string> listen_hosts{"127.0.0.1"};
    std::string interserver_host = "127.0.0.1";
    // Networks the `default` user may connect from (users.xml <networks>: <ip> entries).
    std::vector<std::string> allowed_networks{"127.0.0.1", "::1"};
    std::chrono::milliseconds start_timeout{60000};
    std::chrono::milliseconds stop_timeout{30000};
    std::string log_level = "information";
    // XML inserted as-is inside <yandex> of config.xml (e.g. <remote_servers>).
    std::string extra_config;
    // Settings of the default profile in users.xml, as XML elements
    // (e.g. "<max_threads>2</max_threads>").
    std::string profile_settings;
    // Variables added to the server's environment ("NAME=value"; a NAME already set is
    // replaced), e.g. GLIBC_TUNABLES.
    std::vector<std::string> environment;
    // false: the server gets only `environment`, nothing of ours, as a service manager starts
    // it (kServiceEnvironment); true: our environment with `environment` applied.
    bool inherit_environment = true;
    // Name of the user the server runs as (as systemd's User=; the Debian package creates
    // `clickhouse`), its directory handed to that user. Empty: ours. Needs root when set.
    std::string user;
    // The server is killed when the thread that started it exits (PR_SET_PDEATHSIG): tests
    // that die never leave servers behind. Turn off for a server that must outlive us.
    bool die_with_parent = true;
    // Nice value the server runs at (setpriority before exec, inherited by all its threads),
    // e.g. 10 for a long data load on a shared machine. 0: the parent's.
    int nice = 0;
};

// An environment entry for ServerOptions::environment that makes glibc reserve 64 KiB of
// static TLS for libraries dlopen'ed later. liveio-agent.so keeps its per-thread state in
// initial-exec TLS (the hooked call path must never allocate), which dlopen can only place in
// that reserve; glibc's default (~1.6 KiB surplus) is smaller than the agent needs (6.1 KiB
// at the time of writing, mostly the uprobe shadow stack), and dlopen then fails with "cannot
// allocate memory in static TLS block".
inline constexpr const char* kStaticTlsReserve =
    "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536";

// The environment systemd gives a service that sets none (systemd.exec: only PATH, and no
// GLIBC_TUNABLES or LD_PRELOAD): for ServerOptions::environment with inherit_environment false.
inline constexpr const char* kServiceEnvironment =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// The user the Debian package's service runs the server as (User=clickhouse), when it exists
// and we may switch to it (root); else "".
std::string service_user();

// The clickhouse-server executable of the Debian package (/usr/sbin, /usr/bin), or
// $CLICKHOUSE_SERVER.
Result<std::string> find_server_binary();

// `count` distinct TCP ports free on 127.0.0.1 at the time of the call.
Result<std::vector<uint16_t>> free_ports(size_t count);

class LocalServer {
public:
    // Writes the configuration, starts the server and waits until /ping answers. On failure
    // the error holds the tail of the server's logs and nothing is left running.
    static Result<LocalServer> start(ServerOptions options);

    LocalServer(LocalServer&& other) noexcept;
    LocalServer& operator=(LocalServer&& other) noexcept;
    LocalServer(const LocalServer&) = delete;
    LocalServer& operator=(const LocalServer&) = delete;
    ~LocalServer();

    // SIGTERM, wait up to stop_timeout, then SIGKILL. Fails (after killing) when the server
    // did not exit by itself or exited with an error status. Idempotent.
    Result<void> stop();

    // Lets the server run on: the object forgets the process and its directory, so neither
    // stop() nor the destructor touches them. Returns the server's pid. For servers that
    // outlive the program that started them (die_with_parent = false); whoever keeps the pid
    // stops the server.
    pid_t release_process();

    bool running() const { return pid_ > 0; }
    pid_t pid() const { return pid_; }
    const ServerPorts& ports() const { return ports_; }
    const std::string& dir() const { return dir_; }
    std::string data_path() const { return dir_ + "/data/"; }
    std::string log_path() const { return dir_ + "/log/server.log"; }
    std::string error_log_path() const { return dir_ + "/log/server.err.log"; }
    // Time from fork to the first successful /ping.
    std::chrono::milliseconds startup_time() const { return startup_time_; }

    // A client for this server's HTTP port.
    HttpClient client(std::chrono::milliseconds timeout = std::chrono::milliseconds{120000}) const;

    // The last `lines` lines of the server's error log and stdout/stderr, for error messages.
    std::string log_tail(size_t lines = 20) const;

private:
    friend class LocalCluster;
    LocalServer() = default;
    static Result<LocalServer> start_once(const ServerOptions& options, bool* port_conflict);
    void release();

    std::string dir_;
    bool remove_dir_ = false;
    ServerPorts ports_;
    pid_t pid_ = -1;
    std::chrono::milliseconds stop_timeout_{30000};
    std::chrono::milliseconds startup_time_{0};
};

struct ClusterOptions {
    size_t shards = 2;
    // Name of the cluster in remote_servers, used by Distributed tables.
    std::string name = "liveio";
    // Applied to every shard; its ports and dir must be left empty (each shard gets its own).
    ServerOptions server;
};

class LocalCluster {
public:
    // Starts every shard, each configured with the same remote_servers section naming all
    // shards (one replica each, on their native tcp ports).
    static Result<LocalCluster> start(ClusterOptions options);

    LocalCluster(LocalCluster&& other) noexcept;
    LocalCluster& operator=(LocalCluster&& other) noexcept;
    LocalCluster(const LocalCluster&) = delete;
    LocalCluster& operator=(const LocalCluster&) = delete;
    ~LocalCluster();

    Result<void> stop();

    const std::string& name() const { return name_; }
    size_t size() const { return shards_.size(); }
    LocalServer& shard(size_t i) { return shards_.at(i); }
    const LocalServer& shard(size_t i) const { return shards_.at(i); }
    std::vector<LocalServer>& shards() { return shards_; }

    // Runs `sql` on every shard in order; stops at the first failure, naming the shard.
    Result<void> execute_on_all(std::string_view sql);

private:
    LocalCluster() = default;
    std::string name_;
    std::string root_;  // directory holding shard0/, shard1/, ...; removed by stop()
    bool remove_root_ = false;
    std::vector<LocalServer> shards_;
};

// The <remote_servers> section for a cluster `name` whose shards listen on `tcp_ports` of
// 127.0.0.1.
std::string remote_servers_xml(const std::string& name, const std::vector<uint16_t>& tcp_ports);

}  // namespace liveio::clickhouse
