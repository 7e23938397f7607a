// The observing commands end to end: the `liveio` executable against live processes with the
// real agent (liveio-agent.so) and the built-in io_stats program, on a workload whose I/O
// counts are known exactly (liveio-observe-target).
#include <gtest/gtest.h>

#include <atomic>
#include <iterator>
#include <optional>
#include <thread>

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/stat.h>
#include <termios.h>

#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "agent/process_util.h"
#include "clickhouse/dataset.h"
#include "clickhouse/query_loop.h"
#include "clickhouse/server.h"
#include "control/protocol.h"
#include "observe/child.h"

namespace liveio::observe {
namespace {

using agent::testing::eventually;
using agent::testing::read_file;
using agent::testing::temp_path;
using agent::testing::wait_exit;
using nlohmann::json;
using testing_util::Child;

constexpr int kCalls = 500;

// liveio-agent.so's initial-exec TLS (6.3 KB since the uprobe shadow stack joined it) exceeds
// the surplus glibc reserves for libraries dlopen'ed later (~1.6 KB by default), so attaching
// fails with "cannot allocate memory in static TLS block". That is the agent's to fix (the
// agent tests attach too); these tests exercise the CLI, so their targets reserve more.
const char* const kStaticTlsRoom = "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536";
constexpr int kSize = 4096;

struct CliRun {
    int status;
    std::string out, err;
};

CliRun liveio(std::vector<std::string> args) {
    args.insert(args.begin(), LIVEIO_CLI_PATH);
    Child c(args);
    const int status = c.wait();
    return {status, c.out(), c.err()};
}

// liveio-observe-target: `batches` counts the "batch N done" lines.
class Workload {
public:
    Workload()
        : child_({LIVEIO_OBSERVE_TARGET_PATH, "--calls", std::to_string(kCalls), "--size",
                  std::to_string(kSize)},
                 {kStaticTlsRoom}) {}
    pid_t pid() const { return child_.pid(); }
    bool ready() {
        return eventually([&] {
                   return child_.out().find("ready") != std::string::npos || child_.exited();
               }) &&
               !child_.exited();
    }
    // Runs one batch (kCalls pwrite64 then kCalls pread64) and waits for it.
    bool batch() {
        const std::string done = "batch " + std::to_string(++batches_) + " done";
        child_.signal(SIGUSR1);
        return eventually([&] {
                   return child_.out().find(done) != std::string::npos || child_.exited();
               }) &&
               !child_.exited();
    }
    int stop() {
        child_.signal(SIGTERM);
        return child_.wait();
    }
    void kill() {
        child_.signal(SIGKILL);
        child_.wait();
    }
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
    return read_file("/proc/" + std::to_string(pid) + "/maps").find("liveio-agent.so") !=
           std::string::npos;
}

// Skips the test when this machine cannot attach (no ptrace) or the agent lacks BPF support.
#define SKIP_UNLESS_ATTACHABLE(run)                                             \
    do {                                                                        \
        if ((run).err.find("Operation not permitted") != std::string::npos ||   \
            (run).err.find("ptrace") != std::string::npos)                      \
            GTEST_SKIP() << "cannot attach here: " << (run).err;                \
        if ((run).err.find("no BPF support") != std::string::npos)              \
            GTEST_SKIP() << "this agent has no BPF support yet: " << (run).err; \
    } while (0)

// A workload with the agent attached by `liveio attach` (skipped where attaching cannot work).
class AttachedWorkload : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_TRUE(w.ready());
        pid = std::to_string(w.pid());
        const CliRun attach = liveio({"attach", pid});
        SKIP_UNLESS_ATTACHABLE(attach);
        ASSERT_EQ(attach.status, 0) << attach.out << attach.err;
    }
    Workload w;
    std::string pid;
};

// Waits until a running `liveio stats` announces its first snapshot ("counting the I/O"), so
// that work done next falls inside the measured interval. Returns its run when it ended (or
// never announced it) instead: the caller skips or fails with its output.
std::optional<CliRun> wait_until_counting(Child& stats) {
    if (!eventually([&] {
            return stats.err().find("counting the I/O") != std::string::npos || stats.exited();
        }))
        return CliRun{-1, stats.out(),
                      "no 'counting the I/O' announcement in time: " + stats.err()};
    if (stats.exited()) return CliRun{stats.wait(), stats.out(), stats.err()};
    return std::nullopt;
}

TEST(ObserveCli, NoSuchProcess) {
    const pid_t pid = unused_pid();
    ASSERT_GT(pid, 0);
    for (const char* cmd : {"stats", "top", "hist", "trace", "maps"}) {
        const CliRun r = liveio({cmd, std::to_string(pid)});
        EXPECT_EQ(r.status, 1) << cmd;
        EXPECT_NE(r.err.find("process " + std::to_string(pid) + " does not exist"),
                  std::string::npos)
            << cmd << ": " << r.err;
    }
}

TEST(ObserveCli, ObjectNotFoundAndNoAgentToUnloadFrom) {
    Workload w;
    ASSERT_TRUE(w.ready());
    const CliRun missing = liveio({"load", std::to_string(w.pid()), "/nonexistent/x.bpf.o"});
    EXPECT_EQ(missing.status, 1);
    EXPECT_NE(missing.err.find("/nonexistent/x.bpf.o: no such file"), std::string::npos)
        << missing.err;
    const CliRun builtin = liveio({"load", std::to_string(w.pid()), "no_such_builtin"});
    EXPECT_EQ(builtin.status, 1);
    EXPECT_NE(builtin.err.find("no built-in BPF object 'no_such_builtin'"), std::string::npos)
        << builtin.err;
    EXPECT_NE(builtin.err.find("io_stats.bpf.o"), std::string::npos)
        << builtin.err;  // lists what exists
    const CliRun unload = liveio({"unload", std::to_string(w.pid()), "1"});
    EXPECT_EQ(unload.status, 1);
    EXPECT_NE(unload.err.find("no liveio agent in process"), std::string::npos) << unload.err;
    EXPECT_FALSE(agent_mapped(w.pid()));  // none of these attached
    EXPECT_EQ(w.stop(), 0) << w.err();
}

// Interactive top on a terminal (a pty): it attaches, draws on the alternate screen, quits on
// 'q' with the terminal restored, and leaves the process without the agent.
TEST(ObserveCli, TopOnATerminalQuitsOnQAndRestoresIt) {
    Workload w;
    ASSERT_TRUE(w.ready());
    const std::string pid = std::to_string(w.pid());
    int master = -1;
    const pid_t child = ::forkpty(&master, nullptr, nullptr, nullptr);
    ASSERT_GE(child, 0) << std::strerror(errno);
    if (child == 0) {
        ::execl(LIVEIO_CLI_PATH, LIVEIO_CLI_PATH, "top", pid.c_str(), "--interval", "100ms",
                nullptr);
        ::_exit(127);
    }
    std::string screen;
    auto drain = [&] {
        char buf[4096];
        pollfd p{master, POLLIN, 0};
        while (::poll(&p, 1, 0) > 0) {
            const ssize_t n = ::read(master, buf, sizeof buf);
            if (n <= 0) break;
            screen.append(buf, static_cast<size_t>(n));
        }
    };
    const bool drawn = eventually([&] {
        drain();
        return screen.find("[q: quit]") != std::string::npos ||
               screen.find("liveio:") != std::string::npos;
    });
    if (screen.find("cannot allocate memory in static TLS") != std::string::npos ||
        screen.find("not permitted") != std::string::npos) {
        ::kill(child, SIGKILL);
        wait_exit(child);
        GTEST_SKIP() << "cannot attach here: " << screen;
    }
    ASSERT_TRUE(drawn) << screen;
    EXPECT_NE(screen.find("\033[?1049h"), std::string::npos);  // alternate screen entered
    ASSERT_EQ(::write(master, "q", 1), 1);
    int status = -1;
    ASSERT_TRUE(eventually([&] {
        drain();  // a full pty would block its writes
        return ::waitpid(child, &status, WNOHANG) == child;
    }));
    drain();
    ::close(master);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << screen;
    const size_t left = screen.rfind("\033[?1049l");
    EXPECT_NE(left, std::string::npos) << "alternate screen not left";
    EXPECT_NE(screen.find("detached from " + pid, left == std::string::npos ? 0 : left),
              std::string::npos)
        << screen;
    EXPECT_FALSE(agent_mapped(w.pid()));
    EXPECT_EQ(w.stop(), 0) << w.err();
}

TEST(ObserveCli, StatsOverADurationGoesToTheClickHouseSink) {
    if (!clickhouse::find_server_binary()) GTEST_SKIP() << "clickhouse-server is not installed";
    auto server = clickhouse::LocalServer::start({});
    ASSERT_TRUE(server) << server.error().message;
    Workload w;
    ASSERT_TRUE(w.ready());
    const std::string pid = std::to_string(w.pid());
    const std::string url =
        "clickhouse://127.0.0.1:" + std::to_string(server->ports().http) + "/hist.io";
    Child stats({LIVEIO_CLI_PATH, "stats", pid, "--duration", "2s", "--sink", url});
    if (auto early = wait_until_counting(stats)) {
        SKIP_UNLESS_ATTACHABLE(*early);
        FAIL() << early->err;
    }
    ASSERT_TRUE(w.batch());
    ASSERT_EQ(stats.wait(), 0) << stats.err();
    EXPECT_NE(stats.err().find("rows inserted into `hist`.`io`"), std::string::npos) << stats.err();
    auto rows = server->client().query(
        "SELECT calls, bytes FROM hist.io WHERE kind = 'syscall' AND name IN ('pread64', "
        "'pwrite64') AND pid = " +
        pid + " ORDER BY name");
    ASSERT_TRUE(rows) << rows.error().message;
    const std::string each = std::to_string(kCalls) + "\t" + std::to_string(kCalls * kSize) + "\n";
    EXPECT_EQ(*rows, each + each);
    EXPECT_EQ(w.stop(), 0) << w.err();
}

TEST(ObserveCli, SinkWithoutADurationIsRefused) {
    const CliRun r = liveio({"stats", "1", "--sink", "clickhouse://127.0.0.1:1/a.b"});
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("--sink needs --duration"), std::string::npos) << r.err;
}

// Counts of the workload's syscalls in `stats --json` output.
uint64_t json_calls(const json& j, const std::string& syscall, const char* field = "calls") {
    for (const auto& row : j["syscalls"])
        if (row["name"] == syscall) return row[field].get<uint64_t>();
    return 0;
}

TEST_F(AttachedWorkload, CountsOfAKnownWorkloadThroughEveryCommand) {
    const CliRun load = liveio({"load", pid, "io_stats"});
    SKIP_UNLESS_ATTACHABLE(load);
    ASSERT_EQ(load.status, 0) << load.out << load.err;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(load.out, m, std::regex("object (\\d+): io_stats.bpf.o")))
        << load.out;
    const std::string object = m[1];
    EXPECT_NE(load.out.find("liveio/io_exit"), std::string::npos) << load.out;

    ASSERT_TRUE(w.batch());
    const CliRun stats = liveio({"stats", pid, "--json"});
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

    const CliRun table = liveio({"stats", pid});
    ASSERT_EQ(table.status, 0) << table.err;
    EXPECT_NE(table.out.find("pread64"), std::string::npos) << table.out;
    EXPECT_NE(table.out.find(std::to_string(kCalls)), std::string::npos) << table.out;

    ASSERT_TRUE(w.batch());
    const CliRun hist = liveio({"hist", pid, "--syscall", "pread64"});
    ASSERT_EQ(hist.status, 0) << hist.err;
    EXPECT_NE(hist.out.find("@pread64 (latency, ns):"), std::string::npos) << hist.out;
    uint64_t counted = 0;
    const std::regex bucket("\\) +(\\d+) \\|");
    for (std::sregex_iterator it(hist.out.begin(), hist.out.end(), bucket), end; it != end; ++it)
        counted += std::stoull((*it)[1]);
    EXPECT_EQ(counted, 2u * kCalls) << hist.out;
    const CliRun unseen = liveio({"hist", pid, "--syscall", "fsync"});
    EXPECT_EQ(unseen.status, 1);
    EXPECT_NE(unseen.err.find("no fsync calls"), std::string::npos) << unseen.err;

    const CliRun maps = liveio({"maps", pid, object});
    ASSERT_EQ(maps.status, 0) << maps.err;
    EXPECT_NE(maps.out.find("map syscall_stats: array"), std::string::npos) << maps.out;
    EXPECT_NE(maps.out.find("map slow_events: ringbuf"), std::string::npos) << maps.out;
    EXPECT_TRUE(std::regex_search(maps.out,
                                  std::regex("pread64 +calls " + std::to_string(2 * kCalls) + " ")))
        << maps.out;

    const CliRun top = liveio({"top", pid, "--interval", "100ms", "--count", "2"});
    ASSERT_EQ(top.status, 0) << top.err;
    EXPECT_NE(top.out.find("liveio top"), std::string::npos) << top.out;
    EXPECT_NE(top.out.find("CALLS/s"), std::string::npos) << top.out;

    // trace with every call "slow": start it, then run a batch, take 5 events.
    {
        Child trace({LIVEIO_CLI_PATH, "trace", pid, "--threshold-us", "0", "--count", "5"});
        ASSERT_TRUE(eventually([&] {
            return trace.err().find("tracing I/O") != std::string::npos || trace.exited();
        })) << trace.err();
        ASSERT_FALSE(trace.exited()) << trace.err();
        ASSERT_TRUE(w.batch());
        EXPECT_EQ(trace.wait(), 0) << trace.err();
        const std::string out = trace.out();
        size_t events = 0;
        for (size_t p = out.find("pwrite64"); p != std::string::npos;
             p = out.find("pwrite64", p + 1))
            ++events;
        EXPECT_EQ(events, 5u) << out;  // the batch starts with kCalls pwrite64 calls
        EXPECT_NE(trace.err().find("5 events shown, 0 dropped"), std::string::npos) << trace.err();
    }

    const CliRun unload = liveio({"unload", pid, object});
    EXPECT_EQ(unload.status, 0) << unload.err;
    const CliRun again = liveio({"unload", pid, object});
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
    if (auto early = wait_until_counting(stats)) {
        SKIP_UNLESS_ATTACHABLE(*early);
        FAIL() << early->err;
    }
    ASSERT_TRUE(w.batch());
    ASSERT_EQ(stats.wait(), 0) << stats.err();
    CliRun r{0, stats.out(), stats.err()};
    SKIP_UNLESS_ATTACHABLE(r);
    const json j = json::parse(r.out);
    EXPECT_EQ(json_calls(j, "pread64"), static_cast<uint64_t>(kCalls)) << r.out;
    EXPECT_GT(j["interval_s"].get<double>(), 0);
    for (const auto& row : j["syscalls"]) {
        if (row["name"] == "pread64") {
            EXPECT_GT(row["calls_per_s"].get<double>(), 0);
        }
    }
    EXPECT_FALSE(agent_mapped(w.pid())) << "stats left the agent in the process";
    EXPECT_FALSE(control::ControlClient::connect(w.pid()));
    EXPECT_EQ(w.stop(), 0) << w.err();
}

TEST_F(AttachedWorkload, LoadErrorsAreTheAgentsOwn) {
    const std::string junk = temp_path("junk") + ".bpf.o";
    {
        std::ofstream f(junk);
        f << "\x7f"
             "ELF but not really an object";
    }
    const std::string rejected = std::string(LIVEIO_OBSERVE_TEST_BPF_DIR) + "/store_to_ctx.bpf.o";
    for (const std::string& path : {junk, rejected}) {
        // What the agent says to a direct request...
        auto client = control::ControlClient::connect(w.pid());
        ASSERT_TRUE(client) << client.error().message;
        auto direct = client->call("bpf.load", {{"path", path}});
        if (!direct && direct.error().code == ENOSYS) GTEST_SKIP() << "agent without BPF support";
        ASSERT_FALSE(direct) << path << " was accepted";
        // ...is what the CLI reports, verbatim.
        const CliRun r = liveio({"load", pid, path});
        EXPECT_EQ(r.status, 1);
        EXPECT_EQ(r.err, "liveio: loading " + path + " into " + pid + ": " +
                             direct.error().message + "\n");
        EXPECT_EQ(r.out, "");
    }
    EXPECT_NE(liveio({"load", pid, rejected}).err.find("insn"),
              std::string::npos);  // names the instruction
    ::unlink(junk.c_str());
    EXPECT_EQ(liveio({"detach", pid}).status, 0);
    EXPECT_EQ(w.stop(), 0) << w.err();
}

TEST_F(AttachedWorkload, ProcessExitingMeanwhileIsReported) {
    Child top({LIVEIO_CLI_PATH, "top", pid, "--interval", "100ms"});
    ASSERT_TRUE(eventually([&] {
        return top.out().find("liveio top") != std::string::npos || top.exited();
    })) << top.err();
    CliRun early{0, top.out(), top.err()};
    SKIP_UNLESS_ATTACHABLE(early);
    ASSERT_FALSE(top.exited()) << top.err();
    w.kill();
    EXPECT_EQ(top.wait(), 1);
    EXPECT_NE(top.err().find("process " + pid), std::string::npos) << top.err();
    EXPECT_NE(top.err().find("exited"), std::string::npos) << top.err();
}

// The commands on a real ClickHouse 18.16 serving queries: each attaches, shows the server's
// reads, and leaves it without the agent; the answers stay exact throughout.
TEST(ObserveCli, EveryCommandOnALiveClickHouse) {
    auto binary = clickhouse::find_server_binary();
    if (!binary) GTEST_SKIP() << binary.error().message;
    clickhouse::ServerOptions so;
    so.binary = *binary;
    so.profile_settings = clickhouse::kProfileSettings;  // no uncompressed cache: every query reads
    auto server = clickhouse::LocalServer::start(so);
    ASSERT_TRUE(server) << server.error().message;
    auto client = server->client();
    ASSERT_TRUE(client.execute(
        "CREATE TABLE default.t (k UInt64, v String) ENGINE = MergeTree ORDER BY k"));
    ASSERT_TRUE(client.execute(
        "INSERT INTO default.t SELECT number, toString(number * 7) FROM numbers(1000000)"));
    const std::string sql = "SELECT sum(length(v)), max(k) FROM default.t";
    auto expected = client.query(sql);
    ASSERT_TRUE(expected) << expected.error().message;
    const std::string pid = std::to_string(server->pid());

    // Queries keep the server reading its column files while the commands run.
    clickhouse::testing::QueryLoop loop(*server, {sql}, {*expected});

    const CliRun stats = liveio({"stats", pid, "--json", "--duration", "2s"});
    SKIP_UNLESS_ATTACHABLE(stats);
    ASSERT_EQ(stats.status, 0) << stats.err;
    const json j = json::parse(stats.out);
    EXPECT_GT(json_calls(j, "read"), 0u) << stats.out;
    EXPECT_GT(json_calls(j, "read", "bytes"), 0u) << stats.out;
    bool column_files = false;
    for (const auto& row : j["classes"])
        if (row["class"].get<std::string>().find(".bin") != std::string::npos &&
            row["calls"].get<uint64_t>() > 0)
            column_files = true;
    EXPECT_TRUE(column_files) << "no reads of .bin column files in " << j["classes"].dump();

    const CliRun top = liveio({"top", pid, "--interval", "200ms", "--count", "3"});
    ASSERT_EQ(top.status, 0) << top.err;
    EXPECT_NE(top.out.find("liveio top"), std::string::npos) << top.out;
    EXPECT_NE(top.out.find("read"), std::string::npos) << top.out;

    const CliRun hist = liveio({"hist", pid, "--syscall", "read", "--duration", "1s"});
    EXPECT_EQ(hist.status, 0) << hist.err;
    EXPECT_NE(hist.out.find("@read (latency, ns):"), std::string::npos) << hist.out << hist.err;

    // Each command left the server as found: no agent mapped, no control socket.
    std::ifstream maps("/proc/" + pid + "/maps");
    const std::string mapped((std::istreambuf_iterator<char>(maps)),
                             std::istreambuf_iterator<char>());
    EXPECT_EQ(mapped.find("liveio-agent.so"), std::string::npos);
    EXPECT_FALSE(control::ControlClient::connect(server->pid()));
    const int before = loop.answered();
    ASSERT_TRUE(eventually([&] { return loop.answered() > before + 2; }));
    loop.finish();
    const auto wrong = loop.wrong();
    EXPECT_TRUE(wrong.empty()) << wrong.size() << " wrong answers, first: " << wrong.front();
}

}  // namespace
}  // namespace liveio::observe
