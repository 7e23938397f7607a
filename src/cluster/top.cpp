#include "cluster/top.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>

namespace liveio::cluster {
namespace {

using observe::Counters;

uint32_t class_from_name(const std::string& name) {
    for (uint32_t c = 0; c < LIVEIO_CLASS_COUNT; ++c)
        if (observe::class_name(c) == name) return c;
    return LIVEIO_CLASS_UNKNOWN;
}

uint32_t direction_from_name(const std::string& name) {
    for (uint32_t d = 0; d < 3; ++d)
        if (observe::direction_name(d) == name) return d;
    return LIVEIO_IO_OTHER;
}

bool is_disk_class(uint32_t c) {
    return c == LIVEIO_CLASS_FILE || c == LIVEIO_CLASS_CH_BIN || c == LIVEIO_CLASS_CH_MRK ||
           c == LIVEIO_CLASS_CH_PRIMARY || c == LIVEIO_CLASS_CH_OTHER;
}

void add(observe::SizeHistogram& into, const observe::SizeHistogram& h) {
    for (size_t i = 0; i < into.size(); ++i) into[i] += h[i];
}

const Node* node_serving(const ClusterFile& file, const std::string& addr, uint16_t port) {
    for (const Node& n : file.nodes)
        if (n.host == addr &&
            (port == n.tcp_port || port == n.http_port || port == n.interserver_port))
            return &n;
    return nullptr;
}

std::string service_name(const Node& n, uint16_t port) {
    if (port == n.tcp_port) return "native";
    if (port == n.http_port) return "http";
    if (port == n.interserver_port) return "interserver";
    return std::to_string(port);
}

bool loopback(const std::string& addr) { return addr.starts_with("127.") || addr == "::1"; }

// The loopback a node's loopback endpoints are on: its namespace's; nodes without one share
// their host's, a node of another machine has its own (told apart by its host address).
std::string loopback_scope(const Node& n) {
    return !n.netns.empty() ? "netns:" + n.netns : loopback(n.host) ? "host" : "host:" + n.host;
}

// A socket's counters over the interval: since `prev` (the node's earlier sampling) when that
// has the socket, else its totals.
observe::SocketCounters interval_counters(const observe::SocketSample& s,
                                          const NodeIoSample* prev) {
    if (prev)
        for (const auto& p : prev->sockets)
            if (p.file_id == s.file_id) return observe::delta(s.counters, p.counters);
    return s.counters;
}

bool active(const observe::SocketCounters& d) {
    return d.recv().calls + d.send().calls + d.dir[LIVEIO_IO_OTHER].calls != 0;
}

const NodeIoSample* usable(const std::vector<NodeIoSample>& samples, size_t i) {
    return i < samples.size() && samples[i].ok ? &samples[i] : nullptr;
}

// The percentile of a log2 size histogram, as bytes (lower bound of the slot holding it).
std::optional<uint64_t> size_percentile(const observe::SizeHistogram& h, double q) {
    uint64_t total = 0;
    for (uint64_t v : h) total += v;
    if (total == 0) return std::nullopt;
    const uint64_t rank =
        std::max<uint64_t>(1, static_cast<uint64_t>(q * static_cast<double>(total) + 0.999999));
    uint64_t seen = 0;
    for (size_t i = 0; i < h.size(); ++i) {
        seen += h[i];
        if (seen >= rank) return observe::slot_low_ns(i);  // the same log2 slot bounds, in bytes
    }
    return observe::slot_low_ns(h.size() - 1);
}

std::string human_bytes(double b) {
    if (b >= 1 << 30) return fmt::format("{:.1f}G", b / (1 << 30));
    if (b >= 1 << 20) return fmt::format("{:.1f}M", b / (1 << 20));
    if (b >= 1 << 10) return fmt::format("{:.1f}K", b / (1 << 10));
    return fmt::format("{:.0f}", b);
}

std::string ms(uint64_t ns) { return fmt::format("{:.1f}", static_cast<double>(ns) / 1e6); }

std::string latency(const Counters& c, double q) {
    auto p = observe::percentile_ns(c.hist, q);
    if (!p) return "-";
    if (*p >= 1e6) return fmt::format("{:.1f}ms", *p / 1e6);
    return fmt::format("{:.0f}us", *p / 1e3);
}

}  // namespace

NodeIoSample parse_node_io(const nlohmann::json& j) {
    NodeIoSample s;
    if (!j.is_object() || !j.value("ok", false)) {
        s.error =
            j.is_object() ? j.value("error", std::string("not ok")) : "reply is not a JSON object";
        return s;
    }
    s.ok = true;
    s.time_ns = j.value("time_ns", uint64_t{0});
    for (const auto& r : j.value("classes", nlohmann::json::array()))
        s.classes.push_back({class_from_name(r.value("class", std::string())),
                             direction_from_name(r.value("direction", std::string())),
                             observe::counters_from_json(r)});
    for (const auto& r : j.value("syscalls", nlohmann::json::array()))
        s.syscalls.push_back({0, r.value("name", std::string()), observe::counters_from_json(r)});
    for (const auto& r : j.value("sockets", nlohmann::json::array()))
        s.sockets.push_back(observe::socket_from_json(r));
    return s;
}

ConnectionIndex::ConnectionIndex(const ClusterFile& file,
                                 std::initializer_list<const std::vector<NodeIoSample>*> samplings)
    : file_(file) {
    for (const auto* samples : samplings)
        for (size_t i = 0; i < samples->size() && i < file.nodes.size(); ++i)
            for (const auto& s : (*samples)[i].sockets) {
                const auto& c = s.connection;
                if (c.local_addr.empty() || c.remote_port == 0) continue;  // closed, listening
                holders_.emplace(key(i, c.local(), c.remote(), loopback(c.local_addr)), i);
            }
}

std::string ConnectionIndex::key(size_t node, const std::string& local, const std::string& remote,
                                 bool on_loopback) const {
    // Loopback endpoints exist once per namespace (and host): they name a connection only
    // within it.
    return (on_loopback ? loopback_scope(file_.nodes[node]) : "") + "|" + local + "|" + remote;
}

std::optional<size_t> ConnectionIndex::other_end(size_t self,
                                                 const observe::TcpConnection& c) const {
    if (self >= file_.nodes.size() || c.local_addr.empty()) return std::nullopt;
    // The other end's local endpoint is our remote one: its key starts with it.
    auto it = holders_.find(key(self, c.remote(), c.local(), loopback(c.remote_addr)));
    if (it == holders_.end()) return std::nullopt;
    return it->second;
}

std::string peer_name(const ClusterFile& file, const ConnectionIndex& index, size_t self,
                      const observe::TcpConnection& c) {
    if (c.remote_addr.empty()) return "";
    if (c.remote_port == 0) return "(listening)";  // accept calls count on the listening socket
    if (auto other = index.other_end(self, c)) return file.nodes[*other].name;
    if (const Node* n = node_serving(file, c.remote_addr, c.remote_port)) return n->name;
    if (!loopback(c.remote_addr)) {
        const Node* only = nullptr;
        size_t matches = 0;
        for (const Node& n : file.nodes)
            if (n.host == c.remote_addr) only = &n, ++matches;
        if (matches == 1) return only->name;
    }
    return c.remote_addr;
}

std::optional<double> NodeTop::disk_share() const {
    const double disk_ns = static_cast<double>(disk.latency_ns);
    const double total = disk_ns + static_cast<double>(net_in.latency_ns + net_out.latency_ns);
    if (total <= 0) return std::nullopt;
    return disk_ns / total;
}

std::vector<size_t> nodes_to_sample_again(const ClusterFile& file,
                                          const std::vector<NodeIoSample>& before,
                                          const std::vector<NodeIoSample>& now) {
    const ConnectionIndex index(file, {&before, &now});
    std::set<size_t> again;
    for (size_t i = 0; i < file.nodes.size(); ++i) {
        const NodeIoSample* cur = usable(now, i);
        if (!cur) continue;
        const Node& node = file.nodes[i];
        for (const auto& s : cur->sockets) {
            const observe::TcpConnection& c = s.connection;
            // Nodes reach each other on the native and interserver ports; clients (top's own
            // queries among them) on the HTTP port.
            if (c.remote_addr.empty() || c.remote_port == 0 ||
                (c.local_port != node.tcp_port && c.local_port != node.interserver_port))
                continue;
            if (!active(interval_counters(s, usable(before, i))) || index.other_end(i, c)) continue;
            const std::string name = peer_name(file, index, i, c);
            if (std::any_of(file.nodes.begin(), file.nodes.end(),
                            [&](const Node& n) { return n.name == name; }))
                continue;  // named by its address
            for (size_t j = 0; j < file.nodes.size(); ++j) {
                if (j == i || !usable(now, j)) continue;
                const Node& other = file.nodes[j];
                if (loopback(c.remote_addr) ? loopback_scope(other) == loopback_scope(node)
                                            : other.host == c.remote_addr)
                    again.insert(j);
            }
        }
    }
    return {again.begin(), again.end()};
}

TopView top_interval(const ClusterFile& file, const std::vector<NodeIoSample>& before,
                     const std::vector<NodeIoSample>& now, const SampleNodes& sample) {
    const std::vector<size_t> again = nodes_to_sample_again(file, before, now);
    if (again.empty()) return compute_top(file, before, now);
    return compute_top(file, before, now, sample(again));
}

TopView compute_top(const ClusterFile& file, const std::vector<NodeIoSample>& before,
                    const std::vector<NodeIoSample>& now, const std::vector<NodeIoSample>& later) {
    TopView view;
    using PeerKey =
        std::tuple<std::string, std::string, bool, std::string>;  // node, peer, inbound, service
    std::map<PeerKey, PeerTop> peers;
    // Both samplings: a connection whose other end's row left its node's statistics during the
    // interval (the LRU map dropped it) is still named; and the later one, which has the other
    // end of connections made while the nodes were being sampled.
    const ConnectionIndex index(file, {&before, &now, &later});
    for (size_t i = 0; i < file.nodes.size() && i < now.size(); ++i) {
        const Node& node = file.nodes[i];
        const NodeIoSample& cur = now[i];
        NodeTop t;
        t.node = node.name;
        t.ok = cur.ok;
        t.error = cur.error;
        if (!cur.ok) {
            view.nodes.push_back(std::move(t));
            continue;
        }
        const NodeIoSample* prev = usable(before, i);
        t.seconds = prev && cur.time_ns > prev->time_ns
                        ? static_cast<double>(cur.time_ns - prev->time_ns) / 1e9
                        : 0;
        for (const auto& r : cur.classes) {
            Counters d = r.counters;
            if (prev)
                for (const auto& p : prev->classes)
                    if (p.file_class == r.file_class && p.direction == r.direction)
                        d = observe::delta(r.counters, p.counters);
            if (is_disk_class(r.file_class)) t.disk += d;
            if (r.file_class == LIVEIO_CLASS_TCP && r.direction == LIVEIO_IO_READ) t.net_in += d;
            if (r.file_class == LIVEIO_CLASS_TCP && r.direction == LIVEIO_IO_WRITE) t.net_out += d;
        }
        for (const auto& r : cur.syscalls) {
            if (r.name != "epoll_wait") continue;
            Counters d = r.counters;
            if (prev)
                for (const auto& p : prev->syscalls)
                    if (p.name == r.name) d = observe::delta(r.counters, p.counters);
            t.wait += d;
        }
        if (cur.queries && prev && prev->queries && *cur.queries >= *prev->queries)
            t.queries = *cur.queries - *prev->queries;
        for (const auto& s : cur.sockets) {
            const observe::SocketCounters d = interval_counters(s, prev);
            if (!active(d)) continue;
            const uint16_t lport = s.connection.local_port;
            const bool inbound =
                lport == node.tcp_port || lport == node.http_port || lport == node.interserver_port;
            std::string service;
            if (inbound) {
                service = service_name(node, lport);
            } else if (const Node* server =
                           node_serving(file, s.connection.remote_addr, s.connection.remote_port)) {
                service = service_name(*server, s.connection.remote_port);
            } else {
                service = s.connection.remote_addr.empty()
                              ? "?"
                              : std::to_string(s.connection.remote_port);
            }
            std::string peer = peer_name(file, index, i, s.connection);
            if (peer.empty()) peer = "(closed)";
            PeerTop& p = peers[{node.name, peer, inbound, service}];
            p.node = node.name;
            p.peer = peer;
            p.inbound = inbound;
            p.service = service;
            ++p.sockets;
            p.recv += d.recv();
            p.send += d.send();
            add(p.recv_sizes, d.sizes[LIVEIO_IO_READ]);
            add(p.send_sizes, d.sizes[LIVEIO_IO_WRITE]);
        }
        view.nodes.push_back(std::move(t));
    }
    for (auto& [key, p] : peers) view.peers.push_back(std::move(p));
    return view;
}

std::string render_top(const TopView& v) {
    std::string out =
        fmt::format("{:<5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}\n", "node",
                    "queries", "disk ops", "disk B", "disk ms", "net ops", "net in", "net out",
                    "net ms", "epoll ms", "disk%");
    for (const NodeTop& n : v.nodes) {
        if (!n.ok) {
            out += fmt::format("{:<5} DOWN {}\n", n.node, n.error);
            continue;
        }
        const auto share = n.disk_share();
        out += fmt::format("{:<5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}\n",
                           n.node, n.queries ? std::to_string(*n.queries) : "-", n.disk.calls,
                           human_bytes(static_cast<double>(n.disk.bytes)), ms(n.disk.latency_ns),
                           n.net_in.calls + n.net_out.calls,
                           human_bytes(static_cast<double>(n.net_in.bytes)),
                           human_bytes(static_cast<double>(n.net_out.bytes)),
                           ms(n.net_in.latency_ns + n.net_out.latency_ns), ms(n.wait.latency_ns),
                           share ? fmt::format("{:.0f}", *share * 100) : "-");
    }
    out += fmt::format(
        "\n{:<5} {:<3} {:<12} {:<11} {:>4} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>9}\n",
        "node", "dir", "peer", "service", "sock", "recv ops", "recv B", "send ops", "send B",
        "recv p50", "send p50", "lat p50", "lat p99", "ops/query");
    for (const PeerTop& p : v.peers) {
        Counters both = p.recv;
        both += p.send;
        std::optional<uint64_t> queries;
        for (const NodeTop& n : v.nodes)
            if (n.node == p.node) queries = n.queries;
        const auto rs = size_percentile(p.recv_sizes, 0.5), ss = size_percentile(p.send_sizes, 0.5);
        out += fmt::format(
            "{:<5} {:<3} {:<12} {:<11} {:>4} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} "
            "{:>9}\n",
            p.node,
            p.peer == "(closed)" ? "?"
            : p.inbound          ? "<-"
                                 : "->",
            p.peer, p.service, p.sockets, p.recv.calls,
            human_bytes(static_cast<double>(p.recv.bytes)), p.send.calls,
            human_bytes(static_cast<double>(p.send.bytes)),
            rs ? human_bytes(static_cast<double>(*rs)) : "-",
            ss ? human_bytes(static_cast<double>(*ss)) : "-", latency(both, 0.5),
            latency(both, 0.99),
            queries && *queries ? fmt::format("{:.1f}", static_cast<double>(both.calls) /
                                                            static_cast<double>(*queries))
                                : "-");
    }
    return out;
}

nlohmann::json top_json(const TopView& v) {
    nlohmann::json nodes = nlohmann::json::array(), peers = nlohmann::json::array();
    for (const NodeTop& n : v.nodes) {
        nlohmann::json j = {{"node", n.node}, {"ok", n.ok}};
        if (!n.ok) {
            j["error"] = n.error;
        } else {
            j.update({{"seconds", n.seconds},
                      {"disk", observe::to_json(n.disk)},
                      {"net_in", observe::to_json(n.net_in)},
                      {"net_out", observe::to_json(n.net_out)},
                      {"epoll_wait", observe::to_json(n.wait)}});
            if (n.queries) j["queries"] = *n.queries;
            if (auto s = n.disk_share()) j["disk_share"] = *s;
        }
        nodes.push_back(std::move(j));
    }
    for (const PeerTop& p : v.peers)
        peers.push_back({{"node", p.node},
                         {"peer", p.peer},
                         {"inbound", p.inbound},
                         {"service", p.service},
                         {"sockets", p.sockets},
                         {"recv", observe::to_json(p.recv)},
                         {"send", observe::to_json(p.send)},
                         {"recv_sizes", p.recv_sizes},
                         {"send_sizes", p.send_sizes}});
    return {{"nodes", std::move(nodes)}, {"peers", std::move(peers)}};
}

}  // namespace liveio::cluster
