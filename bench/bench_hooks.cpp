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
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <bpf/bpf.h>
#include <fmt/format.h>

#include "bench.h"
#include "hook/dispatch.h"
#include "hook/interceptor.h"

namespace liveio::bench {
namespace {

using namespace liveio::hook;

class NoWorkHandler : public CallHandler {
public:
    bool on_enter(SyscallCall&, SyscallResult&) override { return false; }
    void on_exit(const SyscallCall&, SyscallResult, uint64_t) override {}
    bool wants_start_time() const override { return false; }
};

class CountingHandler : public CallHandler {
public:
    std::atomic<uint64_t> count{0};
    bool on_enter(SyscallCall&, SyscallResult&) override {
        count.fetch_add(1, std::memory_order_relaxed);
        return false;
    }
    void on_exit(const SyscallCall&, SyscallResult, uint64_t) override {}
    bool wants_start_time() const override { return false; }
};

// The measured call; noinline so a uprobe has a function to attach to and each iteration
// really calls read through the PLT/GOT of this binary.
__attribute__((noinline)) ssize_t measured_call(int fd, char* buf) { return ::read(fd, buf, 0); }

double ns_per_call(int fd, int iterations) {
    char buf[1];
    double best = 1e30;
    for (int round = 0; round < 5; ++round) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iterations; ++i) measured_call(fd, buf);
        const auto t1 = std::chrono::steady_clock::now();
        best = std::min(best, std::chrono::duration<double, std::nano>(t1 - t0).count() / iterations);
    }
    return best;
}

struct Row {
    std::string name;
    std::optional<double> ns;
    std::string note;
};

std::optional<double> with_interceptor(Mechanism m, CallHandler* h, int fd, int iterations,
                                       std::string& note) {
    InterceptOptions o;
    o.mechanism = m;
    o.functions = {"read"};
    if (m == Mechanism::Got) o.objects = {kMainProgram};
    auto icpt = Interceptor::install(o, h);
    if (!icpt) {
        note = icpt.error().message;
        return std::nullopt;
    }
    const double ns = ns_per_call(fd, iterations);
    if ((*icpt)->calls_dispatched() == 0) note = "hook saw no calls";
    (void)(*icpt)->uninstall();
    return ns;
}

// A counting BPF program: if (pid == ours) counter[0]++ (for tracepoint and uprobe alike).
Result<int> load_counting_program(bpf_prog_type type, int map_fd, uint32_t tgid) {
    const bpf_insn insns[] = {
        {BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_current_pid_tgid},
        {BPF_ALU64 | BPF_RSH | BPF_K, BPF_REG_0, 0, 0, 32},
        {BPF_JMP | BPF_JNE | BPF_K, BPF_REG_0, 0, 9, static_cast<int32_t>(tgid)},
        {BPF_ST | BPF_MEM | BPF_W, BPF_REG_10, 0, -4, 0},
        {BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0},
        {BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -4},
        {BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map_fd},
        {0, 0, 0, 0, 0},
        {BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem},
        {BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 2, 0},
        {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, 1},
        {BPF_STX | BPF_ATOMIC | BPF_DW, BPF_REG_0, BPF_REG_1, 0, BPF_ADD},
        {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0},
        {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
    };
    const int fd = bpf_prog_load(type, "liveio_count", "GPL", insns, std::size(insns), nullptr);
    if (fd < 0) return make_error(-fd, fmt::format("bpf_prog_load: {}", strerror(-fd)));
    return fd;
}

// A counting program and its one-element array map, owned together.
struct CountingProgram {
    int map_fd = -1;
    int prog_fd = -1;
    std::string error;
    explicit CountingProgram(bpf_prog_type type) {
        map_fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "liveio_count", 4, 8, 1, nullptr);
        if (map_fd < 0) {
            error = fmt::format("bpf_map_create: {}", strerror(-map_fd));
            return;
        }
        auto prog = load_counting_program(type, map_fd, static_cast<uint32_t>(getpid()));
        if (!prog) error = prog.error().message;
        else prog_fd = *prog;
    }
    ~CountingProgram() {
        if (prog_fd >= 0) close(prog_fd);
        if (map_fd >= 0) close(map_fd);
    }
    uint64_t count() const {
        uint32_t key = 0;
        uint64_t value = 0;
        return bpf_map_lookup_elem(map_fd, &key, &value) == 0 ? value : 0;
    }
};

// Attaches a counting program to a perf event (here: a uprobe) and measures.
std::optional<double> with_kernel_probe(perf_event_attr attr, bpf_prog_type type, int fd,
                                        int iterations, std::string& note) {
    CountingProgram prog(type);
    if (!prog.error.empty()) {
        note = prog.error;
        return std::nullopt;
    }
    const int pfd = static_cast<int>(syscall(SYS_perf_event_open, &attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC));
    std::optional<double> ns;
    if (pfd < 0) {
        note = fmt::format("perf_event_open: {}", strerror(errno));
    } else if (ioctl(pfd, PERF_EVENT_IOC_SET_BPF, prog.prog_fd) != 0 || ioctl(pfd, PERF_EVENT_IOC_ENABLE, 0) != 0) {
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
    if (!prog.error.empty()) {
        note = prog.error;
        return std::nullopt;
    }
    const int link = bpf_raw_tracepoint_open("sys_enter", prog.prog_fd);
    if (link < 0) {
        note = fmt::format("bpf_raw_tracepoint_open: {}", strerror(-link));
        return std::nullopt;
    }
    const double ns = ns_per_call(fd, iterations);
    if (prog.count() == 0) note = "program counted nothing";
    close(link);
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
        if (sscanf(line.c_str(), "%lx-%lx %4s %lx %*s %*s %511s", &lo, &hi, perms, &off, file) >= 4 &&
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
        const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / iterations;
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
    return ns;
}

void run(int iterations) {
    const int fd = memfd_create("liveio-bench-hooks", MFD_CLOEXEC);
    const double plain = ns_per_call(fd, iterations);
    std::vector<Row> rows;
    rows.push_back({"plain read(fd, buf, 0)", plain, ""});
    auto add = [&](std::string name, auto measure) {
        Row r{std::move(name), std::nullopt, ""};
        r.ns = measure(r.note);
        rows.push_back(std::move(r));
        return rows.back().ns;
    };
    NoWorkHandler none;
    CountingHandler counting;
    add("GOT, no handler work", [&](std::string& n) { return with_interceptor(Mechanism::Got, &none, fd, iterations, n); });
    auto got = add("GOT, counting handler", [&](std::string& n) { return with_interceptor(Mechanism::Got, &counting, fd, iterations, n); });
    add("inline, no handler work", [&](std::string& n) { return with_interceptor(Mechanism::Inline, &none, fd, iterations, n); });
    auto inl = add("inline, counting handler", [&](std::string& n) { return with_interceptor(Mechanism::Inline, &counting, fd, iterations, n); });
    add("syscall rewrite, no handler work", [&](std::string& n) { return with_interceptor(Mechanism::SyscallRewrite, &none, fd, iterations, n); });
    auto rw = add("syscall rewrite, counting handler", [&](std::string& n) { return with_interceptor(Mechanism::SyscallRewrite, &counting, fd, iterations, n); });
    const bool root = geteuid() == 0;
    std::optional<double> tp;
    if (root) {
        tp = add("kernel tracepoint sys_enter + BPF count", [&](std::string& n) { return kernel_tracepoint(fd, iterations, n); });
        add("kernel uprobe + BPF count", [&](std::string& n) { return kernel_uprobe(fd, iterations, n); });
    } else {
        rows.push_back({"kernel tracepoint / uprobe", std::nullopt, "needs root"});
    }
    add("ptrace (PTRACE_SYSCALL stops)", [&](std::string& n) { return under_ptrace(std::min(iterations, 20000), n); });
    close(fd);

    fmt::print("{:<42} {:>12} {:>12}  {}\n", "mechanism", "ns/call", "added ns", "note");
    for (auto& r : rows) {
        if (r.ns)
            fmt::print("{:<42} {:>12.1f} {:>12.1f}  {}\n", r.name, *r.ns, *r.ns - plain, r.note);
        else
            fmt::print("{:<42} {:>12} {:>12}  {}\n", r.name, "-", "-", r.note);
    }
    auto metric = [&](const char* name, std::optional<double> v) {
        if (v) fmt::print("metric: {} {:.1f}\n", name, *v - plain);
        else fmt::print("metric: {} unavailable\n", name);
    };
    metric("got_hook_ns", got);
    metric("inline_hook_ns", inl);
    metric("rewrite_hook_ns", rw);
    metric("kernel_tracepoint_ns", tp);
}

}  // namespace

void add_hooks_bench(CLI::App& bench) {
    auto* cmd = bench.add_subcommand("hooks", "Added cost per intercepted call: GOT, inline, "
                                              "syscall rewrite vs kernel tracepoint/uprobe/ptrace");
    static int iterations = 1000000;
    cmd->add_option("--iterations", iterations, "calls per measurement")->check(CLI::Range(1000, 100000000));
    cmd->callback([] { run(iterations); });
}

}  // namespace liveio::bench
