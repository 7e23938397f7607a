// Socket ops on both backends: socketpair and TCP over 127.0.0.1, bytes checked against what
// plain send/recv see on the other end.
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <poll.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "fixture.h"

namespace liveio::uring::test {
namespace {

class SocketOps : public EngineTest {
protected:
    std::pair<int, int> pair() {
        int sv[2];
        EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        return {adopt(sv[0]), adopt(sv[1])};
    }
    // A listening TCP socket on 127.0.0.1 with a kernel-chosen port.
    int listener(sockaddr_in* addr) {
        int l = adopt(::socket(AF_INET, SOCK_STREAM, 0));
        *addr = {};
        addr->sin_family = AF_INET;
        addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof *addr;
        EXPECT_EQ(::bind(l, reinterpret_cast<sockaddr*>(addr), sizeof *addr), 0);
        EXPECT_EQ(::listen(l, 16), 0);
        EXPECT_EQ(::getsockname(l, reinterpret_cast<sockaddr*>(addr), &len), 0);
        return l;
    }
};

TEST_P(SocketOps, SendRecvSocketpair) {
    auto [a, b] = pair();
    const char msg[] = "over the engine";
    EXPECT_EQ(engine->run(Op::send(a, msg, sizeof msg)), static_cast<int>(sizeof msg));
    char got[64] = {};
    ASSERT_EQ(::recv(b, got, sizeof got, 0), static_cast<ssize_t>(sizeof msg));
    EXPECT_STREQ(got, msg);
    ASSERT_EQ(::send(b, "reply", 5, 0), 5);
    char back[16] = {};
    EXPECT_EQ(engine->run(Op::recv(a, back, sizeof back)), 5);
    EXPECT_EQ(std::string(back, 5), "reply");
    EXPECT_EQ(engine->run(Op::recv(a, back, sizeof back, MSG_DONTWAIT)), -EAGAIN);
    ::shutdown(b, SHUT_WR);
    EXPECT_EQ(engine->run(Op::recv(a, back, sizeof back)), 0);  // EOF
}

TEST_P(SocketOps, SendmsgRecvmsg) {
    auto [a, b] = pair();
    char h[] = "head-", t[] = "tail";
    iovec out[2] = {{h, 5}, {t, 4}};
    msghdr m{};
    m.msg_iov = out;
    m.msg_iovlen = 2;
    EXPECT_EQ(engine->run(Op::sendmsg(a, &m)), 9);
    char x[3], y[6];
    iovec in[2] = {{x, 3}, {y, 6}};
    msghdr r{};
    r.msg_iov = in;
    r.msg_iovlen = 2;
    EXPECT_EQ(engine->run(Op::recvmsg(b, &r)), 9);
    EXPECT_EQ(std::string(x, 3) + std::string(y, 6), "head-tail");
}

TEST_P(SocketOps, WholeRecvCollectsPieces) {
    auto [a, b] = pair();
    std::string expected(30000, '\0');
    for (size_t i = 0; i < expected.size(); ++i) expected[i] = static_cast<char>(i * 7);
    std::thread writer([&, b = b] {
        for (size_t off = 0; off < expected.size(); off += 10000) {
            ASSERT_EQ(::send(b, expected.data() + off, 10000, 0), 10000);
            std::this_thread::sleep_for(std::chrono::milliseconds(10));  // interleaving, not timing
        }
    });
    std::string got(expected.size(), '\0');
    int32_t res = engine->run(Op::recv(a, got.data(), static_cast<uint32_t>(got.size())).whole());
    writer.join();
    EXPECT_EQ(res, 30000);
    EXPECT_EQ(got, expected);
}

TEST_P(SocketOps, TcpAcceptConnectEcho) {
    sockaddr_in addr{};
    int l = listener(&addr);
    int c = adopt(::socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in peer{};
    socklen_t peer_len = sizeof peer;
    ASSERT_EQ(engine->prepare(Op::accept(l, reinterpret_cast<sockaddr*>(&peer), &peer_len), 1), 0);
    engine->submit();
    EXPECT_EQ(engine->run(Op::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr)), 0);
    std::vector<Completion> done(2);
    ASSERT_EQ(engine->reap(done, 1), 1u);
    ASSERT_GE(done[0].res, 0);
    int s = adopt(done[0].res);
    EXPECT_EQ(peer.sin_family, AF_INET);
    EXPECT_EQ(peer.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    sockaddr_in local{};
    socklen_t local_len = sizeof local;
    ASSERT_EQ(::getsockname(c, reinterpret_cast<sockaddr*>(&local), &local_len), 0);
    EXPECT_EQ(peer.sin_port, local.sin_port);  // accept saw the connecting socket's port
    std::vector<char> big(200000);
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31 + 1);
    std::vector<char> got(big.size());
    // Both directions at once: the send may be partial until the receiver drains.
    ASSERT_EQ(
        engine->prepare(Op::send(c, big.data(), static_cast<uint32_t>(big.size())).whole(), 10), 0);
    ASSERT_EQ(
        engine->prepare(Op::recv(s, got.data(), static_cast<uint32_t>(got.size())).whole(), 11), 0);
    size_t n = 0;
    while (n < 2) n += engine->submit_and_reap({done.data() + n, 2 - n}, 1);
    for (auto& d : done) EXPECT_EQ(d.res, static_cast<int32_t>(big.size())) << "tag " << d.tag;
    EXPECT_EQ(got, big);
    // Connection refused is reported as the kernel's error.
    ::close(l);
    fds.erase(std::find(fds.begin(), fds.end(), l));
    int c2 = adopt(::socket(AF_INET, SOCK_STREAM, 0));
    EXPECT_EQ(engine->run(Op::connect(c2, reinterpret_cast<sockaddr*>(&addr), sizeof addr)),
              -ECONNREFUSED);
}

TEST_P(SocketOps, CancelPendingRecv) {
    auto [a, b] = pair();
    char buf[16];
    ASSERT_EQ(engine->prepare(Op::recv(a, buf, sizeof buf), 42), 0);
    std::vector<Completion> done(4);
    EXPECT_EQ(engine->submit_and_reap(done, 0), 0u);  // no data: still pending
    EXPECT_EQ(engine->run(Op::cancel(42)), 0);
    ASSERT_EQ(engine->reap(done, 1), 1u);
    EXPECT_EQ(done[0].tag, 42u);
    EXPECT_EQ(done[0].res, -ECANCELED);
    EXPECT_EQ(engine->run(Op::cancel(42)), -ENOENT);
    // The socket is still usable and the cancelled recv consumed nothing.
    ASSERT_EQ(::send(b, "after", 5, 0), 5);
    EXPECT_EQ(engine->run(Op::recv(a, buf, sizeof buf)), 5);
}

TEST_P(SocketOps, SyncRunWhileAsyncRecvPending) {
    auto [a, b] = pair();
    char buf[16];
    ASSERT_EQ(engine->prepare(Op::recv(a, buf, sizeof buf), 3), 0);
    engine->submit();
    // A synchronous op completes while the async one waits; then the async one is reaped.
    EXPECT_EQ(engine->run(Op::send(b, "wake", 4)), 4);
    std::vector<Completion> done(2);
    ASSERT_EQ(engine->reap(done, 1), 1u);
    EXPECT_EQ(done[0].tag, 3u);
    EXPECT_EQ(done[0].res, 4);
    EXPECT_EQ(std::string(buf, 4), "wake");
}

TEST_P(SocketOps, ChainSendThenRecv) {
    auto [a, b] = pair();
    char buf[8];
    std::vector<Op> ops = {Op::send(a, "ping", 4), Op::recv(b, buf, 4)};
    ChainResult r = engine->run_chain(ops);
    EXPECT_EQ(r.failed_index, -1);
    EXPECT_EQ(r.results[0], 4);
    EXPECT_EQ(r.results[1], 4);
    EXPECT_EQ(std::string(buf, 4), "ping");
    // A failing send in the middle cancels the recv after it.
    std::vector<Op> bad = {Op::send(a, "x", 1), Op::send(-1, "y", 1), Op::recv(b, buf, 1)};
    r = engine->run_chain(bad);
    EXPECT_EQ(r.failed_index, 1);
    EXPECT_EQ(r.results[1], -EBADF);
    EXPECT_EQ(r.results[2], -ECANCELED);
}

TEST_P(SocketOps, MultishotAcceptKeepsAccepting) {
    sockaddr_in addr{};
    int l = listener(&addr);
    ASSERT_EQ(engine->prepare(Op::accept_multishot(l), 77), 0);
    engine->submit();
    constexpr int kClients = 3;
    std::vector<int> clients;
    for (int i = 0; i < kClients; ++i) {
        int c = adopt(::socket(AF_INET, SOCK_STREAM, 0));
        ASSERT_EQ(::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
        clients.push_back(c);
    }
    std::vector<Completion> done(8);
    size_t n = 0;
    while (n < kClients) n += engine->reap({done.data() + n, done.size() - n}, 1);
    ASSERT_EQ(n, static_cast<size_t>(kClients));
    for (size_t i = 0; i < n; ++i) {
        EXPECT_EQ(done[i].tag, 77u);
        EXPECT_TRUE(done[i].more);
        ASSERT_GE(done[i].res, 0);
        adopt(done[i].res);
        // Each accepted fd is a connected socket: it receives what its client sends.
        ASSERT_EQ(::send(clients[i], "hi", 2, 0), 2);
    }
    for (size_t i = 0; i < n; ++i) {
        char buf[2];
        EXPECT_EQ(::recv(done[i].res, buf, 2, MSG_WAITALL), 2);
    }
    EXPECT_EQ(engine->inflight(), 1u);  // still armed
    EXPECT_EQ(engine->run(Op::cancel(77)), 0);
    ASSERT_EQ(engine->reap(done, 1), 1u);
    EXPECT_EQ(done[0].res, -ECANCELED);
    EXPECT_FALSE(done[0].more);
    EXPECT_EQ(engine->inflight(), 0u);
}

TEST_P(SocketOps, MultishotRecvIntoProvidedBuffers) {
    auto [a, b] = pair();
    constexpr uint16_t kGroup = 3;
    ASSERT_TRUE(engine->register_buffer_ring(kGroup, 4, 16).ok());
    EXPECT_FALSE(engine->register_buffer_ring(kGroup, 4, 16).ok());  // group taken
    EXPECT_FALSE(engine->register_buffer_ring(4, 3, 16).ok());       // not a power of two
    ASSERT_EQ(engine->prepare(Op::recv_multishot(a, kGroup), 9), 0);
    engine->submit();
    std::vector<Completion> done(4);
    std::vector<int32_t> held;
    for (int i = 0; i < 4; ++i) {  // one chunk per buffer; the caller keeps every buffer
        std::string msg = "chunk-" + std::to_string(i);
        ASSERT_EQ(::send(b, msg.data(), msg.size(), 0), static_cast<ssize_t>(msg.size()));
        ASSERT_EQ(engine->reap(done, 1), 1u);
        EXPECT_EQ(done[0].tag, 9u);
        EXPECT_TRUE(done[0].more);
        ASSERT_EQ(done[0].res, static_cast<int32_t>(msg.size()));
        ASSERT_GE(done[0].buffer, 0);
        std::span<char> data = engine->buffer(kGroup, done[0].buffer);
        ASSERT_GE(data.size(), msg.size());
        EXPECT_EQ(std::string(data.data(), msg.size()), msg);
        held.push_back(done[0].buffer);
    }
    std::sort(held.begin(), held.end());
    EXPECT_EQ(held, (std::vector<int32_t>{0, 1, 2, 3}));  // four distinct buffers
    // Every buffer is in our hands: the next chunk ends the op with -ENOBUFS.
    ASSERT_EQ(::send(b, "more", 4, 0), 4);
    ASSERT_EQ(engine->reap(done, 1), 1u);
    EXPECT_EQ(done[0].res, -ENOBUFS);
    EXPECT_FALSE(done[0].more);
    EXPECT_EQ(engine->inflight(), 0u);
    // Recycled buffers make it usable again; the pending bytes are not lost.
    for (int32_t id : held) engine->recycle_buffer(kGroup, id);
    ASSERT_EQ(engine->prepare(Op::recv_multishot(a, kGroup), 10), 0);
    engine->submit();
    ASSERT_EQ(engine->reap(done, 1), 1u);
    ASSERT_EQ(done[0].res, 4);
    EXPECT_EQ(std::string(engine->buffer(kGroup, done[0].buffer).data(), 4), "more");
    engine->recycle_buffer(kGroup, done[0].buffer);
    // EOF ends it.
    ::shutdown(b, SHUT_WR);
    ASSERT_EQ(engine->reap(done, 1), 1u);
    EXPECT_EQ(done[0].tag, 10u);
    EXPECT_EQ(done[0].res, 0);
    EXPECT_FALSE(done[0].more);
    EXPECT_EQ(engine->inflight(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Backends, SocketOps,
                         testing::Values(BackendKind::Uring, BackendKind::Fallback), backend_name);

}  // namespace
}  // namespace liveio::uring::test
