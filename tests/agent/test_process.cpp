// `liveio run/attach/detach/status` against liveio-io-target, a real multi-threaded process
// that verifies every byte and errno of its I/O and exits non-zero on the first wrong one.
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "agent/mmap_min_addr.h"
#include "agent/process_util.h"
#include "control/protocol.h"

namespace liveio::agent {

using control::ControlClient;
namespace {

using nlohmann::json;
using testing::CliResult;
using testing::eventually;
using testing::IoTarget;
using testing::ptrace_unavailable;
using testing::run_cli;

json status_of(pid_t pid) {
    const CliResult r = run_cli({"status", std::to_string(pid), "--json"});
    EXPECT_EQ(r.status, 0) << r.output;
    try {
        return json::parse(r.output);
    } catch (const json::exception& e) {
        ADD_FAILURE() << "status output is not JSON: " << r.output;
        return json::object();
    }
}

uint64_t total_calls(const json& status) {
    return status.contains("calls") ? status["calls"]["total"]["calls"].get<uint64_t>() : 0;
}

bool agent_mapped(pid_t pid) {
    std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
    std::string line;
    while (std::getline(maps, line))
        if (line.find("liveio-agent.so") != std::string::npos) return true;
    return false;
}

void expect_clean_exit(IoTarget& target) {
    const std::string before = target.output();
    const int status = target.stop();
    const std::string out = target.output();
    EXPECT_EQ(status, 0) << out.substr(out.size() > 2000 ? out.size() - 2000 : 0);
    EXPECT_EQ(out.find("MISMATCH"), std::string::npos) << out;
    EXPECT_NE(out.find("final "), std::string::npos) << out;
}

class RunTest : public ::testing::TestWithParam<const char*> {};

TEST_P(RunTest, RunInterceptsFromTheStartAndCountsGrow) {
    const std::string mechanism = GetParam();
    std::optional<testing::MmapMinAddrZero> page_zero;
    if (mechanism == "rewrite") {
        page_zero.emplace();
        if (!page_zero->ok()) GTEST_SKIP() << page_zero->reason();
    }
    IoTarget target({LIVEIO_CLI_PATH, "run", "--mechanism", mechanism, "--"});
    ASSERT_TRUE(target.wait_ready()) << target.output();
    ASSERT_TRUE(target.alive()) << target.output();
    json first = status_of(target.pid());
    if (first["mechanisms"].empty() && first.contains("last_error")) {
        const std::string why = first["last_error"];
        target.stop();
        GTEST_SKIP() << "mechanism " << mechanism << " not available: " << why;
    }
    ASSERT_EQ(first["mechanisms"].size(), 1u) << first.dump();
    EXPECT_EQ(first["mechanisms"][0]["name"], mechanism);
    EXPECT_EQ(first["resident"], true);
    EXPECT_EQ(first["pid"], target.pid());
    const uint64_t c1 = total_calls(first);
    EXPECT_GT(c1, 0u);
    // The counters keep growing while the target runs.
    ASSERT_TRUE(eventually([&] { return total_calls(status_of(target.pid())) > c1; }));
    const json later = status_of(target.pid());
    for (const char* sc : {"pread64", "pwrite64", "read", "write", "lseek"}) {
        EXPECT_TRUE(later["calls"].contains(sc)) << sc << " " << later.dump();
        if (later["calls"].contains(sc)) {
            EXPECT_GT(later["calls"][sc]["calls"].get<uint64_t>(), 0u) << sc;
        }
    }
    // The io target's deliberate EBADF/ESPIPE calls are counted as errors.
    EXPECT_GT(later["calls"]["total"]["errors"].get<uint64_t>(), 0u);

    // A preloaded agent stays loaded after detach; attach re-installs through it.
    CliResult d = run_cli({"detach", std::to_string(target.pid())});
    ASSERT_EQ(d.status, 0) << d.output;
    EXPECT_NE(d.output.find("stays loaded"), std::string::npos) << d.output;
    EXPECT_TRUE(status_of(target.pid())["mechanisms"].empty());
    CliResult a = run_cli({"attach", std::to_string(target.pid()), "--mechanism", mechanism});
    ASSERT_EQ(a.status, 0) << a.output;
    const json again = status_of(target.pid());
    ASSERT_EQ(again["mechanisms"].size(), 1u);
    const uint64_t c2 = total_calls(again);
    ASSERT_TRUE(eventually([&] { return total_calls(status_of(target.pid())) > c2; }));

    ASSERT_TRUE(target.wait_progress());
    expect_clean_exit(target);
}

INSTANTIATE_TEST_SUITE_P(Mechanisms, RunTest, ::testing::Values("got", "inline", "rewrite"),
                         [](const auto& info) { return std::string(info.param); });

TEST(RunCommand, HumanStatusAndErrors) {
    IoTarget target({
        LIVEIO_CLI_PATH,
        "run",
        "--",
    });
    ASSERT_TRUE(target.wait_ready()) << target.output();
    CliResult s = run_cli({"status", std::to_string(target.pid())});
    ASSERT_EQ(s.status, 0) << s.output;
    EXPECT_NE(s.output.find("mechanisms: got"), std::string::npos) << s.output;
    EXPECT_NE(s.output.find("pread64"), std::string::npos) << s.output;
    expect_clean_exit(target);

    CliResult gone = run_cli({"status", "1073741800"});
    EXPECT_EQ(gone.status, 1);
    EXPECT_NE(gone.output.find("does not exist"), std::string::npos) << gone.output;
    CliResult none = run_cli({"status", std::to_string(::getpid())});
    EXPECT_EQ(none.status, 1);
    EXPECT_NE(none.output.find("no liveio agent"), std::string::npos) << none.output;
    CliResult bad_agent =
        run_cli({"attach", std::to_string(::getpid()), "--agent", "/nonexistent/liveio-agent.so"});
    EXPECT_EQ(bad_agent.status, 1);
    EXPECT_NE(bad_agent.output.find("not readable"), std::string::npos) << bad_agent.output;
    CliResult bad_mech = run_cli({"run", "--mechanism", "magic", "--", "/bin/true"});
    EXPECT_NE(bad_mech.status, 0);
    CliResult no_cmd = run_cli({"run", "--mechanism", "got", "--", "/nonexistent/program"});
    EXPECT_EQ(no_cmd.status, 127) << no_cmd.output;
}

TEST(RunCommand, ChildrenOfTheProgramRunWithoutTheAgent) {
    // The preloaded shell has the agent; the agent removed itself from LD_PRELOAD before the
    // shell's main ran, so the shell's child (cat) starts without it.
    CliResult r =
        run_cli({"run", "--", "/bin/sh", "-c",
                 "echo \"preload=[$LD_PRELOAD] mech=[$LIVEIO_MECHANISM]\"; cat /proc/self/maps; "
                 "grep -c liveio-agent /proc/$$/maps"});
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("preload=[] mech=[]"), std::string::npos) << r.output;
    // Only the shell's own maps (the grep count line, last) mention the agent.
    const size_t last_line = r.output.rfind('\n', r.output.size() - 2);
    const std::string body = r.output.substr(0, last_line);
    EXPECT_EQ(body.find("liveio-agent.so"), std::string::npos) << r.output;
    EXPECT_NE(std::stoi(r.output.substr(last_line + 1)), 0) << r.output;
}

// A process's mappings as lines "range perms offset path", split by kind.
struct Maps {
    std::vector<std::string> files;       // file-backed: must come back exactly
    std::vector<std::string> executable;  // anonymous executable ones
    std::vector<std::string> writable_executable;
    std::vector<std::string> other;  // anonymous data: the allocator's and thread stacks
    bool page_zero = false;
};

Maps read_maps(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
    Maps m;
    for (std::string line; std::getline(in, line);) {
        std::istringstream fields(line);
        std::string range, perms, offset, dev, inode, path;
        fields >> range >> perms >> offset >> dev >> inode >> path;
        const std::string entry = range + " " + perms + " " + offset + " " + path;
        if (range.starts_with("00000000-")) m.page_zero = true;
        if (perms[1] == 'w' && perms[2] == 'x') m.writable_executable.push_back(entry);
        if (path.starts_with("/"))
            m.files.push_back(entry);
        else if (perms[2] == 'x' && path.empty())
            m.executable.push_back(entry);
        else if (path != "[heap]")
            m.other.push_back(entry);
    }
    return m;
}

std::string joined(const std::vector<std::string>& v) {
    std::string out;
    for (auto& s : v) out += s + "\n";
    return out;
}

// 200 attach/detach cycles of a running target through the CLI, spread across the
// mechanisms that exist; the target verifies every byte throughout. Its idle threads sleep in
// recv/read for the whole run: detach moves them out instead of waiting. Afterwards the
// target's mappings are those it had before the first attach: every file mapping exactly (the
// patched text pages are the file's again), no anonymous executable memory, no page 0; and
// anonymous data mappings (the allocator's arenas, the agent thread's stack kept in glibc's
// cache) do not grow with the number of cycles. No mapping is ever writable and executable.
class AttachDetachTest : public ::testing::Test {
protected:
    void cycles(const std::vector<std::string>& mechanisms, int n) {
        if (auto why = ptrace_unavailable(); !why.empty()) GTEST_SKIP() << why;
        std::optional<testing::MmapMinAddrZero> page_zero;
        if (std::find(mechanisms.begin(), mechanisms.end(), "rewrite") != mechanisms.end()) {
            page_zero.emplace();
            if (!page_zero->ok()) GTEST_SKIP() << page_zero->reason();
        }
        IoTarget target({}, 2, {"--idle"});
        ASSERT_TRUE(target.wait_ready()) << target.output();
        const std::string pid = std::to_string(target.pid());
        const Maps before = read_maps(target.pid());
        size_t data_after_first = 0;
        for (int i = 0; i < n; ++i) {
            const std::string& m = mechanisms[static_cast<size_t>(i) % mechanisms.size()];
            CliResult a = run_cli({"attach", pid, "--mechanism", m});
            if (i == 0 && a.status != 0 && a.output.find("not permitted") != std::string::npos)
                GTEST_SKIP() << "ptrace not permitted here: " << a.output;
            // vm.mmap_min_addr is a machine setting: another test suite running at the same
            // time may raise it again under us.
            if (a.status != 0 && m == "rewrite" &&
                a.output.find("mmap_min_addr") != std::string::npos) {
                ASSERT_FALSE(agent_mapped(target.pid())) << "failed attach left the agent loaded";
                GTEST_SKIP() << "cycle " << i
                             << ": vm.mmap_min_addr was changed by another process: " << a.output;
            }
            ASSERT_EQ(a.status, 0) << "cycle " << i << " (" << m << "): " << a.output;
            ASSERT_TRUE(agent_mapped(target.pid())) << "cycle " << i;
            // The idle threads call again, through the hooks: detach will find them there.
            ASSERT_TRUE(target.rearm_idle_calls()) << "cycle " << i << ": " << target.output();
            ASSERT_EQ(joined(read_maps(target.pid()).writable_executable), "")
                << "cycle " << i << " (" << m << ")";
            if (i % 10 == 0) {
                // Interception is live: the count grows while attached.
                const json s = status_of(target.pid());
                ASSERT_EQ(s["mechanisms"].size(), 1u) << s.dump();
                EXPECT_EQ(s["mechanisms"][0]["name"], m);
                EXPECT_EQ(s["resident"], false);
                const uint64_t c = total_calls(s);
                ASSERT_TRUE(eventually([&] { return total_calls(status_of(target.pid())) > c; }))
                    << "cycle " << i;
            }
            CliResult d = run_cli({"detach", pid});
            ASSERT_EQ(d.status, 0) << "cycle " << i << " (" << m << "): " << d.output;
            EXPECT_NE(d.output.find("agent unloaded"), std::string::npos) << d.output;
            // The idle threads were in a hooked call (GOT, inline: recv/read; rewrite: their
            // system calls): detach says it moved them out.
            std::smatch moved;
            ASSERT_TRUE(std::regex_search(
                d.output, moved, std::regex("moved (\\d+) threads? sleeping in a hooked call")))
                << "cycle " << i << " (" << m << "): " << d.output;
            EXPECT_GE(std::stoi(moved[1]), 3) << "cycle " << i << " (" << m << "): " << d.output;
            if (i == 0) data_after_first = read_maps(target.pid()).other.size();
            // Nothing of the agent remains: library unmapped, no control socket.
            ASSERT_FALSE(agent_mapped(target.pid())) << "cycle " << i;
            auto c = ControlClient::connect(target.pid());
            ASSERT_FALSE(c) << "cycle " << i << ": control socket still served after detach";
            ASSERT_TRUE(target.alive()) << "cycle " << i << ": " << target.output();
        }
        const Maps after = read_maps(target.pid());
        EXPECT_EQ(joined(after.files), joined(before.files));
        EXPECT_EQ(joined(after.executable), joined(before.executable));
        EXPECT_FALSE(after.page_zero);
        EXPECT_EQ(joined(after.writable_executable), "");
        EXPECT_LE(after.other.size(), data_after_first) << "anonymous mappings grow with cycles:\n"
                                                        << joined(after.other);
        ASSERT_TRUE(target.wait_progress());
        expect_clean_exit(target);
    }
};

TEST_F(AttachDetachTest, AllMechanisms30Cycles) { cycles({"got", "inline", "rewrite"}, 30); }
TEST_F(AttachDetachTest, Got100Cycles) { cycles({"got"}, 100); }
TEST_F(AttachDetachTest, Inline100Cycles) { cycles({"inline"}, 100); }
TEST_F(AttachDetachTest, Rewrite100Cycles) { cycles({"rewrite"}, 100); }

}  // namespace
}  // namespace liveio::agent
