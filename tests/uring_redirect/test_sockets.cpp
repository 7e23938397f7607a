// Sockets (socketpair, loopback TCP) and signals: results, errno and bytes as natively.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <thread>

#include "uring_redirect/harness.h"

namespace liveio::policy::test {
namespace {

class Sockets : public RedirectTest {
public:
    void pair(int sv[2], int type = SOCK_STREAM) {
        ASSERT_EQ(::socketpair(AF_UNIX, type, 0, sv), 0);
        keep(sv[0]), keep(sv[1]);
    }
    // A connected loopback TCP pair: [0] client, [1] accepted.
    void tcp(int sv[2]) {
        int listener = ::socket(AF_INET, SOCK_STREAM, 0);
        ASSERT_GE(listener, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof(addr);
        ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
        ASSERT_EQ(::listen(listener, 1), 0);
        ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
        sv[0] = keep(::socket(AF_INET, SOCK_STREAM, 0));
        ASSERT_EQ(::connect(sv[0], reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
        sv[1] = keep(::accept(listener, nullptr, nullptr));
        ASSERT_GE(sv[1], 0);
        ::close(listener);
    }
    // Two connected pairs of one kind (0: unix, 1: TCP): one used natively, one redirected.
    void pairs(int kind, int n[2], int r[2]) {
        if (kind) {
            tcp(n), tcp(r);
        } else {
            pair(n), pair(r);
        }
    }
};

// Flags, zero lengths, peeks, EOF and errors on stream sockets: unix and TCP.
TEST_F(Sockets, SendRecvMatchNative) {
    for (int kind = 0; kind < 2; ++kind) {
        SCOPED_TRACE(kind ? "tcp" : "unix");
        int n[2], r[2];
        pairs(kind, n, r);
        char bn[64] = {}, br[64] = {};
        auto both = [&](const char* what, long nr, int side, long buf_n, long buf_r, long len,
                        long flags) {
            long a = native(nr, n[side], buf_n, len, flags, 0, 0);
            long b = via(nr, r[side], buf_r, len, flags, 0, 0);
            EXPECT_EQ(a, b) << what;
            EXPECT_EQ(std::memcmp(bn, br, sizeof(bn)), 0) << what;
        };
        uint64_t before = redirected();
        both("recv MSG_DONTWAIT, nothing there", SYS_recvfrom, 1, L(bn), L(br), 10, MSG_DONTWAIT);
        both("send", SYS_sendto, 0, L("abcdefgh"), L("abcdefgh"), 8, 0);
        both("send 0 bytes", SYS_sendto, 0, L("x"), L("x"), 0, 0);
        if (kind) {  // TCP: the data must have arrived before the peek below
            pollfd p[2] = {{n[1], POLLIN, 0}, {r[1], POLLIN, 0}};
            ASSERT_EQ(::poll(p, 2, 10000), 2);
        }
        both("recv MSG_PEEK", SYS_recvfrom, 1, L(bn), L(br), 3, MSG_PEEK);
        both("recv 5", SYS_recvfrom, 1, L(bn), L(br), 5, 0);
        both("recv MSG_TRUNC|DONTWAIT", SYS_recvfrom, 1, L(bn), L(br), 1, MSG_DONTWAIT);
        both("read rest", SYS_read, 1, L(bn), L(br), 64, 0);
        both("send with MSG_NOSIGNAL", SYS_sendto, 1, L("zz"), L("zz"), 2, MSG_NOSIGNAL);
        both("write on socket", SYS_write, 0, L("12345"), L("12345"), 5, 0);
        both("recv bad buffer", SYS_recvfrom, 1, 8, 8, 5, 0);
        ::shutdown(n[0], SHUT_WR), ::shutdown(r[0], SHUT_WR);
        both("recv after data, then EOF", SYS_recvfrom, 1, L(bn), L(br), 64, 0);
        both("recv at EOF", SYS_recvfrom, 1, L(bn), L(br), 64, 0);
        both("send after shutdown: EPIPE", SYS_sendto, 0, L("q"), L("q"), 1, MSG_NOSIGNAL);
        EXPECT_EQ(native(SYS_recvfrom, -1, L(bn), 1, 0), via(SYS_recvfrom, -1, L(br), 1, 0))
            << "recv on a bad fd";
        EXPECT_GE(redirected() - before, 12u);
    }
    // Address arguments and MSG_WAITALL run natively.
    int s[2];
    pair(s);
    char buf[8];
    sockaddr_storage from{};
    socklen_t fromlen = sizeof(from);
    ASSERT_EQ(::send(s[0], "abcd", 4, 0), 4);
    EXPECT_EQ(via(SYS_recvfrom, s[1], L(buf), 2, 0, L(&from), L(&fromlen)), 2);
    EXPECT_EQ(fallbacks(FallbackReason::Arguments), 1u);
    EXPECT_EQ(via(SYS_recvfrom, s[1], L(buf), 2, MSG_WAITALL), 2);
    EXPECT_EQ(fallbacks(FallbackReason::Flags), 1u);
}

// A send on a connection whose peer is gone without MSG_NOSIGNAL: EPIPE and one SIGPIPE for
// the calling thread, natively and redirected (io_uring's own send raises none).
std::atomic<int> g_sigpipes{0};
TEST_F(Sockets, EpipeWithoutNosignalRaisesSigpipeOnce) {
    struct sigaction sa {
    }, old{};
    sa.sa_handler = [](int) { g_sigpipes.fetch_add(1); };
    ASSERT_EQ(::sigaction(SIGPIPE, &sa, &old), 0);
    for (int kind = 0; kind < 2; ++kind) {
        SCOPED_TRACE(kind ? "tcp" : "unix");
        int n[2], r[2];
        pairs(kind, n, r);
        ::shutdown(n[0], SHUT_WR), ::shutdown(r[0], SHUT_WR);
        g_sigpipes = 0;
        EXPECT_EQ(native(SYS_sendto, n[0], L("q"), 1, 0, 0, 0), -EPIPE);
        EXPECT_EQ(g_sigpipes.load(), 1);
        const uint64_t before = redirected();
        EXPECT_EQ(via(SYS_sendto, r[0], L("q"), 1, 0, 0, 0), -EPIPE);
        EXPECT_EQ(redirected() - before, 1u);
        EXPECT_EQ(g_sigpipes.load(), 2);
        EXPECT_EQ(via(SYS_sendto, r[0], L("q"), 1, MSG_NOSIGNAL, 0, 0), -EPIPE);
        EXPECT_EQ(g_sigpipes.load(), 2);
    }
    ::sigaction(SIGPIPE, &old, nullptr);
}

TEST_F(Sockets, DatagramsAndRecvmsg) {
    int n[2], r[2];
    pair(n, SOCK_DGRAM), pair(r, SOCK_DGRAM);
    const auto data = pattern(3000, 8);
    EXPECT_EQ(native(SYS_sendto, n[0], L(data.data()), 3000, 0),
              via(SYS_sendto, r[0], L(data.data()), 3000, 0));
    char bn[100], br[100];
    // Datagram truncated to the buffer; MSG_TRUNC in msg_flags; the rest of it is dropped.
    iovec vn{bn, sizeof(bn)}, vr{br, sizeof(br)};
    msghdr mn{}, mr{};
    mn.msg_iov = &vn, mn.msg_iovlen = 1;
    mr.msg_iov = &vr, mr.msg_iovlen = 1;
    uint64_t before = redirected();
    EXPECT_EQ(native(SYS_recvmsg, n[1], L(&mn), 0), via(SYS_recvmsg, r[1], L(&mr), 0));
    EXPECT_EQ(redirected(), before + 1);
    EXPECT_EQ(mn.msg_flags, mr.msg_flags);
    EXPECT_EQ(std::memcmp(bn, br, sizeof(bn)), 0);
    EXPECT_EQ(native(SYS_recvmsg, n[1], L(&mn), MSG_DONTWAIT),
              via(SYS_recvmsg, r[1], L(&mr), MSG_DONTWAIT));
    EXPECT_EQ(native(SYS_recvmsg, n[1], 8, MSG_DONTWAIT), via(SYS_recvmsg, r[1], 8, MSG_DONTWAIT));
}

// O_NONBLOCK sockets: EAGAIN where io_uring alone would wait.
TEST_F(Sockets, NonblockingSocketGivesEagain) {
    int s[2];
    pair(s);
    ASSERT_EQ(::fcntl(s[1], F_SETFL, O_NONBLOCK), 0);
    char buf[8];
    EXPECT_EQ(via(SYS_recvfrom, s[1], L(buf), 8, 0), -EAGAIN);
    EXPECT_EQ(fallbacks(FallbackReason::Nonblocking), 1u);
    ASSERT_EQ(::send(s[0], "ab", 2, 0), 2);
    EXPECT_EQ(via(SYS_recvfrom, s[1], L(buf), 8, 0), 2);
}

// SO_RCVTIMEO: io_uring would wait forever; the call runs natively and times out. In a fresh
// thread: destroying a ring (earlier tests) queues kernel task work to every thread that used
// it, which a call returning EINTR directly (like this one) would see once.
TEST_F(Sockets, ReceiveTimeoutRunsNatively) {
    int s[2];
    pair(s);
    timeval tv{0, 20000};
    ASSERT_EQ(::setsockopt(s[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    std::thread([&] {
        char buf[8];
        EXPECT_EQ(via(SYS_recvfrom, s[1], L(buf), 8, 0), -EAGAIN);
        EXPECT_EQ(fallbacks(FallbackReason::SocketTimeout), 1u);
        // The cancelled op left nothing behind: the next native call times out as well.
        EXPECT_EQ(native(SYS_recvfrom, s[1], L(buf), 8, 0), -EAGAIN);
        ASSERT_EQ(::send(s[0], "ab", 2, 0), 2);
        uint64_t before = redirected();
        EXPECT_EQ(via(SYS_recvfrom, s[1], L(buf), 8, 0), 2);  // data there: no wait, redirected
        EXPECT_EQ(redirected(), before + 1);
    }).join();
}

// 4 MiB over loopback TCP in one blocking send, read by a slow peer: the whole count, as send(2).
TEST_F(Sockets, BlockingTcpSendIsWhole) {
    int s[2];
    tcp(s);
    const auto data = pattern(4 << 20, 9);
    std::vector<char> got;
    std::thread reader([&] {
        std::vector<char> buf(100000);
        while (got.size() < data.size()) {
            long n = via(SYS_recvfrom, s[1], L(buf.data()), buf.size(), 0);
            if (n <= 0) break;
            got.insert(got.end(), buf.data(), buf.data() + n);
        }
    });
    EXPECT_EQ(via(SYS_sendto, s[0], L(data.data()), data.size(), 0),
              static_cast<long>(data.size()));
    reader.join();
    EXPECT_TRUE(got == data);
}

// Waits (bounded) until thread `tid` sleeps in a system call.
bool sleeping_in_syscall(pid_t tid) {
    for (int i = 0; i < 5000; ++i) {
        std::ifstream stat("/proc/self/task/" + std::to_string(tid) + "/stat");
        std::string line;
        std::getline(stat, line);
        auto close = line.rfind(')');
        if (close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'S')
            return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return false;
}

std::atomic<int> g_signals{0};
void count_signal(int) { g_signals.fetch_add(1); }

// A signal reaching a thread blocked in recv: with SA_RESTART the call goes on and returns the
// data sent later; without it the call fails with EINTR. Natively and redirected alike.
TEST_F(Sockets, SignalDuringBlockedRecv) {
    for (int restart = 0; restart < 2; ++restart) {
        for (int redirected_call = 0; redirected_call < 2; ++redirected_call) {
            SCOPED_TRACE(std::string(restart ? "SA_RESTART" : "no SA_RESTART") +
                         (redirected_call ? ", redirected" : ", native"));
            struct sigaction sa {
            }, old{};
            sa.sa_handler = count_signal;
            sa.sa_flags = restart ? SA_RESTART : 0;
            ASSERT_EQ(::sigaction(SIGUSR1, &sa, &old), 0);
            g_signals = 0;
            int s[2];
            pair(s);
            std::atomic<pid_t> tid{0};
            long result = 0;
            char buf[16] = {};
            std::thread receiver([&] {
                tid = static_cast<pid_t>(::syscall(SYS_gettid));
                result = redirected_call ? via(SYS_recvfrom, s[1], L(buf), sizeof(buf), 0)
                                         : native(SYS_recvfrom, s[1], L(buf), sizeof(buf), 0);
            });
            while (tid.load() == 0) std::this_thread::yield();
            ASSERT_TRUE(sleeping_in_syscall(tid.load()));
            ::syscall(SYS_tgkill, ::getpid(), tid.load(), SIGUSR1);
            while (g_signals.load() == 0) std::this_thread::yield();
            if (restart) {
                // Still waiting after the handler ran: the data sent now is what it returns.
                ASSERT_TRUE(sleeping_in_syscall(tid.load()));
                ASSERT_EQ(::send(s[0], "after", 5, 0), 5);
            }
            receiver.join();
            if (restart) {
                EXPECT_EQ(result, 5);
                EXPECT_EQ(std::string(buf, 5), "after");
            } else {
                EXPECT_EQ(result, -EINTR);
                // Nothing was consumed by the interrupted call.
                ASSERT_EQ(::send(s[0], "later", 5, 0), 5);
                EXPECT_EQ(via(SYS_recvfrom, s[1], L(buf), sizeof(buf), 0), 5);
            }
            ::sigaction(SIGUSR1, &old, nullptr);
        }
    }
    EXPECT_EQ(redirect->stats().interrupted, 1u);
}

}  // namespace
}  // namespace liveio::policy::test
