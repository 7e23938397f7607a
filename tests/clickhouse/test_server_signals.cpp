// The server process as the test bed sets it up: a parent that blocks SIGTERM/SIGINT (to take
// them in a watcher thread, as `liveio demo` does) still stops its servers cleanly (the server
// must not inherit the blocked mask), and ServerOptions::environment reaches the server.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

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

// /proc/PID/environ as NAME=value strings.
std::vector<std::string> environment_of(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/environ");
    std::vector<std::string> out;
    for (std::string var; std::getline(in, var, '\0');) out.push_back(var);
    return out;
}

TEST(LocalServerEnvironment, AddedVariablesReachTheServerAndReplaceInheritedOnes) {
    if (auto b = find_server_binary(); !b) GTEST_SKIP() << b.error().message;
    ::setenv("LIVEIO_TESTBED_REPLACED", "parent", 1);
    ServerOptions o;
    o.environment = {"LIVEIO_TESTBED_ADDED=42", "LIVEIO_TESTBED_REPLACED=child", kStaticTlsReserve};
    auto server = LocalServer::start(o);
    ::unsetenv("LIVEIO_TESTBED_REPLACED");
    ASSERT_TRUE(server) << server.error().message;
    const auto env = environment_of(server->pid());
    auto count = [&](const std::string& var) { return std::count(env.begin(), env.end(), var); };
    EXPECT_EQ(count("LIVEIO_TESTBED_ADDED=42"), 1);
    EXPECT_EQ(count("LIVEIO_TESTBED_REPLACED=child"), 1);
    EXPECT_EQ(count("LIVEIO_TESTBED_REPLACED=parent"), 0);
    EXPECT_EQ(count(kStaticTlsReserve), 1);
    EXPECT_FALSE(env.empty() ||
                 count("PATH=" + std::string(std::getenv("PATH") ? std::getenv("PATH") : "")) == 0)
        << "inherited variables must stay";
    auto ping = server->client().ping();
    EXPECT_TRUE(ping) << ping.error().message;
}

}  // namespace
}  // namespace liveio::clickhouse
