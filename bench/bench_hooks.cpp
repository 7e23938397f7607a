// `liveio bench hooks`: the added cost per intercepted call of each interception mechanism,
// against the same call unintercepted and against the kernel's own observation points
// (syscall tracepoint and uprobe with a counting BPF program, ptrace).
//
// The call is read(fd, buf, 0) on a memfd: a real syscall that does almost nothing, so the
// difference to the plain call is the interception itself.
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <bpf/bpf.h>
#include <fmt/format.h>

#include "bench.h"
#include "hook/dispatch.h"
#include "hook/interceptor.h"
#include "inject/inject.h"
#include "kernel_probe.h"

namespace liveio::bench {
namespace {

using namespace liveio::hook;

class NoWorkHandler : public CallHandler {
public:
    bool on_enter(CallFrame&) override { return false; }
    void on_exit(CallFrame&) override {}
    bool wants_start_time() const override { return false; }
};

class CountingHandler : public CallHandler {
public:
    std::atomic<uint64_t> count{0};
    bool on_enter(CallFrame&) override {
        count.fetch_add(1, std::memory_order_relaxed);
        return false;
    }
    void on_exit(CallFrame&) override {}
    bool wants_start_time() const override { return false; }
};

// The thread's CPU time: on this shared 2-core machine wall time mostly measured preemption.
double thread_cpu_ns() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

// Counts and answers the call itself (result 0), so no system call is made: what remains is
// the interception path alone, measurable where a real system call's run-to-run variation
// can exceed what the hook costs.
class TakingHandler : public CallHandler {
public:
    std::atomic<uint64_t> count{0};
    bool on_enter(CallFrame& frame) override {
        count.fetch_add(1, std::memory_order_relaxed);
        frame.result = 0;
        return true;
    }
    void on_exit(CallFrame&) override {}
    bool wants_start_time() const override { return false; }
};

// The baseline of the taken rows: a call that does nothing, not inlined.
__attribute__((noinline)) ssize_t empty_call(int fd, char* buf) {
    asm volatile("" : : "r"(fd), "r"(buf) : "memory");
    return 0;
}

// The measured call; noinline so a uprobe has a function to attach to and each iteration
// really calls read through the PLT/GOT of this binary.
__attribute__((noinline)) ssize_t measured_call(int fd, char* buf) { return ::read(fd, buf, 0); }

// Best of `rounds` rounds of `iterations` calls of `call` (measured_call unless said
// otherwise), in thread CPU ns per call.
double ns_per_call(int fd, int iterations, int rounds = 5,
                   ssize_t (*call)(int, char*) = measured_call) {
    char buf[1];
    double best = 1e30;
    for (int round = 0; round < rounds; ++round) {
        const double t0 = thread_cpu_ns();
        for (int i = 0; i < iterations; ++i) call(fd, buf);
        best = std::min(best, (thread_cpu_ns() - t0) / iterations);
    }
    return best;
}

struct Row {
    std::string name;
    std::optional<double> ns;
    std::string note;
    double plain = 0;  // the plain call measured right before and after this row (best)
};

std::optional<double> with_interceptor(Mechanism m, CallHandler* h, int fd, int iterations,
                                       std::string& note) {
    InterceptOptions o;
    o.mechanism = m;
    o.functions = {"read"};
    if (m == Mechanism::Got) o.objects = {kMainProgram};
    // Installed and removed per round, so the rounds interleave with the plain ones around.
    double best = 1e30;
    for (int round = 0; round < 5; ++round) {
        auto icpt = Interceptor::install(o, h);
        if (!icpt) {
            note = icpt.error().message;
            return std::nullopt;
        }
        best = std::min(best, ns_per_call(fd, iterations, 1));
        if ((*icpt)->calls_dispatched() == 0) note = "hook saw no calls";
        (void)(*icpt)->uninstall();
    }
    return best;
}

// Syscall rewriting maps its trampoline at address 0, which needs vm.mmap_min_addr=0: lowered
// for the rewrite rows when root and put back after; otherwise those rows give the reason.
class MmapMinAddrZero {
public:
    MmapMinAddrZero() {
        std::ifstream in(kPath);
        in >> old_;
        if (old_ > 0 && geteuid() == 0) {
            std::ofstream out(kPath);
            out << 0 << '\n';
            changed_ = static_cast<bool>(out.flush());
        }
    }
    ~MmapMinAddrZero() {
        if (!changed_) return;
        std::ofstream out(kPath);
        out << old_ << '\n';
    }
    MmapMinAddrZero(const MmapMinAddrZero&) = delete;
    MmapMinAddrZero& operator=(const MmapMinAddrZero&) = delete;

private:
    static constexpr const char* kPath = "/proc/sys/vm/mmap_min_addr";
    long old_ = -1;
    bool changed_ = false;
};

// Attaches a counting program to a perf event (here: a uprobe) and measures.
std::optional<double> with_kernel_probe(perf_event_attr attr, bpf_prog_type type, int fd,
                                        int iterations, std::string& note) {
    CountingProgram prog(type);
    if (!prog.error.empty()) {
        note = prog.error;
        return std::nullopt;
    }
    const int pfd =
        static_cast<int>(syscall(SYS_perf_event_open, &attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC));
    std::optional<double> ns;
    if (pfd < 0) {
        note = fmt::format("perf_event_open: {}", strerror(errno));
    } else if (ioctl(pfd, PERF_EVENT_IOC_SET_BPF, prog.prog_fd) != 0 ||
               ioctl(pfd, PERF_EVENT_IOC_ENABLE, 0) != 0) {
        note = fmt::format("attaching BPF: {}", strerror(errno));
    } else {
        ns = ns_per_call(fd, iterations);
        if (prog.count() == 0) note = "program counted nothing";
    }
    if (pfd >= 0) close(pfd);
    return ns;
}

// The raw_syscalls:sys_enter tracepoint via BPF_RAW_TRACEPOINT_OPEN (needs no tracefs).
std::optional<double> kernel_tracepoint(int fd, int iterations, std::string& note) {
    CountingProgram prog(BPF_PROG_TYPE_RAW_TRACEPOINT);
    auto link = attach_raw_tracepoint(prog, "sys_enter");
    if (!link) {
        note = link.error().message;
        return std::nullopt;
    }
    const double ns = ns_per_call(fd, iterations);
    if (prog.count() == 0) note = "program counted nothing";
    close(*link);
    return ns;
}

std::optional<double> kernel_uprobe(int fd, int iterations, std::string& note) {
    std::ifstream type_file("/sys/bus/event_source/devices/uprobe/type");
    uint32_t type = 0;
    if (!(type_file >> type)) {
        note = "no uprobe PMU";
        return std::nullopt;
    }
    // The file offset of measured_call: in the first text mapping, address - start + offset.
    const auto addr = reinterpret_cast<uintptr_t>(&measured_call);
    std::ifstream maps("/proc/self/maps");
    std::string line;
    std::string path;
    uint64_t offset = 0;
    while (std::getline(maps, line)) {
        unsigned long lo, hi, off;
        char perms[5], file[512] = {};
        if (sscanf(line.c_str(), "%lx-%lx %4s %lx %*s %*s %511s", &lo, &hi, perms, &off, file) >=
                4 &&
            addr >= lo && addr < hi) {
            path = file;
            offset = addr - lo + off;
            break;
        }
    }
    if (path.empty()) {
        note = "measured function not in a file mapping";
        return std::nullopt;
    }
    perf_event_attr attr{};
    attr.type = type;
    attr.size = sizeof attr;
    attr.config1 = reinterpret_cast<uint64_t>(path.c_str());
    attr.config2 = offset;
    attr.sample_period = 1;
    return with_kernel_probe(attr, BPF_PROG_TYPE_KPROBE, fd, iterations, note);
}

// A child makes `iterations` calls while this process stops it at each syscall entry and
// exit (PTRACE_SYSCALL), as strace does; the child reports its own per-call time.
std::optional<double> under_ptrace(int iterations, std::string& note) {
    int pipefd[2];
    if (pipe(pipefd) != 0) return std::nullopt;
    const pid_t child = fork();
    if (child == 0) {
        close(pipefd[0]);
        ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
        raise(SIGSTOP);
        const int fd = memfd_create("liveio-bench", 0);
        char buf[1];
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iterations; ++i) measured_call(fd, buf);
        const double ns =
            std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0)
                .count() /
            iterations;
        (void)!write(pipefd[1], &ns, sizeof ns);
        _exit(0);
    }
    close(pipefd[1]);
    int status;
    if (waitpid(child, &status, 0) != child || !WIFSTOPPED(status)) {
        note = "ptrace not permitted";
        close(pipefd[0]);
        return std::nullopt;
    }
    ptrace(PTRACE_SETOPTIONS, child, nullptr, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL);
    ptrace(PTRACE_SYSCALL, child, nullptr, nullptr);
    while (waitpid(child, &status, 0) == child && !WIFEXITED(status) && !WIFSIGNALED(status))
        ptrace(PTRACE_SYSCALL, child, nullptr, nullptr);
    double ns = 0;
    const bool got = read(pipefd[0], &ns, sizeof ns) == sizeof ns;
    close(pipefd[0]);
    if (!got) return std::nullopt;
    note = "wall time in the traced child (its stops are not its CPU time)";
    return ns;
}

// Attach pause: a 32-thread process (31 threads alternating bursts of 4 KiB preads from a
// memfd with short sleeps, the main thread blocked in read() on a pipe) gets a small library
// injected and unloaded `rounds` times; the pause is first thread stopped -> last resumed.
struct AttachPause {
    std::vector<double> attach_ms, detach_ms, stop_ms, call_ms, resume_ms;
    int max_attempts = 0;
    std::string note;
};

// A small system library this process (hence the forked target) has not loaded, so each
// attach is a real dlopen: glibc's compatibility stubs are a few KiB.
std::string default_attach_library() {
    std::ifstream maps("/proc/self/maps");
    std::string mapped((std::istreambuf_iterator<char>(maps)), std::istreambuf_iterator<char>());
    for (const char* name :
         {"libanl.so.1", "libutil.so.1", "libdl.so.2", "librt.so.1", "libpthread.so.0"})
        for (const char* dir : {"/lib/x86_64-linux-gnu/", "/usr/lib/x86_64-linux-gnu/", "/lib64/"})
            if (mapped.find(std::string("/") + name) == std::string::npos &&
                access((std::string(dir) + name).c_str(), R_OK) == 0)
                return std::string(dir) + name;
    return {};
}

AttachPause measure_attach_pause(int threads, int rounds, std::string library) {
    AttachPause out;
    if (library.empty()) library = default_attach_library();
    if (library.empty()) {
        out.note = "no library to inject (use --attach-lib)";
        return out;
    }
    int control[2];
    if (pipe(control) != 0) {
        out.note = fmt::format("pipe: {}", strerror(errno));
        return out;
    }
    pid_t child = fork();
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(control[1]);
        for (int i = 1; i < threads; ++i)
            std::thread([] {
                char block[4096] = {};
                int fd = memfd_create("liveio-bench-attach", MFD_CLOEXEC);
                (void)!::pwrite(fd, block, sizeof block, 0);
                for (;;) {
                    for (int k = 0; k < 100; ++k) (void)!::pread(fd, block, sizeof block, 0);
                    usleep(200);
                }
            }).detach();
        char b;
        (void)!::read(control[0], &b, 1);  // blocks until the bench closes the pipe
        _exit(0);
    }
    close(control[0]);
    // Let every thread start; the count is checked through /proc.
    auto thread_count = [&] {
        std::ifstream status(fmt::format("/proc/{}/status", child));
        for (std::string line; std::getline(status, line);)
            if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
        return 0;
    };
    while (thread_count() < threads) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    for (int i = 0; i < rounds; ++i) {
        inject::InjectStats st;
        auto lib = inject::inject_library(child, library, &st);
        if (!lib) {
            out.note = lib.error().message;
            break;
        }
        out.attach_ms.push_back(st.pause_ms);
        out.stop_ms.push_back(st.stop_ms);
        out.call_ms.push_back(st.call_ms);
        // What is left of the pause: saving/restoring the caller's state and detaching all.
        out.resume_ms.push_back(st.pause_ms - st.stop_ms - st.call_ms);
        out.max_attempts = std::max(out.max_attempts, st.attempts);
        if (auto r = inject::unload_library(*lib, &st); !r) {
            out.note = r.error().message;
            break;
        }
        out.detach_ms.push_back(st.pause_ms);
    }
    close(control[1]);
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    if (out.note.empty())
        out.note = fmt::format("{} threads, {} x dlopen/dlclose of {}, max {} stop(s) per attach",
                               threads, rounds, library, out.max_attempts);
    return out;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

void run(int iterations, int attach_rounds, const std::string& attach_lib) {
    const int fd = memfd_create("liveio-bench-hooks", MFD_CLOEXEC);
    const double plain = ns_per_call(fd, iterations);
    std::vector<Row> rows;
    rows.push_back({"plain read(fd, buf, 0)", plain, "", plain});
    // Each row is compared with the plain call measured just before and after it: the
    // machine's speed drifts over the minutes the table takes. Returns the added ns.
    auto add = [&](std::string name, auto measure) -> std::optional<double> {
        Row r{std::move(name), std::nullopt, "", 0};
        const double before = ns_per_call(fd, iterations);
        r.ns = measure(r.note);
        r.plain = std::min(before, ns_per_call(fd, iterations));
        rows.push_back(std::move(r));
        const Row& back = rows.back();
        if (!back.ns) return std::nullopt;
        return *back.ns - back.plain;
    };
    NoWorkHandler none;
    CountingHandler counting;
    TakingHandler taking;
    add("GOT, no handler work",
        [&](std::string& n) { return with_interceptor(Mechanism::Got, &none, fd, iterations, n); });
    auto got = add("GOT, counting handler", [&](std::string& n) {
        return with_interceptor(Mechanism::Got, &counting, fd, iterations, n);
    });
    add("inline, no handler work", [&](std::string& n) {
        return with_interceptor(Mechanism::Inline, &none, fd, iterations, n);
    });
    auto inl = add("inline, counting handler", [&](std::string& n) {
        return with_interceptor(Mechanism::Inline, &counting, fd, iterations, n);
    });
    std::optional<double> rw;
    {
        MmapMinAddrZero min_addr;
        add("syscall rewrite, no handler work", [&](std::string& n) {
            return with_interceptor(Mechanism::SyscallRewrite, &none, fd, iterations, n);
        });
        rw = add("syscall rewrite, counting handler", [&](std::string& n) {
            return with_interceptor(Mechanism::SyscallRewrite, &counting, fd, iterations, n);
        });
    }
    // The interception path alone: the handler counts and answers, no kernel entry; compared
    // with an empty function call.
    struct Taken {
        const char* name;
        Mechanism mechanism;
        std::optional<double> ns;
        std::string note;
    };
    std::vector<Taken> taken = {{"GOT", Mechanism::Got, {}, ""},
                                {"inline", Mechanism::Inline, {}, ""},
                                {"syscall rewrite", Mechanism::SyscallRewrite, {}, ""}};
    double empty = 1e30;
    {
        MmapMinAddrZero min_addr;
        for (int round = 0; round < 3; ++round)
            for (Taken& t : taken) {
                empty = std::min(empty, ns_per_call(fd, iterations, 5, empty_call));
                if (auto ns = with_interceptor(t.mechanism, &taking, fd, iterations, t.note))
                    t.ns = std::min(ns.value(), t.ns.value_or(1e30));
            }
    }
    const bool root = geteuid() == 0;
    std::optional<double> tp;
    if (root) {
        tp = add("kernel tracepoint sys_enter + BPF count",
                 [&](std::string& n) { return kernel_tracepoint(fd, iterations, n); });
        add("kernel uprobe + BPF count",
            [&](std::string& n) { return kernel_uprobe(fd, iterations, n); });
    } else {
        rows.push_back({"kernel tracepoint / uprobe", std::nullopt, "needs root"});
    }
    add("ptrace (PTRACE_SYSCALL stops)",
        [&](std::string& n) { return under_ptrace(std::min(iterations, 20000), n); });
    close(fd);

    fmt::print(
        "per call, thread CPU time, best of 5 rounds; plain = the unhooked call measured around "
        "each row\n");
    fmt::print("{:<42} {:>12} {:>12} {:>12}  {}\n", "mechanism", "ns/call", "plain ns", "added ns",
               "note");
    for (auto& r : rows) {
        if (r.ns)
            fmt::print("{:<42} {:>12.1f} {:>12.1f} {:>12.1f}  {}\n", r.name, *r.ns, r.plain,
                       *r.ns - r.plain, r.note);
        else
            fmt::print("{:<42} {:>12} {:>12} {:>12}  {}\n", r.name, "-", "-", "-", r.note);
    }
    fmt::print(
        "\nthe interception path alone: handler counts and answers the call (no kernel entry)\n");
    fmt::print("{:<42} {:>12} {:>12} {:>12}  {}\n", "mechanism", "ns/call", "empty call",
               "added ns", "note");
    for (const Taken& t : taken) {
        if (t.ns)
            fmt::print("{:<42} {:>12.1f} {:>12.1f} {:>12.1f}  {}\n",
                       fmt::format("{}, handler takes the call", t.name), *t.ns, empty,
                       *t.ns - empty, t.note);
        else
            fmt::print("{:<42} {:>12} {:>12} {:>12}  {}\n",
                       fmt::format("{}, handler takes the call", t.name), "-", "-", "-", t.note);
    }
    auto metric = [&](const char* name, std::optional<double> v) {
        if (v)
            fmt::print("metric: {} {:.1f}\n", name, *v);
        else
            fmt::print("metric: {} unavailable\n", name);
    };
    auto pause = measure_attach_pause(32, attach_rounds, attach_lib);
    fmt::print("\n{:<42} {:>10} {:>10} {:>10}  {}\n", "ptrace injection pause (32 threads)",
               "median ms", "min ms", "max ms", "note");
    for (auto [name, v] : {std::pair{"attach: stop all, dlopen, resume", &pause.attach_ms},
                           {"  of which: stopping all threads", &pause.stop_ms},
                           {"  of which: dlopen call in the target", &pause.call_ms},
                           {"  of which: restoring, resuming all", &pause.resume_ms},
                           {"detach: stop all, dlclose, resume", &pause.detach_ms}}) {
        const std::string note = v == &pause.attach_ms ? pause.note : "";
        if (v->empty())
            fmt::print("{:<42} {:>10} {:>10} {:>10}  {}\n", name, "-", "-", "-", note);
        else
            fmt::print("{:<42} {:>10.2f} {:>10.2f} {:>10.2f}  {}\n", name, median(*v),
                       *std::min_element(v->begin(), v->end()),
                       *std::max_element(v->begin(), v->end()), note);
    }
    // Headline hook costs: the interception path alone (the pass-through rows add the same
    // path to a real system call, whose run-to-run variation can exceed it).
    auto path_cost = [&](size_t i) -> std::optional<double> {
        if (!taken[i].ns) return std::nullopt;
        return *taken[i].ns - empty;
    };
    metric("got_hook_ns", path_cost(0));
    metric("inline_hook_ns", path_cost(1));
    metric("rewrite_hook_ns", path_cost(2));
    metric("got_hook_passthrough_ns", got);
    metric("inline_hook_passthrough_ns", inl);
    metric("rewrite_hook_passthrough_ns", rw);
    metric("kernel_tracepoint_ns", tp);
    if (pause.attach_ms.empty())
        fmt::print("metric: attach_pause_ms unavailable\n");
    else
        fmt::print("metric: attach_pause_ms {:.2f}\n", median(pause.attach_ms));
}

}  // namespace

void add_hooks_bench(CLI::App& bench) {
    auto* cmd = bench.add_subcommand("hooks",
                                     "Added cost per intercepted call: GOT, inline, "
                                     "syscall rewrite vs kernel tracepoint/uprobe/ptrace");
    static int iterations = 1000000;
    cmd->add_option("--iterations", iterations, "calls per measurement")
        ->check(CLI::Range(1000, 100000000));
    static int attach_rounds = 21;
    static std::string attach_lib;
    cmd->add_option("--attach-rounds", attach_rounds,
                    "injections into the 32-thread process (median reported)")
        ->check(CLI::Range(1, 10000));
    cmd->add_option("--attach-lib", attach_lib,
                    "library to inject (default: a small system library not yet loaded)");
    cmd->callback([] { run(iterations, attach_rounds, attach_lib); });
}

}  // namespace liveio::bench
