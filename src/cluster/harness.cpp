#include "cluster/harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "clickhouse/dataset.h"
#include "clickhouse/server.h"
#include "cluster/control.h"
#include "cluster/netns.h"
#include "control/command.h"
#include "observe/sink.h"

namespace liveio::cluster {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr uint16_t kHttpPort = 8123, kTcpPort = 9000, kInterserverPort = 9009;

// What the harness made or is about to make; written before each step.
struct State {
    std::string name;
    std::string mode;   // "netns" or "loopback"
    std::string phase;  // "creating", "up"
    std::string dir;    // the state directory (data of every node inside)
    std::vector<std::string> namespaces;
    struct Proc {
        pid_t pid = 0;
        uint64_t start_time = 0;  // /proc/PID/stat field 22, so a reused pid is never signalled
        std::string what;
    };
    std::vector<Proc> processes;
    pid_t harness_pid = 0;
    uint64_t harness_start_time = 0;

    json to_json() const {
        json procs = json::array();
        for (const Proc& p : processes)
            procs.push_back({{"pid", p.pid}, {"start_time", p.start_time}, {"what", p.what}});
        return {{"name", name},
                {"mode", mode},
                {"phase", phase},
                {"dir", dir},
                {"namespaces", namespaces},
                {"processes", procs},
                {"harness_pid", harness_pid},
                {"harness_start_time", harness_start_time}};
    }
    static State from_json(const json& j) {
        State s;
        s.name = j.value("name", std::string());
        s.mode = j.value("mode", std::string());
        s.phase = j.value("phase", std::string());
        s.dir = j.value("dir", std::string());
        s.namespaces = j.value("namespaces", std::vector<std::string>());
        for (const json& p : j.value("processes", json::array()))
            s.processes.push_back({p.value("pid", 0), p.value("start_time", uint64_t{0}),
                                   p.value("what", std::string())});
        s.harness_pid = j.value("harness_pid", 0);
        s.harness_start_time = j.value("harness_start_time", uint64_t{0});
        return s;
    }
};

std::string state_path(const std::string& dir) { return dir + "/state.json"; }

Result<void> save(const State& s) {
    return write_file_atomic(state_path(s.dir), s.to_json().dump(2) + "\n");
}

// Field 22 of /proc/PID/stat (start time in clock ticks since boot), 0 when the process is
// gone or a zombie.
uint64_t process_start_time(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/stat", pid));
    std::string line;
    if (!std::getline(in, line)) return 0;
    const size_t paren = line.rfind(')');
    if (paren == std::string::npos) return 0;
    std::istringstream rest(line.substr(paren + 2));
    std::string field;
    rest >> field;
    if (field == "Z" || field == "X") return 0;
    for (int i = 4; i <= 22; ++i) rest >> field;  // fields 4..22 after the state (field 3)
    return std::strtoull(field.c_str(), nullptr, 10);
}

bool alive(pid_t pid, uint64_t start_time) {
    return pid > 0 && start_time != 0 && process_start_time(pid) == start_time;
}

// ClickHouse servers and liveio processes whose command line mentions `dir` (the servers'
// --config-file, serve's socket): what a harness killed between fork and recording the pid
// left behind. Other programs naming the directory (a `tail -f` of a server log) are left
// alone.
std::vector<pid_t> processes_mentioning(const std::string& dir) {
    std::vector<pid_t> pids;
    DIR* proc = ::opendir("/proc");
    if (!proc) return pids;
    const pid_t self = ::getpid();
    while (dirent* e = ::readdir(proc)) {
        char* end = nullptr;
        const long pid = std::strtol(e->d_name, &end, 10);
        if (pid <= 0 || *end || pid == self) continue;
        std::ifstream in(fmt::format("/proc/{}/cmdline", pid));
        std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
        std::error_code ec;
        const std::string exe = fs::read_symlink(fmt::format("/proc/{}/exe", pid), ec).filename();
        const bool ours = exe == "clickhouse" || exe == "clickhouse-server" || exe == "liveio";
        if (ours && cmdline.find(dir + "/") != std::string::npos &&
            process_start_time(static_cast<pid_t>(pid)) != 0)
            pids.push_back(static_cast<pid_t>(pid));
    }
    ::closedir(proc);
    return pids;
}

bool valid_cluster_name(const std::string& s) {
    return !s.empty() && s.size() <= 24 && std::all_of(s.begin(), s.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    });
}

Result<uint32_t> parse_subnet(const std::string& subnet) {
    in_addr a{};
    if (::inet_pton(AF_INET, (subnet + ".0").c_str(), &a) != 1)
        return make_error(
            EINVAL,
            fmt::format("--subnet {}: expected the first three octets of a /24, e.g. 10.231.0",
                        subnet));
    return ntohl(a.s_addr);
}

// Fails when the host's own namespace has an address or a route (other than the default
// route) in the /24 `net`: node addresses must exist only inside the cluster's namespaces,
// and a host route into the range would make the same addresses mean two places.
Result<void> check_subnet_unused(uint32_t net) {
    const uint32_t mask24 = 0xffffff00u;
    ifaddrs* ifs = nullptr;
    if (::getifaddrs(&ifs) == 0) {
        for (ifaddrs* i = ifs; i; i = i->ifa_next) {
            if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
            const uint32_t addr =
                ntohl(reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr);
            const uint32_t mask =
                i->ifa_netmask
                    ? ntohl(reinterpret_cast<sockaddr_in*>(i->ifa_netmask)->sin_addr.s_addr)
                    : ~0u;
            const uint32_t m = mask & mask24;  // the shorter of the two prefixes
            if ((addr & m) == (net & m)) {
                std::string name = i->ifa_name;
                ::freeifaddrs(ifs);
                return make_error(
                    EADDRINUSE,
                    fmt::format(
                        "the host uses {}.0/24 already (address on {}); pick another --subnet",
                        inet_ntoa(in_addr{htonl(net)}), name));
            }
        }
        ::freeifaddrs(ifs);
    }
    std::ifstream routes("/proc/net/route");
    std::string line;
    std::getline(routes, line);  // header
    while (std::getline(routes, line)) {
        std::istringstream in(line);
        std::string iface, dst_hex, gw_hex, flags, refcnt, use, metric, mask_hex;
        in >> iface >> dst_hex >> gw_hex >> flags >> refcnt >> use >> metric >> mask_hex;
        // /proc/net/route prints addresses in network byte order, as hex of the raw u32.
        const uint32_t dst =
            ntohl(static_cast<uint32_t>(std::strtoul(dst_hex.c_str(), nullptr, 16)));
        const uint32_t mask =
            ntohl(static_cast<uint32_t>(std::strtoul(mask_hex.c_str(), nullptr, 16)));
        if (mask == 0) continue;  // the default route: leads out, but not into our range
        const uint32_t m = mask & mask24;
        if ((dst & m) == (net & m))
            return make_error(
                EADDRINUSE,
                fmt::format("the host routes into {}.0/24 already (via {}); pick another --subnet",
                            inet_ntoa(in_addr{htonl(net)}), iface));
    }
    return {};
}

std::string address_of(uint32_t net, size_t node) {
    in_addr a{htonl(net + static_cast<uint32_t>(node) + 2)};
    char buf[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &a, buf, sizeof buf);
    return buf;
}

// Runs iproute2's `tool` (ip or tc) with `args`; its output matters only in errors.
Result<void> iproute(const char* tool, const std::vector<std::string>& args) {
    std::vector<std::string> argv{tool};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = control::run_checked(argv);
    if (!r && r.error().code == ENOENT)
        return make_error(ENOENT, r.error().message + " (apt install iproute2)");
    if (!r) return r.error();
    return {};
}

Result<void> ip(const std::vector<std::string>& args) { return iproute("ip", args); }
Result<void> tc(const std::vector<std::string>& args) { return iproute("tc", args); }

// tbf on `dev` of namespace `ns`: `bits` per second, a bucket of 4 ms of traffic (at least
// 32 KiB, so one 64 KiB TSO segment never waits for a second refill round).
Result<void> shape(const std::string& ns, const std::string& dev, uint64_t bits) {
    const uint64_t burst = std::max<uint64_t>(64 * 1024, bits / 8 / 250);
    return tc({"-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
               fmt::format("{}bit", bits), "burst", std::to_string(burst), "latency", "50ms"});
}

template <typename Fn>
auto in_netns(const std::string& ns, Fn&& fn) -> decltype(fn()) {
    auto scope = NetnsScope::enter(ns);
    if (!scope) return scope.error();
    return fn();
}

// Starts one server (in the calling thread's namespace) and lets it run on past this program.
Result<pid_t> start_server(const Node& node, const ClusterFile& file, bool in_namespace) {
    clickhouse::ServerOptions so;
    so.dir = node.data_dir;
    so.keep_dir = true;
    so.die_with_parent = false;
    so.ports = {node.http_port, node.tcp_port, node.interserver_port};
    so.extra_config = remote_servers_xml(file);
    so.profile_settings = clickhouse::kProfileSettings;
    so.start_timeout = std::chrono::milliseconds(90000);
    if (in_namespace) {
        so.listen_hosts = {"127.0.0.1", node.host};
        so.interserver_host = node.host;
        // Shards connect to each other from their node addresses.
        so.allowed_networks.push_back(node.host.substr(0, node.host.rfind('.')) + ".0/24");
    }
    auto server = clickhouse::LocalServer::start(so);
    if (!server) return server.error();
    return server->release_process();
}

// The node's sink table (the schema of `liveio serve --sink`) and the Distributed table over
// every node's, so the whole cluster's I/O history is one query on any node.
Result<void> create_history_tables(const Node& n, const ClusterFile& file) {
    auto local = observe::parse_sink_url(
        fmt::format("clickhouse://127.0.0.1:{}/{}", n.http_port, file.history_table));
    if (!local) return local.error();
    const size_t dot = file.history_distributed_table.find('.');
    if (dot == std::string::npos)
        return make_error(EINVAL, "history_distributed_table must be db.table");
    clickhouse::HttpClient client({.host = n.host, .port = n.http_port});
    for (const std::string& sql :
         {fmt::format("CREATE DATABASE IF NOT EXISTS `{}`", local->database),
          observe::sink_create_table_sql(*local),
          fmt::format("CREATE DATABASE IF NOT EXISTS `{}`",
                      file.history_distributed_table.substr(0, dot)),
          fmt::format("CREATE TABLE IF NOT EXISTS {} AS {} ENGINE = Distributed({}, {}, {})",
                      file.history_distributed_table, local->qualified(), every_node_cluster(file),
                      local->database, local->table)})
        if (auto r = client.execute(sql); !r) return r;
    return {};
}

// Everything of `up` after its state directory exists: namespaces, links, servers, data,
// control endpoints, the cluster file. Each thing made is recorded in `s` first.
Result<ClusterFile> populate(const UpOptions& o, State& s, bool namespaces, uint32_t net,
                             std::optional<uint64_t> rate_bits) {
    const size_t count = o.shards * o.replicas;
    ClusterFile file;
    file.name = o.name;
    for (size_t shard = 0, i = 0; shard < o.shards; ++shard)
        for (size_t replica = 0; replica < o.replicas; ++replica, ++i) {
            Node n;
            n.name = fmt::format("n{}", i);
            n.shard = shard;
            n.replica = replica;
            n.data_dir = fmt::format("{}/{}", s.dir, n.name);
            if (namespaces) {
                n.host = address_of(net, i);
                n.netns = s.namespaces[i + 1];
                n.http_port = kHttpPort;
                n.tcp_port = kTcpPort;
                n.interserver_port = kInterserverPort;
            } else {
                n.host = "127.0.0.1";
            }
            file.nodes.push_back(std::move(n));
        }
    if (!namespaces) {
        auto ports = clickhouse::free_ports(3 * count);
        if (!ports) return ports.error();
        for (size_t i = 0; i < count; ++i) {
            file.nodes[i].http_port = (*ports)[3 * i];
            file.nodes[i].tcp_port = (*ports)[3 * i + 1];
            file.nodes[i].interserver_port = (*ports)[3 * i + 2];
        }
    }

    if (namespaces) {
        const std::string& hub = s.namespaces[0];
        o.log(fmt::format(
            "network: bridge br0 in namespace {}, nodes on {}.0/24, no uplink, no route out", hub,
            o.subnet));
        for (const auto& args : std::vector<std::vector<std::string>>{
                 {"netns", "add", hub},
                 {"-n", hub, "link", "set", "lo", "up"},
                 {"-n", hub, "link", "add", "br0", "type", "bridge"},
                 {"-n", hub, "link", "set", "br0", "up"}})
            if (auto r = ip(args); !r) return r.error();
        for (size_t i = 0; i < count; ++i) {
            const Node& n = file.nodes[i];
            const std::string port = fmt::format("{}", n.name);  // the bridge port of node n<i>
            for (const auto& args : std::vector<std::vector<std::string>>{
                     {"netns", "add", n.netns},
                     {"-n", n.netns, "link", "set", "lo", "up"},
                     {"-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                      "netns", n.netns},
                     {"-n", hub, "link", "set", port, "master", "br0", "up"},
                     {"-n", n.netns, "addr", "add", n.host + "/24", "dev", "eth0"},
                     {"-n", n.netns, "link", "set", "eth0", "up"}})
                if (auto r = ip(args); !r) return r.error();
            if (rate_bits) {
                // Both directions: the node's egress on eth0, its ingress as the bridge port's
                // egress.
                if (auto r = shape(n.netns, "eth0", *rate_bits); !r) return r.error();
                if (auto r = shape(hub, port, *rate_bits); !r) return r.error();
            }
        }
        if (rate_bits)
            o.log(
                fmt::format("links shaped to {} each way with tbf; no delay is added (sch_netem is "
                            "not in this kernel), "
                            "so latency-bound effects of a real network do not show",
                            o.rate));
    }

    // Servers start in parallel (each thread in its node's namespace); each pid is recorded as
    // soon as it is known.
    std::vector<std::optional<Result<pid_t>>> started(count);
    {
        std::vector<std::jthread> threads;
        for (size_t i = 0; i < count; ++i)
            threads.emplace_back([&, i] {
                started[i] = in_netns(file.nodes[i].netns, [&]() -> Result<pid_t> {
                    return start_server(file.nodes[i], file, namespaces);
                });
            });
    }
    Error first_failure;
    bool failed = false;
    for (size_t i = 0; i < count; ++i) {
        if (!*started[i]) {
            if (!failed)
                first_failure = make_error(
                    started[i]->error().code,
                    fmt::format("node {}: {}", file.nodes[i].name, started[i]->error().message));
            failed = true;
            continue;
        }
        file.nodes[i].server_pid = **started[i];
        s.processes.push_back({file.nodes[i].server_pid,
                               process_start_time(file.nodes[i].server_pid),
                               "clickhouse-server " + file.nodes[i].name});
    }
    if (auto r = save(s); !r) return r.error();
    if (failed) return first_failure;
    o.log(fmt::format("{} servers up ({} shards x {} replicas)", count, o.shards, o.replicas));

    if (o.rows > 0) {
        clickhouse::DatasetOptions d;
        d.rows = o.rows;
        d.table = file.table;
        d.distributed_table = file.distributed_table;
        std::vector<std::optional<Result<void>>> loaded(count);
        {
            std::vector<std::jthread> threads;
            for (size_t i = 0; i < count; ++i)
                threads.emplace_back([&, i] {
                    const Node& n = file.nodes[i];
                    loaded[i] = in_netns(n.netns, [&]() -> Result<void> {
                        clickhouse::HttpClient client({.host = n.host, .port = n.http_port});
                        auto r =
                            clickhouse::load(client, d, clickhouse::ShardSlice{n.shard, o.shards});
                        if (!r) return r.error();
                        if (auto c = client.execute(
                                fmt::format("DROP TABLE IF EXISTS {}", d.distributed_table));
                            !c)
                            return c;
                        return client.execute(clickhouse::create_distributed_sql(d, file.name));
                    });
                });
        }
        for (size_t i = 0; i < count; ++i)
            if (!*loaded[i])
                return make_error(loaded[i]->error().code,
                                  fmt::format("loading node {}: {}", file.nodes[i].name,
                                              loaded[i]->error().message));
        o.log(fmt::format("dataset: {} rows in {} over {} shards, Distributed table {}", o.rows,
                          d.table, o.shards, d.distributed_table));
    }

    if (!o.liveio_exe.empty()) {
        for (const Node& n : file.nodes) {
            auto made =
                in_netns(n.netns, [&]() -> Result<void> { return create_history_tables(n, file); });
            if (!made)
                return make_error(made.error().code, fmt::format("node {}: I/O history tables: {}",
                                                                 n.name, made.error().message));
        }
        o.log(fmt::format(
            "I/O history: every node's metrics every {} into {} on its server; {} over all nodes",
            o.history_interval, file.history_table, file.history_distributed_table));
        auto token = ensure_token_file(s.dir + "/control.token");
        if (!token) return token.error();
        for (Node& n : file.nodes) {
            n.control.socket = n.data_dir + "/control.sock";
            n.control.port = namespaces ? kControlPort : 0;
            n.control.token_file = namespaces ? s.dir + "/control.token" : "";
            auto pid = in_netns(n.netns, [&]() -> Result<pid_t> {
                return start_control_endpoint(o.liveio_exe, n, file.history_table,
                                              o.history_interval);
            });
            if (!pid)
                return make_error(pid.error().code,
                                  fmt::format("node {}: {}", n.name, pid.error().message));
            s.processes.push_back({*pid, process_start_time(*pid), "liveio serve " + n.name});
            if (auto r = save(s); !r) return r.error();
        }
        o.log(fmt::format(
            "control endpoints: liveio serve on every node ({})",
            namespaces
                ? fmt::format(
                      "local socket, and TCP port {} with the bearer token in {}/control.token",
                      kControlPort, s.dir)
                : "local socket only: without namespaces a TCP port would be open to the whole "
                  "host"));
    }

    if (auto r = write_file_atomic(cluster_file_path(o.name, o.state_root),
                                   format_cluster_file(file), 0644);
        !r)
        return r.error();
    s.phase = "up";
    if (auto r = save(s); !r) return r.error();
    return file;
}

}  // namespace

Result<void> set_link_rate(const ClusterFile& file, const std::string& rate) {
    std::optional<uint64_t> bits;
    if (!rate.empty()) {
        auto b = parse_rate(rate);
        if (!b) return b.error();
        bits = *b;
    }
    const std::string hub = namespace_names(file.name, 0).at(0);
    for (const Node& n : file.nodes) {
        if (n.netns.empty())
            return make_error(
                EINVAL,
                fmt::format(
                    "node {} has no namespace: only links of a namespace cluster are shaped",
                    n.name));
        for (const auto& [ns, dev] :
             {std::pair{n.netns, std::string("eth0")}, std::pair{hub, n.name}}) {
            if (bits) {
                if (auto r = shape(ns, dev, *bits); !r) return r;
            } else if (auto r = control::run_command(
                           {"tc", "-n", ns, "qdisc", "del", "dev", dev, "root"});
                       !r) {
                return r.error();  // a link without a qdisc of ours makes tc fail: that is unshaped
                                   // already
            }
        }
    }
    return {};
}

std::string default_state_root() {
    if (::geteuid() == 0) return "/run/liveio/cluster";
    if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg)
        return std::string(xdg) + "/liveio/cluster";
    return fmt::format("/tmp/liveio-{}/cluster", ::geteuid());
}

std::string state_dir(const std::string& name, const std::string& state_root) {
    return state_root + "/" + name;
}
std::string cluster_file_path(const std::string& name, const std::string& state_root) {
    return state_dir(name, state_root) + "/cluster.json";
}

std::vector<std::string> namespace_names(const std::string& name, size_t nodes) {
    std::vector<std::string> names{fmt::format("liveio-{}-hub", name)};
    for (size_t i = 0; i < nodes; ++i) names.push_back(fmt::format("liveio-{}-n{}", name, i));
    return names;
}

Result<uint64_t> parse_rate(const std::string& rate) {
    size_t used = 0;
    double value = 0;
    try {
        value = std::stod(rate, &used);
    } catch (const std::exception&) {
        return make_error(
            EINVAL,
            fmt::format(
                "rate '{}': expected a number and a unit (kbit, mbit, gbit, kbps, mbps, gbps)",
                rate));
    }
    const std::string unit = rate.substr(used);
    static const std::pair<const char*, double> units[] = {
        {"bit", 1}, {"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9},
        {"bps", 8}, {"kbps", 8e3}, {"mbps", 8e6}, {"gbps", 8e9}};
    for (auto [u, scale] : units)
        if (unit == u) {
            const double bits = value * scale;
            if (bits < 8000 || bits > 100e9)
                return make_error(EINVAL,
                                  fmt::format("rate '{}': between 8kbit and 100gbit", rate));
            return static_cast<uint64_t>(bits);
        }
    return make_error(
        EINVAL, fmt::format("rate '{}': unknown unit '{}' (kbit, mbit, gbit, kbps, mbps, gbps)",
                            rate, unit));
}

Result<ClusterFile> up(const UpOptions& o) {
    if (!valid_cluster_name(o.name))
        return make_error(EINVAL,
                          fmt::format("cluster name '{}': 1-24 characters of a-z, 0-9, _", o.name));
    if (o.shards == 0 || o.replicas == 0 || o.shards * o.replicas > 16)
        return make_error(EINVAL, fmt::format("{} shards x {} replicas: between 1 and 16 nodes",
                                              o.shards, o.replicas));
    const size_t count = o.shards * o.replicas;
    auto net = parse_subnet(o.subnet);
    if (!net) return net.error();
    std::optional<uint64_t> rate_bits;
    if (!o.rate.empty()) {
        auto r = parse_rate(o.rate);
        if (!r) return r.error();
        rate_bits = *r;
    }
    std::string why_loopback = o.loopback ? "--loopback given" : netns_unavailable_reason();
    const bool namespaces = why_loopback.empty();
    if (namespaces) {
        if (auto r = check_subnet_unused(*net); !r) return r.error();
        for (const std::string& ns : namespace_names(o.name, count))
            if (netns_exists(ns))
                return make_error(EEXIST, fmt::format("network namespace {} exists already: "
                                                      "`liveio cluster down --name {}` first "
                                                      "(or ip netns del {})",
                                                      ns, o.name, ns));
    } else {
        o.log(fmt::format("no network namespaces ({}): nodes run on loopback ports of this host",
                          why_loopback));
        if (rate_bits)
            return make_error(EPERM,
                              "--rate needs network namespaces (the loopback is shared by "
                              "everything on the host)");
    }

    State s;
    s.name = o.name;
    s.mode = namespaces ? "netns" : "loopback";
    s.phase = "creating";
    s.dir = state_dir(o.name, o.state_root);
    s.harness_pid = ::getpid();
    s.harness_start_time = process_start_time(s.harness_pid);
    {
        std::error_code ec;
        fs::create_directories(o.state_root, ec);
        if (ec)
            return make_error(EIO, fmt::format("cannot create {}: {}", o.state_root, ec.message()));
        if (::mkdir(s.dir.c_str(), 0700) != 0) {
            if (errno == EEXIST)
                return make_error(
                    EEXIST,
                    fmt::format("cluster {} exists ({}): `liveio cluster down --name {}` first",
                                o.name, s.dir, o.name));
            return make_error(errno, fmt::format("mkdir {}: {}", s.dir, std::strerror(errno)));
        }
    }
    if (namespaces) s.namespaces = namespace_names(o.name, count);
    if (auto r = save(s); !r) return r.error();

    auto made = populate(o, s, namespaces, *net, rate_bits);
    if (made) return made;
    // Nothing half-made is left behind for the user to find: what was recorded goes again.
    auto removed = down(o.name, o.state_root);
    return make_error(
        made.error().code,
        fmt::format("{}\n{}", made.error().message,
                    removed ? "everything up had made is removed again"
                            : "removing what up had made failed too: " + removed.error().message +
                                  fmt::format(" (retry: liveio cluster down --name {})", o.name)));
}

Result<DownReport> down(const std::string& name, const std::string& state_root) {
    DownReport report;
    if (!valid_cluster_name(name))
        return make_error(EINVAL,
                          fmt::format("cluster name '{}': 1-24 characters of a-z, 0-9, _", name));
    const std::string dir = state_dir(name, state_root);
    State s;
    {
        std::ifstream in(state_path(dir));
        if (in) {
            try {
                s = State::from_json(json::parse(in));
            } catch (const std::exception&) {
                // A torn file cannot happen (atomic rename); a hand-edited one: fall back below.
            }
        }
    }
    s.dir = dir;
    // Whatever the file says, the namespaces of this name are ours (up refuses to reuse one).
    {
        std::set<std::string> names(s.namespaces.begin(), s.namespaces.end());
        std::error_code ec;
        for (const auto& e : fs::directory_iterator("/run/netns", ec)) {
            const std::string n = e.path().filename();
            if (n.starts_with("liveio-" + name + "-") && !names.count(n)) s.namespaces.push_back(n);
        }
    }
    report.existed = fs::exists(dir) || !s.namespaces.empty();
    if (!report.existed) return report;

    // A harness still running `up` would go on making things: it goes first.
    if (alive(s.harness_pid, s.harness_start_time) && s.harness_pid != ::getpid()) {
        ::kill(s.harness_pid, SIGKILL);
        report.killed.push_back(s.harness_pid);
    }
    std::map<pid_t, uint64_t> victims;
    for (const auto& p : s.processes)
        if (alive(p.pid, p.start_time)) victims[p.pid] = p.start_time;
    for (const std::string& ns : s.namespaces)
        for (pid_t pid : processes_in_netns(ns)) victims.emplace(pid, process_start_time(pid));
    for (pid_t pid : processes_mentioning(dir)) victims.emplace(pid, process_start_time(pid));
    victims.erase(::getpid());
    for (auto [pid, start] : victims) ::kill(pid, SIGTERM);
    auto wait_gone = [&](std::chrono::seconds limit) {
        const auto deadline = Clock::now() + limit;
        for (;;) {
            bool any = false;
            for (auto [pid, start] : victims) any |= alive(pid, start);
            if (!any || Clock::now() >= deadline) return !any;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    };
    if (!wait_gone(std::chrono::seconds(30))) {
        for (auto [pid, start] : victims)
            if (alive(pid, start)) {
                ::kill(pid, SIGKILL);
                report.killed.push_back(pid);
            }
        if (!wait_gone(std::chrono::seconds(10)))
            return make_error(
                EBUSY, fmt::format(
                           "cluster {}: processes survive SIGKILL; namespaces and {} left in place",
                           name, dir));
    }
    for (auto [pid, start] : victims)
        if (std::find(report.killed.begin(), report.killed.end(), pid) == report.killed.end())
            report.stopped.push_back(pid);

    // Deleting a namespace nobody is in destroys its interfaces: the veth pairs and the bridge.
    for (const std::string& ns : s.namespaces) {
        if (!netns_exists(ns)) continue;
        if (auto r = ip({"netns", "del", ns}); !r) return r.error();
        report.namespaces.push_back(ns);
    }
    std::error_code ec;
    if (fs::exists(dir)) {
        fs::remove_all(dir, ec);
        if (ec) return make_error(EIO, fmt::format("removing {}: {}", dir, ec.message()));
        report.dirs.push_back(dir);
    }
    return report;
}

}  // namespace liveio::cluster
