// Attaching to a process started normally, as systemd starts a service: another user than the
// one attaching (User=), and an environment holding only PATH, so no GLIBC_TUNABLES reserve of
// static TLS and no LD_PRELOAD. Every mechanism must attach, intercept and detach, and the
// target (liveio-io-target, which checks every byte and errno of its I/O and forks and execs
// all along) must end clean. ClickHouse started the same way: ClickHouseAttach and
// `liveio soak clickhouse` (tests/bench/test_soak.cpp).
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "agent/mmap_min_addr.h"
#include "agent/process_util.h"
#include "clickhouse/server.h"
#include "control/protocol.h"

namespace liveio::agent {
namespace {

using nlohmann::json;
using testing::CliResult;
using testing::eventually;
using testing::read_file;
using testing::run_cli;

// liveio-io-target started like a service: as `user` (when root), environment {PATH}.
class ServiceProcess {
public:
    explicit ServiceProcess(const passwd* user) : out_(testing::temp_path("service")) {
        const int fd = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        std::vector<std::string> argv_s = {
            LIVEIO_IO_TARGET_PATH, "--report-ms", "200",   "--dir", "/tmp",
            "--threads",           "2",           "--idle"};
        std::vector<char*> argv;
        for (auto& a : argv_s) argv.push_back(a.data());
        argv.push_back(nullptr);
        std::string path_env = clickhouse::kServiceEnvironment;
        char* envp[] = {path_env.data(), nullptr};
        const uid_t uid = user ? user->pw_uid : ::getuid();
        const gid_t gid = user ? user->pw_gid : ::getgid();
        const pid_t parent = ::getpid();
        pid_ = ::fork();
        if (pid_ == 0) {
            if (user && (::setgroups(1, &gid) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0))
                ::_exit(126);
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(127);
            ::dup2(fd, 1);
            ::dup2(fd, 2);
            ::execve(argv[0], argv.data(), envp);
            ::_exit(127);
        }
        if (fd >= 0) ::close(fd);
    }
    ~ServiceProcess() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            testing::wait_exit(pid_);
        }
        ::unlink(out_.c_str());
    }
    pid_t pid() const { return pid_; }
    std::string output() const { return read_file(out_); }
    bool wait_for(const std::string& text, size_t count = 1) {
        return eventually([&] {
            const std::string o = output();
            size_t n = 0;
            for (size_t p = o.find(text); p != std::string::npos; p = o.find(text, p + 1)) ++n;
            return n >= count;
        });
    }
    size_t occurrences(const std::string& text) const {
        const std::string o = output();
        size_t n = 0;
        for (size_t p = o.find(text); p != std::string::npos; p = o.find(text, p + 1)) ++n;
        return n;
    }
    // SIGTERM; the exit status (0: every byte and errno verified).
    int stop() {
        ::kill(pid_, SIGTERM);
        const int status = testing::wait_exit(pid_);
        pid_ = -1;
        return status;
    }

private:
    std::string out_;
    pid_t pid_ = -1;
};

uint64_t total_calls(pid_t pid) {
    const CliResult r = run_cli({"status", std::to_string(pid), "--json"});
    if (r.status != 0) return 0;
    try {
        const json s = json::parse(r.output);
        return s["calls"]["total"]["calls"].get<uint64_t>();
    } catch (const json::exception&) {
        return 0;
    }
}

TEST(NormalStart, EveryMechanismAttachesToAServiceStartedProcess) {
    if (::geteuid() != 0)
        GTEST_SKIP()
            << "a service runs as its own user: attaching to it needs root (CAP_SYS_PTRACE)";
    const passwd* user = ::getpwnam("nobody");
    if (user == nullptr) GTEST_SKIP() << "no user 'nobody' to run the service as";
    std::vector<std::string> mechanisms{"got", "inline"};
    testing::MmapMinAddrZero page_zero;
    if (page_zero.ok())
        mechanisms.push_back("rewrite");
    else
        std::printf("rewrite left out: %s\n", page_zero.reason().c_str());

    ServiceProcess target(user);
    ASSERT_TRUE(target.wait_for("ready")) << target.output();
    const std::string pid = std::to_string(target.pid());
    // What the process really got: only PATH, and another user than ours.
    std::string environ_text = read_file("/proc/" + pid + "/environ");
    EXPECT_EQ(environ_text, std::string(clickhouse::kServiceEnvironment) + '\0');
    EXPECT_NE(
        read_file("/proc/" + pid + "/status").find("Uid:\t" + std::to_string(user->pw_uid) + "\t"),
        std::string::npos);

    for (int round = 0; round < 2; ++round)
        for (const std::string& m : mechanisms) {
            SCOPED_TRACE(m + ", round " + std::to_string(round));
            const CliResult a = run_cli({"attach", pid, "--mechanism", m});
            ASSERT_EQ(a.status, 0) << a.output;
            const uint64_t calls = total_calls(target.pid());
            ASSERT_TRUE(eventually([&] { return total_calls(target.pid()) > calls; }))
                << "no call intercepted";
            const CliResult d = run_cli({"detach", pid});
            ASSERT_EQ(d.status, 0) << d.output;
            EXPECT_NE(d.output.find("agent unloaded"), std::string::npos) << d.output;
            EXPECT_FALSE(control::ControlClient::connect(target.pid()))
                << "control socket still served";
            // The target keeps working (and checking) after each detach.
            ASSERT_TRUE(target.wait_for("counts ", target.occurrences("counts ") + 2))
                << target.output();
        }
    const int status = target.stop();
    const std::string out = target.output();
    EXPECT_EQ(status, 0) << out.substr(out.size() > 2000 ? out.size() - 2000 : 0);
    EXPECT_EQ(out.find("MISMATCH"), std::string::npos) << out;
}

}  // namespace
}  // namespace liveio::agent
