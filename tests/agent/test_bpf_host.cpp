// The agent's BPF host against real I/O of this process: an in-process Agent (own socket
// name), programs loaded over the control protocol, maps read through the memfds the agent
// passes, as the CLI does. The workload's calls go through this binary's PLT, which the GOT
// mechanism patches.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "agent/agent.h"
#include "agent/bpf_host_sections.h"
#include "agent/fd_classes.h"
#include "agent/mmap_min_addr.h"
#include "agent/process_util.h"
#include "base/raw_syscall.h"
#include "control/protocol.h"
#include "ebpf/loader.h"
#include "ebpf/map.h"
#include "ebpf/runtime.h"
#include "hook/dispatcher.h"
#include "liveio/io_stats.h"
#include "liveio/net_stats.h"

namespace liveio::agent {

using control::ControlClient;
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// <build>/bpf, found from the CLI's location as the CLI finds it (<build>/src/cli/liveio).
std::string bpf_dir() {
    return fs::path(LIVEIO_CLI_PATH).parent_path().parent_path().parent_path() / "bpf";
}

class BpfHostTest : public ::testing::Test {
protected:
    void SetUp() override {
        // A build mistake, not something the machine lacks: fail.
        ASSERT_TRUE(fs::exists(bpf_dir() + "/io_stats.bpf.o"))
            << "BPF programs not built in " << bpf_dir();
        name_ = std::string(1, '\0') + "liveio-test-bpf/" + std::to_string(::getpid()) + "/" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name();
        auto a = Agent::start(AgentOptions{name_, false, "", 0});
        ASSERT_TRUE(a) << a.error().message;
        agent_ = std::move(a).value();
        auto c = ControlClient::connect_name(name_);
        ASSERT_TRUE(c) << c.error().message;
        client_.emplace(std::move(c).value());
        dir_ = fs::temp_directory_path() / ("liveio-bpf-test-" + std::to_string(::getpid()));
        fs::create_directories(dir_ + "/data/db/table/all_1_1_0");
        // GOT hooks on this test binary (by default the mechanism leaves liveio's own code
        // alone, and this binary links the agent).
        call("install", {{"mechanism", "got"}, {"objects", {hook::kMainProgram}}});
    }
    void TearDown() override {
        client_.reset();
        agent_.reset();
        if (!dir_.empty()) fs::remove_all(dir_);
    }

    // The test's own liveio code (protocol client, map mapping, loader) runs in this hooked
    // binary: marked as liveio code, its I/O is not part of the workload.
    json call(const std::string& cmd, json args = json::object()) {
        hook::Dispatcher::ScopedInside inside;
        auto r = client_->call(cmd, std::move(args));
        EXPECT_TRUE(r) << cmd << ": " << (r ? "" : r.error().message);
        return r ? std::move(r).value() : json();
    }
    json load(const std::string& object, json extra = json::object()) {
        extra["path"] = bpf_dir() + "/" + object;
        return call("bpf.load", extra);
    }
    // The maps of `object` by name, mapped from the memfds the agent passed.
    std::map<std::string, std::shared_ptr<ebpf::Map>> maps(uint32_t object) {
        hook::Dispatcher::ScopedInside inside;
        const json r = call("bpf.maps", {{"object", object}});
        std::vector<int> fds = client_->take_fds();
        std::map<std::string, std::shared_ptr<ebpf::Map>> out;
        EXPECT_EQ(fds.size(), r["maps"].size());
        for (size_t i = 0; i < fds.size() && i < r["maps"].size(); ++i) {
            auto m = ebpf::open_shared_map(fds[i]);
            EXPECT_TRUE(m) << m.error().message;
            if (m) out[r["maps"][i]["name"].get<std::string>()] = std::move(m).value();
            ::close(fds[i]);
        }
        return out;
    }
    static liveio_io_stats stats_at(ebpf::Map& map, uint32_t key) {
        liveio_io_stats s{};
        EXPECT_EQ(map.copy_value(&key, &s), 0) << "key " << key;
        return s;
    }
    static liveio_io_stats stats_at(ebpf::Map& map, uint64_t key) {
        liveio_io_stats s{};
        EXPECT_EQ(map.copy_value(&key, &s), 0) << "key " << key;
        return s;
    }
    std::string make_file(const std::string& rel, size_t bytes) {
        const std::string path = dir_ + "/" + rel;
        std::ofstream(path) << std::string(bytes, 'x');
        return path;
    }

    std::string name_, dir_;
    std::unique_ptr<Agent> agent_;
    std::optional<ControlClient> client_;
};

uint64_t file_id_of(int fd) {
    struct stat st {};
    EXPECT_EQ(::fstat(fd, &st), 0);
    return (static_cast<uint64_t>(st.st_dev) << 32) ^ static_cast<uint64_t>(st.st_ino);
}

TEST_F(BpfHostTest, IoStatsCountsAKnownWorkloadPerSyscallClassAndFile) {
    const json loaded = load("io_stats.bpf.o");
    ASSERT_TRUE(loaded.contains("object")) << loaded.dump();
    EXPECT_EQ(loaded["name"], "io_stats.bpf.o");
    ASSERT_EQ(loaded["programs"].size(), 1u);
    EXPECT_EQ(loaded["programs"][0]["name"], "io_stats");
    EXPECT_EQ(loaded["programs"][0]["section"], "liveio/io_exit");
    EXPECT_EQ(loaded["programs"][0]["attach"], "liveio/io_exit");
    EXPECT_GT(loaded["programs"][0]["insns"].get<int>(), 10);
    std::set<std::string> names;
    for (auto& m : loaded["maps"]) names.insert(m["name"].get<std::string>());
    for (const char* n : {"syscall_stats", "class_stats", "file_stats", "slow_events"})
        EXPECT_TRUE(names.count(n)) << n;

    constexpr int kReads = 100, kWrites = 37;
    constexpr size_t kReadSize = 512, kWriteSize = 100;
    const int fd = ::open(make_file("data/db/table/all_1_1_0/y.bin", 64 * 1024).c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char buf[kReadSize];
    for (int i = 0; i < kReads; ++i)
        ASSERT_EQ(::pread(fd, buf, kReadSize, i * 7), static_cast<ssize_t>(kReadSize));
    for (int i = 0; i < kWrites; ++i)
        ASSERT_EQ(::pwrite(fd, buf, kWriteSize, i * 13), static_cast<ssize_t>(kWriteSize));
    EXPECT_EQ(::pread(-5, buf, 1, 0), -1);  // an error: counted as one
    const uint64_t id = file_id_of(fd);
    ::close(fd);

    auto m = maps(loaded["object"]);
    ASSERT_TRUE(m.count("syscall_stats") && m.count("class_stats") && m.count("file_stats"));
    const liveio_io_stats pread_stats = stats_at(*m["syscall_stats"], uint32_t{SYS_pread64});
    EXPECT_EQ(pread_stats.calls, kReads + 1u);
    EXPECT_EQ(pread_stats.errors, 1u);
    EXPECT_EQ(pread_stats.bytes, kReads * kReadSize);
    uint64_t hist_total = 0;
    for (uint64_t h : pread_stats.hist) hist_total += h;
    EXPECT_EQ(hist_total, kReads + 1u);
    EXPECT_GT(pread_stats.latency_ns, 0u);
    const liveio_io_stats pwrite_stats = stats_at(*m["syscall_stats"], uint32_t{SYS_pwrite64});
    EXPECT_EQ(pwrite_stats.calls, static_cast<uint64_t>(kWrites));
    EXPECT_EQ(pwrite_stats.bytes, kWrites * kWriteSize);

    const liveio_io_stats bin_reads = stats_at(
        *m["class_stats"], uint32_t{LIVEIO_CLASS_KEY(LIVEIO_CLASS_CH_BIN, LIVEIO_IO_READ)});
    EXPECT_EQ(bin_reads.calls, static_cast<uint64_t>(kReads));
    EXPECT_EQ(bin_reads.bytes, kReads * kReadSize);
    const liveio_io_stats bin_writes = stats_at(
        *m["class_stats"], uint32_t{LIVEIO_CLASS_KEY(LIVEIO_CLASS_CH_BIN, LIVEIO_IO_WRITE)});
    EXPECT_EQ(bin_writes.calls, static_cast<uint64_t>(kWrites));
    // The file: its open, every pread and pwrite, and the close.
    EXPECT_EQ(stats_at(*m["file_stats"], id).calls, kReads + kWrites + 2u);

    const json listed = call("bpf.list");
    ASSERT_EQ(listed["objects"].size(), 1u);
    EXPECT_GE(listed["objects"][0]["programs"][0]["runs"].get<uint64_t>(), kReads + kWrites + 2u);

    call("bpf.unload", {{"object", loaded["object"]}});
    EXPECT_TRUE(call("bpf.list")["objects"].empty());
    // Unloaded: the maps (still mapped here) no longer change.
    ASSERT_EQ(::pread(::open(dir_.c_str(), O_RDONLY), buf, 1, 0), -1);
    EXPECT_EQ(stats_at(*m["syscall_stats"], uint32_t{SYS_pread64}).calls, kReads + 1u);
}

TEST_F(BpfHostTest, FileClassesOfClickHousePartsSocketsAndPipes) {
    const json loaded = load("io_stats.bpf.o");
    ASSERT_TRUE(loaded.contains("object"));
    char buf[64] = {};
    struct Case {
        const char* file;
        uint32_t cls;
    } files[] = {{"data/db/table/all_1_1_0/c.bin", LIVEIO_CLASS_CH_BIN},
                 {"data/db/table/all_1_1_0/c.mrk", LIVEIO_CLASS_CH_MRK},
                 {"data/db/table/all_1_1_0/c.mrk2", LIVEIO_CLASS_CH_MRK},
                 {"data/db/table/all_1_1_0/primary.idx", LIVEIO_CLASS_CH_PRIMARY},
                 {"data/db/table/all_1_1_0/checksums.txt", LIVEIO_CLASS_CH_OTHER},
                 {"plain.txt", LIVEIO_CLASS_FILE}};
    std::map<uint32_t, uint64_t> expected_reads;
    for (const auto& f : files) {
        const int fd = ::open(make_file(f.file, 64).c_str(), O_RDONLY);
        ASSERT_GE(fd, 0);
        for (int i = 0; i < 3; ++i) ASSERT_EQ(::pread(fd, buf, 8, 0), 8);
        expected_reads[f.cls] += 3;
        ::close(fd);
    }
    // Unix socket pair, pipe, TCP loopback: 5 writes and 5 reads each.
    int sv[2], pf[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ASSERT_EQ(::pipe(pf), 0);
    const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(::listen(listener, 1), 0);
    ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    const int client = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_EQ(::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    const int server = ::accept(listener, nullptr, nullptr);
    ASSERT_GE(server, 0);
    for (auto [w, r] :
         {std::pair{sv[0], sv[1]}, std::pair{pf[1], pf[0]}, std::pair{client, server}}) {
        for (int i = 0; i < 5; ++i) {
            ASSERT_EQ(::write(w, "abcd", 4), 4);
            ASSERT_EQ(::read(r, buf, 4), 4);
        }
    }
    for (int fd : {sv[0], sv[1], pf[0], pf[1], listener, client, server}) ::close(fd);
    expected_reads[LIVEIO_CLASS_UNIX] += 5;
    expected_reads[LIVEIO_CLASS_PIPE] += 5;
    expected_reads[LIVEIO_CLASS_TCP] += 5;

    auto m = maps(loaded["object"]);
    ASSERT_TRUE(m.count("class_stats"));
    for (auto [cls, reads] : expected_reads)
        EXPECT_EQ(
            stats_at(*m["class_stats"], uint32_t{LIVEIO_CLASS_KEY(cls, LIVEIO_IO_READ)}).calls,
            reads)
            << "class " << cls;
    for (uint32_t cls : {LIVEIO_CLASS_UNIX, LIVEIO_CLASS_PIPE, LIVEIO_CLASS_TCP}) {
        const auto w =
            stats_at(*m["class_stats"], uint32_t{LIVEIO_CLASS_KEY(cls, LIVEIO_IO_WRITE)});
        EXPECT_EQ(w.calls, 5u) << "class " << cls;
        EXPECT_EQ(w.bytes, 20u) << "class " << cls;
    }
}

// The peer and local address of every connection, recorded by net_stats when connect and
// accept return, stay in the socket's row after the socket closed: blocking and non-blocking
// connect (EINPROGRESS), accept with and without an address, accept4, IPv6 where the machine
// has it; a refused connect records nothing.
TEST_F(BpfHostTest, NetStatsRecordsBothAddressesAtConnectAndAccept) {
    const json loaded = load("net_stats.bpf.o");
    ASSERT_TRUE(loaded.contains("object")) << loaded.dump();
    struct Expected {
        uint64_t file_id;
        sockaddr_storage local, peer;
    };
    std::vector<Expected> expected;
    auto remember = [&](int fd) {
        Expected e{file_id_of(fd), {}, {}};
        socklen_t l = sizeof e.local, p = sizeof e.peer;
        ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&e.local), &l), 0);
        ASSERT_EQ(::getpeername(fd, reinterpret_cast<sockaddr*>(&e.peer), &p), 0);
        expected.push_back(e);
    };
    auto run_family = [&](int family) {
        sockaddr_storage ss{};
        socklen_t len = 0;
        if (family == AF_INET) {
            auto& a = reinterpret_cast<sockaddr_in&>(ss);
            a.sin_family = AF_INET;
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            len = sizeof a;
        } else {
            auto& a = reinterpret_cast<sockaddr_in6&>(ss);
            a.sin6_family = AF_INET6;
            a.sin6_addr = in6addr_loopback;
            len = sizeof a;
        }
        const int listener = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ASSERT_GE(listener, 0);
        ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&ss), len), 0);
        ASSERT_EQ(::listen(listener, 4), 0);
        ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&ss), &len), 0);
        // Blocking connect, accept with an address.
        const int c1 = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ASSERT_EQ(::connect(c1, reinterpret_cast<sockaddr*>(&ss), len), 0);
        sockaddr_storage from{};
        socklen_t from_len = sizeof from;
        const int s1 = ::accept(listener, reinterpret_cast<sockaddr*>(&from), &from_len);
        ASSERT_GE(s1, 0);
        // Non-blocking connect (0 or EINPROGRESS), accept4 without an address.
        const int c2 = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        const int rc = ::connect(c2, reinterpret_cast<sockaddr*>(&ss), len);
        ASSERT_TRUE(rc == 0 || errno == EINPROGRESS) << std::strerror(errno);
        pollfd pfd{c2, POLLOUT, 0};
        ASSERT_EQ(::poll(&pfd, 1, 10000), 1);
        const int s2 = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        ASSERT_GE(s2, 0);
        for (int fd : {c1, s1, c2, s2}) remember(fd);
        ASSERT_EQ(::send(c1, "ping", 4, 0), 4);
        char b[4];
        ASSERT_EQ(::recv(s1, b, 4, 0), 4);
        for (int fd : {c1, s1, c2, s2, listener}) ::close(fd);
    };
    run_family(AF_INET);
    const int probe6 = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in6 lo6{};
    lo6.sin6_family = AF_INET6;
    lo6.sin6_addr = in6addr_loopback;
    const bool ipv6 =
        probe6 >= 0 && ::bind(probe6, reinterpret_cast<sockaddr*>(&lo6), sizeof lo6) == 0;
    if (probe6 >= 0) ::close(probe6);
    if (ipv6) run_family(AF_INET6);
    // A refused connect (nothing listens on the port of a closed listener): no addresses.
    const int gone = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in any{};
    any.sin_family = AF_INET;
    any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t any_len = sizeof any;
    ASSERT_EQ(::bind(gone, reinterpret_cast<sockaddr*>(&any), sizeof any), 0);
    ASSERT_EQ(::getsockname(gone, reinterpret_cast<sockaddr*>(&any), &any_len), 0);
    ::close(gone);
    const int refused = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_EQ(::connect(refused, reinterpret_cast<sockaddr*>(&any), sizeof any), -1);
    ASSERT_EQ(errno, ECONNREFUSED);
    const uint64_t refused_id = file_id_of(refused);
    ::close(refused);

    auto m = maps(loaded["object"]);
    ASSERT_TRUE(m.count("socket_stats"));
    auto same = [](const liveio_sock_addr& got, const sockaddr_storage& want) {
        if (want.ss_family == AF_INET) {
            const auto& a = reinterpret_cast<const sockaddr_in&>(want);
            return got.family == AF_INET && got.port == ntohs(a.sin_port) &&
                   std::memcmp(got.addr, &a.sin_addr, 4) == 0;
        }
        const auto& a = reinterpret_cast<const sockaddr_in6&>(want);
        return got.family == AF_INET6 && got.port == ntohs(a.sin6_port) &&
               std::memcmp(got.addr, &a.sin6_addr, 16) == 0;
    };
    EXPECT_EQ(expected.size(), ipv6 ? 8u : 4u);
    for (size_t i = 0; i < expected.size(); ++i) {
        liveio_socket_stats row{};
        ASSERT_EQ(m["socket_stats"]->copy_value(&expected[i].file_id, &row), 0) << "socket " << i;
        EXPECT_TRUE(same(row.local, expected[i].local)) << "socket " << i << " local";
        EXPECT_TRUE(same(row.peer, expected[i].peer)) << "socket " << i << " peer";
    }
    liveio_socket_stats row{};
    ASSERT_EQ(m["socket_stats"]->copy_value(&refused_id, &row), 0);
    EXPECT_EQ(row.dir[LIVEIO_IO_OTHER].errors, 1u);
    EXPECT_EQ(row.peer.family, 0u);
    EXPECT_EQ(row.local.family, 0u);
}

TEST_F(BpfHostTest, KernelTracepointProgramSyscountCountsTheSameCalls) {
    const json loaded = load("syscount.bpf.o");
    ASSERT_EQ(loaded["programs"].size(), 2u) << loaded.dump();
    EXPECT_EQ(loaded["programs"][0]["attach"], "raw_syscalls:sys_enter");
    EXPECT_EQ(loaded["programs"][1]["attach"], "raw_syscalls:sys_exit");
    const json stats = load("io_stats.bpf.o");
    constexpr int kReads = 250;
    const int fd = ::open(make_file("count.dat", 4096).c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    char buf[16];
    for (int i = 0; i < kReads; ++i)
        ASSERT_EQ(::pread(fd, buf, sizeof buf, i), static_cast<ssize_t>(sizeof buf));
    ::close(fd);
    auto sc = maps(loaded["object"]);
    auto io = maps(stats["object"]);
    const auto kernel_style = stats_at(*sc["syscalls"], uint32_t{SYS_pread64});
    const auto ours = stats_at(*io["syscall_stats"], uint32_t{SYS_pread64});
    EXPECT_EQ(kernel_style.calls, static_cast<uint64_t>(kReads));
    EXPECT_EQ(ours.calls, kernel_style.calls);
    EXPECT_EQ(kernel_style.errors, 0u);
}

TEST_F(BpfHostTest, BadObjectsGiveTheLoadersErrorAndTheAgentKeepsWorking) {
    const std::string garbage = make_file("garbage.bpf.o", 0);
    std::ofstream(garbage) << "\x7f"
                              "ELF this is not an object";
    auto expected = [&] {
        hook::Dispatcher::ScopedInside inside;
        return ebpf::Object::open(garbage);
    }();
    ASSERT_FALSE(expected);
    auto r = client_->call("bpf.load", {{"path", garbage}});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message, expected.error().message);

    r = client_->call("bpf.load", {{"path", dir_ + "/missing.bpf.o"}});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message,
              "cannot read " + dir_ + "/missing.bpf.o in the target: No such file or directory");
    r = client_->call("bpf.load", {{"path", "relative.bpf.o"}});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EINVAL);
    r = client_->call("bpf.load", {{"path", bpf_dir() + "/io_stats.bpf.o"}, {"engine", "quantum"}});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("unknown engine 'quantum'"), std::string::npos);
    r = client_->call("bpf.load",
                      {{"path", bpf_dir() + "/io_stats.bpf.o"}, {"programs", {"nope"}}});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("no program 'nope'"), std::string::npos);
    // blocklat's sections are kernel block-layer tracepoints: nothing to attach here.
    r = client_->call("bpf.load", {{"path", bpf_dir() + "/blocklat.bpf.o"}});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("no program the agent can attach"), std::string::npos)
        << r.error().message;
    r = client_->call("bpf.unload", {{"object", 4242}});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ENOENT);
    EXPECT_TRUE(call("bpf.list")["objects"].empty());

    // Still working: a good object loads and counts.
    const json ok = load("io_stats.bpf.o", {{"engine", "interp"}});
    EXPECT_EQ(ok["programs"][0]["engine"], "interp");
    char buf[4];
    const int fd = ::open(make_file("after.dat", 16).c_str(), O_RDONLY);
    ASSERT_EQ(::pread(fd, buf, 4, 0), 4);
    ::close(fd);
    auto m = maps(ok["object"]);
    EXPECT_EQ(stats_at(*m["syscall_stats"], uint32_t{SYS_pread64}).calls, 1u);
}

TEST_F(BpfHostTest, LoadUnloadHundredTimesWhileThreadsDoIo) {
    const int fd = ::open(make_file("busy.dat", 4096).c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> reads{0}, bad{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t)
        threads.emplace_back([&] {
            char buf[64];
            while (!stop.load()) {
                if (::pread(fd, buf, sizeof buf, 100) != static_cast<ssize_t>(sizeof buf) ||
                    buf[0] != 'x')
                    ++bad;
                ++reads;
            }
        });
    for (int i = 0; i < 100; ++i) {
        const json loaded = load(i % 2 ? "io_stats.bpf.o" : "syscount.bpf.o",
                                 {{"engine", i % 3 ? "jit" : "interp"}});
        ASSERT_TRUE(loaded.contains("object"));
        call("bpf.unload", {{"object", loaded["object"]}});
    }
    stop = true;
    for (auto& t : threads) t.join();
    ::close(fd);
    EXPECT_EQ(bad.load(), 0u);
    EXPECT_GT(reads.load(), 0u);
    EXPECT_TRUE(call("bpf.list")["objects"].empty());
}

std::string test_bpf(const std::string& name) {
    return std::string(LIVEIO_AGENT_TEST_BPF_DIR) + "/" + name;
}

enum { kEnters, kRequested, kExits, kReturned, kRawExits, kLastFd, kPosSum, kPidTgid };

uint64_t slot(ebpf::Map& map, uint32_t key) {
    uint64_t v = 0;
    EXPECT_EQ(map.copy_value(&key, &v), 0);
    return v;
}

TEST_F(BpfHostTest, KernelStylePerSyscallAndRawTracepointProgramsSeeTheCallsArguments) {
    const json loaded = call("bpf.load", {{"path", test_bpf("tp_pread.bpf.o")}});
    ASSERT_EQ(loaded["programs"].size(), 3u) << loaded.dump();
    EXPECT_EQ(loaded["programs"][0]["attach"], "sys_enter:pread64");
    EXPECT_EQ(loaded["programs"][1]["attach"], "sys_exit:pread64");
    EXPECT_EQ(loaded["programs"][2]["attach"], "raw_tracepoint:sys_exit");
    constexpr int kReads = 40;
    const int fd = ::open(make_file("tp.dat", 8192).c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    char buf[100];
    uint64_t pos_sum = 0;
    for (int i = 0; i < kReads; ++i) {
        ASSERT_EQ(::pread(fd, buf, sizeof buf, i * 3), static_cast<ssize_t>(sizeof buf));
        pos_sum += i * 3;
    }
    auto m = maps(loaded["object"]);
    ebpf::Map& c = *m["counters"];
    EXPECT_EQ(slot(c, kEnters), static_cast<uint64_t>(kReads));
    EXPECT_EQ(slot(c, kRequested), kReads * sizeof buf);
    EXPECT_EQ(slot(c, kExits), static_cast<uint64_t>(kReads));
    EXPECT_EQ(slot(c, kReturned), kReads * sizeof buf);
    EXPECT_EQ(slot(c, kRawExits), static_cast<uint64_t>(kReads));
    EXPECT_EQ(slot(c, kLastFd), static_cast<uint64_t>(fd));
    EXPECT_EQ(slot(c, kPosSum), pos_sum);
    // bpf_get_current_pid_tgid (answered from the thread's cache) names this thread.
    EXPECT_EQ(slot(c, kPidTgid),
              static_cast<uint64_t>(::getpid()) << 32 | static_cast<uint32_t>(::gettid()));
    ::close(fd);
}

}  // namespace
}  // namespace liveio::agent

// Probed by tests/agent/bpf/uprobe_probed.bpf.c: a global symbol of this binary (in .symtab).
volatile long liveio_test_probe_sink;
extern "C" __attribute__((noipa, used)) long liveio_test_probed(long x) {
    liveio_test_probe_sink = x;
    liveio_test_probe_sink = liveio_test_probe_sink + 1;
    return x * 2 + liveio_test_probe_sink;  // 3x + 1
}
extern "C" __attribute__((noipa, used)) long liveio_test_probed_ret(long x) {
    liveio_test_probe_sink = x;
    liveio_test_probe_sink = liveio_test_probe_sink + 1;
    return x * 2 + liveio_test_probe_sink;
}

namespace liveio::agent {
namespace {

// liveio_file_pos from the positions the host tracks while an io_exit program is attached
// (the lseek and read calls it sees), the kernel asked only for a descriptor it knows none of.
TEST_F(BpfHostTest, FilePosAnswersFromTheTrackedPositions) {
    const json loaded = call("bpf.load", {{"path", test_bpf("file_pos.bpf.o")}});
    ASSERT_TRUE(loaded.contains("object")) << loaded.dump();
    auto positions = maps(loaded["object"].get<uint32_t>())["positions"];
    ASSERT_TRUE(positions);
    auto at = [&](uint32_t i) {
        int64_t v = -2;
        EXPECT_EQ(positions->copy_value(&i, &v), 0);
        return v;
    };
    const std::string path = make_file("data/db/table/all_1_1_0/c.bin", 100000);
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    char buf[4096];
    ASSERT_EQ(::lseek(fd, 1000, SEEK_SET), 1000);
    ASSERT_EQ(::read(fd, buf, 300), 300);
    EXPECT_EQ(at(0), 1000);
    EXPECT_EQ(at(1), 1300);
    ASSERT_EQ(::read(fd, buf, sizeof buf), 4096);
    EXPECT_EQ(at(0), 1300);
    EXPECT_EQ(at(1), 5396);
    ASSERT_EQ(::pread(fd, buf, 10, 50), 10);
    EXPECT_EQ(at(0), 5396) << "pread moves no position";
    EXPECT_EQ(at(1), 5396);
    ASSERT_EQ(::lseek(fd, -10, SEEK_END), 99990);
    ASSERT_EQ(::read(fd, buf, sizeof buf), 10);
    EXPECT_EQ(at(0), 99990);
    EXPECT_EQ(at(1), 100000) << "short read at the end";
    ASSERT_EQ(::read(fd, buf, sizeof buf), 0);
    EXPECT_EQ(at(0), 100000);
    EXPECT_EQ(at(1), 100000);
    // Moved where the host cannot see it (a raw syscall passes no hook): the answer is still
    // the tracked position, so no lseek was made for it.
    ASSERT_EQ(raw_syscall(SYS_lseek, fd, 7, SEEK_SET), 7);
    ASSERT_EQ(::pread(fd, buf, 1, 0), 1);
    EXPECT_EQ(at(0), 100000);
    // A write forgets the position (O_APPEND would put it at the end): asked again.
    ASSERT_EQ(::write(fd, "abc", 3), 3);
    ASSERT_EQ(::read(fd, buf, 5), 5);
    EXPECT_EQ(at(0), 10);
    EXPECT_EQ(at(1), 15);
    // A descriptor never seen: asked once, then tracked; its number reused after close
    // starts over.
    const int fd2 = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd2, 0);
    ASSERT_EQ(raw_syscall(SYS_lseek, fd2, 500, SEEK_SET), 500);
    ASSERT_EQ(::read(fd2, buf, 100), 100);
    EXPECT_EQ(at(0), 500);
    EXPECT_EQ(at(1), 600);
    ::close(fd2);
    const int fd3 = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_EQ(fd3, fd2) << "the lowest free number";
    ASSERT_EQ(::read(fd3, buf, 10), 10);
    EXPECT_EQ(at(0), 0);
    EXPECT_EQ(at(1), 10);
    EXPECT_EQ(at(2), 9) << "reads and preads seen";
    ::close(fd3);
    ::close(fd);
}

TEST_F(BpfHostTest, UprobeAndUretprobeOnAFunctionOfTheTarget) {
    const json loaded = call("bpf.load", {{"path", test_bpf("uprobe_probed.bpf.o")}});
    ASSERT_EQ(loaded["programs"].size(), 2u) << loaded.dump();
    EXPECT_EQ(loaded["programs"][0]["attach"], "uprobe:/proc/self/exe:liveio_test_probed");
    EXPECT_EQ(loaded["programs"][1]["attach"], "uretprobe:/proc/self/exe:liveio_test_probed_ret");
    long sum = 0;
    for (long i = 1; i <= 50; ++i) {
        ASSERT_EQ(liveio_test_probed(i), 3 * i + 1);
        ASSERT_EQ(liveio_test_probed_ret(i), 3 * i + 1);
        sum += 3 * i + 1;
    }
    auto m = maps(loaded["object"]);
    ebpf::Map& p = *m["probed"];
    EXPECT_EQ(slot(p, 0), 50u);    // calls
    EXPECT_EQ(slot(p, 1), 1275u);  // sum of the first argument
    EXPECT_EQ(slot(p, 2), 50u);    // returns
    EXPECT_EQ(slot(p, 3), static_cast<uint64_t>(sum));
    // A second object probing the same functions shares the probes; each counts its calls.
    const json second =
        call("bpf.load", {{"path", test_bpf("uprobe_probed.bpf.o")}, {"engine", "interp"}});
    ASSERT_TRUE(second.contains("object")) << second.dump();
    auto m2 = maps(second["object"]);
    ASSERT_EQ(liveio_test_probed(10), 31);
    ASSERT_EQ(liveio_test_probed_ret(10), 31);
    EXPECT_EQ(slot(p, 0), 51u);
    EXPECT_EQ(slot(*m2["probed"], 0), 1u);
    EXPECT_EQ(slot(*m2["probed"], 3), 31u);
    call("bpf.unload", {{"object", loaded["object"]}});
    ASSERT_EQ(liveio_test_probed(1), 4);
    EXPECT_EQ(slot(p, 0), 51u);  // unloaded: no longer runs
    EXPECT_EQ(slot(*m2["probed"], 0), 2u);
    call("bpf.unload", {{"object", second["object"]}});
    // Detached: the function runs unprobed, its code restored.
    EXPECT_EQ(liveio_test_probed(7), 22);
    EXPECT_EQ(liveio_test_probed_ret(7), 22);
    EXPECT_EQ(slot(*m2["probed"], 0), 2u);
    EXPECT_EQ(slot(*m2["probed"], 2), 1u);

    auto r = client_->call("bpf.load", {{"path", bpf_dir() + "/io_stats.bpf.o"}});
    ASSERT_TRUE(r) << r.error().message;
}

TEST_F(BpfHostTest, VerifierRejectionIsReportedWithTheInstructionAndNothingStaysLoaded) {
    const std::string path = test_bpf("rejected.bpf.o");
    std::string verifier_message;
    {
        hook::Dispatcher::ScopedInside inside;
        auto obj = ebpf::Object::open(path);
        ASSERT_TRUE(obj) << obj.error().message;
        auto exe = ebpf::Executable::load(obj->programs()[0], ebpf::HelperTable::standard(),
                                          ebpf::Engine::Jit);
        ASSERT_FALSE(exe) << "the verifier accepted a read past the context";
        verifier_message = exe.error().message;
    }
    EXPECT_NE(verifier_message.find("reads_past_ctx"), std::string::npos) << verifier_message;
    EXPECT_NE(verifier_message.find("insn 0: "), std::string::npos) << verifier_message;
    auto r = client_->call("bpf.load", {{"path", path}});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message, verifier_message);  // verbatim
    EXPECT_TRUE(call("bpf.list")["objects"].empty());
    EXPECT_TRUE(call("bpf.load", {{"path", bpf_dir() + "/io_stats.bpf.o"}}).contains("object"));
}

TEST_F(BpfHostTest, TracePrintkLinesReachTheLogPassedByBpfLog) {
    const json loaded = call("bpf.load", {{"path", test_bpf("printk.bpf.o")}});
    ASSERT_TRUE(loaded.contains("object")) << loaded.dump();
    const int fd = ::open(make_file("printk.dat", 64).c_str(), O_RDONLY);
    char buf[8];
    for (int i = 0; i < 3; ++i) ASSERT_EQ(::pread(fd, buf, 5 + i, 0), 5 + i);
    ::close(fd);
    hook::Dispatcher::ScopedInside inside;
    const json r = call("bpf.log");
    EXPECT_EQ(r["dropped"], 0);
    std::vector<int> fds = client_->take_fds();
    ASSERT_EQ(fds.size(), 1u);
    auto log = ebpf::TraceLog::open(fds[0]);
    ::close(fds[0]);
    ASSERT_TRUE(log) << log.error().message;
    std::vector<std::string> lines;
    log->read([&](const ebpf::TraceLine& l) {
        lines.emplace_back(l.text);
        EXPECT_EQ(l.tgid, static_cast<uint32_t>(::getpid()));
    });
    EXPECT_EQ(lines, (std::vector<std::string>{"pread returned 5", "pread returned 6",
                                               "pread returned 7"}));
}

// Counts this process's open descriptors and memory mappings.
std::pair<size_t, size_t> fds_and_mappings() {
    size_t fds = 0;
    for ([[maybe_unused]] auto& e : fs::directory_iterator("/proc/self/fd")) ++fds;
    std::ifstream maps("/proc/self/maps");
    size_t lines = 0;
    for (std::string l; std::getline(maps, l);) ++lines;
    return {fds, lines};
}

TEST_F(BpfHostTest, UnloadReleasesMapsMemfdsAndJitMemory) {
    hook::Dispatcher::ScopedInside inside;  // the test's own bookkeeping is not the workload
    // Warm up once: first-use allocations (thread slots, caches) are not leaks.
    call("bpf.unload",
         {{"object", call("bpf.load", {{"path", bpf_dir() + "/io_stats.bpf.o"}})["object"]}});
    const auto before = fds_and_mappings();
    for (int i = 0; i < 5; ++i) {
        const json a = call("bpf.load", {{"path", bpf_dir() + "/io_stats.bpf.o"}});
        const json b = call("bpf.load", {{"path", test_bpf("tp_pread.bpf.o")}, {"engine", "jit"}});
        EXPECT_GT(fds_and_mappings().first, before.first);  // the maps' memfds are open now
        call("bpf.unload", {{"object", a["object"]}});
        call("bpf.unload", {{"object", b["object"]}});
    }
    EXPECT_EQ(fds_and_mappings(), before);
}

TEST(BpfHostAgent, LoadOnAnAgentWithoutInterceptionInstallsTheDefault) {
    const std::string name =
        std::string(1, '\0') + "liveio-test-bpf/" + std::to_string(::getpid()) + "/default";
    auto agent = Agent::start(AgentOptions{name, false, "", 0});
    ASSERT_TRUE(agent) << agent.error().message;
    auto c = ControlClient::connect_name(name);
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_TRUE(c->call("status").value()["mechanisms"].empty());
    auto loaded = c->call("bpf.load", {{"path", bpf_dir() + "/io_stats.bpf.o"}});
    ASSERT_TRUE(loaded) << loaded.error().message;
    const json status = c->call("status").value();
    ASSERT_EQ(status["mechanisms"].size(), 1u);
    EXPECT_EQ(status["mechanisms"][0]["name"], "got");
    // Detach unloads the programs along with the interception.
    ASSERT_TRUE(c->call("detach"));
    EXPECT_TRUE(agent.value()->bpf().list().empty());
}

// A process under `liveio run` (the agent preloaded, GOT hooks installed at startup) that does
// a known workload when told to: Debian's python3, controlled through its stdin and stdout.
class ScriptedTarget {
public:
    // `under_run`: started by `liveio run` (agent preloaded); else plain, for `liveio attach`.
    ScriptedTarget(const std::string& script, const std::vector<std::string>& args,
                   bool under_run = true, const std::string& mechanism = "got") {
        int in[2], out[2];
        if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return;
        pid_ = ::fork();
        if (pid_ == 0) {
            ::dup2(in[0], 0);
            ::dup2(out[1], 1);
            std::vector<std::string> argv{LIVEIO_CLI_PATH, "run", "--mechanism", mechanism, "--"};
            if (!under_run) argv.clear();
            for (const std::string& a :
                 {std::string("/usr/bin/python3"), std::string("-c"), script})
                argv.push_back(a);
            argv.insert(argv.end(), args.begin(), args.end());
            std::vector<char*> raw;
            for (auto& a : argv) raw.push_back(a.data());
            raw.push_back(nullptr);
            ::execv(raw[0], raw.data());
            ::_exit(127);
        }
        ::close(in[0]);
        ::close(out[1]);
        to_ = in[1];
        from_ = ::fdopen(out[0], "r");
    }
    ~ScriptedTarget() {
        if (to_ >= 0) ::close(to_);
        if (from_) std::fclose(from_);
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            testing::wait_exit(pid_);
        }
    }
    pid_t pid() const { return pid_; }
    std::string line() {
        char buf[256];
        return from_ && std::fgets(buf, sizeof buf, from_) ? std::string(buf) : std::string();
    }
    void tell(const char* text) { ASSERT_GT(::write(to_, text, std::strlen(text)), 0); }
    // Closes its stdin (the script ends) and reaps it; the exit status.
    int finish() {
        ::close(to_);
        to_ = -1;
        const int status = testing::wait_exit(pid_);
        pid_ = -1;
        return status;
    }

private:
    pid_t pid_ = -1;
    int to_ = -1;
    FILE* from_ = nullptr;
};

constexpr const char* kWorkloadScript = R"(
import os, sys
reads, writes = int(sys.argv[2]), int(sys.argv[3])
fd = os.open(sys.argv[1], os.O_RDWR)
print("ready", flush=True)
sys.stdin.readline()
for i in range(reads):
    os.pread(fd, 512, i * 7)
for i in range(writes):
    os.pwrite(fd, b"w" * 100, i * 13)
os.close(fd)
print("done", flush=True)
sys.stdin.readline()
)";

// The maps of a loaded object, by name, mapped from the memfds the agent passes.
std::map<std::string, std::shared_ptr<ebpf::Map>> client_maps(ControlClient& client,
                                                              const json& object) {
    std::map<std::string, std::shared_ptr<ebpf::Map>> maps;
    auto described = client.call("bpf.maps", {{"object", object}});
    EXPECT_TRUE(described) << described.error().message;
    std::vector<int> fds = client.take_fds();
    EXPECT_EQ(fds.size(), described ? (*described)["maps"].size() : 0);
    for (size_t i = 0; described && i < fds.size(); ++i) {
        auto m = ebpf::open_shared_map(fds[i]);
        EXPECT_TRUE(m) << m.error().message;
        if (m) maps[(*described)["maps"][i]["name"]] = std::move(m).value();
        ::close(fds[i]);
    }
    return maps;
}

uint64_t calls_of(ebpf::Map& syscall_stats, uint32_t nr) {
    liveio_io_stats s{};
    EXPECT_EQ(syscall_stats.copy_value(&nr, &s), 0);
    return s.calls;
}

TEST(BpfHostProcess, AttachLoadDetachReattachInALiveProcess) {
    if (::access("/usr/bin/python3", X_OK) != 0)
        GTEST_SKIP() << "needs /usr/bin/python3 (Debian python3) as the workload";
    const std::string file = testing::temp_path("attach.dat");
    std::ofstream(file) << std::string(64 * 1024, 'x');
    // Waits for commands in select() (not hooked) so that no thread sits in a hooked read
    // while a detach waits for the hooks to drain.
    constexpr const char* kLoop = R"(
import os, select, sys
fd = os.open(sys.argv[1], os.O_RDWR)
print("ready", flush=True)
while True:
    if not select.select([0], [], [], 0.05)[0]:
        continue
    line = os.read(0, 64)
    if not line:
        break
    for i in range(int(line)):
        os.pread(fd, 64, i)
    print("done", flush=True)
)";
    ScriptedTarget target(kLoop, {file}, false);
    ASSERT_EQ(target.line(), "ready\n");
    const std::string pid = std::to_string(target.pid());
    for (int round = 0; round < 3; ++round) {
        auto attached = testing::run_cli({"attach", pid});
        ASSERT_EQ(attached.status, 0) << attached.output;
        auto client = ControlClient::connect(target.pid());
        ASSERT_TRUE(client) << client.error().message;
        auto loaded = client->call("bpf.load", {{"path", bpf_dir() + "/io_stats.bpf.o"}});
        ASSERT_TRUE(loaded) << loaded.error().message;
        const int n = 50 + round;
        target.tell((std::to_string(n) + "\n").c_str());
        ASSERT_EQ(target.line(), "done\n");
        auto maps = client_maps(*client, (*loaded)["object"]);
        ASSERT_TRUE(maps.count("syscall_stats"));
        EXPECT_EQ(calls_of(*maps["syscall_stats"], SYS_pread64), static_cast<uint64_t>(n))
            << "round " << round;
        // Detach unloads the programs with the agent; the maps mapped here stay readable.
        auto detached = testing::run_cli({"detach", pid});
        ASSERT_EQ(detached.status, 0) << detached.output;
        target.tell("10\n");
        ASSERT_EQ(target.line(), "done\n");
        EXPECT_EQ(calls_of(*maps["syscall_stats"], SYS_pread64), static_cast<uint64_t>(n));
    }
    EXPECT_EQ(target.finish(), 0);
    ::unlink(file.c_str());
}

void run_io_stats_workload(const std::string& mechanism) {
    const std::string dir = testing::temp_path("bpfproc");
    fs::create_directories(dir + "/store/data/db/hits/20190101_1_1_0");
    const std::string file = dir + "/store/data/db/hits/20190101_1_1_0/URL.bin";
    std::ofstream(file) << std::string(64 * 1024, 'x');
    constexpr int kReads = 300, kWrites = 120;
    ScriptedTarget target(kWorkloadScript, {file, std::to_string(kReads), std::to_string(kWrites)},
                          true, mechanism);
    ASSERT_EQ(target.line(), "ready\n");
    auto client = ControlClient::connect(target.pid());
    ASSERT_TRUE(client) << client.error().message;
    auto loaded = client->call("bpf.load", {{"path", bpf_dir() + "/io_stats.bpf.o"}});
    ASSERT_TRUE(loaded) << loaded.error().message;
    target.tell("go\n");
    ASSERT_EQ(target.line(), "done\n");

    auto maps = client_maps(*client, (*loaded)["object"]);
    ASSERT_TRUE(maps.count("syscall_stats") && maps.count("class_stats"));
    auto stats = [&](const char* map, uint32_t key) {
        liveio_io_stats s{};
        EXPECT_EQ(maps[map]->copy_value(&key, &s), 0);
        return s;
    };
    const auto preads = stats("syscall_stats", SYS_pread64);
    EXPECT_EQ(preads.calls, static_cast<uint64_t>(kReads));
    EXPECT_EQ(preads.bytes, kReads * 512u);
    const auto pwrites = stats("syscall_stats", SYS_pwrite64);
    EXPECT_EQ(pwrites.calls, static_cast<uint64_t>(kWrites));
    EXPECT_EQ(pwrites.bytes, kWrites * 100u);
    EXPECT_EQ(stats("class_stats", LIVEIO_CLASS_KEY(LIVEIO_CLASS_CH_BIN, LIVEIO_IO_READ)).calls,
              static_cast<uint64_t>(kReads));
    EXPECT_EQ(stats("class_stats", LIVEIO_CLASS_KEY(LIVEIO_CLASS_CH_BIN, LIVEIO_IO_WRITE)).calls,
              static_cast<uint64_t>(kWrites));

    // The program list shows its runs; unload leaves the process running normally.
    auto listed = client->call("bpf.list");
    ASSERT_TRUE(listed);
    EXPECT_GE((*listed)["objects"][0]["programs"][0]["runs"].get<uint64_t>(),
              static_cast<uint64_t>(kReads + kWrites));
    ASSERT_TRUE(client->call("bpf.unload", {{"object", (*loaded)["object"]}}));
    EXPECT_EQ(target.finish(), 0);
    fs::remove_all(dir);
}

TEST(BpfHostProcess, IoStatsInALiveioRunProcessCountsItsWorkloadExactly) {
    if (::access("/usr/bin/python3", X_OK) != 0)
        GTEST_SKIP() << "needs /usr/bin/python3 (Debian python3) as the workload";
    run_io_stats_workload("got");
}

TEST(BpfHostProcess, IoStatsUnderSyscallRewritingCountsTheSameWorkload) {
    if (::access("/usr/bin/python3", X_OK) != 0)
        GTEST_SKIP() << "needs /usr/bin/python3 (Debian python3) as the workload";
    testing::MmapMinAddrZero page_zero;  // lowered for the test when root, restored after
    if (!page_zero.ok()) GTEST_SKIP() << page_zero.reason();
    run_io_stats_workload("rewrite");
}

TEST(BpfHostProcess, AProcessThatExitsMeanwhileGivesAClearError) {
    if (::access("/usr/bin/python3", X_OK) != 0)
        GTEST_SKIP() << "needs /usr/bin/python3 (Debian python3)";
    ScriptedTarget target("import sys\nprint('ready', flush=True)\nsys.stdin.readline()\n", {});
    ASSERT_EQ(target.line(), "ready\n");
    const pid_t pid = target.pid();
    auto client = ControlClient::connect(pid);
    ASSERT_TRUE(client) << client.error().message;
    EXPECT_EQ(target.finish(), 0);
    // Connected before the exit: the request fails instead of hanging.
    auto r = client->call("bpf.load", {{"path", bpf_dir() + "/io_stats.bpf.o"}}, 5000);
    ASSERT_FALSE(r);
    EXPECT_FALSE(r.error().message.empty());
    // After the exit: connecting names the process.
    auto again = ControlClient::connect(pid);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ESRCH) << again.error().message;
    EXPECT_EQ(again.error().message, "process " + std::to_string(pid) + " does not exist");
}

TEST(BpfSections, AttachPointsAndSyscallNames) {
    EXPECT_EQ(syscall_number("pread64"), SYS_pread64);
    EXPECT_EQ(syscall_number("newfstat"), SYS_fstat);
    EXPECT_EQ(syscall_number("sendfile64"), SYS_sendfile);
    EXPECT_EQ(syscall_number("no_such_call"), -1);
    EXPECT_STREQ(syscall_table_name(SYS_openat), "openat");
    auto p = parse_attach_point("tracepoint/syscalls/sys_exit_pread64");
    ASSERT_TRUE(p);
    EXPECT_EQ(p->kind, AttachKind::SyscallExit);
    EXPECT_EQ(p->describe(), "sys_exit:pread64");
    p = parse_attach_point("tp/syscalls/sys_enter_frobnicate");
    ASSERT_FALSE(p);
    EXPECT_EQ(p.error().message,
              "section 'tp/syscalls/sys_enter_frobnicate': unknown syscall 'frobnicate' (x86-64)");
    p = parse_attach_point("uprobe/libc.so.6:read+0x10");
    ASSERT_TRUE(p);
    EXPECT_EQ(p->object, "libc.so.6");
    EXPECT_EQ(p->function, "read");
    EXPECT_EQ(p->offset, 16u);
    EXPECT_EQ(p->describe(), "uprobe:libc.so.6:read+16");
    EXPECT_FALSE(parse_attach_point("uretprobe/libc.so.6:read+4"));
    EXPECT_FALSE(parse_attach_point("uprobe/libc.so.6"));
    EXPECT_FALSE(parse_attach_point("tracepoint/block/block_rq_issue"));
    EXPECT_EQ(parse_attach_point("raw_tp/sys_exit")->kind, AttachKind::RawTpExit);
}

TEST(FdClasses, PositionsBelongToTheDescriptorsClassEntry) {
    FdClassCache cache;
    const int fd = ::open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(cache.position(fd), -1);
    cache.set_position(fd, 10);
    EXPECT_EQ(cache.position(fd), -1) << "no class entry yet: nothing kept";
    (void)cache.get(fd);
    EXPECT_EQ(cache.position(fd), -1) << "a new entry starts without a position";
    cache.set_position(fd, 10);
    EXPECT_EQ(cache.position(fd), 10);
    cache.advance_position(fd, 5);
    EXPECT_EQ(cache.position(fd), 15);
    cache.forget_position(fd);
    EXPECT_EQ(cache.position(fd), -1);
    cache.advance_position(fd, 5);
    EXPECT_EQ(cache.position(fd), -1) << "nothing to advance";
    cache.set_position(fd, (int64_t{1} << 40) - 1);
    EXPECT_EQ(cache.position(fd), (int64_t{1} << 40) - 1);
    cache.set_position(fd, int64_t{1} << 40);
    EXPECT_EQ(cache.position(fd), -1) << "too large to keep";
    cache.set_position(fd, 7);
    cache.invalidate(fd);
    EXPECT_EQ(cache.position(fd), -1) << "invalidated with the class";
    (void)cache.get(fd);
    EXPECT_EQ(cache.position(fd), -1) << "the old entry's position is not the new one's";
    cache.set_position(fd, 9);
    cache.clear_positions();
    EXPECT_EQ(cache.position(fd), -1);
    EXPECT_EQ(cache.get(fd).file_id, file_id_of(fd)) << "clear_positions keeps the class";
    EXPECT_EQ(cache.position(-1), -1);
    cache.set_position(-1, 3);
    ::close(fd);
}

TEST(FdClasses, ClickHouseNames) {
    EXPECT_EQ(classify_clickhouse_path("/var/lib/clickhouse/data/db/t/201901_1_5_2/URL.bin"),
              LIVEIO_CLASS_CH_BIN);
    EXPECT_EQ(classify_clickhouse_path("/x/y.mrk2"), LIVEIO_CLASS_CH_MRK);
    EXPECT_EQ(classify_clickhouse_path("/x/all_1_1_0/primary.idx"), LIVEIO_CLASS_CH_PRIMARY);
    EXPECT_EQ(classify_clickhouse_path("/x/all_1_1_0/count.txt"), LIVEIO_CLASS_CH_OTHER);
    EXPECT_EQ(classify_clickhouse_path("/srv/ch/data/db/t/format_version.txt"),
              LIVEIO_CLASS_CH_OTHER);
    EXPECT_EQ(classify_clickhouse_path("/etc/passwd"), LIVEIO_CLASS_FILE);
    EXPECT_EQ(classify_clickhouse_path("/home/u/data/notes.txt"), LIVEIO_CLASS_FILE);
}

}  // namespace
}  // namespace liveio::agent
