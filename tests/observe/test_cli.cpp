// The observing commands end to end: the `liveio` executable against live processes with the
// real agent (liveio-agent.so) and the built-in io_stats program, on a workload whose I/O
// counts are known exactly (liveio-observe-target).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "agent/process_util.h"
#include "agent/protocol.h"

namespace liveio::observe {
namespace {

using agent::testing::eventually;
using agent::testing::read_file;
using agent::testing::temp_path;
using agent::testing::wait_exit;
using nlohmann::json;

constexpr int kCalls = 500;
constexpr int kSize = 4096;

// A child with stdout and stderr in separate files.
class Child {
public:
    explicit Child(const std::vector<std::string>& argv) : out_(temp_path("out")), err_(temp_path("err")) {
        pid_ = ::fork();
        if (pid_ == 0) {
            if (!std::freopen(out_.c_str(), "w", stdout) || !std::freopen(err_.c_str(), "w", stderr)) ::_exit(120);
            std::vector<char*> args;
            for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
            args.push_back(nullptr);
            ::execv(args[0], args.data());
            ::_exit(127);
        }
    }
    ~Child() {
        if (status_ < 0 && pid_ > 0) {
            ::kill(pid_, SIGKILL);
            wait_exit(pid_);
        }
        ::unlink(out_.c_str());
        ::unlink(err_.c_str());
    }
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;

    pid_t pid() const { return pid_; }
    std::string out() const { return read_file(out_); }
    std::string err() const { return read_file(err_); }
    int wait() {
        if (status_ < 0) status_ = wait_exit(pid_);
        return status_;
    }
    bool exited() {
        if (status_ >= 0) return true;
        int st;
        if (::waitpid(pid_, &st, WNOHANG) != pid_) return false;
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return true;
    }
    void signal(int sig) { ::kill(pid_, sig); }

private:
    std::string out_, err_;
    pid_t pid_ = -1;
    int status_ = -1;
};

struct Run {
    int status;
    std::string out, err;
};

Run liveio(std::vector<std::string> args) {
    args.insert(args.begin(), LIVEIO_CLI_PATH);
    Child c(args);
    const int status = c.wait();
    return {status, c.out(), c.err()};
}

// liveio-observe-target: `batches` counts the "batch N done" lines.
class Workload {
public:
    Workload() : child_({LIVEIO_OBSERVE_TARGET_PATH, "--calls", std::to_string(kCalls), "--size", std::to_string(kSize)}) {}
    pid_t pid() const { return child_.pid(); }
    bool ready() { return eventually([&] { return child_.out().find("ready") != std::string::npos || child_.exited(); }) && !child_.exited(); }
    // Runs one batch (kCalls pwrite64 then kCalls pread64) and waits for it.
    bool batch() {
        const std::string done = "batch " + std::to_string(++batches_) + " done";
        child_.signal(SIGUSR1);
        return eventually([&] { return child_.out().find(done) != std::string::npos || child_.exited(); }) &&
               !child_.exited();
    }
    int stop() {
        child_.signal(SIGTERM);
        return child_.wait();
    }
    void kill() { child_.signal(SIGKILL); child_.wait(); }
    std::string err() const { return child_.err(); }

private:
    Child child_;
    int batches_ = 0;
};

pid_t unused_pid() {
    for (pid_t p = 4000000; p > 1000; --p)
        if (::kill(p, 0) != 0 && errno == ESRCH) return p;
    return 0;
}

bool agent_mapped(pid_t pid) {
    return read_file("/proc/" + std::to_string(pid) + "/maps").find("liveio-agent.so") != std::string::npos;
}

// Skips the test when this machine cannot attach (no ptrace) or the agent lacks BPF support.
#define SKIP_UNLESS_ATTACHABLE(run)                                                                   \
    do {                                                                                              \
        if ((run).err.find("Operation not permitted") != std::string::npos ||                         \
            (run).err.find("ptrace") != std::string::npos)                                            \
            GTEST_SKIP() << "cannot attach here: " << (run).err;                                      \
        if ((run).err.find("no BPF support") != std::string::npos)                                    \
            GTEST_SKIP() << "this agent has no BPF support yet: " << (run).err;                       \
    } while (0)

TEST(ObserveCli, NoSuchProcess) {
    const pid_t pid = unused_pid();
    ASSERT_GT(pid, 0);
    for (const char* cmd : {"stats", "top", "hist", "trace", "maps"}) {
        const Run r = liveio({cmd, std::to_string(pid)});
        EXPECT_EQ(r.status, 1) << cmd;
        EXPECT_NE(r.err.find("process " + std::to_string(pid) + " does not exist"), std::string::npos)
            << cmd << ": " << r.err;
    }
}

TEST(ObserveCli, ObjectNotFoundAndNoAgentToUnloadFrom) {
    Workload w;
    ASSERT_TRUE(w.ready());
    const Run missing = liveio({"load", std::to_string(w.pid()), "/nonexistent/x.bpf.o"});
    EXPECT_EQ(missing.status, 1);
    EXPECT_NE(missing.err.find("/nonexistent/x.bpf.o: no such file"), std::string::npos) << missing.err;
    const Run builtin = liveio({"load", std::to_string(w.pid()), "no_such_builtin"});
    EXPECT_EQ(builtin.status, 1);
    EXPECT_NE(builtin.err.find("no built-in BPF object 'no_such_builtin'"), std::string::npos) << builtin.err;
    EXPECT_NE(builtin.err.find("io_stats.bpf.o"), std::string::npos) << builtin.err;  // lists what exists
    const Run unload = liveio({"unload", std::to_string(w.pid()), "1"});
    EXPECT_EQ(unload.status, 1);
    EXPECT_NE(unload.err.find("no liveio agent in process"), std::string::npos) << unload.err;
    EXPECT_FALSE(agent_mapped(w.pid()));  // none of these attached
    EXPECT_EQ(w.stop(), 0) << w.err();
}

// Counts of the workload's syscalls in `stats --json` output.
uint64_t json_calls(const json& j, const std::string& syscall, const char* field = "calls") {
    for (const auto& row : j["syscalls"])
        if (row["name"] == syscall) return row[field].get<uint64_t>();
    return 0;
}

TEST(ObserveCli, CountsOfAKnownWorkloadThroughEveryCommand) {
    Workload w;
    ASSERT_TRUE(w.ready());
    const std::string pid = std::to_string(w.pid());
    const Run attach = liveio({"attach", pid});
    SKIP_UNLESS_ATTACHABLE(attach);
    ASSERT_EQ(attach.status, 0) << attach.out << attach.err;
    const Run load = liveio({"load", pid, "io_stats"});
    SKIP_UNLESS_ATTACHABLE(load);
    ASSERT_EQ(load.status, 0) << load.out << load.err;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(load.out, m, std::regex("object (\\d+): io_stats.bpf.o"))) << load.out;
    const std::string object = m[1];
    EXPECT_NE(load.out.find("liveio/io_exit"), std::string::npos) << load.out;

    ASSERT_TRUE(w.batch());
    const Run stats = liveio({"stats", pid, "--json"});
    ASSERT_EQ(stats.status, 0) << stats.err;
    const json j = json::parse(stats.out);
    EXPECT_EQ(json_calls(j, "pread64"), static_cast<uint64_t>(kCalls)) << stats.out;
    EXPECT_EQ(json_calls(j, "pwrite64"), static_cast<uint64_t>(kCalls));
    EXPECT_EQ(json_calls(j, "pread64", "bytes"), static_cast<uint64_t>(kCalls) * kSize);
    EXPECT_EQ(json_calls(j, "pwrite64", "bytes"), static_cast<uint64_t>(kCalls) * kSize);
    EXPECT_EQ(json_calls(j, "pread64", "errors"), 0u);
    uint64_t file_reads = 0;
    for (const auto& row : j["classes"])
        if (row["class"] == "file" && row["direction"] == "read") file_reads = row["calls"];
    EXPECT_EQ(file_reads, static_cast<uint64_t>(kCalls)) << j["classes"].dump();
    EXPECT_TRUE(j["interval_s"].is_null());

    const Run table = liveio({"stats", pid});
    ASSERT_EQ(table.status, 0) << table.err;
    EXPECT_NE(table.out.find("pread64"), std::string::npos) << table.out;
    EXPECT_NE(table.out.find(std::to_string(kCalls)), std::string::npos) << table.out;

    ASSERT_TRUE(w.batch());
    const Run hist = liveio({"hist", pid, "--syscall", "pread64"});
    ASSERT_EQ(hist.status, 0) << hist.err;
    EXPECT_NE(hist.out.find("@pread64 (latency, ns):"), std::string::npos) << hist.out;
    uint64_t counted = 0;
    for (std::sregex_iterator it(hist.out.begin(), hist.out.end(), std::regex("\\) +(\\d+) \\|")), end; it != end; ++it)
        counted += std::stoull((*it)[1]);
    EXPECT_EQ(counted, 2u * kCalls) << hist.out;
    const Run unseen = liveio({"hist", pid, "--syscall", "fsync"});
    EXPECT_EQ(unseen.status, 1);
    EXPECT_NE(unseen.err.find("no fsync calls"), std::string::npos) << unseen.err;

    const Run maps = liveio({"maps", pid, object});
    ASSERT_EQ(maps.status, 0) << maps.err;
    EXPECT_NE(maps.out.find("map syscall_stats: array"), std::string::npos) << maps.out;
    EXPECT_NE(maps.out.find("map slow_events: ringbuf"), std::string::npos) << maps.out;
    EXPECT_TRUE(std::regex_search(maps.out, std::regex("pread64 +calls " + std::to_string(2 * kCalls) + " "))) << maps.out;

    const Run top = liveio({"top", pid, "--interval", "100ms", "--count", "2"});
    ASSERT_EQ(top.status, 0) << top.err;
    EXPECT_NE(top.out.find("liveio top"), std::string::npos) << top.out;
    EXPECT_NE(top.out.find("CALLS/s"), std::string::npos) << top.out;

    // trace with every call "slow": start it, then run a batch, take 5 events.
    {
        Child trace({LIVEIO_CLI_PATH, "trace", pid, "--threshold-us", "0", "--count", "5"});
        ASSERT_TRUE(eventually([&] { return trace.err().find("tracing I/O") != std::string::npos || trace.exited(); }))
            << trace.err();
        ASSERT_FALSE(trace.exited()) << trace.err();
        ASSERT_TRUE(w.batch());
        EXPECT_EQ(trace.wait(), 0) << trace.err();
        const std::string out = trace.out();
        size_t events = 0;
        for (size_t p = out.find("pwrite64"); p != std::string::npos; p = out.find("pwrite64", p + 1)) ++events;
        EXPECT_EQ(events, 5u) << out;  // the batch starts with kCalls pwrite64 calls
        EXPECT_NE(trace.err().find("5 events shown, 0 dropped"), std::string::npos) << trace.err();
    }

    const Run unload = liveio({"unload", pid, object});
    EXPECT_EQ(unload.status, 0) << unload.err;
    const Run again = liveio({"unload", pid, object});
    EXPECT_EQ(again.status, 1);
    EXPECT_NE(again.err.find("unloading object " + object), std::string::npos) << again.err;
    EXPECT_EQ(liveio({"detach", pid}).status, 0);
    EXPECT_FALSE(agent_mapped(w.pid()));
    EXPECT_EQ(w.stop(), 0) << w.err();
}

TEST(ObserveCli, StatsAttachesMeasuresAndLeavesTheProcessAsFound) {
    Workload w;
    ASSERT_TRUE(w.ready());
    const std::string pid = std::to_string(w.pid());
    Child stats({LIVEIO_CLI_PATH, "stats", pid, "--json", "--duration", "2s"});
    // The batch must fall inside the measured interval: wait until the first snapshot is taken
    // (announced on stderr), then run it; 2 s is ample for 1000 calls, and if it were not, the
    // count would show it.
    ASSERT_TRUE(eventually([&] { return stats.err().find("counting the I/O") != std::string::npos || stats.exited(); }));
    if (stats.exited()) {
        Run r{stats.wait(), stats.out(), stats.err()};
        SKIP_UNLESS_ATTACHABLE(r);
        FAIL() << r.err;
    }
    ASSERT_TRUE(w.batch());
    ASSERT_EQ(stats.wait(), 0) << stats.err();
    Run r{0, stats.out(), stats.err()};
    SKIP_UNLESS_ATTACHABLE(r);
    const json j = json::parse(r.out);
    EXPECT_EQ(json_calls(j, "pread64"), static_cast<uint64_t>(kCalls)) << r.out;
    EXPECT_GT(j["interval_s"].get<double>(), 0);
    for (const auto& row : j["syscalls"])
        if (row["name"] == "pread64") EXPECT_GT(row["calls_per_s"].get<double>(), 0);
    EXPECT_FALSE(agent_mapped(w.pid())) << "stats left the agent in the process";
    EXPECT_FALSE(agent::ControlClient::connect(w.pid()));
    EXPECT_EQ(w.stop(), 0) << w.err();
}

TEST(ObserveCli, LoadErrorsAreTheAgentsOwn) {
    Workload w;
    ASSERT_TRUE(w.ready());
    const std::string pid = std::to_string(w.pid());
    const Run attach = liveio({"attach", pid});
    SKIP_UNLESS_ATTACHABLE(attach);
    ASSERT_EQ(attach.status, 0) << attach.err;

    const std::string junk = temp_path("junk") + ".bpf.o";
    {
        std::ofstream f(junk);
        f << "\x7f" "ELF but not really an object";
    }
    const std::string rejected = std::string(LIVEIO_OBSERVE_TEST_BPF_DIR) + "/store_to_ctx.bpf.o";
    for (const std::string& path : {junk, rejected}) {
        // What the agent says to a direct request...
        auto client = agent::ControlClient::connect(w.pid());
        ASSERT_TRUE(client) << client.error().message;
        auto direct = client->call("bpf.load", {{"path", path}});
        if (!direct && direct.error().code == ENOSYS) GTEST_SKIP() << "agent without BPF support";
        ASSERT_FALSE(direct) << path << " was accepted";
        // ...is what the CLI reports, verbatim.
        const Run r = liveio({"load", pid, path});
        EXPECT_EQ(r.status, 1);
        EXPECT_EQ(r.err, "liveio: loading " + path + " into " + pid + ": " + direct.error().message + "\n");
        EXPECT_EQ(r.out, "");
    }
    EXPECT_NE(liveio({"load", pid, rejected}).err.find("insn"), std::string::npos);  // names the instruction
    ::unlink(junk.c_str());
    EXPECT_EQ(liveio({"detach", pid}).status, 0);
    EXPECT_EQ(w.stop(), 0) << w.err();
}

TEST(ObserveCli, ProcessExitingMeanwhileIsReported) {
    Workload w;
    ASSERT_TRUE(w.ready());
    const std::string pid = std::to_string(w.pid());
    const Run attach = liveio({"attach", pid});
    SKIP_UNLESS_ATTACHABLE(attach);
    ASSERT_EQ(attach.status, 0) << attach.err;
    Child top({LIVEIO_CLI_PATH, "top", pid, "--interval", "100ms"});
    ASSERT_TRUE(eventually([&] { return top.out().find("liveio top") != std::string::npos || top.exited(); }))
        << top.err();
    Run early{0, top.out(), top.err()};
    SKIP_UNLESS_ATTACHABLE(early);
    ASSERT_FALSE(top.exited()) << top.err();
    w.kill();
    EXPECT_EQ(top.wait(), 1);
    EXPECT_NE(top.err().find("process " + pid), std::string::npos) << top.err();
    EXPECT_NE(top.err().find("exited"), std::string::npos) << top.err();
}

}  // namespace
}  // namespace liveio::observe
