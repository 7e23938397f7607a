// The control protocol against a real Agent in this process, under its own socket name.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include <gtest/gtest.h>

#include "agent/agent.h"
#include "agent/process_util.h"
#include "control/protocol.h"

namespace liveio::agent {

using control::ControlClient;
using control::kAgentVersion;
using control::kMaxRequestBytes;
using control::kProtocolVersion;
using control::LineBuffer;
namespace {

using nlohmann::json;

class ProtocolTest : public ::testing::Test {
protected:
    void SetUp() override {
        name_ = std::string(1, '\0') + "liveio-test/" + std::to_string(::getpid()) + "/" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name();
        auto a = Agent::start(AgentOptions{name_, false, "", 0});
        ASSERT_TRUE(a) << a.error().message;
        agent_ = std::move(a).value();
    }
    ControlClient connect() {
        auto c = ControlClient::connect_name(name_);
        EXPECT_TRUE(c) << c.error().message;
        return std::move(c).value();
    }
    static json parse(const Result<std::string>& line) {
        EXPECT_TRUE(line) << line.error().message;
        return line ? json::parse(line.value()) : json();
    }

    std::string name_;
    std::unique_ptr<Agent> agent_;
};

TEST_F(ProtocolTest, StatusReportsIdentityAndNoMechanisms) {
    auto c = connect();
    auto s = c.call("status");
    ASSERT_TRUE(s) << s.error().message;
    EXPECT_EQ((*s)["pid"], ::getpid());
    EXPECT_EQ((*s)["agent_version"], kAgentVersion);
    EXPECT_EQ((*s)["protocol"], kProtocolVersion);
    EXPECT_TRUE((*s)["mechanisms"].empty());
    EXPECT_GE((*s)["uptime_s"].get<double>(), 0.0);
    for (const char* r : {"status", "install", "uninstall", "detach"})
        EXPECT_TRUE((*s)["requests"].contains(r)) << r;
}

TEST_F(ProtocolTest, MalformedRequestsGetErrorsAndTheConnectionSurvives) {
    auto c = connect();
    struct Case {
        const char* line;
        int code;
    } cases[] = {
        {"this is not json\n", EBADMSG},
        {"{\"v\":1,\"cmd\":\n", EBADMSG},
        {"[1,2,3]\n", EINVAL},
        {"{\"cmd\":\"status\"}\n", EPROTO},
        {"{\"v\":\"1\",\"cmd\":\"status\"}\n", EPROTO},
        {"{\"v\":2,\"cmd\":\"status\"}\n", EPROTONOSUPPORT},
        {"{\"v\":1}\n", EINVAL},
        {"{\"v\":1,\"cmd\":42}\n", EINVAL},
        {"{\"v\":1,\"cmd\":\"no-such-request\"}\n", ENOSYS},
        {"{\"v\":1,\"cmd\":\"install\",\"mechanism\":\"teleport\"}\n", EINVAL},
        {"{\"v\":1,\"cmd\":\"install\",\"mechanism\":\"got\",\"functions\":\"read\"}\n", EINVAL},
        {"{\"v\":1,\"cmd\":\"install\",\"mechanism\":\"got\",\"functions\":[\"no_such_fn\"]}\n",
         EINVAL},
        {"{\"v\":1,\"cmd\":\"uninstall\",\"mechanism\":\"got\"}\n", ENOENT},
        {"{\"v\":1,\"cmd\":\"uninstall\",\"mechanism\":7}\n", EINVAL},
    };
    for (const auto& k : cases) {
        const json r = parse(c.raw_exchange(k.line));
        EXPECT_EQ(r["ok"], false) << k.line;
        EXPECT_EQ(r["v"], kProtocolVersion) << k.line;
        EXPECT_EQ(r["error"]["code"], k.code) << k.line << r.dump();
        EXPECT_FALSE(r["error"]["message"].get<std::string>().empty());
    }
    auto s = c.call("status");
    EXPECT_TRUE(s) << s.error().message;
}

TEST_F(ProtocolTest, ResponseCarriesTheRequestId) {
    auto c = connect();
    const json r = parse(c.raw_exchange("{\"v\":1,\"id\":\"abc\",\"cmd\":\"status\"}\n"));
    EXPECT_EQ(r["id"], "abc");
    EXPECT_EQ(r["ok"], true);
}

TEST_F(ProtocolTest, OversizedRequestIsRejectedAndTheConnectionClosed) {
    auto c = connect();
    std::string big = "{\"v\":1,\"cmd\":\"status\",\"pad\":\"" +
                      std::string(kMaxRequestBytes + 10, 'x') + "\"}\n";
    const json r = parse(c.raw_exchange(big));
    EXPECT_EQ(r["error"]["code"], E2BIG);
    char b;
    EXPECT_EQ(::recv(c.fd(), &b, 1, 0), 0) << "connection should be closed";
    auto again = connect().call("status");  // the agent itself keeps serving
    EXPECT_TRUE(again) << again.error().message;
}

TEST_F(ProtocolTest, RandomBytesNeverBreakTheAgent) {
    std::mt19937 rng(1234);
    for (int round = 0; round < 50; ++round) {
        auto c = connect();
        std::string junk;
        const int n = 1 + static_cast<int>(rng() % 300);
        for (int i = 0; i < n; ++i) {
            char ch = static_cast<char>(rng());
            junk += ch == '\n' ? ' ' : ch;
        }
        // Half the rounds: junk inside an otherwise valid-looking object.
        if (round % 2) junk = "{\"v\":1,\"cmd\":\"status\"," + junk;
        const json r = parse(c.raw_exchange(junk + "\n"));
        EXPECT_EQ(r["ok"], false);
    }
    auto s = connect().call("status");
    EXPECT_TRUE(s) << s.error().message;
}

TEST_F(ProtocolTest, RequestsAreAddedByRegistration) {
    ASSERT_TRUE(
        agent_->router().add("echo", "returns its argument", [](const json& req) -> Result<Reply> {
            return Reply{{{"echo", req.value("x", 0)}}, {}, {}};
        }));
    auto dup =
        agent_->router().add("echo", "again", [](const json&) -> Result<Reply> { return Reply{}; });
    ASSERT_FALSE(dup);
    EXPECT_EQ(dup.error().code, EEXIST);
    ASSERT_TRUE(agent_->router().add("throws", "fails", [](const json&) -> Result<Reply> {
        throw std::runtime_error("handler bug");
    }));
    auto c = connect();
    auto r = c.call("echo", {{"x", 41}});
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)["echo"], 41);
    auto t = c.call("throws");
    ASSERT_FALSE(t);
    EXPECT_NE(t.error().message.find("handler bug"), std::string::npos);
    auto s = c.call("status");
    ASSERT_TRUE(s);
    EXPECT_TRUE((*s)["requests"].contains("echo"));
    EXPECT_TRUE(agent_->router().remove("echo"));
    auto gone = c.call("echo");
    ASSERT_FALSE(gone);
    EXPECT_EQ(gone.error().code, ENOSYS);
}

// Names in replies and errors come from the BPF objects a user loads (ELF symbol and section
// names are arbitrary bytes), so a reply may hold strings that are not UTF-8. The agent must
// still answer, and stay up: nlohmann::json::dump throws on such strings by default, and the
// control thread rendering the response had nothing around it to catch that.
TEST_F(ProtocolTest, RepliesWithBytesThatAreNotUtf8AreStillAnswered) {
    const std::string raw_name = "prog\xff\xfe";
    ASSERT_TRUE(agent_->router().add("nonutf8.ok", "", [&](const json&) -> Result<Reply> {
        return Reply{{{"name", raw_name}}, {}, {}};
    }));
    ASSERT_TRUE(agent_->router().add("nonutf8.error", "", [&](const json&) -> Result<Reply> {
        return make_error(EINVAL, "symbol '" + raw_name + "': bad");
    }));
    auto c = connect();
    auto ok = c.call("nonutf8.ok");
    ASSERT_TRUE(ok) << ok.error().message;
    EXPECT_EQ((*ok)["name"], "prog\xef\xbf\xbd\xef\xbf\xbd");  // each bad byte as U+FFFD
    auto err = c.call("nonutf8.error");
    ASSERT_FALSE(err);
    EXPECT_EQ(err.error().code, EINVAL);
    EXPECT_NE(err.error().message.find("symbol 'prog"), std::string::npos);
    auto s = c.call("status");
    EXPECT_TRUE(s) << "agent stopped answering: " << s.error().message;
}

TEST_F(ProtocolTest, FileDescriptorsArePassedWithTheReply) {
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    ASSERT_TRUE(
        agent_->router().add("pipe", "a pipe's write end", [&](const json&) -> Result<Reply> {
            Reply reply;
            reply.result = {{"fds", 1}};
            reply.fds.push_back(::dup(p[1]));
            return reply;
        }));
    auto c = connect();
    ASSERT_TRUE(c.call("pipe"));
    auto fds = c.take_fds();
    ASSERT_EQ(fds.size(), 1u);
    ASSERT_EQ(::write(fds[0], "z", 1), 1);
    char ch = 0;
    ASSERT_EQ(::read(p[0], &ch, 1), 1);
    EXPECT_EQ(ch, 'z');
    for (int fd : {fds[0], p[0], p[1]}) ::close(fd);
}

TEST_F(ProtocolTest, InstalledGotHooksCountThisProcessCalls) {
    auto c = connect();
    auto r = c.call("install", {{"mechanism", "got"},
                                {"objects", {hook::kMainProgram}},
                                {"functions", {"pread", "pread64"}}});
    ASSERT_TRUE(r) << r.error().message;
    auto busy = c.call("install", {{"mechanism", "got"}});
    ASSERT_FALSE(busy);
    EXPECT_EQ(busy.error().code, EBUSY);

    int fd = ::open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    char buf[64];
    uint64_t bytes = 0;
    for (int i = 0; i < 100; ++i) {
        const ssize_t n = ::pread(fd, buf, sizeof buf, 0);
        ASSERT_GT(n, 0);
        bytes += static_cast<uint64_t>(n);
    }
    errno = 0;
    EXPECT_EQ(::pread(-1, buf, 1, 0), -1);
    EXPECT_EQ(errno, EBADF);
    ::close(fd);

    auto s = c.call("status");
    ASSERT_TRUE(s);
    const json& pr = (*s)["calls"]["pread64"];
    EXPECT_EQ(pr["calls"], 101u);
    EXPECT_EQ(pr["bytes"], bytes);
    EXPECT_EQ(pr["errors"], 1u);
    ASSERT_EQ((*s)["mechanisms"].size(), 1u);
    EXPECT_EQ((*s)["mechanisms"][0]["name"], "got");

    ASSERT_TRUE(c.call("uninstall"));
    ASSERT_EQ(::pread(-1, buf, 1, 0), -1);  // no longer counted
    auto after = c.call("status");
    EXPECT_EQ((*after)["calls"]["pread64"]["calls"], 101u);
    EXPECT_TRUE((*after)["mechanisms"].empty());
}

TEST_F(ProtocolTest, DetachStopsTheControlThread) {
    auto c = connect();
    auto r = c.call("detach");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)["unloadable"], true);
    EXPECT_GT((*r)["control_tid"].get<int>(), 0);
    ASSERT_TRUE(liveio::agent::testing::eventually([&] { return agent_->control_stopped(); }));
    auto again = ControlClient::connect_name(name_);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ECONNREFUSED);
    agent_.reset();  // joins and frees
}

TEST_F(ProtocolTest, OtherUsersAreRefused) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to connect as another uid";
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        // The child only makes system calls until it exits: safe after fork in a threaded process.
        if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0)
            ::_exit(10);
        auto c = ControlClient::connect_name(name_);
        if (!c) ::_exit(11);
        auto r = c->call("status");
        if (r) ::_exit(12);  // must not be served
        ::_exit(r.error().code == EACCES ? 0 : 13);
    }
    EXPECT_EQ(liveio::agent::testing::wait_exit(child), 0)
        << "10: setresuid failed, 11: connect failed, "
           "12: served another uid, 13: wrong error";
    auto s = connect().call("status");  // root (our own uid) is still served
    ASSERT_TRUE(s) << s.error().message;
    EXPECT_EQ((*s)["control"]["refused_connections"], 1u);  // counted, shown by `liveio status`
}

// A process of another uid that took the target's socket name first (abstract names have no
// owner) is not taken for the target's agent: the client checks who serves the name.
TEST(ControlClientTest, RefusesAnImpostorServingTheName) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to serve the name as another uid";
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    // Built before fork: the child only makes system calls (no allocation after fork in a
    // threaded process).
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string name = control::control_socket_name(::getpid());
    std::memcpy(addr.sun_path, name.data(), name.size());
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
    const pid_t impostor = ::fork();
    ASSERT_GE(impostor, 0);
    if (impostor == 0) {
        // Binds "\0liveio/<parent pid>" as nobody and accepts until killed.
        if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0)
            ::_exit(10);
        const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
            ::listen(fd, 4) != 0)
            ::_exit(11);
        (void)!::write(ready[1], "r", 1);
        for (int i = 0; i < 100; ++i) {
            const int c = ::accept(fd, nullptr, nullptr);
            if (c >= 0) ::close(c);
        }
        ::_exit(0);
    }
    ::close(ready[1]);
    char b = 0;
    ASSERT_EQ(::read(ready[0], &b, 1), 1) << "the impostor could not bind the name";
    ::close(ready[0]);
    auto c = ControlClient::connect(::getpid());
    ::kill(impostor, SIGKILL);
    liveio::agent::testing::wait_exit(impostor);
    ASSERT_FALSE(c) << "connected to a socket another process serves";
    EXPECT_EQ(c.error().code, EACCES);
    EXPECT_NE(c.error().message.find("not the target"), std::string::npos) << c.error().message;
}

TEST(ControlClientTest, ClearErrorsForMissingProcessOrAgent) {
    auto gone = ControlClient::connect(0x3ffffff0);
    ASSERT_FALSE(gone);
    EXPECT_EQ(gone.error().code, ESRCH);
    auto none = ControlClient::connect(::getppid());
    ASSERT_FALSE(none);
    EXPECT_EQ(none.error().code, ECONNREFUSED);
    EXPECT_NE(none.error().message.find("no liveio agent"), std::string::npos);
}

// An agent that stopped accepting connections (its process dying, or hung) with a full backlog:
// connect() would wait for it forever; the client gives up after kSendTimeoutMs.
TEST(ControlClientTest, ConnectToAnAgentThatNeverAcceptsEnds) {
    const std::string name =
        std::string(1, '\0') + "liveio-test-unaccepted-" + std::to_string(::getpid());
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, name.data(), name.size());
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
    const int server = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(server, 0);
    ASSERT_EQ(::bind(server, reinterpret_cast<sockaddr*>(&addr), len), 0);
    ASSERT_EQ(::listen(server, 0), 0);
    // Fill the backlog: the connections that still get in are queued, never accepted.
    std::vector<int> queued;
    for (int i = 0; i < 8; ++i) {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        ASSERT_GE(fd, 0);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
            ::close(fd);
            break;
        }
        queued.push_back(fd);
    }
    ASSERT_FALSE(queued.empty());
    // Without the client's bound this waits until ctest's timeout ends the test.
    auto c = ControlClient::connect_name(name);
    for (int fd : queued) ::close(fd);
    ::close(server);
    ASSERT_FALSE(c) << "connected to a socket whose backlog is full";
    EXPECT_EQ(c.error().code, ETIMEDOUT) << c.error().message;
    EXPECT_NE(c.error().message.find("did not accept"), std::string::npos) << c.error().message;
}

TEST(MechanismNames, RoundTrip) {
    for (auto m :
         {hook::Mechanism::Got, hook::Mechanism::Inline, hook::Mechanism::SyscallRewrite}) {
        auto p = parse_mechanism(mechanism_name(m));
        ASSERT_TRUE(p);
        EXPECT_EQ(*p, m);
    }
    EXPECT_FALSE(parse_mechanism("ptrace"));
}

TEST(LineBufferTest, SplitsAndDetectsOverflow) {
    LineBuffer b(8);
    b.append("ab\ncd");
    EXPECT_EQ(b.next_line(), "ab");
    EXPECT_EQ(b.next_line(), std::nullopt);
    b.append("e\n");
    EXPECT_EQ(b.next_line(), "cde");
    b.append("0123456789");
    EXPECT_EQ(b.next_line(), std::nullopt);
    EXPECT_TRUE(b.overflowed());
}

}  // namespace
}  // namespace liveio::agent
