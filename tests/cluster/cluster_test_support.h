// What the namespace-cluster tests share: the reason to skip, a cluster name and state root
// private to the test process (taken down whatever an assertion left), running the liveio CLI
// under test, and a query on a node from inside its namespace.
#pragma once

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "clickhouse/http_client.h"
#include "clickhouse/server.h"
#include "cluster/cluster_file.h"
#include "cluster/harness.h"
#include "cluster/netns.h"
#include "control/command.h"

namespace liveio::cluster::test_support {

inline std::string skip_reason() {
    if (auto why = netns_unavailable_reason(); !why.empty()) return why;
    if (auto bin = clickhouse::find_server_binary(); !bin) return bin.error().message;
    if (auto ip = control::run_command({"ip", "-V"}); !ip || ip->status != 0)
        return "iproute2 (ip) is not installed";
    return "";
}

// A cluster name and state root private to this test process.
struct Names {
    std::string name;
    std::string root;
    explicit Names(const char* tag) {
        name = std::string(tag) + std::to_string(::getpid());
        char tmpl[] = "/tmp/liveio-test-cluster-XXXXXX";
        root = ::mkdtemp(tmpl) ? tmpl : "";
    }
    ~Names() {
        (void)down(name, root);  // whatever a failed assertion left
        std::error_code ec;
        std::filesystem::remove_all(root, ec);
    }
};

inline control::CommandOutput cli(
    const std::vector<std::string>& args,
    std::chrono::milliseconds timeout = std::chrono::milliseconds(300000)) {
    std::vector<std::string> argv{LIVEIO_CLI_PATH};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = control::run_command(argv, timeout);
    if (!r) return {-1, r.error().message};
    return *r;
}

// Runs `sql` on `node`'s HTTP port from inside its namespace.
inline Result<std::string> query(const Node& node, const std::string& sql) {
    auto scope = NetnsScope::enter(node.netns);
    if (!scope) return scope.error();
    clickhouse::HttpClient c(
        {.host = node.host, .port = node.http_port, .timeout = std::chrono::milliseconds(60000)});
    return c.query(sql);
}

}  // namespace liveio::cluster::test_support
