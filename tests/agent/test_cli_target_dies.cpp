// The target process SIGKILLed while `liveio attach` or `liveio detach` works on it, at each
// point of src/inject/kill_point.h (LIVEIO_KILL_AT=target:POINT): while its threads are being
// stopped, during the injected dlopen/dlclose, between the call's return and the thread's
// restore, after the agent was loaded, after the agent answered the detach. The command must
// end on its own with an error naming the process, and leave nothing the target's parent (this
// test) cannot reap. (tests/inject/test_target_dies.cpp covers deaths from inside the target.)
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "agent/process_util.h"

namespace liveio::agent {
namespace {

using testing::IoTarget;

// Bound on the command's run: only reached when it hangs (the failure tested for).
constexpr int kHangBoundMs = 60000;

struct CliRun {
    std::optional<int> status;  // nullopt: still running at the bound (killed then)
    std::string output;
};

// `liveio ARGS` with LIVEIO_KILL_AT=target:POINT, waited for up to kHangBoundMs.
CliRun run_cli_killing_target_at(const std::string& point, const std::vector<std::string>& args) {
    std::vector<std::string> argv{LIVEIO_CLI_PATH};
    argv.insert(argv.end(), args.begin(), args.end());
    const std::string out = testing::temp_path("cli");
    ::setenv("LIVEIO_KILL_AT", ("target:" + point).c_str(), 1);
    const pid_t cli = testing::spawn(argv, out);
    ::unsetenv("LIVEIO_KILL_AT");
    CliRun run;
    testing::eventually(
        [&] {
            int status = 0;
            if (::waitpid(cli, &status, WNOHANG) != cli) return false;
            run.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            return true;
        },
        kHangBoundMs);
    if (!run.status) {
        ::kill(cli, SIGKILL);
        testing::wait_exit(cli);
    }
    run.output = testing::read_file(out);
    ::unlink(out.c_str());
    return run;
}

struct DeathCase {
    const char* command;  // "attach" or "detach"
    const char* point;
};

void PrintTo(const DeathCase& c, std::ostream* os) { *os << c.command << " " << c.point; }

class CliTargetDies : public ::testing::TestWithParam<DeathCase> {};

TEST_P(CliTargetDies, CommandEndsWithAnErrorAndTheTargetIsReaped) {
    const DeathCase c = GetParam();
    if (const std::string why = testing::ptrace_unavailable(); !why.empty()) GTEST_SKIP() << why;
    IoTarget target({}, 2, {"--idle"});
    ASSERT_TRUE(target.wait_ready()) << target.output();
    const std::string pid = std::to_string(target.pid());
    const bool detaching = std::string(c.command) == "detach";
    if (detaching) {
        const testing::CliResult a = testing::run_cli({"attach", pid, "--mechanism", "got"});
        ASSERT_EQ(a.status, 0) << a.output;
    }

    const CliRun run = run_cli_killing_target_at(
        c.point, detaching ? std::vector<std::string>{"detach", pid}
                           : std::vector<std::string>{"attach", pid, "--mechanism", "got"});
    ASSERT_TRUE(run.status.has_value())
        << "liveio " << c.command << " did not end within " << kHangBoundMs
        << " ms after the target was killed at " << c.point << ":\n"
        << run.output;
    EXPECT_EQ(*run.status, 1) << run.output;
    EXPECT_NE(run.output.find("process " + pid), std::string::npos) << run.output;
    // The command says that the process ended.
    const bool says_ended = run.output.find(" died") != std::string::npos ||
                            run.output.find("does not exist") != std::string::npos ||
                            run.output.find("zombie") != std::string::npos;
    EXPECT_TRUE(says_ended) << run.output;

    // The target's end reaches its parent.
    ASSERT_TRUE(testing::eventually([&] { return !target.alive(); }, kHangBoundMs))
        << "the target was not reaped:\n"
        << run.output;
    EXPECT_EQ(target.stop(), 128 + SIGKILL);
}

INSTANTIATE_TEST_SUITE_P(
    Points, CliTargetDies,
    ::testing::Values(DeathCase{"attach", "inject-seized"}, DeathCase{"attach", "inject-stopped"},
                      DeathCase{"attach", "inject-call-running"},
                      DeathCase{"attach", "inject-call-returned"},
                      DeathCase{"attach", "attach-injected"},
                      DeathCase{"detach", "detach-answered"}, DeathCase{"detach", "inject-stopped"},
                      DeathCase{"detach", "inject-call-running"},
                      DeathCase{"detach", "inject-call-returned"}),
    [](const auto& info) {
        std::string name = std::string(info.param.command) + "_" + info.param.point;
        for (char& ch : name)
            if (ch == '-') ch = '_';
        return name;
    });

}  // namespace
}  // namespace liveio::agent
