// `liveio bench net`: where a socket policy could help. Large blocking TCP sends (ClickHouse's
// native protocol moves compressed blocks of 64 KiB..1 MiB) measured natively, through the
// `uring` policy's executor (IORING_OP_SEND, policy/uring_redirect.h; a send the socket buffer
// cannot take at once completes short and the executor submits the remainder, counted), as
// one IORING_OP_SEND with MSG_WAITALL (the kernel continues the short sends itself: one
// completion per call, the variant a policy could use instead), and as IORING_OP_SEND_ZC with
// the wait for the notification a blocking send would need (the caller may reuse its buffer
// only then), plus the receive side natively vs through the executor. On loopback and across a
// veth pair between two network namespaces this benchmark creates (optionally shaped with
// tbf, as the cluster harness's --rate). Modes alternate inside every round; each mode's median
// run is reported, with the sending thread's CPU time per MiB and the completions per send.
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/raw_syscall.h"
#include "bench.h"
#include "cluster/netns.h"
#include "policy/uring_redirect.h"

#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif

namespace liveio::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct NetConfig {
    int rounds = 5;
    unsigned mib_per_run = 64;  // bytes sent per run and mode
    std::vector<std::string> sizes = {"64K", "256K", "1M"};
    bool veth = true;
    std::string rate;  // tbf rate on the veth link ("" = unshaped), e.g. 1gbit
};

enum class Mode : int { Native, Uring, Waitall, SendZc, RecvUring, Count };
constexpr const char* kModeName[] = {"native", "uring", "waitall", "sendzc", "recv_uring"};
constexpr const char* kModeLabel[] = {"send native", "send via engine (IORING_OP_SEND)",
                                      "send one SEND|MSG_WAITALL", "send SEND_ZC + notification",
                                      "recv via engine"};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

uint64_t thread_cpu_ns() {
    rusage ru{};
    getrusage(RUSAGE_THREAD, &ru);
    auto ns = [](const timeval& t) {
        return static_cast<uint64_t>(t.tv_sec) * 1000000000ull +
               static_cast<uint64_t>(t.tv_usec) * 1000ull;
    };
    return ns(ru.ru_utime) + ns(ru.ru_stime);
}

// A blocking send of all of `len` bytes as IORING_OP_SEND_ZC, returning only after the
// notification CQE (the kernel no longer references the buffer): what a `sendzc` policy
// would have to do for a blocking send(2). Short sends are continued like send(2) on a
// blocking stream socket. Counts sends whose pages the kernel copied after all.
// A small ring of the sending thread, torn down with it.
class SenderRing {
public:
    bool init() { return io_uring_queue_init(8, &ring_, 0) == 0 && (ready_ = true); }
    ~SenderRing() {
        if (ready_) io_uring_queue_exit(&ring_);
    }

protected:
    io_uring ring_{};

private:
    bool ready_ = false;
};

class ZcSender : public SenderRing {
public:
    long send_all(int fd, const char* buf, size_t len) {
        size_t done = 0;
        while (done < len) {
            io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
            io_uring_prep_send_zc(sqe, fd, buf + done, len - done, MSG_NOSIGNAL,
                                  IORING_SEND_ZC_REPORT_USAGE);
            io_uring_submit(&ring_);
            int32_t res = 0;
            bool result_seen = false, notif_pending = false;
            while (!result_seen || notif_pending) {
                io_uring_cqe* cqe = nullptr;
                if (io_uring_wait_cqe(&ring_, &cqe) != 0) return -EIO;
                if (cqe->flags & IORING_CQE_F_NOTIF) {
                    notif_pending = false;
                    ++notifications;
                    if (static_cast<uint32_t>(cqe->res) & IORING_NOTIF_USAGE_ZC_COPIED) ++copied;
                } else {
                    result_seen = true;
                    res = cqe->res;
                    notif_pending = (cqe->flags & IORING_CQE_F_MORE) != 0;
                }
                io_uring_cqe_seen(&ring_, cqe);
            }
            if (res < 0) return done ? static_cast<long>(done) : res;
            done += static_cast<size_t>(res);
        }
        return static_cast<long>(done);
    }
    uint64_t notifications = 0, copied = 0;
};

// A blocking send of all of `len` bytes as one IORING_OP_SEND with MSG_WAITALL: the kernel
// retries the short sends inside io_uring (poll-driven), one completion for the call.
class WaitallSender : public SenderRing {
public:
    long send_all(int fd, const char* buf, size_t len) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL | MSG_WAITALL);
        io_uring_submit(&ring_);
        io_uring_cqe* cqe = nullptr;
        if (io_uring_wait_cqe(&ring_, &cqe) != 0) return -EIO;
        const long res = cqe->res;
        io_uring_cqe_seen(&ring_, cqe);
        ++completions;
        return res;
    }
    uint64_t completions = 0;
};

struct Pair {
    int sender = -1, receiver = -1;
};

// A connected TCP pair: the listener and the receiving end in namespace `recv_ns` at `addr`,
// the sending end in `send_ns` ("" = this thread's namespace). The receiver gets a 1 MiB
// receive buffer, as ClickHouse sets.
Result<Pair> connect_pair(const std::string& send_ns, const std::string& recv_ns, in_addr_t addr) {
    int listener = -1;
    sockaddr_in sa{};
    socklen_t alen = sizeof(sa);
    {
        auto scope = cluster::NetnsScope::enter(recv_ns);
        if (!scope.ok()) return scope.error();
        listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int rcvbuf = 1 << 20;
        ::setsockopt(listener, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = addr;
        if (::bind(listener, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
            ::listen(listener, 1) != 0 ||
            ::getsockname(listener, reinterpret_cast<sockaddr*>(&sa), &alen) != 0) {
            int err = errno;
            ::close(listener);
            return make_error(err, "bind/listen");
        }
    }
    Pair p;
    {
        auto scope = cluster::NetnsScope::enter(send_ns);
        if (!scope.ok()) {
            ::close(listener);
            return scope.error();
        }
        p.sender = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (::connect(p.sender, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
            int err = errno;
            ::close(p.sender);
            ::close(listener);
            return make_error(err, "connect");
        }
    }
    p.receiver = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    ::close(listener);
    if (p.receiver < 0) {
        ::close(p.sender);
        return make_error(errno, "accept");
    }
    return p;
}

// The two namespaces and the veth pair between them, removed on destruction (deleting a
// namespace destroys its end of the veth, and the peer with it).
class VethLink {
public:
    static Result<std::unique_ptr<VethLink>> create(const std::string& rate) {
        std::string why = cluster::netns_unavailable_reason();
        if (!why.empty()) return make_error(EPERM, why);
        std::unique_ptr<VethLink> link(new VethLink);
        const std::string tag = std::to_string(::getpid());
        link->a_ = "liveio-bnet-a-" + tag;
        link->b_ = "liveio-bnet-b-" + tag;
        const std::string va = "lbna" + tag, vb = "lbnb" + tag;
        std::vector<std::string> cmds = {
            "ip netns add " + link->a_,
            "ip netns add " + link->b_,
            "ip link add " + va + " type veth peer name " + vb,
            "ip link set " + va + " netns " + link->a_,
            "ip link set " + vb + " netns " + link->b_,
            "ip -n " + link->a_ + " addr add 10.251.7.1/24 dev " + va,
            "ip -n " + link->b_ + " addr add 10.251.7.2/24 dev " + vb,
            "ip -n " + link->a_ + " link set " + va + " up",
            "ip -n " + link->b_ + " link set " + vb + " up",
            "ip -n " + link->a_ + " link set lo up",
            "ip -n " + link->b_ + " link set lo up",
        };
        if (!rate.empty())
            cmds.push_back("tc -n " + link->a_ + " qdisc add dev " + va + " root tbf rate " + rate +
                           " burst 256kb latency 50ms");
        for (const auto& c : cmds)
            if (std::system((c + " >/dev/null 2>&1").c_str()) != 0)
                return make_error(EIO, "failed: " + c);
        return link;
    }
    ~VethLink() {
        for (const auto& ns : {a_, b_})
            if (!ns.empty() && cluster::netns_exists(ns))
                (void)std::system(("ip netns del " + ns + " >/dev/null 2>&1").c_str());
    }
    const std::string& sender_ns() const { return a_; }
    const std::string& receiver_ns() const { return b_; }

private:
    VethLink() = default;
    std::string a_, b_;
};

struct Cell {
    double mbps = 0, cpu_ns_per_mib = 0;
    double completions_per_send = 0;  // completions the sending thread waited for, per call
};

struct TopologyResult {
    std::string topology;
    std::vector<size_t> sizes;
    std::vector<std::vector<Cell>> cells;  // [size][mode]
    uint64_t zc_notifications = 0, zc_copied = 0;
};

bool parse_size(const std::string& s, size_t& out) {
    if (s.empty()) return false;
    char* end = nullptr;
    unsigned long v = std::strtoul(s.c_str(), &end, 10);
    if (*end == 'K' || *end == 'k')
        v <<= 10, ++end;
    else if (*end == 'M' || *end == 'm')
        v <<= 20, ++end;
    if (*end != '\0' || v == 0 || v > (16ul << 20)) return false;
    out = v;
    return true;
}

// Runs every mode at every block size over one connected pair. The receiver thread drains
// `total` bytes per run (natively, or through the executor in RecvUring runs) and answers one
// byte; a run's time is from the first send to that answer.
Result<TopologyResult> run_topology(const std::string& name, const Pair& pair,
                                    const std::vector<size_t>& sizes, const NetConfig& cfg,
                                    policy::UringRedirect& redirect, bool& failed) {
    const uint64_t total = static_cast<uint64_t>(cfg.mib_per_run) << 20;
    ZcSender zc;
    if (!zc.init()) return make_error(ENOSYS, "io_uring ring for SEND_ZC");
    WaitallSender waitall;
    if (!waitall.init()) return make_error(ENOSYS, "io_uring ring for MSG_WAITALL sends");
    auto call = [&](bool red, long nr, long a0, long a1, long a2, long a3) -> long {
        if (red) {
            hook::SyscallCall c{nr, {a0, a1, a2, a3, 0, 0}};
            hook::SyscallResult res = 0;
            if (redirect.execute(c, res)) return res;
        }
        return raw_syscall(nr, a0, a1, a2, a3, 0, 0);
    };
    std::atomic<int> recv_mode{0};  // 1: the receiver uses the executor
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> received_bad{0};
    std::thread receiver([&] {
        std::vector<char> buf(1 << 20);
        char go = 0;
        // Each run starts with a 1-byte header from the sender saying which mode receives.
        while (!stop.load()) {
            long r =
                raw_syscall(SYS_recvfrom, pair.receiver, reinterpret_cast<long>(&go), 1, 0, 0, 0);
            if (r != 1) return;
            const bool red = go == 'R';
            uint64_t got = 0;
            while (got < total) {
                long n = call(red, SYS_recvfrom, pair.receiver, reinterpret_cast<long>(buf.data()),
                              static_cast<long>(std::min<uint64_t>(buf.size(), total - got)), 0);
                if (n <= 0) {
                    received_bad.fetch_add(1);
                    return;
                }
                got += static_cast<uint64_t>(n);
            }
            char ack = 'A';
            if (raw_syscall(SYS_sendto, pair.receiver, reinterpret_cast<long>(&ack), 1, 0, 0, 0) !=
                1)
                return;
        }
    });
    std::vector<char> block(16 << 20);
    for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 131 + 7);

    TopologyResult out{name, sizes, {}, 0, 0};
    constexpr int kModes = static_cast<int>(Mode::Count);
    for (size_t si = 0; si < sizes.size() && !failed; ++si) {
        const size_t bs = sizes[si];
        std::vector<double> mbps[kModes], cpu[kModes], completions[kModes];
        for (int r = 0; r < cfg.rounds && !failed; ++r) {
            for (int k = 0; k < kModes && !failed; ++k) {
                const Mode mode = static_cast<Mode>((k + r) % kModes);  // rotate the order
                char hdr = mode == Mode::RecvUring ? 'R' : 'N';
                if (raw_syscall(SYS_sendto, pair.sender, reinterpret_cast<long>(&hdr), 1, 0, 0,
                                0) != 1) {
                    failed = true;
                    break;
                }
                const uint64_t cpu0 = thread_cpu_ns();
                const uint64_t continued0 = redirect.stats().write_continuations;
                const uint64_t waited0 = waitall.completions, zc0 = zc.notifications;
                const auto start = Clock::now();
                uint64_t sent = 0, calls = 0;
                while (sent < total) {
                    const size_t n = static_cast<size_t>(std::min<uint64_t>(bs, total - sent));
                    const char* p = block.data() + (sent % (block.size() - bs + 1));
                    long res;
                    ++calls;
                    if (mode == Mode::SendZc)
                        res = zc.send_all(pair.sender, p, n);
                    else if (mode == Mode::Waitall)
                        res = waitall.send_all(pair.sender, p, n);
                    else
                        res = call(mode == Mode::Uring, SYS_sendto, pair.sender,
                                   reinterpret_cast<long>(p), static_cast<long>(n), MSG_NOSIGNAL);
                    if (res != static_cast<long>(n)) {
                        fmt::print(stderr, "{} {} send of {} returned {}\n", name,
                                   kModeName[static_cast<int>(mode)], n, res);
                        failed = true;
                        break;
                    }
                    sent += n;
                }
                char ack = 0;
                if (!failed && raw_syscall(SYS_recvfrom, pair.sender, reinterpret_cast<long>(&ack),
                                           1, 0, 0, 0) != 1) {
                    fmt::print(stderr, "{}: no answer from the receiver\n", name);
                    failed = true;
                }
                const double s = std::chrono::duration<double>(Clock::now() - start).count();
                const double cpu_ns = static_cast<double>(thread_cpu_ns() - cpu0);
                mbps[static_cast<int>(mode)].push_back(static_cast<double>(total) / 1e6 / s);
                cpu[static_cast<int>(mode)].push_back(cpu_ns / static_cast<double>(total >> 20));
                // Native calls and the receiver-side mode: one (kernel-internal) wait per call.
                uint64_t waits = calls;
                if (mode == Mode::Uring)
                    waits += redirect.stats().write_continuations - continued0;
                else if (mode == Mode::Waitall)
                    waits = waitall.completions - waited0;
                else if (mode == Mode::SendZc)
                    waits = calls + (zc.notifications - zc0);  // result + notification CQEs
                completions[static_cast<int>(mode)].push_back(static_cast<double>(waits) /
                                                              static_cast<double>(calls));
            }
        }
        std::vector<Cell> row(kModes);
        for (int m = 0; m < kModes; ++m)
            row[m] = {median(mbps[m]), median(cpu[m]), median(completions[m])};
        out.cells.push_back(row);
    }
    stop.store(true);
    ::shutdown(pair.sender, SHUT_RDWR);
    receiver.join();
    if (received_bad.load() != 0 && !failed) failed = true;
    out.zc_notifications = zc.notifications;
    out.zc_copied = zc.copied;
    return out;
}

std::string size_name(size_t s) {
    return s >= (1u << 20) && s % (1u << 20) == 0 ? fmt::format("{}m", s >> 20)
                                                  : fmt::format("{}k", s >> 10);
}

int run(const NetConfig& cfg) {
    std::vector<size_t> sizes;
    for (const auto& s : cfg.sizes) {
        size_t v = 0;
        if (!parse_size(s, v)) {
            fmt::print(stderr, "bad size {}\n", s);
            return 2;
        }
        sizes.push_back(v);
    }
    auto created = policy::UringRedirect::create({});
    if (!created.ok()) {
        fmt::print(stderr, "uring redirect: {}\n", created.error().message);
        return 1;
    }
    policy::UringRedirect& redirect = **created;
    std::vector<TopologyResult> results;
    bool failed = false;

    auto measure = [&](const std::string& name, const std::string& send_ns,
                       const std::string& recv_ns, in_addr_t addr) {
        auto pair = connect_pair(send_ns, recv_ns, addr);
        if (!pair.ok()) {
            fmt::print(stderr, "{}: {}\n", name, pair.error().message);
            failed = true;
            return;
        }
        auto r = run_topology(name, *pair, sizes, cfg, redirect, failed);
        ::close(pair->sender);
        ::close(pair->receiver);
        if (!r.ok()) {
            fmt::print(stderr, "{}: {}\n", name, r.error().message);
            failed = true;
            return;
        }
        results.push_back(std::move(*r));
    };
    measure("loopback", "", "", htonl(INADDR_LOOPBACK));
    std::string veth_note;
    if (cfg.veth) {
        auto link = VethLink::create(cfg.rate);
        if (!link.ok()) {
            veth_note = "veth skipped: " + link.error().message;
        } else {
            measure(cfg.rate.empty() ? "veth" : "veth_tbf", (*link)->sender_ns(),
                    (*link)->receiver_ns(), inet_addr("10.251.7.2"));
        }
    }

    fmt::print("\n{:<9} {:>6}  {:<34} {:>9} {:>8} {:>13} {:>10}\n", "link", "block", "mode", "MB/s",
               "vs nat", "send cpu/MiB", "cqes/send");
    for (const auto& t : results) {
        for (size_t si = 0; si < t.sizes.size() && si < t.cells.size(); ++si) {
            const double base = t.cells[si][0].mbps;
            for (int m = 0; m < static_cast<int>(Mode::Count); ++m) {
                const Cell& c = t.cells[si][m];
                fmt::print(
                    "{:<9} {:>6}  {:<34} {:>9.0f} {:>7.2f}x {:>10.0f} us {:>10}\n", t.topology,
                    size_name(t.sizes[si]), kModeLabel[m], c.mbps, base > 0 ? c.mbps / base : 0.0,
                    c.cpu_ns_per_mib / 1000.0,
                    m == static_cast<int>(Mode::Native) || m == static_cast<int>(Mode::RecvUring)
                        ? std::string("-")
                        : fmt::format("{:.2f}", c.completions_per_send));
            }
        }
        fmt::print("{:<9} SEND_ZC notifications {}, of which the kernel copied the data: {}\n",
                   t.topology, t.zc_notifications, t.zc_copied);
    }
    if (!veth_note.empty()) fmt::print("{}\n", veth_note);
    auto st = redirect.stats();
    fmt::print(
        "\n{} MiB per run, median of {} rounds, modes rotated within each round; 'vs nat' > 1: "
        "faster than the native send. cpu = the sending thread's; cqes/send = completions the "
        "sender waited for per send call (the executor's short sends continued, or the result and "
        "notification of SEND_ZC). Engine: {} calls redirected, {} fallbacks. The machine is "
        "shared.\n",
        cfg.mib_per_run, cfg.rounds, st.redirected, st.fallbacks);
    for (const auto& t : results) {
        for (size_t si = 0; si < t.sizes.size() && si < t.cells.size(); ++si) {
            const double base = t.cells[si][0].mbps;
            for (int m = 0; m < static_cast<int>(Mode::Count); ++m) {
                const std::string key =
                    fmt::format("net_{}_{}_{}", t.topology, size_name(t.sizes[si]), kModeName[m]);
                fmt::print("metric: {}_mbps {:.0f}\n", key, t.cells[si][m].mbps);
                fmt::print("metric: {}_cpu_us_per_mib {:.0f}\n", key,
                           t.cells[si][m].cpu_ns_per_mib / 1000.0);
                if (m != 0)
                    fmt::print("metric: {}_speedup {:.3f}\n", key,
                               base > 0 ? t.cells[si][m].mbps / base : 0.0);
            }
        }
    }
    return failed || st.fallbacks != 0 ? 1 : 0;
}

}  // namespace

void add_net_bench(CLI::App& bench) {
    auto cfg = std::make_shared<NetConfig>();
    auto* cmd = bench.add_subcommand("net",
                                     "Large TCP sends/receives: native vs the engine's SEND/RECV "
                                     "vs SEND|MSG_WAITALL vs SEND_ZC");
    cmd->add_option("--rounds", cfg->rounds, "Rounds per block size (median kept)")
        ->check(CLI::Range(1, 51));
    cmd->add_option("--mib", cfg->mib_per_run, "MiB sent per run and mode")
        ->check(CLI::Range(1, 4096));
    cmd->add_option("--sizes", cfg->sizes, "Block sizes (e.g. 64K 256K 1M)");
    cmd->add_flag("!--no-veth", cfg->veth, "Loopback only (no namespaces)");
    cmd->add_option("--rate", cfg->rate, "Shape the veth link with tbf at this rate (e.g. 1gbit)");
    cmd->callback([cfg] {
        int rc = run(*cfg);
        if (rc != 0) throw CLI::RuntimeError(rc);
    });
}

}  // namespace liveio::bench
