// The descriptors liveio holds inside a real target while attached with policies on, and
// whether they reach a program the target execs. The target is a shell reading lines from a
// pipe (its read(2)s go through the uring policy's per-thread ring) and, per line, forking and
// exec'ing `ls -l /proc/self/fd` into a file: the exec'd image lists what it inherited.
// Every descriptor that appeared with liveio must be close-on-exec; rings and eventfds must sit
// at numbers >= high_fd_base() (base/high_fd.h), or have no number at all (the I/O worker's
// ring, where the kernel allows: counted in status as `ring_fds.unnumbered`).
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/high_fd.h"
#include "cli_run.h"
#include "clickhouse/server.h"
#include "observe/child.h"

namespace liveio::policy {
namespace {

using namespace liveio::policy::testing;  // CliRun, ChildReaper, eventually, liveio, slurp

struct FdInfo {
    std::string what;  // the /proc/PID/fd link
    bool cloexec = false;
};

std::map<int, FdInfo> fds_of(pid_t pid) {
    std::map<int, FdInfo> fds;
    const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return fds;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        char target[256] = {};
        if (::readlink((dir + "/" + e->d_name).c_str(), target, sizeof target - 1) < 0) continue;
        FdInfo info{target, false};
        const std::string fdinfo = slurp("/proc/" + std::to_string(pid) + "/fdinfo/" + e->d_name);
        const auto at = fdinfo.find("flags:");
        if (at != std::string::npos)
            info.cloexec = (std::stoul(fdinfo.substr(at + 6), nullptr, 8) & O_CLOEXEC) != 0;
        fds[std::atoi(e->d_name)] = info;
    }
    ::closedir(d);
    return fds;
}

TEST(PolicyCli, DescriptorsOfLiveioInTheTargetAndAcrossExec) {
    int in[2];
    ASSERT_EQ(::pipe2(in, O_CLOEXEC), 0);
    const std::string out = observe::testing_util::temp_path("fds");
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(in[0], 0);
        ::putenv(const_cast<char*>(clickhouse::kStaticTlsReserve));
        const std::string script =
            "while read -r line; do ls -l /proc/self/fd > " + out + ".$line; done";
        ::execl("/bin/sh", "sh", "-c", script.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    ::close(in[0]);
    ChildReaper reap{pid, in[1]};
    auto line = [&](const std::string& n) {
        const std::string text = n + "\n";
        EXPECT_EQ(::write(in[1], text.data(), text.size()), static_cast<ssize_t>(text.size()));
        return eventually([&] { return slurp(out + "." + n).find("->") != std::string::npos; });
    };
    ASSERT_TRUE(line("0"));
    const std::map<int, FdInfo> before = fds_of(pid);
    const std::string p = std::to_string(pid);
    const CliRun attach = liveio({"attach", p, "--policy", "uring"});
    if (attach.err.find("Operation not permitted") != std::string::npos)
        GTEST_SKIP() << "cannot attach here: " << attach.err;
    ASSERT_EQ(attach.status, 0) << attach.out << attach.err;
    ASSERT_TRUE(line("1"));
    const CliRun prefetch = liveio({"policy", p, "on", "prefetch"});
    ASSERT_EQ(prefetch.status, 0) << prefetch.out << prefetch.err;
    ASSERT_TRUE(line("2"));

    const CliRun status = liveio({"status", p, "--json"});
    ASSERT_EQ(status.status, 0) << status.err;
    const nlohmann::json parsed = nlohmann::json::parse(status.out);
    const nlohmann::json rings = parsed["policies"].value("ring_fds", nlohmann::json::object());
    uint64_t redirected = 0;
    for (auto& pol : parsed["policies"]["policies"])
        if (pol["name"] == "uring") redirected = pol["counters"].value("redirected", uint64_t{0});
    EXPECT_GT(redirected, 0u) << status.out;

    const std::map<int, FdInfo> during = fds_of(pid);
    const long base = high_fd_base();
    std::string inventory;
    int rings_numbered = 0;
    // Ours by kind: the shell itself holds none of these (checked before the attach); its own
    // descriptors come and go as it runs `ls` with a redirection.
    auto liveio_kind = [](const std::string& what) {
        return what.starts_with("anon_inode:") || what.starts_with("socket:") ||
               what.starts_with("/memfd:liveio");
    };
    for (const auto& [n, info] : before) EXPECT_FALSE(liveio_kind(info.what)) << n << info.what;
    for (const auto& [n, info] : during) {
        if (!liveio_kind(info.what)) continue;
        inventory += "  " + std::to_string(n) + " " + info.what +
                     (info.cloexec ? " cloexec" : " INHERITED BY EXEC") + "\n";
        EXPECT_TRUE(info.cloexec) << n << " " << info.what;
        if (info.what == "anon_inode:[io_uring]" || info.what == "anon_inode:[eventfd]")
            EXPECT_GE(n, base) << n << " " << info.what;
        if (info.what == "anon_inode:[io_uring]") ++rings_numbered;
    }
    std::printf("liveio's descriptors in the target (high base %ld), ring_fds %s:\n%s", base,
                rings.dump().c_str(), inventory.c_str());
    std::fflush(stdout);  // before the next liveio command forks
    // The shell's one thread's ring (destroyed by other threads at detach: it has a number);
    // the I/O worker's has none where the kernel allows it.
    EXPECT_GE(rings_numbered, 1);
    EXPECT_EQ(rings.value("low", uint64_t{0}), 0u);
    if (rings.value("unnumbered_refused", uint64_t{0}) == 0)
        EXPECT_GE(rings.value("unnumbered", uint64_t{0}), 1u);

    // What the exec'd `ls` inherited while liveio was attached: none of it.
    for (const char* n : {"1", "2"}) {
        const std::string listed = slurp(out + "." + n);
        for (const char* ours : {"io_uring", "eventfd", "socket:", "memfd:"})
            EXPECT_EQ(listed.find(ours), std::string::npos) << n << ":\n" << listed;
    }

    const CliRun detach = liveio({"detach", p});
    EXPECT_EQ(detach.status, 0) << detach.out << detach.err;
    ::close(in[1]);
    reap.fd = -1;
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    reap.pid = -1;
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    for (const char* n : {"0", "1", "2"}) ::unlink((out + "." + n).c_str());
}

}  // namespace
}  // namespace liveio::policy
