// The policy commands on a small real process: `cat` reading a pipe. Switching the uring
// policy off while the process sleeps in a redirected read (waiting for data) must return,
// and the data written afterwards must come through exactly, until EOF.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "clickhouse/server.h"
#include "observe/child.h"

namespace liveio::policy {
namespace {

using testing::ChildReaper;
using testing::CliRun;
using testing::eventually;
using testing::liveio;
using testing::slurp;

TEST(PolicyCli, UringOffWhileATargetThreadSleepsInARedirectedRead) {
    int in[2];
    ASSERT_EQ(::pipe(in), 0);
    const std::string out = observe::testing_util::temp_path("cat-out");
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(in[0], 0);
        ::close(in[0]);
        ::close(in[1]);
        if (!std::freopen(out.c_str(), "w", stdout)) ::_exit(120);
        ::putenv(const_cast<char*>(clickhouse::kStaticTlsReserve));
        ::execl("/bin/cat", "cat", static_cast<char*>(nullptr));
        ::_exit(127);
    }
    ::close(in[0]);
    ChildReaper reap{pid, in[1]};
    const std::string p = std::to_string(pid);
    // cat is blocked in read(0) before it is attached: that call stays native.
    ASSERT_TRUE(eventually([&] { return slurp("/proc/" + p + "/comm") == "cat\n"; }));
    const CliRun attach = liveio({"attach", p, "--policy", "uring"});
    if (attach.err.find("Operation not permitted") != std::string::npos)
        GTEST_SKIP() << "cannot attach here: " << attach.err;
    ASSERT_EQ(attach.status, 0) << attach.out << attach.err;
    // One line wakes the native read; cat writes it and reads again: now redirected, and
    // asleep in the executor waiting for the pipe.
    ASSERT_EQ(::write(in[1], "one\n", 4), 4);
    ASSERT_TRUE(eventually([&] { return slurp(out) == "one\n"; })) << slurp(out);
    // cat's write of "one" went through its ring: the policy acts on this process.
    const CliRun agent_status = liveio({"status", p, "--json"});
    ASSERT_EQ(agent_status.status, 0) << agent_status.err;
    uint64_t redirected = 0;
    const nlohmann::json parsed = nlohmann::json::parse(agent_status.out);
    for (auto& pol : parsed["policies"]["policies"])
        if (pol["name"] == "uring") redirected = pol["counters"].value("redirected", uint64_t{0});
    EXPECT_GT(redirected, 0u) << agent_status.out;
    const CliRun off = liveio({"policy", p, "off", "uring"});
    ASSERT_EQ(off.status, 0) << off.out << off.err;
    ASSERT_EQ(::write(in[1], "two\n", 4), 4);
    ASSERT_TRUE(eventually([&] { return slurp(out) == "one\ntwo\n"; })) << slurp(out);
    // Again with the policy on and off. (Not detach here: with GOT hooks a thread sleeping
    // in any hooked call, native or not, keeps the detach waiting until the call returns.)
    ASSERT_EQ(liveio({"policy", p, "on", "uring"}).status, 0);
    ASSERT_EQ(::write(in[1], "three\n", 6), 6);
    ASSERT_TRUE(eventually([&] { return slurp(out) == "one\ntwo\nthree\n"; })) << slurp(out);
    const CliRun list = liveio({"policy", p, "list"});
    EXPECT_NE(list.out.find("uring"), std::string::npos) << list.out;
    ASSERT_EQ(liveio({"policy", p, "off", "uring"}).status, 0);
    ASSERT_EQ(::write(in[1], "four\n", 5), 5);
    ::close(in[1]);
    reap.fd = -1;
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    reap.pid = -1;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT_EQ(slurp(out), "one\ntwo\nthree\nfour\n");
    ::unlink(out.c_str());
}

}  // namespace
}  // namespace liveio::policy
