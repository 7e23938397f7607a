// What the cluster tests share: the reason to skip, a cluster name and state root private to
// the test process (taken down whatever an assertion left), running the liveio CLI under test,
// a query on a node from inside its namespace, and the fixture that brings a cluster up.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>

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

// The fixture of the tests on a cluster the harness makes: SetUp skips (with the reason) where
// such a cluster cannot run; the test's cluster has a name and state root of its own (`n`) and
// is taken down when the test ends, whatever failed. up() brings it up: call it through
// ASSERT_NO_FATAL_FAILURE, so that a failed `up` ends the test.
class ClusterTest : public ::testing::Test {
protected:
    // Loopback clusters (--loopback) need only clickhouse-server; namespace ones also root,
    // netns rights and iproute2.
    explicit ClusterTest(bool loopback = false) : loopback_(loopback) {}

    void SetUp() override {
        if (loopback_) {
            if (auto bin = clickhouse::find_server_binary(); !bin)
                GTEST_SKIP() << bin.error().message;
        } else if (auto why = skip_reason(); !why.empty()) {
            GTEST_SKIP() << why;
        }
        ASSERT_FALSE(n.root.empty()) << "no state root: mkdtemp failed";
    }

    // `liveio cluster up --name N --root R [--loopback] ARGS...`, which must succeed and make
    // `nodes` nodes; `file` is then its cluster file and `up_output` what it printed.
    void up(const std::vector<std::string>& args, size_t nodes) {
        std::vector<std::string> a{"cluster", "up", "--name", n.name, "--root", n.root};
        if (loopback_) a.push_back("--loopback");
        a.insert(a.end(), args.begin(), args.end());
        up_output = cli(a);
        ASSERT_EQ(up_output.status, 0) << up_output.output;
        auto f = read_cluster_file(cluster_file_path(n.name, n.root));
        ASSERT_TRUE(f) << f.error().message;
        ASSERT_EQ(f->nodes.size(), nodes) << up_output.output;
        file = std::move(f).value();
    }

    // `liveio ARGS... --name N --root R [--timeout TIMEOUT]`, the command bounded by `limit`.
    control::CommandOutput on_cluster(
        std::vector<std::string> args, const std::string& timeout = "",
        std::chrono::milliseconds limit = std::chrono::milliseconds(300000)) const {
        args.insert(args.end(), {"--name", n.name, "--root", n.root});
        if (!timeout.empty()) args.insert(args.end(), {"--timeout", timeout});
        return cli(args, limit);
    }

    Names n{next_tag().c_str()};
    ClusterFile file;
    control::CommandOutput up_output;

private:
    // Cluster names are short (they name namespaces): c0_, c1_, ... and the pid.
    static std::string next_tag() {
        static std::atomic<int> count{0};
        return "c" + std::to_string(count++) + "_";
    }
    bool loopback_;
};

class LoopbackClusterTest : public ClusterTest {
protected:
    LoopbackClusterTest() : ClusterTest(/*loopback=*/true) {}
};

// Runs `sql` on `node`'s HTTP port from inside its namespace.
inline Result<std::string> query(const Node& node, const std::string& sql) {
    auto scope = NetnsScope::enter(node.netns);
    if (!scope) return scope.error();
    clickhouse::HttpClient c(
        {.host = node.host, .port = node.http_port, .timeout = std::chrono::milliseconds(60000)});
    return c.query(sql);
}

}  // namespace liveio::cluster::test_support
