// `liveio top`, `stats`, `hist`, `trace`, `maps`, `load`, `unload`: what a process's I/O looks
// like, from the maps of BPF programs running in its agent (the built-in io_stats object, or
// the user's own objects), read live through shared memory.
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/observe_session.h"
#include "cli/policy_ops.h"
#include "control/protocol.h"
#include "ebpf/map.h"
#include "observe/format.h"
#include "observe/sink.h"

namespace liveio::cli {
namespace {

using nlohmann::json;

double seconds_option(const std::string& text, const char* option) {
    auto s = observe::parse_seconds(text);
    if (!s) observe_fail(std::string(option) + ": " + s.error().message);
    return *s;
}

// ---- stats / hist ----

struct Measurement {
    observe::Snapshot snap;
    double seconds = 0;  // 0: cumulative counters of an instance loaded earlier
};

// The snapshot a one-shot command reports: the cumulative counters of an io_stats instance
// that was already running, or (with --duration, or when the command had to load io_stats
// itself) the delta over the duration.
Measurement measure(TargetSession& s, const IoStatsMaps& io, const std::string& duration,
                    SignalWatch& signals) {
    double seconds = duration.empty() ? 0 : seconds_option(duration, "--duration");
    const bool implicit = seconds == 0 && io.loaded_here;
    if (implicit) seconds = 1;
    if (seconds == 0) return {s.snapshot(io), 0};
    const observe::Snapshot before = s.snapshot(io);
    std::fprintf(stderr, "liveio: counting the I/O of %d for %.2f s%s\n", s.pid(), seconds,
                 implicit ? " (io_stats was not running there; see --duration)" : "");
    const bool cut = signals.wait(seconds);
    observe::Snapshot after = s.snapshot(io);
    observe::Snapshot d = observe::delta(after, before);
    if (cut)
        std::fprintf(stderr, "liveio: interrupted; reporting the %.2f s counted so far\n",
                     d.time_ns / 1e9);
    return {std::move(d), static_cast<double>(d.time_ns) / 1e9};
}

void cmd_stats(pid_t pid, const ObserveArgs& args, bool as_json, const std::string& duration,
               const std::string& sink_url) {
    std::optional<observe::SinkTarget> sink_target;
    if (!sink_url.empty()) {
        if (duration.empty())
            observe_fail("--sink needs --duration: the sink stores rates over an interval");
        auto t = observe::parse_sink_url(sink_url);
        if (!t) observe_fail(t.error().message);
        sink_target = *t;
    }
    SignalWatch signals;  // first: Ctrl-C from here on still runs the cleanup
    auto s = TargetSession::open(pid, args);
    const IoStatsMaps io = s->io_stats();
    const Measurement m = measure(*s, io, duration, signals);
    if (as_json) {
        json j = observe::to_json(m.snap, m.seconds);
        j["pid"] = pid;
        j["comm"] = s->comm();
        j["object"] = io.object.id;
        std::printf("%s\n", j.dump(2).c_str());
    } else {
        std::printf("pid %d (%s), io_stats object %" PRIu64 ", %s\n", pid, s->comm().c_str(),
                    io.object.id,
                    m.seconds > 0 ? fmt::format("rates over {:.2f} s", m.seconds).c_str()
                                  : "counts since it was loaded");
        std::printf("%s", observe::format_tables(m.snap, m.seconds).c_str());
    }
    if (sink_target) {
        auto sink = observe::ClickHouseSink::open(*sink_target);
        if (!sink) observe_fail(sink.error().message);
        auto n = sink->write({static_cast<int64_t>(std::time(nullptr)), observe::local_host_name(),
                              pid, s->comm(), m.seconds, &m.snap});
        if (!n) observe_fail(n.error().message);
        std::fprintf(stderr, "liveio: %zu rows inserted into %s\n", *n,
                     sink_target->qualified().c_str());
    }
    s->close();
}

void cmd_hist(pid_t pid, const ObserveArgs& args, const std::string& syscall,
              const std::string& duration) {
    SignalWatch signals;
    auto s = TargetSession::open(pid, args);
    const IoStatsMaps io = s->io_stats();
    const Measurement m = measure(*s, io, duration, signals);
    std::string seen;
    bool printed = false;
    for (const auto& row : m.snap.syscalls) {
        seen += (seen.empty() ? "" : ", ") + row.name;
        if (!syscall.empty() && row.name != syscall) continue;
        std::printf("%s\n", observe::format_histogram(row.name, row.counters.hist).c_str());
        printed = true;
    }
    s->close();
    if (!printed && !syscall.empty())
        observe_fail(fmt::format("no {} calls in {} (calls seen: {})", syscall, pid,
                                 seen.empty() ? "none" : seen));
    if (!printed) std::printf("no calls seen in %d\n", pid);
}

// ---- top ----

// The terminal of an interactive `top`: keys without Enter and no echo, on the alternate
// screen; everything restored on destruction.
class Terminal {
public:
    Terminal() : interactive_(::isatty(STDIN_FILENO) && ::isatty(STDOUT_FILENO)) {
        if (!interactive_ || ::tcgetattr(STDIN_FILENO, &saved_) != 0) {
            interactive_ = false;
            return;
        }
        termios raw = saved_;
        raw.c_lflag &= ~(ICANON | ECHO);
        raw.c_cc[VMIN] = 0;
        raw.c_cc[VTIME] = 0;
        ::tcsetattr(STDIN_FILENO, TCSANOW, &raw);
        std::fputs("\033[?1049h\033[?25l", stdout);  // alternate screen, cursor hidden
        std::fflush(stdout);
    }
    ~Terminal() {
        if (!interactive_) return;
        std::fputs("\033[?25h\033[?1049l", stdout);
        std::fflush(stdout);
        ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    }
    Terminal(const Terminal&) = delete;
    Terminal& operator=(const Terminal&) = delete;
    bool interactive() const { return interactive_; }
    // True when 'q' was typed.
    bool quit_key() {
        char c;
        while (::read(STDIN_FILENO, &c, 1) == 1)
            if (c == 'q' || c == 'Q') return true;
        return false;
    }

private:
    bool interactive_;
    termios saved_{};
};

void cmd_top(pid_t pid, const ObserveArgs& args, const std::string& interval_text, size_t rows,
             int count) {
    const double interval = seconds_option(interval_text, "--interval");
    SignalWatch signals;
    auto s = TargetSession::open(pid, args);
    const IoStatsMaps io = s->io_stats();
    {
        Terminal term;
        observe::Snapshot before = s->snapshot(io);
        for (int shown = 0; count <= 0 || shown < count; ++shown) {
            // Wait for the interval, a signal or 'q'.
            const uint64_t until = before.time_ns + static_cast<uint64_t>(interval * 1e9);
            bool quit = false;
            while (!quit) {
                const uint64_t now = observe::monotonic_ns();
                if (now >= until) break;
                pollfd p[2] = {{signals.fd(), POLLIN, 0},
                               {term.interactive() ? STDIN_FILENO : -1, POLLIN, 0}};
                ::poll(p, 2, static_cast<int>((until - now) / 1000000 + 1));
                quit = signals.received() || (term.interactive() && term.quit_key());
            }
            if (quit) break;
            if (!s->alive()) {
                s->close();
                observe_fail(fmt::format("process {} ({}) exited", pid, s->comm()));
            }
            observe::Snapshot now = s->snapshot(io);
            const observe::Snapshot d = observe::delta(now, before);
            const double seconds = static_cast<double>(d.time_ns) / 1e9;
            char clock[32];
            const std::time_t t = std::time(nullptr);
            std::strftime(clock, sizeof clock, "%H:%M:%S", std::localtime(&t));
            const std::string head = fmt::format(
                "liveio top - {}  pid {} ({})  io_stats object {}  interval {:.2f} s{}\n\n", clock,
                pid, s->comm(), io.object.id, seconds, term.interactive() ? "  [q: quit]" : "");
            if (term.interactive()) std::fputs("\033[H\033[2J", stdout);
            std::fputs(head.c_str(), stdout);
            std::fputs(observe::format_tables(d, seconds, rows).c_str(), stdout);
            // The acceleration policies that are on, with their counters.
            if (auto client = control::ControlClient::connect(pid))
                if (auto policies = client->call("policy.list"); policies)
                    print_policies(*policies);
            if (!term.interactive()) std::fputs("\n", stdout);
            std::fflush(stdout);
            before = std::move(now);
        }
    }
    s->close();
}

// ---- trace ----

std::string format_slow_event(const liveio_slow_io& ev, uint64_t start_ns) {
    const auto& io = ev.io;
    const double at =
        io.start_ns >= start_ns ? static_cast<double>(io.start_ns - start_ns) / 1e9 : 0.0;
    char comm[sizeof ev.comm + 1] = {};
    std::memcpy(comm, ev.comm, sizeof ev.comm);
    return fmt::format("{:>10.6f} {:<16} {:>7} {:<10} {:>5} {:<12} {:>12} {:>9} {:>10} {:>10}\n",
                       at, comm, io.tid, observe::syscall_name(static_cast<uint32_t>(io.nr)), io.fd,
                       observe::class_name(io.file_class), io.offset, io.count, io.result,
                       observe::format_latency(static_cast<double>(io.latency_ns)));
}

// Sets a u64 global of a loaded object through its live data-section map.
class GlobalU64 {
public:
    GlobalU64(const std::vector<observe::LiveMap>& maps, const observe::GlobalLocation& where,
              const std::string& what) {
        const auto* m = observe::find_map(maps, where.section);
        if (!m) observe_fail(fmt::format("{}: the object has no '{}' map", what, where.section));
        if (where.size != sizeof(uint64_t) || where.offset + sizeof(uint64_t) > m->info.value_size)
            observe_fail(fmt::format("{}: unexpected layout ({} bytes at {} of a {}-byte section)",
                                     what, where.size, where.offset, m->info.value_size));
        const uint32_t zero = 0;
        auto* base = static_cast<char*>(m->map->lookup(&zero));
        if (!base) observe_fail(fmt::format("{}: '{}' has no element 0", what, where.section));
        value_ = reinterpret_cast<uint64_t*>(base + where.offset);
        map_ = m->map;  // keeps the mapping alive while value_ points into it
    }
    uint64_t get() const { return __atomic_load_n(value_, __ATOMIC_RELAXED); }
    void set(uint64_t v) { __atomic_store_n(value_, v, __ATOMIC_RELAXED); }

private:
    std::shared_ptr<ebpf::Map> map_;
    uint64_t* value_ = nullptr;
};

void cmd_trace(pid_t pid, const ObserveArgs& args, int64_t threshold_us,
               const std::string& duration, int max_events) {
    const double limit = duration.empty() ? 0 : seconds_option(duration, "--duration");
    SignalWatch signals;
    auto s = TargetSession::open(pid, args);
    const IoStatsMaps io = s->io_stats();
    const auto* events = observe::find_map(io.maps, "slow_events");
    auto* ring = events ? dynamic_cast<ebpf::RingBuffer*>(events->map.get()) : nullptr;
    if (!ring)
        observe_fail(
            fmt::format("object {} in {} has no slow_events ring buffer", io.object.id, pid));

    // The threshold is a `const volatile` global of io_stats: the programs read it from the
    // object's .rodata map at every call, so it can change while they run.
    auto path = observe::resolve_object_path(observe::kIoStatsObject);
    if (!path) observe_fail(path.error().message);
    auto where = observe::find_global(*path, "slow_threshold_ns");
    if (!where) observe_fail(where.error().message);
    GlobalU64 threshold(io.maps, *where, "slow_threshold_ns");
    const uint64_t old_threshold = threshold.get();
    if (threshold_us >= 0) threshold.set(static_cast<uint64_t>(threshold_us) * 1000);
    std::fprintf(stderr, "liveio: tracing I/O in %d (%s) slower than %s; Ctrl-C to stop\n", pid,
                 s->comm().c_str(),
                 observe::format_latency(static_cast<double>(threshold.get())).c_str());
    std::printf("%10s %-16s %7s %-10s %5s %-12s %12s %9s %10s %10s\n", "TIME(s)", "COMM", "TID",
                "SYSCALL", "FD", "CLASS", "OFFSET", "COUNT", "RESULT", "LATENCY");
    std::fflush(stdout);

    const uint64_t start = observe::monotonic_ns();
    const uint64_t dropped_at_start = ring->dropped();
    uint64_t dropped_reported = dropped_at_start;
    int seen = 0;
    bool done = false;
    while (!done) {
        ring->consume([&](const void* data, uint32_t size) {
            if (done || size < sizeof(liveio_slow_io)) return;
            liveio_slow_io ev;
            std::memcpy(&ev, data, sizeof ev);
            std::fputs(format_slow_event(ev, start).c_str(), stdout);
            if (max_events > 0 && ++seen >= max_events) done = true;
        });
        std::fflush(stdout);
        if (ring->dropped() != dropped_reported) {
            dropped_reported = ring->dropped();
            std::fprintf(stderr, "liveio: %" PRIu64 " events dropped so far (ring buffer full)\n",
                         dropped_reported - dropped_at_start);
        }
        if (done || signals.wait(0.1)) break;
        if (limit > 0 && observe::monotonic_ns() - start >= static_cast<uint64_t>(limit * 1e9))
            break;
        if (!s->alive()) {
            s->close();
            observe_fail(fmt::format("process {} ({}) exited", pid, s->comm()));
        }
    }
    std::fprintf(stderr, "liveio: %d events shown, %" PRIu64 " dropped\n", seen,
                 ring->dropped() - dropped_at_start);
    if (!io.loaded_here && threshold_us >= 0 && s->alive())
        threshold.set(old_threshold);  // others' instance
    s->close();
}

// ---- maps / load / unload ----

std::string hex(const void* data, size_t size) {
    std::string out;
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < size; ++i) out += fmt::format("{}{:02x}", i ? " " : "", p[i]);
    return out;
}

std::string stats_line(const observe::Counters& c) {
    const observe::Rates r = observe::rates(c, 0);
    return fmt::format("calls {} errors {} bytes {} p50 {} p99 {} mean {}", c.calls, c.errors,
                       c.bytes, observe::format_latency(r.p50_ns),
                       observe::format_latency(r.p99_ns), observe::format_latency(r.mean_ns));
}

void dump_map(const observe::LiveMap& lm, size_t max_entries) {
    const auto& i = lm.info;
    ebpf::Map& map = *lm.map;
    std::printf("  map %s: %s, key %u B, value %u B, max_entries %u\n", i.name.c_str(),
                i.type.c_str(), i.key_size, i.value_size, i.max_entries);
    if (auto* ring = dynamic_cast<ebpf::RingBuffer*>(&map)) {
        std::printf("    %" PRIu64 " bytes unread of %" PRIu64 ", %" PRIu64 " records dropped\n",
                    ring->query(0), ring->query(1), ring->dropped());
        return;
    }
    if (auto* perf = dynamic_cast<ebpf::PerfEventArray*>(&map)) {
        std::printf("    %" PRIu64 " samples lost\n", perf->lost());
        return;
    }
    if (map.spec().type == ebpf::MapType::ProgArray) {
        std::printf("    (program array: slots hold program ids)\n");
    }
    const bool io_stats_layout = map.spec().value_size == sizeof(liveio_io_stats) &&
                                 !ebpf::is_percpu(map.spec().type) &&
                                 (map.spec().key_size == 4 || map.spec().key_size == 8);
    const size_t value_bytes = ebpf::user_value_size(map.spec());
    std::vector<uint8_t> key(map.spec().key_size), next(map.spec().key_size), value(value_bytes);
    size_t shown = 0, total = 0;
    const void* prev = nullptr;
    while (map.next_key(prev, next.data()) == 0) {
        key = next;
        prev = key.data();
        if (map.copy_value(key.data(), value.data()) != 0) continue;
        if (io_stats_layout) {
            liveio_io_stats raw;
            std::memcpy(&raw, value.data(), sizeof raw);
            if (raw.calls == 0) continue;  // array slots never used
            ++total;
            if (shown >= max_entries) continue;
            ++shown;
            uint64_t k = 0;
            std::memcpy(&k, key.data(), key.size());
            std::string name =
                i.name == "syscall_stats" ? observe::syscall_name(static_cast<uint32_t>(k))
                : i.name == "class_stats" ? observe::class_label(static_cast<uint32_t>(k / 3),
                                                                 static_cast<uint32_t>(k % 3))
                                          : fmt::format("0x{:x}", k);
            std::printf("    %-30s %s\n", name.c_str(),
                        stats_line(observe::Counters::from(raw)).c_str());
            continue;
        }
        ++total;
        if (shown >= max_entries) continue;
        ++shown;
        std::printf("    key %s: %s\n", hex(key.data(), key.size()).c_str(),
                    hex(value.data(), value.size()).c_str());
    }
    if (total > shown) std::printf("    ... %zu more (--max-entries)\n", total - shown);
    if (total == 0) std::printf("    (empty)\n");
}

void print_object(const observe::ObjectInfo& o) {
    std::printf("object %" PRIu64 ": %s\n", o.id, o.name.c_str());
    for (const auto& p : o.programs) {
        std::string runs;
        if (p.runs) runs = fmt::format(", {} runs", *p.runs);
        if (p.runs && p.run_ns && *p.runs)
            runs += fmt::format(", {:.0f} ns/run", static_cast<double>(*p.run_ns) / *p.runs);
        std::printf("  program %s (%s) -> %s [%s, %" PRIu64 " insns%s]\n", p.name.c_str(),
                    p.section.c_str(), p.attach.c_str(), p.engine.c_str(), p.insns, runs.c_str());
    }
}

void cmd_maps(pid_t pid, const ObserveArgs& args, uint64_t only, size_t max_entries) {
    auto s = TargetSession::open(pid, args);
    const auto objects =
        s->check(s->bpf().list(), fmt::format("listing the BPF objects of {}", pid));
    bool any = false;
    for (const auto& o : objects) {
        if (only && o.id != only) continue;
        any = true;
        print_object(o);
        const auto maps = s->check(s->bpf().maps(o.id),
                                   fmt::format("mapping the maps of object {} in {}", o.id, pid));
        for (const auto& m : maps) dump_map(m, max_entries);
    }
    s->close();
    if (only && !any)
        observe_fail(fmt::format("no BPF object {} in {} (see `liveio maps {}`)", only, pid, pid));
    if (!any) std::printf("no BPF objects loaded in %d\n", pid);
}

void cmd_load(pid_t pid, const ObserveArgs& args, const std::string& file,
              const std::vector<std::string>& programs) {
    auto path = observe::resolve_object_path(file);
    if (!path) observe_fail(path.error().message);
    auto s = TargetSession::open(pid, args);
    const observe::ObjectInfo o = s->load(*path, programs);
    // A loaded object is what the user asked for: it stays, and so does the agent running it.
    s->keep();
    print_object(o);
    for (const auto& m : o.maps)
        std::printf("  map %s: %s, key %u B, value %u B, max_entries %u\n", m.name.c_str(),
                    m.type.c_str(), m.key_size, m.value_size, m.max_entries);
    std::fprintf(
        stderr,
        "liveio: object %" PRIu64 " stays loaded: `liveio unload %d %" PRIu64 "` removes it%s\n",
        o.id, pid, o.id,
        s->attached_here() ? fmt::format(", `liveio detach {}` the agent", pid).c_str() : "");
}

void cmd_unload(pid_t pid, const ObserveArgs& args, uint64_t object) {
    auto s = TargetSession::open(pid, args, /*attach_if_needed=*/false);
    s->check(s->bpf().unload(object), fmt::format("unloading object {} from {}", object, pid));
    std::printf("unloaded object %" PRIu64 " from %d\n", object, pid);
}

void add_pid(CLI::App* cmd, pid_t& pid) {
    cmd->add_option("pid", pid, "process id")->required()->check(CLI::PositiveNumber);
}

}  // namespace

void add_observe_commands(CLI::App& app) {
    {
        auto* cmd = app.add_subcommand("top",
                                       "Live view of a process's I/O: rates, bytes, p50/p99 "
                                       "latency per syscall and file class");
        auto pid = std::make_shared<pid_t>(0);
        auto args = std::make_shared<ObserveArgs>();
        auto interval = std::make_shared<std::string>("1s");
        auto rows = std::make_shared<size_t>(20);
        auto count = std::make_shared<int>(0);
        add_pid(cmd, *pid);
        cmd->add_option("--interval,-i", *interval, "refresh interval (1s, 500ms, ...)")
            ->capture_default_str();
        cmd->add_option("--rows", *rows, "rows per table (0: all)")->capture_default_str();
        cmd->add_option("--count,-n", *count,
                        "stop after this many refreshes (0: until q or Ctrl-C)");
        args->add_to(cmd);
        cmd->callback([=] { cmd_top(*pid, *args, *interval, *rows, *count); });
    }
    {
        auto* cmd =
            app.add_subcommand("stats", "I/O counts of a process (or rates over --duration)");
        auto pid = std::make_shared<pid_t>(0);
        auto args = std::make_shared<ObserveArgs>();
        auto as_json = std::make_shared<bool>(false);
        auto duration = std::make_shared<std::string>();
        auto sink = std::make_shared<std::string>();
        add_pid(cmd, *pid);
        cmd->add_flag("--json", *as_json, "print JSON");
        cmd->add_option("--duration,-d", *duration,
                        "measure over this long (e.g. 5s) and report rates");
        cmd->add_option("--sink", *sink,
                        "also insert the rows into clickhouse://HOST:PORT/db.table");
        args->add_to(cmd);
        cmd->callback([=] { cmd_stats(*pid, *args, *as_json, *duration, *sink); });
    }
    {
        auto* cmd = app.add_subcommand(
            "hist", "Log2 latency histograms of a process's syscalls (like bpftrace)");
        auto pid = std::make_shared<pid_t>(0);
        auto args = std::make_shared<ObserveArgs>();
        auto syscall = std::make_shared<std::string>();
        auto duration = std::make_shared<std::string>();
        add_pid(cmd, *pid);
        cmd->add_option("--syscall,-s", *syscall, "only this syscall (e.g. pread64)");
        cmd->add_option("--duration,-d", *duration, "count over this long instead of since load");
        args->add_to(cmd);
        cmd->callback([=] { cmd_hist(*pid, *args, *syscall, *duration); });
    }
    {
        auto* cmd = app.add_subcommand(
            "trace", "Stream a process's slow I/O calls (io_stats' slow_events ring buffer)");
        auto pid = std::make_shared<pid_t>(0);
        auto args = std::make_shared<ObserveArgs>();
        auto threshold = std::make_shared<int64_t>(-1);
        auto duration = std::make_shared<std::string>();
        auto max_events = std::make_shared<int>(0);
        add_pid(cmd, *pid);
        cmd->add_option("--threshold-us,-t", *threshold,
                        "report calls at least this slow (default: the program's, 10 ms)")
            ->check(CLI::NonNegativeNumber);
        cmd->add_option("--duration,-d", *duration, "stop after this long");
        cmd->add_option("--count,-n", *max_events, "stop after this many events");
        args->add_to(cmd);
        cmd->callback([=] { cmd_trace(*pid, *args, *threshold, *duration, *max_events); });
    }
    {
        auto* cmd =
            app.add_subcommand("maps", "Dump the maps of the BPF objects loaded in a process");
        auto pid = std::make_shared<pid_t>(0);
        auto args = std::make_shared<ObserveArgs>();
        auto object = std::make_shared<uint64_t>(0);
        auto max_entries = std::make_shared<size_t>(64);
        add_pid(cmd, *pid);
        cmd->add_option("object", *object, "only this object id");
        cmd->add_option("--max-entries", *max_entries, "entries shown per map")
            ->capture_default_str();
        args->add_to(cmd);
        cmd->callback([=] { cmd_maps(*pid, *args, *object, *max_entries); });
    }
    {
        auto* cmd = app.add_subcommand(
            "load", "Load a BPF object into a process (it stays until `liveio unload`)");
        auto pid = std::make_shared<pid_t>(0);
        auto args = std::make_shared<ObserveArgs>();
        auto file = std::make_shared<std::string>();
        auto programs = std::make_shared<std::vector<std::string>>();
        add_pid(cmd, *pid);
        cmd->add_option("file", *file,
                        "FILE.bpf.o, or the name of a built-in object (io_stats, syscount)")
            ->required();
        cmd->add_option("--engine,-e", args->engine, "jit or interp")
            ->check(CLI::IsMember({"jit", "interp"}))
            ->capture_default_str();
        cmd->add_option("--program,-p", *programs,
                        "load only these programs (default: all attachable)")
            ->delimiter(',');
        args->add_to(cmd);
        cmd->callback([=] { cmd_load(*pid, *args, *file, *programs); });
    }
    {
        auto* cmd = app.add_subcommand("unload", "Unload a BPF object from a process");
        auto pid = std::make_shared<pid_t>(0);
        auto args = std::make_shared<ObserveArgs>();
        auto object = std::make_shared<uint64_t>(0);
        add_pid(cmd, *pid);
        cmd->add_option("object", *object, "object id (from `liveio load` or `liveio maps`)")
            ->required();
        cmd->callback([=] { cmd_unload(*pid, *args, *object); });
    }
}

}  // namespace liveio::cli
