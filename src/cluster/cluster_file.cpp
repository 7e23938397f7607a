#include "cluster/cluster_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace liveio::cluster {
namespace {

using nlohmann::json;

bool valid_name(const std::string& s) {
    return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
    });
}

}  // namespace

size_t ClusterFile::shards() const {
    size_t n = 0;
    for (const Node& node : nodes) n = std::max(n, node.shard + 1);
    return n;
}

Result<ClusterFile> parse_cluster_file(const std::string& text) {
    ClusterFile file;
    try {
        const json j = json::parse(text);
        file.name = j.value("name", file.name);
        file.table = j.value("table", file.table);
        file.distributed_table = j.value("distributed_table", file.distributed_table);
        file.history_table = j.value("history_table", file.history_table);
        file.history_distributed_table =
            j.value("history_distributed_table", file.history_distributed_table);
        for (const json& n : j.at("nodes")) {
            Node node;
            node.name = n.at("name").get<std::string>();
            node.shard = n.value("shard", size_t{0});
            node.replica = n.value("replica", size_t{0});
            node.host = n.at("host").get<std::string>();
            node.http_port = n.value("http_port", node.http_port);
            node.tcp_port = n.value("tcp_port", node.tcp_port);
            node.interserver_port = n.value("interserver_port", node.interserver_port);
            node.data_dir = n.value("data_dir", std::string());
            node.netns = n.value("netns", std::string());
            node.server_pid = n.value("server_pid", 0);
            if (n.contains("control")) {
                const json& c = n["control"];
                node.control.socket = c.value("socket", std::string());
                node.control.port = c.value("port", uint16_t{0});
                node.control.token_file = c.value("token_file", std::string());
            }
            file.nodes.push_back(std::move(node));
        }
    } catch (const std::exception& e) {
        return make_error(EINVAL, fmt::format("cluster file: {}", e.what()));
    }
    if (!valid_name(file.name))
        return make_error(EINVAL, fmt::format("cluster file: bad cluster name '{}'", file.name));
    if (file.nodes.empty()) return make_error(EINVAL, "cluster file: no nodes");
    for (const Node& node : file.nodes) {
        if (!valid_name(node.name))
            return make_error(EINVAL, fmt::format("cluster file: bad node name '{}'", node.name));
        if (node.host.empty() || node.host.find_first_of("<>&\"' ") != std::string::npos)
            return make_error(
                EINVAL, fmt::format("cluster file: node {}: bad host '{}'", node.name, node.host));
    }
    for (size_t s = 0; s < file.shards(); ++s)
        if (std::none_of(file.nodes.begin(), file.nodes.end(),
                         [&](const Node& n) { return n.shard == s; }))
            return make_error(EINVAL, fmt::format("cluster file: shard {} has no node", s));
    return file;
}

std::string format_cluster_file(const ClusterFile& file) {
    json nodes = json::array();
    for (const Node& n : file.nodes) {
        json node = {{"name", n.name},
                     {"shard", n.shard},
                     {"replica", n.replica},
                     {"host", n.host},
                     {"http_port", n.http_port},
                     {"tcp_port", n.tcp_port},
                     {"interserver_port", n.interserver_port},
                     {"data_dir", n.data_dir}};
        if (!n.netns.empty()) node["netns"] = n.netns;
        if (n.server_pid > 0) node["server_pid"] = n.server_pid;
        if (!n.control.socket.empty() || n.control.port) {
            json c = json::object();
            if (!n.control.socket.empty()) c["socket"] = n.control.socket;
            if (n.control.port) c["port"] = n.control.port;
            if (!n.control.token_file.empty()) c["token_file"] = n.control.token_file;
            node["control"] = c;
        }
        nodes.push_back(std::move(node));
    }
    const json j = {{"name", file.name},
                    {"table", file.table},
                    {"distributed_table", file.distributed_table},
                    {"history_table", file.history_table},
                    {"history_distributed_table", file.history_distributed_table},
                    {"nodes", nodes}};
    return j.dump(2) + "\n";
}

Result<ClusterFile> read_cluster_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) return make_error(ENOENT, fmt::format("cannot read cluster file {}", path));
    std::stringstream ss;
    ss << in.rdbuf();
    auto file = parse_cluster_file(ss.str());
    if (!file)
        return make_error(file.error().code, fmt::format("{}: {}", path, file.error().message));
    return file;
}

Result<void> write_file_atomic(const std::string& path, const std::string& text, mode_t mode) {
    const std::string tmp = path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return make_error(errno, fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
    size_t done = 0;
    while (done < text.size()) {
        const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int err = errno;
            ::close(fd);
            return make_error(err, fmt::format("writing {}: {}", tmp, std::strerror(err)));
        }
        done += static_cast<size_t>(n);
    }
    ::fchmod(fd, mode);
    const bool synced = ::fsync(fd) == 0;
    ::close(fd);
    if (!synced || ::rename(tmp.c_str(), path.c_str()) != 0)
        return make_error(errno, fmt::format("cannot replace {}: {}", path, std::strerror(errno)));
    return {};
}

std::string every_node_cluster(const ClusterFile& file) { return file.name + "_nodes"; }

std::string remote_servers_xml(const ClusterFile& file) {
    std::string shards;
    for (size_t s = 0; s < file.shards(); ++s) {
        std::string replicas;
        for (const Node& n : file.nodes)
            if (n.shard == s)
                replicas += fmt::format("<replica><host>{}</host><port>{}</port></replica>", n.host,
                                        n.tcp_port);
        shards += fmt::format("            <shard>{}</shard>\n", replicas);
    }
    // Every node its own shard: the I/O history differs per node (replicas included), and a
    // Distributed table over this cluster reads all of it.
    std::string nodes;
    for (const Node& n : file.nodes)
        nodes += fmt::format(
            "            <shard><replica><host>{}</host><port>{}</port></replica></shard>\n",
            n.host, n.tcp_port);
    return fmt::format(
        "    <remote_servers>\n        <{0}>\n{1}        </{0}>\n        <{2}>\n{3}        "
        "</{2}>\n    </remote_servers>\n",
        file.name, shards, every_node_cluster(file), nodes);
}

}  // namespace liveio::cluster
