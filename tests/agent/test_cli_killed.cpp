// A `liveio attach` or `liveio detach` killed half-way (SIGKILL: an OOM kill, a user's kill -9)
// at each point of src/inject/kill_point.h, inside the remote dlopen/dlclose included. The target
// (liveio-io-target with idle threads asleep in recv/read, checking every byte and errno of its
// I/O, forking and execing all along) must keep running without a wrong byte; `liveio detach` must
// then clean up whatever the killed command left (an agent loaded, hooks installed, an agent that
// stopped serving), and a later attach/detach must work and leave nothing of liveio mapped.
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "agent/mmap_min_addr.h"
#include "agent/process_util.h"
#include "control/protocol.h"

namespace liveio::agent {
namespace {

using testing::CliResult;
using testing::IoTarget;
using testing::run_cli;

bool agent_mapped(pid_t pid) {
    return testing::read_file("/proc/" + std::to_string(pid) + "/maps").find("liveio-agent.so") !=
           std::string::npos;
}

// `liveio ARGS` with LIVEIO_KILL_AT=point in its environment.
CliResult run_cli_killed_at(const std::string& point, const std::vector<std::string>& args) {
    ::setenv("LIVEIO_KILL_AT", point.c_str(), 1);
    CliResult r = run_cli(args);
    ::unsetenv("LIVEIO_KILL_AT");
    return r;
}

struct KillCase {
    const char* command;  // "attach" or "detach"
    const char* point;
    const char* mechanism;
};

class CliKilled : public ::testing::TestWithParam<KillCase> {};

TEST_P(CliKilled, TargetResumesAndALaterAttachWorks) {
    const KillCase c = GetParam();
    if (const std::string why = testing::ptrace_unavailable(); !why.empty()) GTEST_SKIP() << why;
    std::optional<testing::MmapMinAddrZero> page_zero;
    if (std::string(c.mechanism) == "rewrite") {
        page_zero.emplace();
        if (!page_zero->ok()) GTEST_SKIP() << page_zero->reason();
    }
    IoTarget target({}, 2, {"--idle"});
    ASSERT_TRUE(target.wait_ready()) << target.output();
    const std::string pid = std::to_string(target.pid());

    if (std::string(c.command) == "detach") {
        const CliResult a = run_cli({"attach", pid, "--mechanism", c.mechanism});
        ASSERT_EQ(a.status, 0) << a.output;
        ASSERT_TRUE(target.rearm_idle_calls())
            << target.output();  // idle threads asleep inside hooks
    }
    const CliResult killed = run_cli_killed_at(
        c.point, std::string(c.command) == "attach"
                     ? std::vector<std::string>{"attach", pid, "--mechanism", c.mechanism}
                     : std::vector<std::string>{"detach", pid});
    ASSERT_EQ(killed.status, 128 + SIGKILL) << "the command was not killed at " << c.point << ":\n"
                                            << killed.output;

    // The target runs on, checking its I/O.
    ASSERT_TRUE(target.wait_progress(3)) << target.output();
    ASSERT_TRUE(target.alive()) << target.output();

    // Killed inside the remote dlopen/dlclose, the call completed without the CLI: attach
    // leaves the agent fully loaded, serving, with nothing installed; detach leaves it gone.
    const std::string point = c.point;
    if (point == "inject-call-running" || point == "inject-call-returned") {
        // The target's thread may still be finishing the call: waited for, bounded.
        const bool attaching = std::string(c.command) == "attach";
        for (int i = 0; i < 30000; ++i) {
            const bool serving = static_cast<bool>(control::ControlClient::connect(target.pid()));
            if (attaching ? serving : !agent_mapped(target.pid())) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (attaching) {
            ASSERT_TRUE(agent_mapped(target.pid()));
            const CliResult s = run_cli({"status", pid});
            ASSERT_EQ(s.status, 0) << s.output;
            EXPECT_NE(s.output.find("mechanisms: none installed"), std::string::npos) << s.output;
        } else {
            EXPECT_FALSE(agent_mapped(target.pid()));
            EXPECT_FALSE(control::ControlClient::connect(target.pid()));
        }
    }

    // Whatever was left, detach removes it.
    if (agent_mapped(target.pid())) {
        const CliResult d = run_cli({"detach", pid});
        ASSERT_EQ(d.status, 0) << d.output;
        EXPECT_FALSE(agent_mapped(target.pid())) << d.output;
    }
    // And a new attachment works as on a fresh process.
    for (const char* m : {"got", c.mechanism}) {
        const CliResult a = run_cli({"attach", pid, "--mechanism", m});
        ASSERT_EQ(a.status, 0) << a.output;
        const CliResult s = run_cli({"status", pid});
        ASSERT_EQ(s.status, 0) << s.output;
        EXPECT_NE(s.output.find(std::string("mechanisms: ") + m), std::string::npos) << s.output;
        const CliResult d = run_cli({"detach", pid});
        ASSERT_EQ(d.status, 0) << d.output;
        EXPECT_NE(d.output.find("agent unloaded"), std::string::npos) << d.output;
        EXPECT_FALSE(agent_mapped(target.pid()));
        EXPECT_FALSE(control::ControlClient::connect(target.pid()));
    }
    ASSERT_TRUE(target.wait_progress());
    const int status = target.stop();
    const std::string out = target.output();
    EXPECT_EQ(status, 0) << out.substr(out.size() > 2000 ? out.size() - 2000 : 0);
    EXPECT_EQ(out.find("MISMATCH"), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(Points, CliKilled,
                         ::testing::Values(KillCase{"attach", "inject-stopped", "got"},
                                           KillCase{"attach", "attach-injected", "got"},
                                           KillCase{"attach", "attach-installed", "got"},
                                           KillCase{"attach", "attach-installed", "inline"},
                                           KillCase{"attach", "attach-installed", "rewrite"},
                                           KillCase{"detach", "detach-answered", "got"},
                                           KillCase{"detach", "detach-answered", "inline"},
                                           KillCase{"detach", "detach-answered", "rewrite"},
                                           KillCase{"detach", "inject-stopped", "inline"},
                                           KillCase{"attach", "inject-call-running", "got"},
                                           KillCase{"attach", "inject-call-returned", "inline"},
                                           KillCase{"detach", "inject-call-running", "inline"},
                                           KillCase{"detach", "inject-call-returned", "rewrite"}),
                         [](const auto& info) {
                             std::string name = std::string(info.param.command) + "_" +
                                                info.param.point + "_" + info.param.mechanism;
                             for (char& ch : name)
                                 if (ch == '-') ch = '_';
                             return name;
                         });

}  // namespace
}  // namespace liveio::agent
