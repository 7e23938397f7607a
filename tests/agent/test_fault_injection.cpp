// `liveio fault` end to end: liveio-io-target (every byte and errno of its file, socket and
// exec I/O checked) attached with the uring policy on, then every fault point of the io_uring
// engine armed in turn while it runs. Its calls must keep their native results (it exits 0
// without a MISMATCH), `liveio status` must count the injected faults and the calls the
// executor ran natively, and detach must leave nothing behind.
#include <unistd.h>

#include <filesystem>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "agent/process_util.h"
#include "control/protocol.h"

namespace liveio::agent {
namespace {

using nlohmann::json;
using testing::CliResult;
using testing::IoTarget;
using testing::run_cli;

TEST(FaultInjection, TargetCallsKeepNativeResultsUnderEveryEngineFault) {
    IoTarget target({}, 2);
    ASSERT_TRUE(target.wait_ready()) << target.output();
    const std::string pid = std::to_string(target.pid());
    const CliResult a = run_cli({"attach", pid});
    if (a.status != 0 && a.output.find("not permitted") != std::string::npos)
        GTEST_SKIP() << a.output;
    ASSERT_EQ(a.status, 0) << a.output;
    // nowait=0: the faults are the ring's, and the target's reads of its cached file would
    // otherwise be answered from the page cache without reaching the ring.
    const CliResult on = run_cli({"policy", pid, "on", "uring", "nowait=0"});
    ASSERT_EQ(on.status, 0) << on.output;
    const CliResult list = run_cli({"policy", pid, "list"});
    if (list.output.find("synchronous fallback") != std::string::npos)
        GTEST_SKIP() << "io_uring unusable here: " << list.output;

    const CliResult bad = run_cli({"fault", pid, "no_such_point", "1"});
    EXPECT_NE(bad.status, 0);
    EXPECT_NE(bad.output.find("complete_short"), std::string::npos)
        << "the error lists the points: " << bad.output;

    // submit_enomem last: its 50 failures are absorbed by the engine's bounded retries
    // (uring::kMaxNomemRetries per submission); past that bound a thread's ring would be
    // retired (the thread then runs natively) and later points would find no ring to fail.
    for (const char* point :
         {"ring_create", "submit_eagain", "submit_ebusy", "submit_eintr", "complete_eio",
          "complete_eagain", "complete_short", "submit_enomem"}) {
        SCOPED_TRACE(point);
        const CliResult f = run_cli({"fault", pid, point, "50"});
        ASSERT_EQ(f.status, 0) << f.output;
        ASSERT_TRUE(target.wait_progress(3)) << target.output();
        ASSERT_TRUE(target.alive()) << target.output();
    }
    const CliResult s = run_cli({"status", pid, "--json"});
    ASSERT_EQ(s.status, 0) << s.output;
    const json status = json::parse(s.output);
    ASSERT_TRUE(status.contains("faults")) << s.output;
    // The file workers read and write all the time: these steps run, so their faults fire.
    for (const char* point : {"submit_eagain", "submit_ebusy", "submit_eintr", "complete_eio",
                              "complete_eagain", "complete_short", "submit_enomem"})
        EXPECT_GT(status["faults"].value(point, json::object()).value("injected", 0u), 0u)
            << point << ": " << s.output;
    // Calls the executor handed back to the kernel because of a fault are counted by reason.
    json uring;
    for (auto& p : status["policies"]["policies"])
        if (p["name"] == "uring") uring = p;
    EXPECT_GT(uring["counters"]["fallback_reasons"].value("completion_error", 0u), 0u)
        << uring.dump();
    const CliResult human = run_cli({"status", pid});
    EXPECT_NE(human.output.find("fault injection: "), std::string::npos) << human.output;
    EXPECT_NE(human.output.find("completion_error"), std::string::npos) << human.output;

    const CliResult d = run_cli({"detach", pid});
    ASSERT_EQ(d.status, 0) << d.output;
    EXPECT_NE(d.output.find("agent unloaded"), std::string::npos) << d.output;
    EXPECT_EQ(testing::read_file("/proc/" + pid + "/maps").find("liveio-agent.so"),
              std::string::npos);
    // No ring (failed or not) is left open in the target.
    for (const auto& e : std::filesystem::directory_iterator("/proc/" + pid + "/fd")) {
        std::error_code ec;
        EXPECT_EQ(std::filesystem::read_symlink(e.path(), ec).string().find("io_uring"),
                  std::string::npos)
            << e.path();
    }
    ASSERT_TRUE(target.wait_progress());
    const int status_code = target.stop();
    const std::string out = target.output();
    EXPECT_EQ(status_code, 0) << out.substr(out.size() > 2000 ? out.size() - 2000 : 0);
    EXPECT_EQ(out.find("MISMATCH"), std::string::npos) << out;
}

}  // namespace
}  // namespace liveio::agent
