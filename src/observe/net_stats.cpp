#include "observe/net_stats.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "ebpf/map.h"

namespace liveio::observe {
namespace {

static_assert(LIVEIO_SIZE_SLOTS == LIVEIO_HIST_SLOTS,
              "SocketCounters keeps sizes beside latency histograms");

uint64_t sub(uint64_t a, uint64_t b) { return a >= b ? a - b : 0; }

// "0100007F" (a u32 printed in host order) or 32 hex digits (four of them) -> address text.
Result<std::string> parse_address(std::string_view hex) {
    auto word = [&](size_t i) -> Result<uint32_t> {
        uint32_t v = 0;
        for (char c : hex.substr(i * 8, 8)) {
            const int d = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                          : (c >= 'A' && c <= 'F')                    ? c - 'A' + 10
                          : (c >= 'a' && c <= 'f')                    ? c - 'a' + 10
                                                                      : -1;
            if (d < 0) return make_error(EINVAL, fmt::format("bad address '{}'", hex));
            v = v << 4 | static_cast<uint32_t>(d);
        }
        return v;
    };
    char buf[INET6_ADDRSTRLEN] = {};
    if (hex.size() == 8) {
        auto w = word(0);
        if (!w) return w.error();
        in_addr a;
        a.s_addr = *w;  // the kernel prints the network-order word as a host-order number
        ::inet_ntop(AF_INET, &a, buf, sizeof buf);
        return std::string(buf);
    }
    if (hex.size() != 32) return make_error(EINVAL, fmt::format("bad address '{}'", hex));
    uint32_t words[4];
    for (size_t i = 0; i < 4; ++i) {
        auto w = word(i);
        if (!w) return w.error();
        words[i] = *w;
    }
    in6_addr a;
    std::memcpy(&a, words, sizeof a);
    if (IN6_IS_ADDR_V4MAPPED(&a)) {
        in_addr v4;
        std::memcpy(&v4, &a.s6_addr[12], 4);
        ::inet_ntop(AF_INET, &v4, buf, sizeof buf);
        return std::string(buf);
    }
    ::inet_ntop(AF_INET6, &a, buf, sizeof buf);
    return std::string(buf);
}

Result<std::pair<std::string, uint16_t>> parse_endpoint(std::string_view text) {
    const size_t colon = text.find(':');
    if (colon == std::string_view::npos)
        return make_error(EINVAL, fmt::format("bad endpoint '{}'", text));
    auto addr = parse_address(text.substr(0, colon));
    if (!addr) return addr.error();
    unsigned port = 0;
    std::istringstream in{std::string(text.substr(colon + 1))};
    if (!(in >> std::hex >> port) || port > 65535)
        return make_error(EINVAL, fmt::format("bad port in '{}'", text));
    return std::make_pair(*addr, static_cast<uint16_t>(port));
}

std::string endpoint(const std::string& addr, uint16_t port) {
    if (addr.empty()) return "";
    return addr.find(':') != std::string::npos ? fmt::format("[{}]:{}", addr, port)
                                               : fmt::format("{}:{}", addr, port);
}

uint64_t sockfs_dev() {
    static const uint64_t dev = [] {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct stat st {};
        const bool ok = fd >= 0 && ::fstat(fd, &st) == 0;
        if (fd >= 0) ::close(fd);
        return ok ? static_cast<uint64_t>(st.st_dev) : 0;
    }();
    return dev;
}

}  // namespace

SocketCounters SocketCounters::from(const liveio_socket_stats& raw) {
    SocketCounters c;
    for (size_t d = 0; d < 3; ++d) {
        c.dir[d] = Counters::from(raw.dir[d]);
        std::copy(std::begin(raw.sizes[d]), std::end(raw.sizes[d]), c.sizes[d].begin());
    }
    return c;
}

SocketCounters delta(const SocketCounters& now, const SocketCounters& before) {
    SocketCounters d;
    for (size_t i = 0; i < 3; ++i) {
        d.dir[i] = delta(now.dir[i], before.dir[i]);
        const bool restarted = now.dir[i].calls < before.dir[i].calls;
        for (size_t s = 0; s < d.sizes[i].size(); ++s)
            d.sizes[i][s] = restarted ? now.sizes[i][s] : sub(now.sizes[i][s], before.sizes[i][s]);
    }
    return d;
}

Result<std::vector<SocketRow>> read_sockets(ebpf::Map& map) {
    const auto& s = map.spec();
    if (s.key_size != sizeof(uint64_t) || s.value_size != sizeof(liveio_socket_stats))
        return make_error(
            EINVAL,
            fmt::format(
                "map '{}' has {}-byte keys and {}-byte values; socket_stats has {}-byte keys and "
                "{}-byte values (struct liveio_socket_stats)",
                s.name, s.key_size, s.value_size, sizeof(uint64_t), sizeof(liveio_socket_stats)));
    std::vector<SocketRow> rows;
    uint64_t key = 0, next = 0;
    const void* prev = nullptr;
    liveio_socket_stats raw;
    // Bounded: an LRU map that other threads keep changing could otherwise lead next_key on.
    for (uint32_t i = 0; i < s.max_entries * 2 && map.next_key(prev, &next) == 0; ++i) {
        key = next;
        prev = &key;
        if (map.copy_value(&key, &raw) != 0) continue;  // dropped meanwhile
        rows.push_back({key, SocketCounters::from(raw), connection_from(raw.local, raw.peer)});
    }
    return rows;
}

TcpConnection connection_from(const liveio_sock_addr& local, const liveio_sock_addr& peer) {
    auto text = [](const liveio_sock_addr& a) -> std::string {
        char buf[INET6_ADDRSTRLEN] = {};
        if (a.family != AF_INET && a.family != AF_INET6) return "";
        ::inet_ntop(static_cast<int>(a.family), a.addr, buf, sizeof buf);
        return buf;
    };
    TcpConnection c;
    c.local_addr = text(local);
    c.remote_addr = text(peer);
    if (!c.local_addr.empty()) c.local_port = static_cast<uint16_t>(local.port);
    if (!c.remote_addr.empty()) c.remote_port = static_cast<uint16_t>(peer.port);
    return c;
}

std::string TcpConnection::local() const { return endpoint(local_addr, local_port); }
std::string TcpConnection::remote() const { return endpoint(remote_addr, remote_port); }

Result<std::map<uint64_t, TcpConnection>> parse_proc_net_tcp(const std::string& text) {
    std::map<uint64_t, TcpConnection> out;
    std::istringstream in(text);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
        std::istringstream f(line);
        std::string sl, local, remote, state, queues, timer, retr, uid, timeout;
        uint64_t inode = 0;
        if (!(f >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >>
              inode))
            continue;
        if (inode == 0) continue;  // TIME_WAIT and other sockets without a file
        auto l = parse_endpoint(local);
        auto r = parse_endpoint(remote);
        if (!l) return l.error();
        if (!r) return r.error();
        out[inode] = {l->first, l->second, r->first, r->second};
    }
    return out;
}

Result<std::map<uint64_t, TcpConnection>> tcp_connections(pid_t pid) {
    std::map<uint64_t, TcpConnection> all;
    for (const char* table : {"tcp", "tcp6"}) {
        const std::string path = fmt::format("/proc/{}/net/{}", pid, table);
        std::ifstream in(path);
        if (!in) {
            if (std::string(table) == "tcp6") continue;  // no IPv6 in this kernel
            return make_error(
                errno ? errno : ENOENT,
                fmt::format("cannot read {}: {}", path, std::strerror(errno ? errno : ENOENT)));
        }
        std::stringstream text;
        text << in.rdbuf();
        auto rows = parse_proc_net_tcp(text.str());
        if (!rows) return make_error(rows.error().code, path + ": " + rows.error().message);
        all.merge(*rows);
    }
    return all;
}

uint64_t socket_inode(uint64_t file_id) { return file_id ^ (sockfs_dev() << 32); }

std::vector<SocketSample> SocketPeers::resolve(const std::vector<SocketRow>& rows) {
    bool unknown = false;
    std::set<uint64_t> present;
    for (const auto& r : rows) {
        present.insert(r.file_id);
        if (!r.recorded.remote_addr.empty())
            known_[r.file_id] = r.recorded;
        else
            unknown |= !known_.count(r.file_id);
    }
    std::erase_if(known_, [&](const auto& kv) { return !present.count(kv.first); });
    if (unknown) {
        if (auto table = tcp_connections(pid_); table) {
            for (const auto& r : rows)
                if (!known_.count(r.file_id))
                    if (auto it = table->find(socket_inode(r.file_id)); it != table->end())
                        known_[r.file_id] = it->second;
        }
    }
    std::vector<SocketSample> out;
    out.reserve(rows.size());
    for (const auto& r : rows) {
        auto it = known_.find(r.file_id);
        out.push_back({r.file_id, it != known_.end() ? it->second : TcpConnection{}, r.counters});
    }
    return out;
}

nlohmann::json to_json(const Counters& c) {
    return {{"calls", c.calls},
            {"errors", c.errors},
            {"bytes", c.bytes},
            {"latency_ns", c.latency_ns},
            {"hist", c.hist}};
}

Counters counters_from_json(const nlohmann::json& j) {
    Counters c;
    if (!j.is_object()) return c;
    c.calls = j.value("calls", uint64_t{0});
    c.errors = j.value("errors", uint64_t{0});
    c.bytes = j.value("bytes", uint64_t{0});
    c.latency_ns = j.value("latency_ns", uint64_t{0});
    if (auto it = j.find("hist"); it != j.end() && it->is_array())
        for (size_t i = 0; i < c.hist.size() && i < it->size(); ++i)
            c.hist[i] = (*it)[i].get<uint64_t>();
    return c;
}

nlohmann::json to_json(const SocketSample& s) {
    return {{"file_id", s.file_id},
            {"local", s.connection.local()},
            {"remote", s.connection.remote()},
            {"recv", to_json(s.counters.recv())},
            {"send", to_json(s.counters.send())},
            {"other", to_json(s.counters.dir[LIVEIO_IO_OTHER])},
            {"recv_sizes", s.counters.sizes[LIVEIO_IO_READ]},
            {"send_sizes", s.counters.sizes[LIVEIO_IO_WRITE]}};
}

SocketSample socket_from_json(const nlohmann::json& j) {
    SocketSample s;
    if (!j.is_object()) return s;
    s.file_id = j.value("file_id", uint64_t{0});
    auto split = [](const std::string& ep, std::string& addr, uint16_t& port) {
        const size_t colon = ep.rfind(':');
        if (colon == std::string::npos) return;
        addr = ep.substr(0, colon);
        if (addr.size() >= 2 && addr.front() == '[') addr = addr.substr(1, addr.size() - 2);
        port = static_cast<uint16_t>(std::strtoul(ep.c_str() + colon + 1, nullptr, 10));
    };
    split(j.value("local", std::string()), s.connection.local_addr, s.connection.local_port);
    split(j.value("remote", std::string()), s.connection.remote_addr, s.connection.remote_port);
    s.counters.dir[LIVEIO_IO_READ] = counters_from_json(j.value("recv", nlohmann::json()));
    s.counters.dir[LIVEIO_IO_WRITE] = counters_from_json(j.value("send", nlohmann::json()));
    s.counters.dir[LIVEIO_IO_OTHER] = counters_from_json(j.value("other", nlohmann::json()));
    auto sizes = [&](const char* key, SizeHistogram& h) {
        if (auto it = j.find(key); it != j.end() && it->is_array())
            for (size_t i = 0; i < h.size() && i < it->size(); ++i) h[i] = (*it)[i].get<uint64_t>();
    };
    sizes("recv_sizes", s.counters.sizes[LIVEIO_IO_READ]);
    sizes("send_sizes", s.counters.sizes[LIVEIO_IO_WRITE]);
    return s;
}

}  // namespace liveio::observe
