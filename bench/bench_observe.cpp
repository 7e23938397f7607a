// `liveio bench observe`: what observing a server with liveio costs.
//
// 1. A real server: the ClickHouse query mix (src/clickhouse/dataset.h) on shard 0 of a
//    private 2-shard cluster, warm caches, run unpatched and with liveio attached (GOT hooks
//    plus the built-in io_stats program loaded through bpf.load), in alternating pairs on the
//    same server (attach and detach between the runs of a pair, never timed); the order
//    within a pair alternates too, so drift favours neither side. Overhead per pair =
//    observed / unpatched - 1; the median and the spread over the pairs are reported.
// 2. Per call: pread of 4 KiB from the page cache in a loop, plain vs through liveio's GOT
//    hook (with and without the stats program) vs the kernel's raw_syscalls:sys_enter
//    tracepoint with a counting BPF program (root only).
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <sys/syscall.h>

#include <functional>

#include <bpf/bpf.h>
#include "agent/bpf_host.h"
#include "agent/call_pipeline.h"
#include "bench.h"
#include "clickhouse/dataset.h"
#include "clickhouse/server.h"
#include "control/protocol.h"
#include "control/self_exec.h"
#include "hook/dispatch.h"
#include "hook/interceptor.h"
#include "kernel_probe.h"
#include "liveio/io_stats.h"
#include "observe/bpf_client.h"

namespace liveio::bench {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
namespace ch = liveio::clickhouse;
namespace fs = std::filesystem;
using control::run_liveio;

struct ObserveOptions {
    uint64_t rows = ch::DatasetOptions{}.rows;
    int pairs = 10;
    int runs = 3;            // mix runs per side of a pair (median)
    int iterations = 20000;  // preads per round of the per-call part
    int rounds = 31;         // alternating rounds; each variant keeps its best
    bool skip_server = false;
};

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// liveio attached to `pid` through the real commands: `liveio attach`, then bpf.load of
// io_stats when the agent has the BPF host; the reverse on stop().
class Observation {
public:
    static Result<Observation> start(pid_t pid, const Result<std::string>& io_stats) {
        auto attached = run_liveio({"attach", std::to_string(pid), "--mechanism", "got"});
        if (!attached) return attached.error();
        Observation o;
        o.pid_ = pid;
        if (!io_stats) {
            o.note_ = "hooks and agent counters only (" + io_stats.error().message + ")";
            return o;
        }
        auto client = control::ControlClient::connect(pid);
        if (!client) return o.fail_with(client.error());
        auto loaded = observe::BpfClient(*client).load(io_stats.value());
        if (!loaded) {
            // An agent without the BPF host: measure the hooks alone, and say so.
            if (loaded.error().code != ENOSYS) return o.fail_with(loaded.error());
            o.note_ = "hooks and agent counters only (" + loaded.error().message + ")";
            return o;
        }
        o.object_ = loaded->id;
        return o;
    }
    Observation(Observation&& other) noexcept
        : pid_(std::exchange(other.pid_, 0)),
          object_(other.object_),
          note_(std::move(other.note_)) {}
    Observation& operator=(Observation&&) = delete;
    ~Observation() { (void)stop(); }

    // Runs of the io_stats program so far (nothing without the program).
    std::optional<uint64_t> program_runs() const {
        if (!object_) return std::nullopt;
        auto client = control::ControlClient::connect(pid_);
        if (!client) return std::nullopt;
        auto objects = observe::BpfClient(*client).list();
        if (!objects) return std::nullopt;
        uint64_t runs = 0;
        for (auto& obj : *objects)
            if (obj.id == *object_)
                for (auto& p : obj.programs) runs += p.runs.value_or(0);
        return runs;
    }

    Result<void> stop() {
        if (!pid_) return {};
        const pid_t pid = std::exchange(pid_, 0);
        if (object_)
            if (auto client = control::ControlClient::connect(pid))
                if (auto r = observe::BpfClient(*client).unload(*object_); !r) return r.error();
        auto detached = run_liveio({"detach", std::to_string(pid)});
        if (!detached) return detached.error();
        return {};
    }
    bool with_program() const { return object_.has_value(); }
    const std::string& note() const { return note_; }

private:
    Observation() = default;
    Error fail_with(Error e) {
        (void)stop();
        return e;
    }
    pid_t pid_ = 0;
    std::optional<uint64_t> object_;
    std::string note_;
};

struct PairResult {
    double plain_ms = 0, observed_ms = 0;
    double overhead_pct() const { return 100.0 * (observed_ms / plain_ms - 1); }
};

// Part 1. Returns the median overhead in percent, or nothing when the server part failed.
std::optional<double> server_overhead(const ObserveOptions& o) {
    fmt::print(
        "ClickHouse query mix on shard 0 of a private 2-shard cluster (Debian "
        "clickhouse-server)\n");
    ch::ClusterOptions co;
    co.server.profile_settings = ch::kProfileSettings;
    co.server.environment = {ch::kStaticTlsReserve};
    auto cluster = ch::LocalCluster::start(co);
    if (!cluster) {
        fmt::print("  cannot start ClickHouse: {}\n", cluster.error().message);
        return std::nullopt;
    }
    ch::DatasetOptions data;
    data.rows = o.rows;
    auto loaded = ch::load(*cluster, data);
    if (!loaded) {
        fmt::print("  loading the data set: {}\n", loaded.error().message);
        return std::nullopt;
    }
    const pid_t target = cluster->shard(0).pid();
    const auto mix = ch::query_mix(data, ch::ShardSlice{0, cluster->size()}, true);
    auto client = cluster->shard(0).client();
    const auto io_stats = observe::resolve_object_path("io_stats");

    // One side of a pair: the median of o.runs runs of the mix (a single run is at the mercy
    // of whatever else the machine does at that moment).
    auto timed_mix = [&]() -> Result<double> {
        std::vector<double> ms;
        for (int i = 0; i < o.runs; ++i) {
            auto run = ch::run_mix(client, mix);
            if (!run) return run.error();
            if (run->mismatches)
                return make_error(EPROTO, fmt::format("{} wrong results", run->mismatches));
            ms.push_back(run->elapsed.count() / 1e6);
        }
        return median(ms);
    };
    // Warm caches (page cache, mark cache, the shard connection pool) before measuring.
    for (int i = 0; i < 2; ++i)
        if (auto w = timed_mix(); !w) {
            fmt::print("  warm-up: {}\n", w.error().message);
            return std::nullopt;
        }
    fmt::print("  {} rows, {} queries per mix, {} pairs of {} runs per side (median), pid {}\n\n",
               loaded->rows, mix.size(), o.pairs, o.runs, target);
    fmt::print("  {:>4} {:>13} {:>13} {:>10}  {}\n", "pair", "unpatched ms", "observed ms",
               "overhead", "program runs");
    std::vector<PairResult> pairs;
    std::string note;
    bool with_program = false;
    for (int p = 0; p < o.pairs; ++p) {
        PairResult r;
        std::optional<uint64_t> runs;
        auto observed = [&]() -> Result<void> {
            auto obs = Observation::start(target, io_stats);
            if (!obs) return obs.error();
            note = obs->note();
            with_program = obs->with_program();
            auto t = timed_mix();
            if (!t) return t.error();
            r.observed_ms = *t;
            runs = obs->program_runs();
            return obs->stop();
        };
        auto plain = [&]() -> Result<void> {
            auto t = timed_mix();
            if (!t) return t.error();
            r.plain_ms = *t;
            return {};
        };
        auto first = p % 2 == 0 ? plain() : observed();
        auto second = first ? (p % 2 == 0 ? observed() : plain()) : first;
        if (!second) {
            fmt::print("  pair {}: {}\n", p + 1, second.error().message);
            return std::nullopt;
        }
        pairs.push_back(r);
        fmt::print("  {:>4} {:>13.1f} {:>13.1f} {:>9.2f}%  {}\n", p + 1, r.plain_ms, r.observed_ms,
                   r.overhead_pct(), runs ? std::to_string(*runs) : "-");
    }
    std::vector<double> pct, plain_ms, observed_ms;
    for (auto& r : pairs) {
        pct.push_back(r.overhead_pct());
        plain_ms.push_back(r.plain_ms);
        observed_ms.push_back(r.observed_ms);
    }
    double mean = 0, sq = 0;
    for (double v : pct) mean += v / pct.size();
    for (double v : pct) sq += (v - mean) * (v - mean);
    const double stdev = pct.size() > 1 ? std::sqrt(sq / (pct.size() - 1)) : 0;
    const double med = median(pct);
    fmt::print(
        "\n  median unpatched {:.1f} ms, observed {:.1f} ms; overhead median {:+.2f}%, mean "
        "{:+.2f}% +- {:.2f} (stdev), "
        "range {:+.2f}% .. {:+.2f}%\n",
        median(plain_ms), median(observed_ms), med, mean, stdev,
        *std::min_element(pct.begin(), pct.end()), *std::max_element(pct.begin(), pct.end()));
    fmt::print("  observed = {}\n\n",
               with_program ? "GOT hooks + io_stats (JIT) via bpf.load" : note);
    return med;
}

// Part 2: the measured call, through this executable's PLT/GOT (noinline: one real call per
// iteration, nothing hoisted). The offsets walk a 1 MiB file already in the page cache.
constexpr size_t kReadSize = 4096;
constexpr size_t kFileSize = 1 << 20;

__attribute__((noinline)) ssize_t measured_pread(int fd, char* buf, off_t off) {
    return ::pread(fd, buf, kReadSize, off);
}

// This thread's CPU time (user + kernel) in ns: the cost of a call is CPU work, and on a
// shared machine wall time would also count the time other processes ran instead of us.
double thread_cpu_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

double ns_per_pread(int fd, int iterations) {
    alignas(64) static thread_local char buf[kReadSize];
    const double t0 = thread_cpu_ns();
    for (int i = 0; i < iterations; ++i)
        measured_pread(fd, buf,
                       static_cast<off_t>((static_cast<size_t>(i) * kReadSize) % kFileSize));
    return (thread_cpu_ns() - t0) / iterations;
}

// The hook-only path: the smallest handler that still sees every call.
class CountingHandler : public hook::CallHandler {
public:
    std::atomic<uint64_t> calls{0};
    bool on_enter(hook::CallFrame&) override {
        calls.fetch_add(1, std::memory_order_relaxed);
        return false;
    }
    void on_exit(hook::CallFrame&) override {}
    bool wants_start_time() const override { return false; }
};

// A regular file of kFileSize bytes in $TMPDIR (or /tmp), read once so it is in the page
// cache, unlinked at once; the descriptor is the caller's.
Result<int> page_cache_file() {
    const char* tmp = std::getenv("TMPDIR");
    std::string path = fmt::format("{}/liveio-bench-observe-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    const int fd = ::mkostemp(path.data(), O_CLOEXEC);
    if (fd < 0)
        return make_error(errno, fmt::format("creating {}: {}", path, std::strerror(errno)));
    ::unlink(path.c_str());
    std::vector<char> data(kFileSize, 'x');
    if (::pwrite(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size()) ||
        ::pread(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size())) {
        const int err = errno ? errno : EIO;
        ::close(fd);
        return make_error(err, fmt::format("filling {}: {}", path, std::strerror(err)));
    }
    return fd;
}

// One way of making the measured calls. install() sets its observation up and returns what
// undoes it; `verify` (after the rounds) says whether the observer really saw the calls.
struct Variant {
    std::string name;
    std::function<Result<std::function<void()>>()> install;
    std::function<std::string()> verify;
    std::optional<double> best;
    std::string note;
};

// A BPF object loaded into an in-process BPF host (the agent's, as in the target) on
// `engine` (none: the host without programs); `counts_map` holds struct liveio_io_stats per
// syscall number, for checking that the program saw the calls.
struct HostWithProgram {
    std::unique_ptr<agent::BpfHost> host;
    std::unique_ptr<agent::CallPipelineOf<agent::BpfHost>>
        pipeline;  // the host as the agent runs it
    std::shared_ptr<ebpf::Map> counts;
    std::string error;

    HostWithProgram(std::optional<ebpf::Engine> engine, const Result<std::string>& object,
                    const std::string& counts_map) {
        auto h = agent::BpfHost::create({});
        if (!h) {
            error = h.error().message;
            return;
        }
        host = std::move(*h);
        pipeline = std::make_unique<agent::CallPipelineOf<agent::BpfHost>>(*host);
        if (!engine) return;
        if (!object) {
            error = object.error().message;
            return;
        }
        auto loaded = host->load({object.value(), *engine, {}});
        if (!loaded) {
            error = loaded.error().message;
            return;
        }
        counts = host->map(loaded->id, counts_map);
        if (!counts) error = "the object has no map " + counts_map;
    }
    uint64_t pread_calls() const {
        liveio_io_stats value{};
        const uint32_t key = SYS_pread64;
        return counts && counts->copy_value(&key, &value) == 0 ? value.calls : 0;
    }
};

std::optional<double> per_call_cost(const ObserveOptions& o) {
    auto file = page_cache_file();
    if (!file) {
        fmt::print("per-call cost: {}\n", file.error().message);
        return std::nullopt;
    }
    const int fd = *file;
    hook::InterceptOptions io;
    io.mechanism = hook::Mechanism::Got;
    io.objects = {hook::kMainProgram};
    io.functions = {"pread", "pread64"};
    auto hooked = [&](hook::CallHandler* handler) {
        return [=]() -> Result<std::function<void()>> {
            auto icpt = hook::Interceptor::install(io, handler);
            if (!icpt) return icpt.error();
            return std::function<void()>([i = std::shared_ptr<hook::Interceptor>(
                                              std::move(*icpt))] { (void)i->uninstall(); });
        };
    };
    const auto io_stats = observe::resolve_object_path("io_stats");
    const auto syscount = observe::resolve_object_path("syscount");
    CountingHandler counting;
    HostWithProgram empty_host(std::nullopt, io_stats, ""),
        jit_host(ebpf::Engine::Jit, io_stats, "syscall_stats"),
        interp_host(ebpf::Engine::Interpreter, io_stats, "syscall_stats"),
        syscount_host(ebpf::Engine::Jit, syscount, "syscalls");
    CountingProgram kernel_prog(BPF_PROG_TYPE_RAW_TRACEPOINT);
    uint64_t kernel_syscount_calls = 0;

    std::vector<Variant> variants;
    variants.push_back({"plain pread 4 KiB (page cache)",
                        [] { return Result<std::function<void()>>(std::function<void()>([] {})); },
                        [] { return std::string(); }});
    variants.push_back({"GOT hook, counting handler", hooked(&counting),
                        [&] { return counting.calls ? "" : std::string("hook saw no calls"); }});
    auto host_variant = [&](std::string name, HostWithProgram& h, bool program) {
        Variant v{std::move(name), {}, {}};
        if (!h.error.empty()) {
            v.install = [&h]() -> Result<std::function<void()>> {
                return make_error(EINVAL, h.error);
            };
        } else {
            v.install = hooked(h.pipeline.get());
        }
        v.verify = [&h, program] {
            return !program || h.pread_calls() ? "" : std::string("the program counted no pread64");
        };
        variants.push_back(std::move(v));
    };
    host_variant("GOT hook, agent BPF host, no program", empty_host, false);
    host_variant("GOT hook + io_stats (JIT)", jit_host, true);
    host_variant("GOT hook + io_stats (interpreter)", interp_host, true);
    host_variant("GOT hook + syscount.bpf.o (JIT)", syscount_host, true);
    const bool root = geteuid() == 0;
    if (root) {
        variants.push_back(
            {"kernel tracepoint sys_enter + BPF count",
             [&]() -> Result<std::function<void()>> {
                 auto link = attach_raw_tracepoint(kernel_prog, "sys_enter");
                 if (!link) return link.error();
                 return std::function<void()>([l = *link] { ::close(l); });
             },
             [&] { return kernel_prog.count() ? "" : std::string("program counted nothing"); }});
        // The same syscount object file in the kernel: raw_syscalls sys_enter + sys_exit,
        // pairing through a hash map as libbpf-tools do; only this process is counted.
        variants.push_back(
            {"kernel tracepoints + syscount.bpf.o",
             [&]() -> Result<std::function<void()>> {
                 if (!syscount) return syscount.error();
                 auto k = KernelObject::load(syscount.value(),
                                             {{"target_tgid", static_cast<uint32_t>(::getpid())}});
                 if (!k) return k.error();
                 // Detaching is freeing: the count is taken first.
                 return std::function<void()>(
                     [&, obj = std::shared_ptr<KernelObject>(std::move(*k))] {
                         liveio_io_stats value{};
                         const uint32_t key = SYS_pread64;
                         const int fd = obj->map_fd("syscalls");
                         if (fd >= 0 && bpf_map_lookup_elem(fd, &key, &value) == 0)
                             kernel_syscount_calls += value.calls;
                     });
             },
             [&] {
                 return kernel_syscount_calls ? "" : std::string("the program counted no pread64");
             }});
    }

    // Rounds alternate between the variants so that a busy moment of the machine hits all of
    // them alike; each variant keeps its best round. Many short rounds: on a shared machine a
    // long round always contains preemptions, a short one often none.
    for (int round = 0; round < o.rounds; ++round)
        for (auto& v : variants) {
            if (!v.note.empty()) continue;
            auto undo = v.install();
            if (!undo) {
                v.note = undo.error().message;
                continue;
            }
            const double ns = ns_per_pread(fd, o.iterations);
            (*undo)();
            v.best = std::min(v.best.value_or(ns), ns);
        }
    ::close(fd);
    for (auto& v : variants)
        if (v.note.empty() && v.best) v.note = v.verify();

    const double plain = *variants[0].best;
    fmt::print("{:<44} {:>10} {:>10}  {}\n",
               fmt::format("per call (CPU time, best of {} rounds)", o.rounds), "ns/call",
               "added ns", "note");
    for (auto& v : variants) {
        if (v.best)
            fmt::print("{:<44} {:>10.1f} {:>10.1f}  {}\n", v.name, *v.best, *v.best - plain,
                       v.note);
        else
            fmt::print("{:<44} {:>10} {:>10}  {}\n", v.name, "-", "-", v.note);
    }
    if (!root)
        fmt::print("{:<44} {:>10} {:>10}  {}\n", "kernel tracepoint sys_enter + BPF count", "-",
                   "-", "needs root");
    auto added = [&](const std::string& name) -> std::optional<double> {
        for (auto& v : variants)
            if (v.name == name && v.best) return *v.best - plain;
        return std::nullopt;
    };
    if (auto k = added("kernel tracepoint sys_enter + BPF count"))
        fmt::print("metric: kernel_tracepoint_pread_ns {:.1f}\n", *k);
    if (auto u = added("GOT hook + syscount.bpf.o (JIT)"))
        fmt::print("metric: syscount_liveio_ns {:.1f}\n", *u);
    if (auto k = added("kernel tracepoints + syscount.bpf.o"))
        fmt::print("metric: syscount_kernel_ns {:.1f}\n", *k);
    if (auto jit = added("GOT hook + io_stats (JIT)")) return jit;
    fmt::print("(io_stats unavailable: observe_per_syscall_ns is the counting hook alone)\n");
    return added("GOT hook, counting handler");
}

void run(const ObserveOptions& o) {
    std::optional<double> overhead;
    if (!o.skip_server) {
        if (auto b = ch::find_server_binary(); !b)
            fmt::print("ClickHouse part skipped: {}\n\n", b.error().message);
        else
            overhead = server_overhead(o);
    }
    auto per_call = per_call_cost(o);
    if (overhead)
        fmt::print("metric: observe_overhead_pct {:.2f}\n", *overhead);
    else
        fmt::print("metric: observe_overhead_pct unavailable\n");
    if (per_call)
        fmt::print("metric: observe_per_syscall_ns {:.1f}\n", *per_call);
    else
        fmt::print("metric: observe_per_syscall_ns unavailable\n");
}

}  // namespace

void add_observe_bench(CLI::App& bench) {
    auto* cmd =
        bench.add_subcommand("observe",
                             "Cost of observing: ClickHouse query mix unpatched vs observed "
                             "(alternating pairs), per-call cost vs the kernel tracepoint");
    auto o = std::make_shared<ObserveOptions>();
    cmd->add_option("--rows", o->rows, "rows of the ClickHouse data set")
        ->check(CLI::Range(uint64_t{1000}, uint64_t{200'000'000}))
        ->capture_default_str();
    cmd->add_option("--pairs", o->pairs, "unpatched/observed pairs of query mix runs")
        ->check(CLI::Range(1, 1000))
        ->capture_default_str();
    cmd->add_option("--runs", o->runs, "mix runs per side of a pair (their median is compared)")
        ->check(CLI::Range(1, 100))
        ->capture_default_str();
    cmd->add_option("--iterations", o->iterations, "preads per round of the per-call part")
        ->check(CLI::Range(1000, 100000000))
        ->capture_default_str();
    cmd->add_option("--rounds", o->rounds, "alternating rounds of the per-call part (best kept)")
        ->check(CLI::Range(1, 10000))
        ->capture_default_str();
    cmd->add_flag("--skip-server", o->skip_server, "only the per-call part (no ClickHouse)");
    cmd->callback([o] { run(*o); });
}

}  // namespace liveio::bench
