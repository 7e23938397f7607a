// `liveio bench redirect`: what one blocking call costs natively vs redirected through the
// `uring` policy's executor (policy/uring_redirect.h: per-thread ring, exactness checks), side
// by side in one process. Rows alternate native and redirected runs; each side's median run is
// reported (the machine is shared, so single runs are noisy).
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/raw_syscall.h"
#include "bench.h"
#include "policy/uring_redirect.h"

namespace liveio::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct RedirectConfig {
    std::string dir = "/var/tmp";
    int rounds = 7;
    double scale = 1.0;  // multiplies the call counts
};

struct RowResult {
    std::string name;
    double native_ns = 0, redirected_ns = 0;
    std::string metric;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

// `calls(redirected)` runs a batch and returns how many calls it made; before(redirected)
// prepares each run (outside the timing). Returns ns per call, median over rounds.
RowResult measure(const std::string& name, const std::string& metric, int rounds,
                  const std::function<void(bool)>& before,
                  const std::function<uint64_t(bool)>& calls) {
    std::vector<double> side[2];
    for (int r = 0; r < rounds; ++r) {
        for (int redirected = 0; redirected < 2; ++redirected) {
            bool red = (r % 2 == 0) ? redirected : !redirected;  // alternate which side goes first
            if (before) before(red);
            auto start = Clock::now();
            uint64_t n = calls(red);
            double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
            side[red].push_back(n ? ns / static_cast<double>(n) : 0);
        }
    }
    return {name, median(side[0]), median(side[1]), metric};
}

int run(const RedirectConfig& cfg) {
    auto created = policy::UringRedirect::create({});
    if (!created.ok()) {
        fmt::print(stderr, "uring redirect: {}\n", created.error().message);
        return 1;
    }
    policy::UringRedirect& redirect = **created;
    // One call: through the executor, or natively where it declines (as the agent would).
    auto call = [&](bool red, long nr, long a0, long a1, long a2, long a3 = 0) -> long {
        if (red) {
            hook::SyscallCall c{nr, {a0, a1, a2, a3, 0, 0}};
            hook::SyscallResult res = 0;
            if (redirect.execute(c, res)) return res;
        }
        return raw_syscall(nr, a0, a1, a2, a3);
    };
    std::string tmpl = cfg.dir + "/liveio-redirect-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
        fmt::print(stderr, "mkdtemp in {}: {}\n", cfg.dir, std::strerror(errno));
        return 1;
    }
    const std::string path = tmpl + "/data";
    constexpr uint64_t kFileBytes = 256ull << 20;
    {
        int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
        std::vector<uint64_t> chunk((1 << 20) / 8);
        uint64_t x = 88172645463325252ull;
        for (uint64_t off = 0; off < kFileBytes; off += 1 << 20) {
            for (auto& w : chunk) x ^= x << 13, x ^= x >> 7, x ^= x << 17, w = x;
            if (::pwrite(fd, chunk.data(), 1 << 20, static_cast<off_t>(off)) != (1 << 20)) {
                fmt::print(stderr, "write {}: {}\n", path, std::strerror(errno));
                return 1;
            }
        }
        ::fsync(fd);
        ::close(fd);
    }
    int fd = ::open(path.c_str(), O_RDONLY);
    std::vector<char> buf(1 << 20);
    std::vector<RowResult> rows;
    auto n_of = [&](double base) { return static_cast<uint64_t>(std::max(1.0, base * cfg.scale)); };
    bool failed = false;
    auto check = [&](long got, long want) {
        if (got != want && !failed) {
            fmt::print(stderr, "call returned {}, expected {}\n", got, want);
            failed = true;
        }
    };

    // Page cache: make the whole file resident first.
    for (uint64_t off = 0; off < kFileBytes; off += 1 << 20)
        ::pread(fd, buf.data(), 1 << 20, static_cast<off_t>(off));
    rows.push_back(
        measure("pread 4 KiB, page cache (random)", "pread4k", cfg.rounds, nullptr, [&](bool red) {
            const uint64_t n = n_of(20000);
            uint64_t x = 0x9e3779b97f4a7c15ull;
            for (uint64_t i = 0; i < n; ++i) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                long off = static_cast<long>((x % (kFileBytes / 4096)) * 4096);
                check(call(red, SYS_pread64, fd, reinterpret_cast<long>(buf.data()), 4096, off),
                      4096);
            }
            return n;
        }));
    rows.push_back(measure(
        "read 1 MiB, page cache (sequential)", "read1m", cfg.rounds,
        [&](bool) { ::lseek(fd, 0, SEEK_SET); },
        [&](bool red) {
            const uint64_t n = std::min<uint64_t>(n_of(200), kFileBytes >> 20);
            for (uint64_t i = 0; i < n; ++i)
                check(call(red, SYS_read, fd, reinterpret_cast<long>(buf.data()), 1 << 20),
                      1 << 20);
            return n;
        }));
    // Cold: the file's pages dropped before every run (POSIX_FADV_DONTNEED on this clean file:
    // the same effect as drop_caches for it, without emptying the shared machine's page cache).
    rows.push_back(measure(
        "read 1 MiB, cold (sequential, 64 MiB per run)", "read1m_cold", cfg.rounds,
        [&](bool) {
            ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
            ::lseek(fd, 0, SEEK_SET);
        },
        [&](bool red) {
            const uint64_t n = 64;
            for (uint64_t i = 0; i < n; ++i)
                check(call(red, SYS_read, fd, reinterpret_cast<long>(buf.data()), 1 << 20),
                      1 << 20);
            return n;
        }));
    ::close(fd);
    ::unlink(path.c_str());
    ::rmdir(tmpl.c_str());

    // Loopback TCP: a native echo thread; the measured side sends 64 bytes and receives them.
    int listener = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(addr);
    ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ::listen(listener, 1);
    ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &alen);
    int client = ::socket(AF_INET, SOCK_STREAM, 0);
    if (::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        fmt::print(stderr, "connect: {}\n", std::strerror(errno));
        return 1;
    }
    int server = ::accept(listener, nullptr, nullptr);
    ::close(listener);
    std::thread echo([server] {
        char b[64];
        for (;;) {
            ssize_t n = ::recv(server, b, sizeof(b), 0);
            if (n <= 0 || ::send(server, b, static_cast<size_t>(n), 0) != n) break;
        }
    });
    rows.push_back(
        measure("send+recv 64 B, loopback TCP echo (per round trip)", "tcp_echo64", cfg.rounds,
                nullptr, [&](bool red) {
                    const uint64_t n = n_of(5000);
                    char b[64] = {};
                    for (uint64_t i = 0; i < n; ++i) {
                        check(call(red, SYS_sendto, client, reinterpret_cast<long>(b), 64, 0), 64);
                        long got = 0;
                        while (got < 64) {
                            long r = call(red, SYS_recvfrom, client,
                                          reinterpret_cast<long>(b + got), 64 - got, 0);
                            if (r <= 0) {
                                check(r, 64);
                                return i;
                            }
                            got += r;
                        }
                    }
                    return n;
                }));
    ::shutdown(client, SHUT_RDWR);
    echo.join();
    ::close(client);
    ::close(server);

    auto st = redirect.stats();
    fmt::print("\n{:<52} {:>12} {:>12} {:>8}\n", "per call (median of rounds)", "native ns",
               "redirect ns", "ratio");
    for (const auto& r : rows)
        fmt::print("{:<52} {:>12.0f} {:>12.0f} {:>7.2f}x\n", r.name, r.native_ns, r.redirected_ns,
                   r.redirected_ns > 0 ? r.native_ns / r.redirected_ns : 0.0);
    fmt::print(
        "\nredirected {} calls, fallbacks {}; ratio > 1: redirected is faster. The machine is "
        "shared.\n",
        st.redirected, st.fallbacks);
    for (const auto& r : rows) {
        fmt::print("metric: redirect_{}_native_ns {:.0f}\n", r.metric, r.native_ns);
        fmt::print("metric: redirect_{}_uring_ns {:.0f}\n", r.metric, r.redirected_ns);
        fmt::print("metric: redirect_{}_speedup {:.3f}\n", r.metric,
                   r.redirected_ns > 0 ? r.native_ns / r.redirected_ns : 0.0);
    }
    return failed || st.fallbacks != 0 ? 1 : 0;
}

}  // namespace

void add_redirect_bench(CLI::App& bench) {
    auto cfg = std::make_shared<RedirectConfig>();
    auto* cmd = bench.add_subcommand(
        "redirect", "Blocking calls natively vs redirected through io_uring (the uring policy)");
    cmd->add_option("--dir", cfg->dir, "Directory for the 256 MiB test file");
    cmd->add_option("--rounds", cfg->rounds, "Alternating rounds per row (median kept)")
        ->check(CLI::Range(1, 51));
    cmd->add_option("--scale", cfg->scale, "Multiplies the calls per run")
        ->check(CLI::Range(0.01, 100.0));
    cmd->callback([cfg] {
        int rc = run(*cfg);
        if (rc != 0) throw CLI::RuntimeError(rc);
    });
}

}  // namespace liveio::bench
