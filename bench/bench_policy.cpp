// `liveio bench policy`: does a policy make a reader faster on cold data, before the full
// ClickHouse benchmark? A child process reads several column files in step, as a ClickHouse
// scan does (per column: 1 MiB read()s, sequential; the columns one after another; CPU work
// per MiB standing for decompression), from a cold page cache (POSIX_FADV_DONTNEED on each
// file before every run). liveio is attached once (`liveio attach`); the policy is switched
// on and off between runs with the CLI (`liveio policy PID on|off NAME`), alternating which
// side goes first. The device readahead is run at the machine's value and at 128 KiB (set
// and restored; needs root). `--hot` adds the same scan with every file in the page cache:
// what the policy costs where there is nothing to read ahead. Beside the times, the child's
// CPU time (all its threads: the reader, liveio-io, io_uring's io-wq workers) per scan.
#include <fcntl.h>
#include <linux/fadvise.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench.h"
#include "control/protocol.h"
#include "control/self_exec.h"
#include "policy/io_worker.h"
#include "uring/engine.h"

namespace liveio::bench {
namespace {

namespace fs = std::filesystem;
using control::run_liveio;
using nlohmann::json;

struct PolicyBenchOptions {
    std::string policy = "prefetch";
    std::vector<std::string> knobs;
    int columns = 8;
    uint64_t column_mb = 32;
    uint64_t read_kb = 1024;
    int threads = 1;        // reading threads, each with its own descriptors
    uint64_t range_kb = 0;  // ranges handed out round-robin to the threads (0: whole files)
    uint64_t cpu_us_per_mb = 500;
    int runs = 5;
    std::string dir = "/tmp/liveio-bench-policy";
    std::string device = "vda";
    bool skip_128k = false;
    bool hot = false;
    int reap_actions = 20000;  // 0: skip the completion-reaping comparison
};

uint64_t now_ns() {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now().time_since_epoch())
                                     .count());
}

// The column files, in a directory shaped like a MergeTree part (the file classes follow the
// names: *.bin is a column file). Kept between runs.
std::vector<std::string> make_columns(const PolicyBenchOptions& o) {
    const fs::path part = fs::path(o.dir) / "data/bench/hits/all_1_1_0";
    fs::create_directories(part);
    std::vector<std::string> out;
    std::vector<char> block(1 << 20);
    for (int c = 0; c < o.columns; ++c) {
        const std::string path = (part / fmt::format("column{}.bin", c)).string();
        out.push_back(path);
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) == o.column_mb
                                                                                       << 20)
            continue;
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        uint64_t x = 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(c + 1);
        for (uint64_t m = 0; m < o.column_mb; ++m) {
            for (size_t i = 0; i < block.size(); i += 8) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                std::memcpy(&block[i], &x, 8);
            }
            if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size()))
                break;
        }
        ::fsync(fd);
        ::close(fd);
    }
    return out;
}

// One reading thread of a scan: its own descriptor of every column; reads the ranges
// `first`, `first + step`, ... (of `range` bytes each; the whole file when `range` is 0) of
// every column in step, as a ClickHouse query thread reads the granule ranges it was given:
// per range, lseek to its start, then read() pieces of at most `read_kb`, one column after
// another. Returns the sum of one 8-byte word per 4 KiB page read (order-independent).
uint64_t read_ranges(const PolicyBenchOptions& o, const std::vector<std::string>& files,
                     uint64_t first, uint64_t step) {
    std::vector<char> buf(o.read_kb << 10);
    const uint64_t size = o.column_mb << 20;
    const uint64_t range = o.range_kb == 0 ? size : o.range_kb << 10;
    std::vector<int> fds;
    for (auto& f : files) fds.push_back(::open(f.c_str(), O_RDONLY));
    uint64_t sum = 0;
    for (uint64_t r = first; r * range < size; r += step) {
        const uint64_t lo = r * range, hi = std::min(size, lo + range);
        for (int fd : fds) ::lseek(fd, static_cast<off_t>(lo), SEEK_SET);
        for (uint64_t at = lo; at < hi;) {
            const size_t want = std::min<uint64_t>(buf.size(), hi - at);
            ssize_t got = 0;
            for (int fd : fds) {
                const ssize_t n = ::read(fd, buf.data(), want);
                if (n <= 0) continue;
                got = n;
                for (ssize_t i = 0; i + 8 <= n; i += 4096) {
                    uint64_t w;
                    std::memcpy(&w, &buf[i], 8);
                    sum += w;
                }
                const uint64_t spin = o.cpu_us_per_mb * 1000 * static_cast<uint64_t>(n) / (1 << 20);
                for (const uint64_t s = now_ns(); now_ns() - s < spin;) {
                }
            }
            if (got <= 0) break;
            at += static_cast<uint64_t>(got);
        }
    }
    for (int fd : fds) ::close(fd);
    return sum;
}

// The reader child: on each byte from `cmd`, one cold scan by `threads` reading threads
// (thread t reads ranges t, t + threads, ...: with several threads, interleaved ranges of every
// file); answers "<ns> <checksum>\n". The threads live as long as the child, so the CPU time
// of each scan is on live threads (see process_cpu_ns).
[[noreturn]] void reader(const PolicyBenchOptions& o, const std::vector<std::string>& files,
                         int cmd, int res) {
    const auto n = static_cast<size_t>(o.threads);
    std::barrier<> start(static_cast<std::ptrdiff_t>(n + 1)),
        done(static_cast<std::ptrdiff_t>(n + 1));
    std::atomic<bool> quit{false};
    std::vector<uint64_t> sums(n, 0);
    std::vector<std::thread> threads;
    for (size_t t = 0; t < n; ++t)
        threads.emplace_back([&, t] {
            for (;;) {
                start.arrive_and_wait();
                if (quit.load()) return;
                sums[t] = read_ranges(o, files, t, n);
                done.arrive_and_wait();
            }
        });
    char c;
    while (::read(cmd, &c, 1) == 1 && c == 'r') {
        const uint64_t t0 = now_ns();
        start.arrive_and_wait();
        done.arrive_and_wait();
        uint64_t sum = 0;
        for (uint64_t v : sums) sum += v;
        const std::string line = fmt::format("{} {}\n", now_ns() - t0, sum);
        if (::write(res, line.data(), line.size()) < 0) break;
    }
    quit.store(true);
    start.arrive_and_wait();
    for (auto& t : threads) t.join();
    ::_exit(0);
}

// CPU time of every live thread of `pid` (schedstat run time, ns): the reader, liveio-io and
// io_uring's io-wq workers (threads of the process).
uint64_t process_cpu_ns(pid_t pid) {
    uint64_t total = 0;
    std::error_code ec;
    for (const auto& t : fs::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
        std::ifstream in(t.path() / "schedstat");
        uint64_t run = 0;
        if (in >> run) total += run;
    }
    return total;
}

void drop_cache(const std::vector<std::string>& files) {
    for (auto& f : files) {
        const int fd = ::open(f.c_str(), O_RDONLY);
        ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        ::close(fd);
    }
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::string s;
    std::getline(in, s);
    return s;
}

bool write_file(const std::string& path, const std::string& value) {
    std::ofstream out(path);
    out << value;
    return static_cast<bool>(out.flush());
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty()      ? 0
           : v.size() % 2 ? v[v.size() / 2]
                          : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

struct Side {
    std::vector<double> ms;
    std::vector<double> cpu_ms;
    uint64_t checksum = 0;
};

// Who reaps the completions of policy actions: the cost each design puts on the thread that
// issues them (a target thread at its I/O edge), and on the process. The same action
// (IORING_OP_FADVISE WILLNEED of 1 MiB of a cached file) issued `n` times:
//   worker   push into the liveio-io queue (eventfd write only when the worker sleeps);
//   inline   the issuing thread submits to its own ring (one io_uring_enter per action) and
//            reaps without waiting at its next call, as "reaping on the target thread's next
//            hooked call" would;
//   sqpoll   the issuing thread fills a SQPOLL ring (no syscall while the kernel thread polls).
struct ReapRow {
    const char* name;
    double thread_ns = 0, process_ns = 0, wall_ns = 0;
};

double thread_cpu_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}
double process_cpu_ns() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e9 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e3;
}

struct CountingSink final : policy::WorkerSink {
    std::atomic<uint64_t> done{0};
    bool admit(const policy::Action&) override { return true; }
    void dropped(const policy::Action&) override { ++done; }
    void issued(const policy::Action&, uint64_t) override {}
    void completed(const policy::Action&, uint64_t, int32_t, std::span<const char>,
                   uint64_t) override {
        ++done;
    }
};

std::vector<ReapRow> reap_bench(const std::string& file, int n) {
    const int fd = ::open(file.c_str(), O_RDONLY);
    std::vector<ReapRow> rows;
    auto measure = [&](const char* name, auto&& body) {
        ReapRow r{name};
        const double t0 = thread_cpu_ns(), p0 = process_cpu_ns();
        const uint64_t w0 = now_ns();
        const double issue = body();
        r.wall_ns = static_cast<double>(now_ns() - w0) / n;
        r.thread_ns = issue / n;
        r.process_ns = (process_cpu_ns() - p0) / n;
        (void)t0;
        rows.push_back(r);
    };
    {
        CountingSink sink;
        auto worker = policy::IoWorker::start({}, sink);
        if (worker) {
            measure("worker", [&] {
                double issuing = 0;
                for (int i = 0; i < n; ++i) {
                    policy::Action a;
                    a.fd = fd;
                    a.offset = static_cast<int64_t>(i % 32) << 20;
                    a.len = 1 << 20;
                    const double t = thread_cpu_ns();
                    while (!(*worker)->push(a)) {
                    }  // the bench keeps every action
                    issuing += thread_cpu_ns() - t;
                }
                (*worker)->barrier();
                return issuing;
            });
        }
    }
    for (bool sqpoll : {false, true}) {
        uring::Options eo;
        eo.sq_entries = 128;
        eo.sqpoll = sqpoll;
        auto engine = uring::Engine::create(eo);
        if (!engine || (*engine)->backend() != uring::BackendKind::Uring) continue;
        measure(sqpoll ? "sqpoll" : "inline", [&] {
            std::vector<uring::Completion> done(256);
            double issuing = 0;
            for (int i = 0; i < n; ++i) {
                const double t = thread_cpu_ns();
                while ((*engine)->prepare(uring::Op::fadvise(fd, static_cast<int64_t>(i % 32) << 20,
                                                             1 << 20, POSIX_FADV_WILLNEED),
                                          i) != 0)
                    (*engine)->reap(done, 1);
                (*engine)->submit();
                (*engine)->reap(done, 0);  // what the thread's next call would find
                issuing += thread_cpu_ns() - t;
            }
            while ((*engine)->inflight() > 0) (*engine)->reap(done, 1);
            return issuing;
        });
    }
    ::close(fd);
    return rows;
}

int run_policy_bench(const PolicyBenchOptions& o) {
    const auto files = make_columns(o);
    std::vector<std::string> metrics;
    if (o.reap_actions > 0) {
        std::printf(
            "completion reaping: %d fadvise(WILLNEED, 1 MiB) actions of a cached file; ns per "
            "action\n",
            o.reap_actions);
        std::printf("%-8s %18s %16s %10s\n", "design", "issuing thread", "process CPU", "wall");
        for (const ReapRow& r : reap_bench(files[0], o.reap_actions)) {
            std::printf("%-8s %18.0f %16.0f %10.0f\n", r.name, r.thread_ns, r.process_ns,
                        r.wall_ns);
            metrics.push_back(
                fmt::format("metric: reap_{}_issuing_ns {:.0f}", r.name, r.thread_ns));
            metrics.push_back(
                fmt::format("metric: reap_{}_process_ns {:.0f}", r.name, r.process_ns));
        }
    }
    int cmd[2], res[2];
    if (::pipe(cmd) != 0 || ::pipe(res) != 0) return 1;
    std::fflush(nullptr);
    const pid_t child = ::fork();
    if (child == 0) {
        ::close(cmd[1]);
        ::close(res[0]);
        reader(o, files, cmd[0], res[1]);
    }
    ::close(cmd[0]);
    ::close(res[1]);
    FILE* results = ::fdopen(res[0], "r");
    auto finish = [&](int rc) {
        (void)!::write(cmd[1], "q", 1);
        ::close(cmd[1]);
        ::waitpid(child, nullptr, 0);
        std::fclose(results);
        return rc;
    };
    auto attached = run_liveio({"attach", std::to_string(child)});
    if (!attached) {
        std::fprintf(stderr, "liveio bench policy: %s\n", attached.error().message.c_str());
        return finish(1);
    }
    auto scan = [&](Side& side, bool cold) -> bool {
        if (cold) drop_cache(files);
        const uint64_t cpu0 = process_cpu_ns(child);
        if (::write(cmd[1], "r", 1) != 1) return false;
        unsigned long long ns = 0, sum = 0;
        if (std::fscanf(results, "%llu %llu", &ns, &sum) != 2) return false;
        side.cpu_ms.push_back(static_cast<double>(process_cpu_ns(child) - cpu0) / 1e6);
        side.ms.push_back(static_cast<double>(ns) / 1e6);
        if (side.checksum != 0 && side.checksum != sum) return false;
        side.checksum = sum;
        return true;
    };
    auto ratio = [](const json& c, const char* k) {
        const auto issued = c.value("issued_bytes", uint64_t{0});
        return issued == 0 ? 0.0 : static_cast<double>(c.value(k, uint64_t{0})) / issued;
    };
    auto policy = [&](const char* verb) {
        std::vector<std::string> args = {"policy", std::to_string(child), verb, o.policy};
        if (std::string(verb) == "on") args.insert(args.end(), o.knobs.begin(), o.knobs.end());
        auto r = run_liveio(args);
        if (!r) std::fprintf(stderr, "liveio bench policy: %s\n", r.error().message.c_str());
        return static_cast<bool>(r);
    };
    const std::string ra_path = "/sys/block/" + o.device + "/queue/read_ahead_kb";
    const std::string ra_machine = read_file(ra_path);
    // Rows: (device readahead, cold); the hot row runs at the machine's readahead.
    std::vector<std::pair<std::string, bool>> rows = {{ra_machine, true}};
    if (!o.skip_128k && ra_machine != "128") {
        if (::geteuid() == 0)
            rows.push_back({"128", true});
        else
            std::printf("(not root: the 128 KiB device readahead row is skipped)\n");
    }
    if (o.hot) rows.push_back({ra_machine, false});
    std::printf(
        "%d columns x %llu MiB, %llu KiB reads in step, %llu us CPU per MiB, cold (FADV_DONTNEED) "
        "or hot, %d runs per side (median); the machine is shared\n",
        o.columns, static_cast<unsigned long long>(o.column_mb),
        static_cast<unsigned long long>(o.read_kb),
        static_cast<unsigned long long>(o.cpu_us_per_mb), o.runs);
    if (o.threads > 1)
        std::printf("%d threads, own descriptors, ranges of %llu KiB of every column in turn\n",
                    o.threads, static_cast<unsigned long long>(o.range_kb));
    std::printf(
        "(issued, used, wasted, actions: means per %s run, counted after `off` drained it; \"w. "
        "cached\": of the wasted bytes, those still in the page cache then; action us: the last "
        "run's)\n",
        o.policy.c_str());
    std::printf("%-18s %10s %10s %10s %10s %8s %8s %10s %10s %10s %10s %10s %10s\n", "readahead",
                "stock ms", o.policy.c_str(), "stock CPU", "CPU ms", "speedup", "paired",
                "issued MiB", "used MiB", "wasted MiB", "w. cached", "action us", "actions");
    int rc = 0;
    for (const auto& [ra, cold] : rows) {
        if (!cold) {
            // Every file in the page cache: one unmeasured scan reads them in.
            Side warm;
            if (!scan(warm, false)) {
                rc = 1;
                break;
            }
        }
        if (ra != ra_machine && !write_file(ra_path, ra)) {
            std::printf("cannot set %s to %s\n", ra_path.c_str(), ra.c_str());
            continue;
        }
        Side stock, pol;
        json counters;                     // the last policy run's
        json totals = json::object();      // byte counters and actions summed over the runs
        std::vector<double> uses, wastes;  // per policy run: used, wasted / issued
        bool ok = true;
        for (int r = 0; r < o.runs && ok; ++r) {
            // Alternate which side runs first.
            for (int k = 0; k < 2 && ok; ++k) {
                if ((r + k) % 2 == 0) {
                    ok = scan(stock, cold);
                } else {
                    ok = policy("on") && scan(pol, cold);
                    // Off through the control socket: its reply carries the run's final
                    // figures, counted after the drain (every issued byte used or wasted).
                    auto client = control::ControlClient::connect(child);
                    auto off = client ? client->call("policy.off", {{"name", o.policy}}, 60000)
                                      : Result<json>(client.error());
                    if (off) {
                        counters = off->value("final", json::object());
                        for (const char* k : {"issued_bytes", "used_bytes", "wasted_bytes",
                                              "wasted_resident_bytes", "actions"})
                            totals[k] =
                                totals.value(k, uint64_t{0}) + counters.value(k, uint64_t{0});
                        uses.push_back(ratio(counters, "used_bytes"));
                        wastes.push_back(ratio(counters, "wasted_bytes"));
                    } else {
                        std::fprintf(stderr, "liveio bench policy: off: %s\n",
                                     off.error().message.c_str());
                        ok = false;
                    }
                }
            }
        }
        if (ra != ra_machine) write_file(ra_path, ra_machine);
        if (!ok || stock.checksum != pol.checksum) {
            std::printf("run failed or checksums differ (stock %llx, %s %llx)\n",
                        static_cast<unsigned long long>(stock.checksum), o.policy.c_str(),
                        static_cast<unsigned long long>(pol.checksum));
            rc = 1;
            break;
        }
        const double s = median(stock.ms), p = median(pol.ms);
        // The machine drifts (shared): each round's two runs are adjacent in time, so the
        // median of per-round ratios is the steadier figure.
        std::vector<double> ratios;
        for (size_t i = 0; i < stock.ms.size() && i < pol.ms.size(); ++i)
            ratios.push_back(stock.ms[i] / pol.ms[i]);
        const double paired = median(ratios);
        // Means per policy run.
        const double runs = pol.ms.empty() ? 1.0 : static_cast<double>(pol.ms.size());
        const auto mib = [&](const char* k) {
            return static_cast<double>(totals.value(k, uint64_t{0})) / (1 << 20) / runs;
        };
        // Mean submit-to-completion time of the policy's actions in its last run.
        const double action_us =
            static_cast<double>(counters.value("latency_avg_ns", uint64_t{0})) / 1e3;
        const double sc = median(stock.cpu_ms), pc = median(pol.cpu_ms);
        std::printf(
            "%-18s %10.1f %10.1f %10.1f %10.1f %7.2fx %7.2fx %10.1f %10.1f %10.1f %10.1f %10.0f "
            "%10.1f\n",
            (ra + " KiB" + (cold ? " cold" : " hot")).c_str(), s, p, sc, pc, s / p, paired,
            mib("issued_bytes"), mib("used_bytes"), mib("wasted_bytes"),
            mib("wasted_resident_bytes"), action_us,
            static_cast<double>(totals.value("actions", uint64_t{0})) / runs);
        const std::string tag = ra == ra_machine ? "" : "_ra128k";
        const char* temp = cold ? "cold" : "hot";
        metrics.push_back(
            fmt::format("metric: policy_{}_{}_speedup{} {:.3f}", o.policy, temp, tag, s / p));
        metrics.push_back(fmt::format("metric: policy_{}_{}_speedup_paired{} {:.3f}", o.policy,
                                      temp, tag, paired));
        metrics.push_back(fmt::format("metric: policy_{}_{}_ms{} {:.1f}", o.policy, temp, tag, p));
        metrics.push_back(fmt::format("metric: policy_stock_{}_ms{} {:.1f}", temp, tag, s));
        metrics.push_back(
            fmt::format("metric: policy_{}_{}_cpu_ms{} {:.1f}", o.policy, temp, tag, pc));
        metrics.push_back(fmt::format("metric: policy_stock_{}_cpu_ms{} {:.1f}", temp, tag, sc));
        metrics.push_back(fmt::format("metric: policy_{}_{}_used_pct{} {:.1f}", o.policy, temp, tag,
                                      100 * median(uses)));
        metrics.push_back(fmt::format("metric: policy_{}_{}_wasted_pct{} {:.1f}", o.policy, temp,
                                      tag, 100 * median(wastes)));
    }
    (void)run_liveio({"detach", std::to_string(child)});
    for (auto& m : metrics) std::printf("%s\n", m.c_str());
    return finish(rc);
}

}  // namespace

void add_policy_bench(CLI::App& bench) {
    auto o = std::make_shared<PolicyBenchOptions>();
    auto* cmd = bench.add_subcommand(
        "policy",
        "A cold multi-column scan in a child process: stock vs a policy switched on live");
    cmd->add_option("--policy", o->policy, "policy to compare with stock")->capture_default_str();
    cmd->add_option("--knob", o->knobs, "KEY=VALUE for the policy (repeatable)");
    cmd->add_option("--columns", o->columns, "column files read in step")->capture_default_str();
    cmd->add_option("--column-mb", o->column_mb, "size of each column file (MiB)")
        ->capture_default_str();
    cmd->add_option("--read-kb", o->read_kb, "bytes per read() (KiB)")->capture_default_str();
    cmd->add_option("--threads", o->threads,
                    "reading threads, each with its own descriptors; thread t reads ranges t, "
                    "t + threads, ... of every column (ClickHouse query threads sharing a part)")
        ->check(CLI::Range(1, 16))
        ->capture_default_str();
    cmd->add_option("--range-kb", o->range_kb,
                    "size of the ranges handed to the threads in turn (0: one thread reads whole "
                    "files; with --threads > 1 it must be set)")
        ->capture_default_str();
    cmd->add_option("--cpu-us-per-mb", o->cpu_us_per_mb,
                    "CPU work per MiB read (us), as decompression")
        ->capture_default_str();
    cmd->add_option("--runs", o->runs, "runs per side")->capture_default_str();
    cmd->add_option("--dir", o->dir, "where the column files are kept")->capture_default_str();
    cmd->add_option("--device", o->device, "block device whose readahead is reported and varied")
        ->capture_default_str();
    cmd->add_flag("--skip-128k", o->skip_128k, "only the machine's device readahead");
    cmd->add_flag("--hot", o->hot,
                  "also the scan with every file in the page cache (the policy's cost where "
                  "there is nothing to read ahead)");
    cmd->add_option("--reap-actions", o->reap_actions,
                    "actions of the completion-reaping comparison (0: skip)")
        ->capture_default_str();
    cmd->callback([o] {
        if (o->threads > 1 && o->range_kb == 0)
            throw CLI::ValidationError("--range-kb", "needed with --threads > 1");
        if (const int rc = run_policy_bench(*o); rc != 0) throw CLI::RuntimeError(rc);
    });
}

}  // namespace liveio::bench
