// The /metrics HTTP server over real loopback sockets.
#include <gtest/gtest.h>

#include <thread>

#include "clickhouse/http_client.h"
#include "observe/http_server.h"

namespace liveio::observe {
namespace {

TEST(HttpServer, AnswersGetRequestsWithTheHandlersReply) {
    auto server = HttpServer::listen("127.0.0.1:0");
    ASSERT_TRUE(server) << server.error().message;
    ASSERT_GT(server->port(), 0);
    std::thread serving([&] {
        for (int served = 0; served < 3;) {
            auto r = server->serve_one(1000, [](const HttpRequest& req) {
                if (req.path == "/metrics")
                    return HttpReply{200, "text/plain; version=0.0.4", "a 1\n"};
                return HttpReply{404, "text/plain", "not found\n"};
            });
            ASSERT_TRUE(r) << r.error().message;
            served += *r;
        }
    });
    clickhouse::HttpClientOptions o;
    o.port = server->port();
    clickhouse::HttpClient client(o);
    auto ok = client.request("GET", "/metrics?x=1", "");
    ASSERT_TRUE(ok) << ok.error().message;
    EXPECT_EQ(ok->status, 200);
    EXPECT_EQ(ok->body, "a 1\n");
    client.disconnect();
    auto missing = client.request("GET", "/other", "");
    ASSERT_TRUE(missing);
    EXPECT_EQ(missing->status, 404);
    client.disconnect();
    auto post = client.request("POST", "/metrics", "x");
    ASSERT_TRUE(post);
    EXPECT_EQ(post->status, 405);
    serving.join();
}

TEST(HttpServer, IdleWaitReturnsWithoutAConnection) {
    auto server = HttpServer::listen(":0");
    ASSERT_TRUE(server) << server.error().message;
    EXPECT_EQ(server->host(), "127.0.0.1");
    auto r = server->serve_one(10, [](const HttpRequest&) { return HttpReply{}; });
    ASSERT_TRUE(r);
    EXPECT_FALSE(*r);
}

TEST(HttpServer, BadAddressesAreErrors) {
    for (const char* bad : {"127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", "host.example:80"}) {
        auto s = HttpServer::listen(bad);
        ASSERT_FALSE(s) << bad;
        EXPECT_NE(s.error().message.find("listen address"), std::string::npos) << s.error().message;
    }
    auto first = HttpServer::listen("127.0.0.1:0");
    ASSERT_TRUE(first);
    auto second = HttpServer::listen("127.0.0.1:" + std::to_string(first->port()));
    ASSERT_FALSE(second);
    EXPECT_NE(second.error().message.find("cannot listen"), std::string::npos)
        << second.error().message;
}

}  // namespace
}  // namespace liveio::observe
