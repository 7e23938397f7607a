// `liveio attach` on a process that is attached already: what every node's endpoint runs for
// `liveio cluster attach` on an attached cluster. The same mechanism (or none named) is
// "already attached", exit 0, nothing installed twice; --policy switches the policies on live
// to exactly the ones named; another mechanism is refused with the commands it needs, and
// nothing is changed. The target is `cat` copying a pipe, whose output must stay exact.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "clickhouse/server.h"
#include "cluster_test_support.h"

namespace liveio::cluster {
namespace {

using nlohmann::json;
using test_support::cli;

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// `cat` reading a pipe into a file; killed and reaped when it goes.
struct Cat {
    pid_t pid = -1;
    int in = -1;
    std::string out;

    Cat() {
        char tmpl[] = "/tmp/liveio-attach-again-XXXXXX";
        const int fd = ::mkstemp(tmpl);
        if (fd < 0) return;
        ::close(fd);
        out = tmpl;
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) return;
        pid = ::fork();
        if (pid == 0) {
            ::dup2(p[0], 0);
            const int o = ::open(tmpl, O_WRONLY | O_TRUNC);
            if (o < 0) ::_exit(120);
            ::dup2(o, 1);
            // The agent's initial-exec TLS needs glibc's static TLS reserve.
            ::putenv(const_cast<char*>(clickhouse::kStaticTlsReserve));
            ::execl("/bin/cat", "cat", static_cast<char*>(nullptr));
            ::_exit(127);
        }
        ::close(p[0]);
        in = p[1];
    }
    ~Cat() {
        if (in >= 0) ::close(in);
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
        if (!out.empty()) ::unlink(out.c_str());
    }
    // Writes `line` and waits (bounded: 60 s) until cat has copied everything so far.
    bool copies(const std::string& line, const std::string& all) {
        if (::write(in, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
            return false;
        for (int i = 0; i < 6000 && slurp(out) != all; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        return slurp(out) == all;
    }
};

struct Installed {
    std::vector<std::string> mechanisms;
    std::set<std::string> policies;  // on
};

Installed installed(pid_t pid) {
    Installed out;
    const auto s = cli({"status", std::to_string(pid), "--json"});
    if (s.status != 0) return out;
    const json j = json::parse(s.output.substr(s.output.find('{')));
    for (const json& m : j.value("mechanisms", json::array()))
        out.mechanisms.push_back(m.value("name", ""));
    for (const json& p : j.at("policies").value("policies", json::array()))
        if (p.value("on", false)) out.policies.insert(p.value("name", ""));
    return out;
}

TEST(AttachAgain, SameMechanismIsANoOpPoliciesSwitchLiveAnotherMechanismIsRefused) {
    Cat cat;
    ASSERT_GT(cat.pid, 0);
    std::string all = "one\n";
    ASSERT_TRUE(cat.copies("one\n", all)) << "cat did not start";
    const std::string p = std::to_string(cat.pid);
    const auto first = cli({"attach", p, "--policy", "prefetch"});
    if (first.output.find("Operation not permitted") != std::string::npos)
        GTEST_SKIP() << "cannot attach here: " << first.output;
    ASSERT_EQ(first.status, 0) << first.output;
    EXPECT_NE(first.output.find("policy prefetch on in " + p), std::string::npos) << first.output;

    // The same again: a no-op that says so.
    const auto same = cli({"attach", p, "--policy", "prefetch"});
    EXPECT_EQ(same.status, 0) << same.output;
    EXPECT_NE(same.output.find(fmt::format("already attached to {}: mechanism got", p)),
              std::string::npos)
        << same.output;
    EXPECT_NE(same.output.find(fmt::format("policies on in {}: prefetch (unchanged)", p)),
              std::string::npos)
        << same.output;
    Installed now = installed(cat.pid);
    EXPECT_EQ(now.mechanisms, std::vector<std::string>{"got"});
    EXPECT_EQ(now.policies, std::set<std::string>{"prefetch"});
    all += "two\n";
    ASSERT_TRUE(cat.copies("two\n", all)) << slurp(cat.out);

    // Other policies, no mechanism named: the attached one is kept, the policies switched.
    const auto other = cli({"attach", p, "--policy", "marks,prefetch"});
    EXPECT_EQ(other.status, 0) << other.output;
    EXPECT_NE(other.output.find("policy marks on in " + p), std::string::npos) << other.output;
    EXPECT_EQ(installed(cat.pid).policies, (std::set<std::string>{"marks", "prefetch"}));
    const auto fewer = cli({"attach", p, "--policy", "marks"});
    EXPECT_EQ(fewer.status, 0) << fewer.output;
    EXPECT_NE(fewer.output.find("policy prefetch off in " + p), std::string::npos) << fewer.output;
    now = installed(cat.pid);
    EXPECT_EQ(now.mechanisms, std::vector<std::string>{"got"});
    EXPECT_EQ(now.policies, std::set<std::string>{"marks"});
    all += "three\n";
    ASSERT_TRUE(cat.copies("three\n", all)) << slurp(cat.out);

    // Another mechanism: refused, with what to run instead; nothing changed.
    const auto inline_m = cli({"attach", p, "-m", "inline", "--policy", "marks"});
    EXPECT_NE(inline_m.status, 0) << inline_m.output;
    EXPECT_NE(inline_m.output.find(fmt::format("liveio detach {}, then liveio attach {} -m inline "
                                               "--policy marks",
                                               p, p)),
              std::string::npos)
        << inline_m.output;
    now = installed(cat.pid);
    EXPECT_EQ(now.mechanisms, std::vector<std::string>{"got"});
    EXPECT_EQ(now.policies, std::set<std::string>{"marks"});

    // The attached mechanism named, no policy: attached with none on.
    const auto plain = cli({"attach", p, "-m", "got"});
    EXPECT_EQ(plain.status, 0) << plain.output;
    EXPECT_NE(plain.output.find("policy marks off in " + p), std::string::npos) << plain.output;
    EXPECT_TRUE(installed(cat.pid).policies.empty());
    all += "four\n";
    ASSERT_TRUE(cat.copies("four\n", all)) << slurp(cat.out);

    // cat copied everything exactly and ends normally at the end of its input.
    ::close(cat.in);
    cat.in = -1;
    int status = 0;
    ASSERT_EQ(::waitpid(cat.pid, &status, 0), cat.pid);
    cat.pid = -1;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    EXPECT_EQ(slurp(cat.out), all);
}

}  // namespace
}  // namespace liveio::cluster
