// The control transport on its own: observe::HttpServer's unix socket (owner-only), POST
// bodies and Authorization header, reached through the cluster control client over both the
// unix socket and TCP, with a handler that reports what it was given.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include <nlohmann/json.hpp>

#include "cluster/control.h"
#include "observe/http_server.h"

namespace liveio::cluster {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;

TEST(ControlTransport, UnixAndTcpRequestsReachTheHandlerWithBodyAndAuthorization) {
    char tmpl[] = "/tmp/liveio-test-control-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    const std::string sock = std::string(tmpl) + "/control.sock";
    auto local = observe::HttpServer::listen_unix(sock);
    ASSERT_TRUE(local) << local.error().message;
    local->allow_post(true);
    struct stat st {};
    ASSERT_EQ(::stat(sock.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    auto tcp = observe::HttpServer::listen("127.0.0.1:0");
    ASSERT_TRUE(tcp) << tcp.error().message;

    std::atomic<bool> stop{false};
    std::thread serving([&] {
        for (int i = 0; i < 400 && !stop; ++i) {  // bounded: 400 x 50 ms at most
            auto r = observe::HttpServer::serve_any(
                {&*tcp, &*local}, 50, [](const observe::HttpRequest& req) {
                    const json j = {{"method", req.method},
                                    {"path", req.path},
                                    {"query", req.query},
                                    {"local", req.local},
                                    {"authorization", req.authorization},
                                    {"body", req.body},
                                    {"ok", true}};
                    return observe::HttpReply{200, "application/json", j.dump()};
                });
            ASSERT_TRUE(r) << r.error().message;
        }
    });

    Node node;
    node.name = "n0";
    node.host = "127.0.0.1";
    node.control.socket = sock;
    auto over_unix = control_request(node, "POST", "/control/attach?x=1",
                                     R"({"policies":["prefetch"]})", milliseconds(10000));
    ASSERT_TRUE(over_unix) << over_unix.error().message;
    EXPECT_EQ(over_unix->status, 200);
    EXPECT_EQ(over_unix->via, "unix:" + sock);
    const json u = json::parse(over_unix->body);
    EXPECT_EQ(u["method"], "POST");
    EXPECT_EQ(u["path"], "/control/attach");
    EXPECT_EQ(u["query"], "x=1");
    EXPECT_EQ(u["local"], true);
    EXPECT_EQ(u["body"], R"({"policies":["prefetch"]})");
    EXPECT_EQ(u["authorization"], "");

    node.control.port = tcp->port();
    auto over_tcp = control_request_tcp(node, "GET", "/control/ping", "", "0123456789abcdef0123",
                                        milliseconds(10000));
    ASSERT_TRUE(over_tcp) << over_tcp.error().message;
    const json t = json::parse(over_tcp->body);
    EXPECT_EQ(t["local"], false);
    EXPECT_EQ(t["authorization"], "Bearer 0123456789abcdef0123");
    // POST is off on the TCP listener here: refused before the handler.
    auto post = control_request_tcp(node, "POST", "/control/detach", "{}", "", milliseconds(10000));
    ASSERT_TRUE(post) << post.error().message;
    EXPECT_EQ(post->status, 405);
    stop = true;
    serving.join();

    // Nobody listens any more: refused at once, not waited on.
    local =
        observe::HttpServer::listen("127.0.0.1:0");  // the unix listener closes and its file goes
    EXPECT_NE(::access(sock.c_str(), F_OK), 0);
    auto gone = control_request(node, "GET", "/control/ping", "", milliseconds(2000));
    EXPECT_FALSE(gone);
    ::rmdir(tmpl);
}

}  // namespace
}  // namespace liveio::cluster
