// A parent that blocks SIGTERM/SIGINT (to take them in a watcher thread, as `liveio demo`
// does) still stops its servers cleanly: the server must not inherit the blocked mask.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>

#include <fstream>
#include <string>

#include "clickhouse/server.h"

namespace liveio::clickhouse {
namespace {

// SigBlk of /proc/PID/status: the blocked-signal mask, hex.
std::string blocked_mask(pid_t pid) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("SigBlk:", 0) == 0) return line.substr(line.find_first_not_of(" \t", 7));
    return "";
}

TEST(LocalServerSignals, ServerStartedWithSignalsBlockedStopsGracefully) {
    if (auto b = find_server_binary(); !b) GTEST_SKIP() << b.error().message;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &block, &old), 0);
    ServerOptions o;
    o.stop_timeout = std::chrono::milliseconds(20000);
    auto server = LocalServer::start(o);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    ASSERT_TRUE(server) << server.error().message;
    // The server's main thread blocks neither signal (ClickHouse's own threads may).
    const std::string mask = blocked_mask(server->pid());
    ASSERT_FALSE(mask.empty());
    const unsigned long long bits = std::stoull(mask, nullptr, 16);
    EXPECT_EQ(bits & (1ull << (SIGTERM - 1)), 0u) << "SigBlk " << mask;
    // stop() fails when SIGTERM did not end the server and it had to be killed.
    auto stopped = server->stop();
    EXPECT_TRUE(stopped) << stopped.error().message;
}

}  // namespace
}  // namespace liveio::clickhouse
