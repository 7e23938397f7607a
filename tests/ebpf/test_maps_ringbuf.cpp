// Ring buffer: kernel record protocol, no wrap, drops counted exactly, many producers with the
// consumer in another process that received the memfd over a Unix socket (SCM_RIGHTS).
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "ebpf/map.h"

namespace liveio::ebpf {
namespace {

std::shared_ptr<RingBuffer> make_ring(uint32_t size) {
    auto m = create_map(MapSpec{"rb", MapType::RingBuf, 0, 0, size, 0});
    EXPECT_TRUE(m.ok()) << m.error().message;
    if (!m.ok()) return nullptr;
    auto rb = std::dynamic_pointer_cast<RingBuffer>(m.value());
    EXPECT_TRUE(rb) << "create_map(RingBuf) must return a RingBuffer";
    return rb;
}

constexpr uint64_t kAvail = 0, kSize = 1, kCons = 2, kProd = 3;

TEST(MapRingBuf, RecordProtocolAndQueries) {
    auto rb = make_ring(4096);
    ASSERT_TRUE(rb);
    EXPECT_EQ(rb->query(kSize), 4096u);
    EXPECT_EQ(rb->query(kAvail), 0u);
    EXPECT_EQ(rb->query(99), 0u);
    auto* a = static_cast<uint8_t*>(rb->reserve(13));
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 8, 0u);
    EXPECT_EQ(rb->query(kProd), 24u) << "8-byte header + 13 bytes, rounded up to 8";
    EXPECT_EQ(rb->query(kAvail), 24u);
    std::memset(a, 0x5a, 13);
    int calls = 0;
    auto count = [&](const void*, uint32_t) { ++calls; };
    EXPECT_EQ(rb->consume(count), 0u) << "a busy record stops the consumer";
    rb->submit(a);
    std::vector<std::string> got;
    auto collect = [&](const void* d, uint32_t n) {
        got.emplace_back(static_cast<const char*>(d), n);
    };
    EXPECT_EQ(rb->consume(collect), 1u);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0], std::string(13, '\x5a'));
    EXPECT_EQ(rb->query(kCons), 24u);
    EXPECT_EQ(rb->query(kAvail), 0u);

    // Discarded records are skipped; order is reservation order whatever the submit order.
    void* b = rb->reserve(8);
    void* c = rb->reserve(8);
    void* d = rb->reserve(8);
    ASSERT_TRUE(b && c && d);
    std::memcpy(b, "bbbbbbbb", 8);
    std::memcpy(c, "cccccccc", 8);
    std::memcpy(d, "dddddddd", 8);
    rb->submit(d);
    rb->discard(c);
    got.clear();
    EXPECT_EQ(rb->consume(collect), 0u) << "the first record is still busy";
    rb->submit(b);
    EXPECT_EQ(rb->consume(collect), 2u);
    EXPECT_EQ(got, (std::vector<std::string>{"bbbbbbbb", "dddddddd"}));
    ASSERT_EQ(rb->output("hello", 5), 0);
    got.clear();
    EXPECT_EQ(rb->consume(collect), 1u);
    EXPECT_EQ(got, (std::vector<std::string>{"hello"}));
    EXPECT_EQ(rb->dropped(), 0u);

    // The Map element interface does not apply.
    uint32_t k = 0;
    EXPECT_EQ(rb->lookup(&k), nullptr);
    EXPECT_EQ(rb->update(&k, &k, kUpdateAny), -EINVAL);
    EXPECT_EQ(rb->remove(&k), -EINVAL);
    EXPECT_EQ(rb->next_key(nullptr, &k), -EINVAL);
    EXPECT_EQ(rb->copy_value(&k, &k), -EINVAL);
}

TEST(MapRingBuf, RecordsCrossingTheEndAreContiguous) {
    auto rb = make_ring(4096);
    ASSERT_TRUE(rb);
    int crossed = 0;
    for (uint32_t i = 0; i < 40; ++i) {
        const uint64_t start = rb->query(kProd) % 4096;
        const uint32_t size = 1000 + i;
        auto* p = static_cast<uint8_t*>(rb->reserve(size));
        ASSERT_NE(p, nullptr) << "record " << i;
        for (uint32_t j = 0; j < size; ++j) p[j] = static_cast<uint8_t>(i * 31 + j);
        rb->submit(p);
        crossed += start + 8 + size > 4096;
        uint32_t seen = 0;
        rb->consume([&](const void* d, uint32_t n) {
            ++seen;
            ASSERT_EQ(n, size);
            const auto* b = static_cast<const uint8_t*>(d);
            for (uint32_t j = 0; j < n; ++j)
                ASSERT_EQ(b[j], static_cast<uint8_t>(i * 31 + j)) << "byte " << j;
        });
        ASSERT_EQ(seen, 1u);
    }
    EXPECT_GT(crossed, 3) << "the test must exercise records that run past the end";
}

TEST(MapRingBuf, FullBufferDropsAreCountedExactly) {
    auto rb = make_ring(4096);
    ASSERT_TRUE(rb);
    uint64_t ok = 0, failed = 0;
    const char payload[56] = {};
    for (int i = 0; i < 200; ++i) (rb->output(payload, sizeof payload) == 0 ? ok : failed)++;
    EXPECT_EQ(ok, 4095u / 64) << "64-byte records while the data in flight stays below the size";
    EXPECT_EQ(failed, 200 - ok);
    EXPECT_EQ(rb->dropped(), failed);
    EXPECT_EQ(rb->output(payload, sizeof payload), -ENOSPC);
    EXPECT_EQ(rb->reserve(4096), nullptr) << "can never fit";
    EXPECT_EQ(rb->reserve(uint64_t{1} << 40), nullptr);
    EXPECT_EQ(rb->dropped(), failed + 3);
    EXPECT_EQ(rb->consume([](const void*, uint32_t) {}), ok);
    EXPECT_EQ(rb->output(payload, sizeof payload), 0) << "space is back after consuming";
    // The largest record that can ever fit.
    EXPECT_EQ(rb->consume([](const void*, uint32_t) {}), 1u);
    void* big = rb->reserve(4096 - 16);
    ASSERT_NE(big, nullptr);
    rb->submit(big);
}

// A one-byte message with room for one SCM_RIGHTS descriptor.
struct FdMessage {
    char byte = 'm';
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    FdMessage() {
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
    }
    FdMessage(const FdMessage&) = delete;
};

// Passes `fd` over a Unix socket, as the agent hands maps to the CLI.
bool send_fd(int sock, int fd) {
    FdMessage m;
    cmsghdr* c = CMSG_FIRSTHDR(&m.msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    return sendmsg(sock, &m.msg, 0) == 1;
}
int recv_fd(int sock) {
    FdMessage m;
    if (recvmsg(sock, &m.msg, 0) != 1) return -1;
    cmsghdr* c = CMSG_FIRSTHDR(&m.msg);
    if (!c || c->cmsg_type != SCM_RIGHTS) return -1;
    int fd;
    std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

struct Rec {
    uint32_t producer;
    uint32_t seq;
};

// Variable record sizes make records straddle the end in every position.
uint32_t rec_size(uint32_t seq) { return sizeof(Rec) + seq % 57; }

TEST(MapRingBuf, ManyProducersConsumerInAnotherProcessAccountsForEveryRecord) {
    constexpr uint32_t kProducers = 4, kPerProducer = 50000;
    auto rb = make_ring(16384);
    ASSERT_TRUE(rb);
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        // Consumer: checks every record, until the parent says production ended and the
        // buffer is drained; replies with the number of records consumed.
        close(sv[0]);
        const int fd = recv_fd(sv[1]);
        if (fd < 0) _exit(90);
        auto m = open_shared_map(fd);
        close(fd);
        if (!m) _exit(91);
        auto* ring = dynamic_cast<RingBuffer*>(m.value().get());
        if (!ring) _exit(92);
        std::vector<int64_t> last(kProducers, -1);
        uint64_t consumed = 0;
        int bad = 0;
        auto check = [&](const void* d, uint32_t n) {
            Rec r;
            if (n < sizeof r) {
                bad = 3;
                return;
            }
            std::memcpy(&r, d, sizeof r);
            if (r.producer >= kProducers || n != rec_size(r.seq)) {
                bad = 4;
                return;
            }
            if (static_cast<int64_t>(r.seq) <= last[r.producer]) {
                bad = 5;
                return;
            }
            last[r.producer] = r.seq;
            const auto* b = static_cast<const uint8_t*>(d);
            for (uint32_t j = sizeof r; j < n; ++j)
                if (b[j] != static_cast<uint8_t>(r.seq + j)) {
                    bad = 6;
                    return;
                }
            ++consumed;
        };
        bool producers_done = false;
        for (;;) {
            const size_t n = ring->consume(check);
            if (bad) _exit(bad);
            if (producers_done && n == 0) break;
            if (!producers_done) {
                char c;
                const ssize_t r = recv(sv[1], &c, 1, MSG_DONTWAIT);
                if (r == 0) _exit(94);  // the parent is gone: nobody will say production ended
                producers_done = r == 1;
            }
        }
        _exit(write(sv[1], &consumed, sizeof consumed) == sizeof consumed ? 0 : 93);
    }
    close(sv[1]);
    ASSERT_TRUE(send_fd(sv[0], rb->memfd()));
    std::atomic<uint64_t> discarded{0};
    std::vector<std::thread> producers;
    for (uint32_t p = 0; p < kProducers; ++p)
        producers.emplace_back([&, p] {
            for (uint32_t seq = 0; seq < kPerProducer; ++seq) {
                const uint32_t n = rec_size(seq);
                auto* d = static_cast<uint8_t*>(rb->reserve(n));
                if (!d) continue;
                const Rec r{p, seq};
                std::memcpy(d, &r, sizeof r);
                for (uint32_t j = sizeof r; j < n; ++j) d[j] = static_cast<uint8_t>(seq + j);
                // Some records are discarded: neither consumed nor dropped.
                if (seq % 101 == 100) {
                    rb->discard(d);
                    discarded.fetch_add(1, std::memory_order_relaxed);
                } else {
                    rb->submit(d);
                }
            }
        });
    for (auto& t : producers) t.join();
    ASSERT_EQ(write(sv[0], "d", 1), 1);
    uint64_t consumed = 0;
    ASSERT_EQ(read(sv[0], &consumed, sizeof consumed), static_cast<ssize_t>(sizeof consumed));
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    close(sv[0]);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0) << "consumer: 3-6 bad record, 9x setup failed";
    const uint64_t produced = uint64_t{kProducers} * kPerProducer;
    std::printf("ringbuf: produced %lu, consumed %lu, dropped %lu, discarded %lu\n", produced,
                consumed, rb->dropped(), discarded.load());
    EXPECT_EQ(produced, consumed + rb->dropped() + discarded.load())
        << "consumed " << consumed << ", dropped " << rb->dropped() << ", discarded "
        << discarded.load();
    EXPECT_GT(consumed, 0u);
    EXPECT_EQ(rb->query(kAvail), 0u) << "the consumer drained everything";
}

// ---- perf event array ----------------------------------------------------------------------

TEST(MapPerfEventArray, SlotsFlagsAndLostSamples) {
    auto m = create_map(MapSpec{"events", MapType::PerfEventArray, 4, 4, 3, 0});
    ASSERT_TRUE(m.ok()) << m.error().message;
    auto* pe = dynamic_cast<PerfEventArray*>(m.value().get());
    ASSERT_NE(pe, nullptr) << "create_map(PerfEventArray) must return a PerfEventArray";
    EXPECT_EQ(pe->output(0, "zero", 4), 0);
    EXPECT_EQ(pe->output(2, "two!", 4), 0);
    EXPECT_EQ(pe->output(3, "oob", 3), -E2BIG);
    EXPECT_EQ(pe->output(uint64_t{1} << 32, "ctx", 3), -EINVAL)
        << "BPF_F_CTXLEN bits have no meaning here";
    const long cur = pe->output(PerfEventArray::kCurrentCpu, "cur", 3);
    EXPECT_TRUE(cur == 0 || (cur == -E2BIG && sched_getcpu() >= 3)) << cur;
    std::vector<std::pair<uint32_t, std::string>> got;
    EXPECT_EQ(pe->consume([&](uint32_t slot, const void* d, uint32_t n) {
        got.emplace_back(slot, std::string(static_cast<const char*>(d), n));
    }),
              cur == 0 ? 3u : 2u);
    EXPECT_EQ(got[0], (std::pair<uint32_t, std::string>{0, "zero"}));
    if (cur == 0) {
        EXPECT_NE(std::find(got.begin(), got.end(),
                            std::pair<uint32_t, std::string>{uint32_t(sched_getcpu()), "cur"}),
                  got.end());
    }
    EXPECT_NE(std::find(got.begin(), got.end(), std::pair<uint32_t, std::string>{2, "two!"}),
              got.end());

    // Each slot's ring fills on its own; lost samples are counted.
    const std::vector<uint8_t> sample(1000, 0x11);
    uint64_t ok = 0, failed = 0;
    for (int i = 0; i < 100; ++i)
        (pe->output(1, sample.data(), sample.size()) == 0 ? ok : failed)++;
    EXPECT_EQ(ok, 65535u / 1008);
    EXPECT_EQ(pe->lost(), failed);
    EXPECT_EQ(pe->output(0, "still room", 10), 0) << "another slot is unaffected";
    size_t slot1 = 0;
    pe->consume([&](uint32_t slot, const void*, uint32_t n) { slot1 += slot == 1 && n == 1000; });
    EXPECT_EQ(slot1, ok);

    uint32_t k = 0, next = 0;
    EXPECT_EQ(pe->lookup(&k), nullptr);
    EXPECT_EQ(pe->update(&k, &k, kUpdateAny), -EINVAL);
    EXPECT_EQ(pe->next_key(nullptr, &next), 0);
    EXPECT_EQ(next, 0u);
    k = 2;
    EXPECT_EQ(pe->next_key(&k, &next), -ENOENT);
}

TEST(MapPerfEventArray, ZeroMaxEntriesMeansOneSlotPerPossibleCpu) {
    auto m = create_map(MapSpec{"events", MapType::PerfEventArray, 4, 4, 0, 0});
    ASSERT_TRUE(m.ok()) << m.error().message;
    EXPECT_GE(m.value()->spec().max_entries, static_cast<uint32_t>(sysconf(_SC_NPROCESSORS_ONLN)));
    auto* pe = dynamic_cast<PerfEventArray*>(m.value().get());
    ASSERT_NE(pe, nullptr);
    EXPECT_EQ(pe->output(PerfEventArray::kCurrentCpu, "x", 1), 0)
        << "the calling CPU always has a slot";
}

TEST(MapPerfEventArray, OpenedElsewhereConsumesWhatTheCreatorWrote) {
    auto m = create_map(MapSpec{"events", MapType::PerfEventArray, 4, 4, 2, 0});
    ASSERT_TRUE(m.ok()) << m.error().message;
    auto* pe = dynamic_cast<PerfEventArray*>(m.value().get());
    auto o = open_shared_map(pe->memfd());
    ASSERT_TRUE(o.ok()) << o.error().message;
    auto* reader = dynamic_cast<PerfEventArray*>(o.value().get());
    ASSERT_NE(reader, nullptr);
    // Enough variable-size samples to go around each ring several times.
    uint64_t written = 0, read = 0;
    for (uint32_t i = 0; i < 5000; ++i) {
        std::vector<uint8_t> s(8 + i % 300, static_cast<uint8_t>(i));
        std::memcpy(s.data(), &i, 4);
        ASSERT_EQ(pe->output(i % 2, s.data(), s.size()), 0) << i;
        ++written;
        if (i % 50 == 49)
            read += reader->consume([&](uint32_t slot, const void* d, uint32_t n) {
                uint32_t seq;
                std::memcpy(&seq, d, 4);
                ASSERT_EQ(slot, seq % 2);
                ASSERT_EQ(n, 8 + seq % 300);
                ASSERT_EQ(static_cast<const uint8_t*>(d)[n - 1], static_cast<uint8_t>(seq));
            });
    }
    read += reader->consume([](uint32_t, const void*, uint32_t) {});
    EXPECT_EQ(read, written);
    EXPECT_EQ(pe->lost(), 0u);
}

}  // namespace
}  // namespace liveio::ebpf
