// `liveio bench uring`: the engine vs fio's io_uring engine vs plain syscalls, same file, same
// process run. Runs are interleaved (ours, fio, pread per row) so machine noise hits all sides.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench.h"
#include "uring/engine.h"

namespace liveio::bench {
namespace {

using Clock = std::chrono::steady_clock;
using uring::Completion;
using uring::Engine;
using uring::Op;

constexpr uint64_t kSpinNs = 50'000;  // busy-poll budget where a row spins

struct Config {
    std::string dir = "/var/tmp";
    bool quick = false;
    uint64_t file_bytes = 1ull << 30;
    double seconds = 1.0;  // per measured run
    int rounds = 3;        // each row alternates the sides this many times, keeping the best
    bool verbose = false;  // print every run, not just the best
    std::string only;      // run just one section: randread, seqread, pagecache, echo, threads
    bool wants(const char* section) const { return only.empty() || only == section; }
};

struct Row {
    std::string name;
    double ours = 0, baseline = 0, other = 0;  // ops/s; 0 = not measured
    std::string baseline_name, other_name;
};

// xorshift64*: cheap per-op randomness that does not perturb the measurement.
struct Rng {
    uint64_t s;
    uint64_t next() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return s * 2685821657736338717ull;
    }
};

struct AlignedBuffer {
    void* p = nullptr;
    explicit AlignedBuffer(size_t bytes) {
        if (posix_memalign(&p, 4096, bytes) != 0) p = nullptr;
        if (p) std::memset(p, 0, bytes);
    }
    ~AlignedBuffer() { std::free(p); }
    char* data() const { return static_cast<char*>(p); }
};

struct Fd {
    int fd = -1;
    explicit Fd(int f = -1) : fd(f) {}
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
    Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
};

Result<std::string> create_test_file(const Config& cfg, std::string& tmpdir) {
    struct statvfs vfs {};
    if (statvfs(cfg.dir.c_str(), &vfs) != 0)
        return make_error(errno, fmt::format("statvfs({}): {}", cfg.dir, std::strerror(errno)));
    uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    if (free_bytes < cfg.file_bytes + (512ull << 20))
        return make_error(ENOSPC, fmt::format("{} has {} MiB free, need {} MiB + 512 MiB headroom",
                                              cfg.dir, free_bytes >> 20, cfg.file_bytes >> 20));
    std::string tmpl = cfg.dir + "/liveio-bench-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr)
        return make_error(errno, fmt::format("mkdtemp in {}: {}", cfg.dir, std::strerror(errno)));
    tmpdir = tmpl;
    std::string path = tmpdir + "/data";
    Fd fd(::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600));
    if (fd.fd < 0)
        return make_error(errno, fmt::format("create {}: {}", path, std::strerror(errno)));
    constexpr size_t kChunk = 1 << 20;
    std::vector<uint64_t> chunk(kChunk / 8);
    Rng rng{0x9e3779b97f4a7c15ull};
    for (uint64_t off = 0; off < cfg.file_bytes; off += kChunk) {
        for (auto& w : chunk) w = rng.next();
        if (::pwrite(fd.fd, chunk.data(), kChunk, static_cast<off_t>(off)) !=
            static_cast<ssize_t>(kChunk))
            return make_error(errno, fmt::format("write {}: {}", path, std::strerror(errno)));
    }
    ::fsync(fd.fd);
    return path;
}

double elapsed_s(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// Our engine: `qd` reads of `bs` bytes in flight, registered file + buffers, completions reaped
// in batches (wait for at least one, take all that are there), each completed slot re-issued at
// once. By default the engine sleeps in io_uring_enter for completions, as fio's io_uring
// engine does; with `spin_ns` it busy-polls that long first.
Result<double> engine_reads(const std::string& path, bool direct, bool random, uint32_t bs,
                            unsigned qd, uint64_t span_bytes, double seconds, uint64_t seed,
                            uint64_t spin_ns = 0) {
    Fd fd(::open(path.c_str(), O_RDONLY | (direct ? O_DIRECT : 0)));
    if (fd.fd < 0) return make_error(errno, fmt::format("open {}: {}", path, std::strerror(errno)));
    uring::Options opt;
    opt.sq_entries = std::max(qd, 8u);
    opt.spin_ns = spin_ns;
    auto created = Engine::create(opt);
    if (!created) return created.error();
    Engine& e = **created;
    AlignedBuffer buf(static_cast<size_t>(bs) * qd);
    if (!buf.p) return make_error(ENOMEM, "buffer allocation failed");
    int fds[1] = {fd.fd};
    if (auto r = e.register_files(fds); !r) return r.error();
    iovec reg{buf.data(), static_cast<size_t>(bs) * qd};
    if (auto r = e.register_buffers({&reg, 1}); !r) return r.error();
    uint64_t blocks = span_bytes / bs;
    Rng rng{seed};
    uint64_t seq = 0;
    auto next_off = [&]() -> int64_t {
        uint64_t b = random ? rng.next() % blocks : (seq++ % blocks);
        return static_cast<int64_t>(b * bs);
    };
    for (unsigned i = 0; i < qd; ++i)
        e.prepare(
            Op::read_fixed(0, buf.data() + static_cast<size_t>(i) * bs, bs, next_off(), 0).fixed(),
            i);
    std::array<Completion, 128> done{};
    uint64_t ops = 0;
    auto start = Clock::now();
    double t = 0;
    while (true) {
        size_t n = e.submit_and_reap(done, 1);
        for (size_t i = 0; i < n; ++i) {
            if (done[i].res != static_cast<int32_t>(bs))
                return make_error(EIO, fmt::format("engine read returned {}", done[i].res));
            ++ops;
        }
        if ((ops & 63) < n || n == 0) {
            t = elapsed_s(start);
            if (t >= seconds) break;
        }
        for (size_t i = 0; i < n; ++i) {
            uint64_t slot = done[i].tag;
            e.prepare(Op::read_fixed(0, buf.data() + slot * bs, bs, next_off(), 0).fixed(), slot);
            // Hand each re-issued read to the kernel at once, as fio does by default
            // (iodepth_batch_submit=1): the block layer then dispatches it immediately instead of
            // plugging a burst; on virtual disks that keeps the device queue evenly full.
            e.submit();
        }
    }
    // Drain what is still in flight so the engine is idle when destroyed.
    while (e.inflight() > 0) e.submit_and_reap(done, e.inflight());
    return ops / t;
}

// Plain pread in `threads` threads (each one op in flight): the syscall baseline.
Result<double> pread_reads(const std::string& path, bool direct, bool random, uint32_t bs,
                           unsigned threads, uint64_t span_bytes, double seconds) {
    std::atomic<uint64_t> total{0};
    std::atomic<int> error{0};
    auto start = Clock::now();
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            Fd fd(::open(path.c_str(), O_RDONLY | (direct ? O_DIRECT : 0)));
            AlignedBuffer buf(bs);
            if (fd.fd < 0 || !buf.p) {
                error = errno ? errno : ENOMEM;
                return;
            }
            Rng rng{0x1234567ull + t};
            uint64_t blocks = span_bytes / bs, seq = t * (blocks / std::max(1u, threads)), ops = 0;
            while (true) {
                uint64_t b = random ? rng.next() % blocks : (seq++ % blocks);
                if (::pread(fd.fd, buf.data(), bs, static_cast<off_t>(b * bs)) !=
                    static_cast<ssize_t>(bs)) {
                    error = errno ? errno : EIO;
                    return;
                }
                if ((++ops & 63) == 0 && elapsed_s(start) >= seconds) break;
            }
            total += ops;
        });
    }
    for (auto& th : pool) th.join();
    if (error) return make_error(error, fmt::format("pread: {}", std::strerror(error)));
    return total / elapsed_s(start);
}

// fio's io_uring engine, given the same tricks we use (registered file and buffers).
Result<double> fio_reads(const std::string& path, bool random, uint32_t bs, unsigned qd,
                         uint64_t span_bytes, double seconds) {
    std::string cmd = fmt::format(
        "fio --name=liveio --filename={} --ioengine=io_uring --direct=1 --rw={} --bs={} "
        "--iodepth={} "
        "--size={} --runtime={}ms --time_based --registerfiles=1 --fixedbufs=1 --norandommap "
        "--randrepeat=0 "
        "--thread --output-format=json 2>/dev/null",
        path, random ? "randread" : "read", bs, qd, span_bytes,
        std::max(100, static_cast<int>(seconds * 1000)));
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return make_error(errno, "cannot run fio");
    std::string out;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0) out.append(chunk, n);
    int status = ::pclose(p);
    if (status != 0)
        return make_error(EIO,
                          fmt::format("fio exited with status {} (is fio installed?)", status));
    try {
        auto j = nlohmann::json::parse(out.substr(out.find('{')));
        return j.at("jobs").at(0).at("read").at("iops").get<double>();
    } catch (const std::exception& ex) {
        return make_error(EIO, fmt::format("cannot parse fio json: {}", ex.what()));
    }
}

// Page-cache reads (syscall-bound): `batch` reads per io_uring_enter vs one pread per read.
Result<double> engine_cached_batch(const std::string& path, unsigned batch, uint64_t span_bytes,
                                   double seconds) {
    Fd fd(::open(path.c_str(), O_RDONLY));
    if (fd.fd < 0) return make_error(errno, fmt::format("open {}: {}", path, std::strerror(errno)));
    uring::Options opt;
    opt.sq_entries = std::max(batch, 8u);
    auto created = Engine::create(opt);
    if (!created) return created.error();
    Engine& e = **created;
    constexpr uint32_t bs = 4096;
    AlignedBuffer buf(static_cast<size_t>(bs) * batch);
    int fds[1] = {fd.fd};
    if (auto r = e.register_files(fds); !r) return r.error();
    iovec reg{buf.data(), static_cast<size_t>(bs) * batch};
    if (auto r = e.register_buffers({&reg, 1}); !r) return r.error();
    Rng rng{42};
    uint64_t blocks = span_bytes / bs, ops = 0;
    std::array<Completion, 64> done{};
    auto start = Clock::now();
    while (true) {
        for (unsigned i = 0; i < batch; ++i)
            e.prepare(Op::read_fixed(0, buf.data() + i * bs, bs,
                                     static_cast<int64_t>(rng.next() % blocks * bs), 0)
                          .fixed(),
                      i);
        size_t got = 0;
        while (got < batch) {
            size_t n =
                e.submit_and_reap({done.data(), batch - got}, static_cast<unsigned>(batch - got));
            for (size_t i = 0; i < n; ++i)
                if (done[i].res != static_cast<int32_t>(bs))
                    return make_error(EIO, fmt::format("engine read returned {}", done[i].res));
            got += n;
        }
        ops += batch;
        if ((ops & 1023) < batch && elapsed_s(start) >= seconds) break;
    }
    return ops / elapsed_s(start);
}

// TCP echo over 127.0.0.1. The server is the same plain-syscall thread for both clients.
struct EchoServer {
    int listen_fd = -1;
    uint16_t port = 0;
    std::thread th;
    Result<void> start() {
        listen_fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        if (listen_fd < 0 || ::bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::listen(listen_fd, 16) != 0 ||
            ::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
            return make_error(errno, fmt::format("echo server: {}", std::strerror(errno)));
        port = ntohs(a.sin_port);
        th = std::thread([this] {
            for (;;) {
                int c = ::accept(listen_fd, nullptr, nullptr);
                if (c < 0) return;
                int one = 1;
                ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                std::vector<char> b(1 << 20);
                for (;;) {
                    ssize_t n = ::recv(c, b.data(), b.size(), 0);
                    if (n <= 0) break;
                    for (ssize_t off = 0; off < n;) {
                        ssize_t w =
                            ::send(c, b.data() + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
                        if (w <= 0) break;
                        off += w;
                    }
                }
                ::close(c);
            }
        });
        return {};
    }
    ~EchoServer() {
        if (listen_fd >= 0) ::shutdown(listen_fd, SHUT_RDWR);
        if (th.joinable()) th.join();
        if (listen_fd >= 0) ::close(listen_fd);
    }
};

Result<int> connect_to(uint16_t port) {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (s < 0 || ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        int err = errno;
        if (s >= 0) ::close(s);
        return make_error(err, fmt::format("connect 127.0.0.1:{}: {}", port, std::strerror(err)));
    }
    int one = 1;
    ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return s;
}

// Clients: the engine (send + whole recv in one submission; it busy-polls before sleeping),
// blocking send/recv, or send + recv(MSG_DONTWAIT) spinning — the syscall way to poll.
enum class EchoClient { Engine, Blocking, Spinning };

Result<double> echo(uint16_t port, uint32_t msg, EchoClient client, double seconds) {
    const bool use_engine = client == EchoClient::Engine;
    const int recv_flags = client == EchoClient::Spinning ? MSG_DONTWAIT : 0;
    auto s = connect_to(port);
    if (!s) return s.error();
    Fd sock(*s);
    std::vector<char> out(msg, 'x'), in(msg);
    std::unique_ptr<Engine> e;
    if (use_engine) {
        uring::Options opt;
        opt.spin_ns = kSpinNs;  // the reply takes microseconds: poll for it, don't sleep
        auto created = Engine::create(opt);
        if (!created) return created.error();
        e = std::move(*created);
    }
    uint64_t rounds = 0;
    auto start = Clock::now();
    std::array<Completion, 4> done{};
    while (true) {
        if (use_engine) {
            // Send and the (whole) receive go to the kernel in one io_uring_enter.
            e->prepare(Op::send(sock.fd, out.data(), msg).whole(), 0);
            e->prepare(Op::recv(sock.fd, in.data(), msg).whole(), 1);
            size_t got = 0;
            while (got < 2) {
                size_t n = e->submit_and_reap({done.data() + got, 2 - got},
                                              static_cast<unsigned>(2 - got));
                got += n;
            }
            if (done[0].res != static_cast<int32_t>(msg) ||
                done[1].res != static_cast<int32_t>(msg))
                return make_error(
                    EIO, fmt::format("engine echo: send {} recv {}", done[0].res, done[1].res));
        } else {
            for (uint32_t off = 0; off < msg;) {
                ssize_t w = ::send(sock.fd, out.data() + off, msg - off, MSG_NOSIGNAL);
                if (w <= 0) return make_error(errno, "send failed");
                off += static_cast<uint32_t>(w);
            }
            for (uint32_t off = 0; off < msg;) {
                ssize_t r = ::recv(sock.fd, in.data() + off, msg - off, recv_flags);
                if (r < 0 && errno == EAGAIN && recv_flags) continue;
                if (r <= 0) return make_error(errno ? errno : EPIPE, "recv failed");
                off += static_cast<uint32_t>(r);
            }
        }
        if ((++rounds & 63) == 0 && elapsed_s(start) >= seconds) break;
    }
    return rounds / elapsed_s(start);
}

// Ring-per-thread scaling: each thread its own Engine at QD 8, O_DIRECT 4 KiB random reads.
Result<double> engine_threads(const std::string& path, unsigned threads, uint64_t span,
                              double seconds) {
    std::vector<std::thread> pool;
    std::vector<double> iops(threads, 0);
    std::atomic<int> err{0};
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            // No spinning here: 8 spinning threads on a small machine would steal each other's CPU.
            auto r = engine_reads(path, true, true, 4096, 8, span, seconds, 1000 + t, 0);
            if (r)
                iops[t] = *r;
            else
                err = r.error().code;
        });
    for (auto& th : pool) th.join();
    if (err) return make_error(err, fmt::format("thread run failed: {}", std::strerror(err)));
    double sum = 0;
    for (double v : iops) sum += v;
    return sum;
}

std::string cell(double v) { return v > 0 ? fmt::format("{:.0f}", v) : std::string("-"); }
std::string ratio(double a, double b) {
    return (a > 0 && b > 0) ? fmt::format("{:.3f}", a / b) : std::string("-");
}

// Alternates the sides `rounds` times and keeps each side's best run: on a shared machine
// background load only ever slows a run down, so the best run is the least disturbed one, and
// alternating exposes every side to the same drift.
using Runner = std::function<Result<double>()>;
void measure(Row& row, int rounds, bool verbose, const Runner& ours, const Runner& baseline,
             const Runner& other = {}) {
    auto keep = [&](double& best, const Runner& run) {
        if (!run) return;
        auto r = run();
        if (!r) {
            fmt::print(stderr, "  {}: error: {}\n", row.name, r.error().message);
            return;
        }
        if (verbose) {
            const char* side = &best == &row.ours       ? "liveio"
                               : &best == &row.baseline ? "baseline"
                                                        : "other";
            fmt::print("    run: {} {} {:.0f}\n", row.name, side, *r);
        }
        best = std::max(best, *r);
    };
    for (int i = 0; i < rounds; ++i) {
        if (i % 2 == 0) {  // alternate who goes first, so neither always follows the other
            keep(row.ours, ours);
            keep(row.baseline, baseline);
        } else {
            keep(row.baseline, baseline);
            keep(row.ours, ours);
        }
        keep(row.other, other);
    }
}

int run_bench(const Config& cfg_in) {
    Config cfg = cfg_in;
    if (cfg.quick) {
        cfg.file_bytes = std::min<uint64_t>(cfg.file_bytes, 256ull << 20);
        cfg.seconds = 0.4;
        cfg.rounds = std::min(cfg.rounds, 2);
    }
    std::string tmpdir;
    auto file = create_test_file(cfg, tmpdir);
    if (!file) {
        fmt::print(stderr, "liveio bench uring: {}\n", file.error().message);
        return 1;
    }
    struct Cleanup {
        std::string dir;
        ~Cleanup() {
            std::error_code ec;
            std::filesystem::remove_all(dir, ec);
        }
    } cleanup{tmpdir};
    const std::string& path = *file;
    {
        auto probe = Engine::create({});
        if (probe)
            fmt::print(
                "engine backend: {}{}\n",
                (*probe)->backend() == uring::BackendKind::Uring ? "io_uring" : "fallback",
                (*probe)->why_fallback().empty() ? "" : " (" + (*probe)->why_fallback() + ")");
    }
    fmt::print("test file: {} ({} MiB), {:.1f} s per run\n", path, cfg.file_bytes >> 20,
               cfg.seconds);
    bool direct_ok = true;
    {
        Fd probe(::open(path.c_str(), O_RDONLY | O_DIRECT));
        if (probe.fd < 0) {
            direct_ok = false;
            fmt::print("O_DIRECT is not supported on {} ({}): direct-I/O rows skipped\n", cfg.dir,
                       std::strerror(errno));
        }
    }
    if (direct_ok) {
        // One O_DIRECT pass over the whole file first: virtual disks cache on the host, and the
        // first side to touch a block would otherwise pay for everyone.
        Fd fd(::open(path.c_str(), O_RDONLY | O_DIRECT));
        AlignedBuffer b(1 << 20);
        for (uint64_t off = 0; fd.fd >= 0 && b.p && off < cfg.file_bytes; off += 1 << 20)
            if (::pread(fd.fd, b.data(), 1 << 20, static_cast<off_t>(off)) <= 0) break;
    }
    std::vector<Row> rows;
    std::vector<std::pair<std::string, double>> metrics;
    const unsigned qds[] = {1, 4, 16, 32, 64};
    if (direct_ok && cfg.wants("randread")) {
        for (unsigned qd : qds) {
            Row row{fmt::format("4K randread O_DIRECT QD{}", qd)};
            row.baseline_name = "fio io_uring";
            row.other_name = qd <= 16 ? fmt::format("pread x{} thr", qd) : "";
            Runner pread_side;
            if (qd <= 16)
                pread_side = [&] {
                    return pread_reads(path, true, true, 4096, qd, cfg.file_bytes, cfg.seconds);
                };
            measure(
                row, cfg.rounds, cfg.verbose,
                [&] {
                    return engine_reads(path, true, true, 4096, qd, cfg.file_bytes, cfg.seconds,
                                        7 + qd);
                },
                [&] { return fio_reads(path, true, 4096, qd, cfg.file_bytes, cfg.seconds); },
                pread_side);
            metrics.emplace_back(fmt::format("uring_vs_fio_randread_qd{}", qd),
                                 row.baseline > 0 ? row.ours / row.baseline : 0);
            rows.push_back(row);
            fmt::print("  {:32} ours {:>9} fio {:>9} pread {:>9}\n", row.name, cell(row.ours),
                       cell(row.baseline), cell(row.other));
        }
        // The same QD1 row with the engine busy-polling 50 us before it sleeps: what spinning
        // buys or costs here (each poll is an io_uring_enter, a system call).
        Row row{"4K randread O_DIRECT QD1 spin"};
        row.baseline_name = "fio io_uring";
        row.other_name = "pread x1 thr";
        measure(
            row, cfg.rounds, cfg.verbose,
            [&] {
                return engine_reads(path, true, true, 4096, 1, cfg.file_bytes, cfg.seconds, 8,
                                    kSpinNs);
            },
            [&] { return fio_reads(path, true, 4096, 1, cfg.file_bytes, cfg.seconds); },
            [&] { return pread_reads(path, true, true, 4096, 1, cfg.file_bytes, cfg.seconds); });
        metrics.emplace_back("uring_spin_vs_fio_randread_qd1",
                             row.baseline > 0 ? row.ours / row.baseline : 0);
        rows.push_back(row);
        fmt::print("  {:32} ours {:>9} fio {:>9} pread {:>9}\n", row.name, cell(row.ours),
                   cell(row.baseline), cell(row.other));
    }
    if (direct_ok && cfg.wants("seqread")) {
        for (unsigned qd : {1u, 8u}) {
            Row row{fmt::format("128K seqread O_DIRECT QD{}", qd)};
            row.baseline_name = "fio io_uring";
            row.other_name = qd == 1 ? "pread" : "";
            Runner pread_side;
            if (qd == 1)
                pread_side = [&] {
                    return pread_reads(path, true, false, 128 << 10, 1, cfg.file_bytes,
                                       cfg.seconds);
                };
            measure(
                row, cfg.rounds, cfg.verbose,
                [&] {
                    return engine_reads(path, true, false, 128 << 10, qd, cfg.file_bytes,
                                        cfg.seconds, 1);
                },
                [&] { return fio_reads(path, false, 128 << 10, qd, cfg.file_bytes, cfg.seconds); },
                pread_side);
            metrics.emplace_back(fmt::format("uring_vs_fio_seqread128k_qd{}", qd),
                                 row.baseline > 0 ? row.ours / row.baseline : 0);
            rows.push_back(row);
            fmt::print("  {:32} ours {:>9} fio {:>9} pread {:>9}\n", row.name, cell(row.ours),
                       cell(row.baseline), cell(row.other));
        }
    }
    // Page cache: a 64 MiB window, read once so every later read is a cache hit.
    const uint64_t cached_span = std::min<uint64_t>(64ull << 20, cfg.file_bytes);
    {
        Fd fd(::open(path.c_str(), O_RDONLY));
        std::vector<char> b(1 << 20);
        for (uint64_t off = 0; fd.fd >= 0 && off < cached_span; off += b.size())
            if (::pread(fd.fd, b.data(), b.size(), static_cast<off_t>(off)) <= 0) break;
    }
    for (unsigned batch : {1u, 8u, 32u}) {
        if (!cfg.wants("pagecache")) break;
        Row row{fmt::format("4K page-cache batch {}", batch)};
        row.baseline_name = "pread";
        measure(
            row, cfg.rounds, cfg.verbose,
            [&] { return engine_cached_batch(path, batch, cached_span, cfg.seconds); },
            [&] { return pread_reads(path, false, true, 4096, 1, cached_span, cfg.seconds); });
        metrics.emplace_back(fmt::format("uring_vs_pread_pagecache_batch{}", batch),
                             row.baseline > 0 ? row.ours / row.baseline : 0);
        rows.push_back(row);
        fmt::print("  {:32} ours {:>9} pread {:>9}\n", row.name, cell(row.ours),
                   cell(row.baseline));
    }
    if (cfg.wants("echo")) {
        EchoServer server;
        if (auto r = server.start(); !r) {
            fmt::print(stderr, "  echo server: {}\n", r.error().message);
        } else {
            for (uint32_t msg : {64u, 65536u}) {
                Row row{fmt::format("TCP echo {} B (round trips)", msg)};
                row.baseline_name = "send/recv";
                row.other_name = "send/recv spin";
                measure(
                    row, cfg.rounds, cfg.verbose,
                    [&] { return echo(server.port, msg, EchoClient::Engine, cfg.seconds); },
                    [&] { return echo(server.port, msg, EchoClient::Blocking, cfg.seconds); },
                    [&] { return echo(server.port, msg, EchoClient::Spinning, cfg.seconds); });
                metrics.emplace_back(fmt::format("uring_vs_spinning_syscall_tcp_echo_{}b", msg),
                                     row.other > 0 ? row.ours / row.other : 0);
                metrics.emplace_back(fmt::format("uring_vs_syscall_tcp_echo_{}b", msg),
                                     row.baseline > 0 ? row.ours / row.baseline : 0);
                rows.push_back(row);
                fmt::print("  {:32} ours {:>9} send/recv {:>9} spin {:>9}\n", row.name,
                           cell(row.ours), cell(row.baseline), cell(row.other));
            }
        }
    }
    if (direct_ok && cfg.wants("threads")) {
        double one = 0;
        for (unsigned threads : {1u, 2u, 8u}) {
            Row row{fmt::format("threads {} (ring each, QD8)", threads)};
            row.baseline_name = "pread thr";
            measure(
                row, cfg.rounds, cfg.verbose,
                [&] { return engine_threads(path, threads, cfg.file_bytes, cfg.seconds); },
                [&] {
                    return pread_reads(path, true, true, 4096, threads, cfg.file_bytes,
                                       cfg.seconds);
                });
            if (threads == 1) one = row.ours;
            metrics.emplace_back(fmt::format("uring_threads{}_iops", threads), row.ours);
            if (threads > 1 && one > 0)
                metrics.emplace_back(fmt::format("uring_threads{}_scaling", threads),
                                     row.ours / one);
            rows.push_back(row);
            fmt::print("  {:32} ours {:>9} pread {:>9}\n", row.name, cell(row.ours),
                       cell(row.baseline));
        }
    }
    fmt::print("\n{:34} {:>11} {:>11} {:>8}  {:>11} {:>8}  {}\n", "workload (ops/s)", "liveio",
               "baseline", "ratio", "other", "ratio", "baseline / other");
    for (const Row& r : rows)
        fmt::print("{:34} {:>11} {:>11} {:>8}  {:>11} {:>8}  {} / {}\n", r.name, cell(r.ours),
                   cell(r.baseline), ratio(r.ours, r.baseline), cell(r.other),
                   ratio(r.ours, r.other), r.baseline_name,
                   r.other_name.empty() ? "-" : r.other_name);
    fmt::print("\n");
    for (auto& [name, v] : metrics) fmt::print("metric: {} {:.3f}\n", name, v);
    return 0;
}

}  // namespace

void add_uring_bench(CLI::App& bench) {
    auto cfg = std::make_shared<Config>();
    auto* cmd =
        bench.add_subcommand("uring", "io_uring engine vs fio's io_uring engine vs plain syscalls");
    cmd->add_option("--dir", cfg->dir,
                    "Directory for the test file (same filesystem for all runs)");
    cmd->add_flag("--quick", cfg->quick, "Short runs on a 256 MiB file (~30 s total)");
    cmd->add_option("--seconds", cfg->seconds, "Seconds per measured run")
        ->check(CLI::Range(0.05, 60.0));
    cmd->add_option("--rounds", cfg->rounds, "Alternating rounds per row (best run kept)")
        ->check(CLI::Range(1, 20));
    cmd->add_flag("--verbose", cfg->verbose,
                  "Print every measured run (the table keeps each side's best)");
    cmd->add_option("--only", cfg->only, "Run one section only")
        ->check(CLI::IsMember({"randread", "seqread", "pagecache", "echo", "threads"}));
    cmd->add_option(
        "--size-mib",
        [cfg](const std::vector<std::string>& v) {
            cfg->file_bytes = std::stoull(v.at(0)) << 20;
            return cfg->file_bytes >= (16ull << 20);
        },
        "Test file size in MiB (>= 16)");
    cmd->callback([cfg] {
        int rc = run_bench(*cfg);
        if (rc != 0) throw CLI::RuntimeError(rc);
    });
}

}  // namespace liveio::bench
