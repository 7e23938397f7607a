// End-to-end program parity for a syscall tracepoint program (issue 5): bpf/syscount.bpf.c,
// written for the kernel's raw_syscalls tracepoints, counts the same calls and errors when
// the agent's BPF host runs it at GOT-hooked libc calls as when the kernel runs it at its
// tracepoints, for the same workload.
//
// Kernel: libbpf loads the object with .rodata target_tgid = a child process, attaches both
// programs to the kernel tracepoints, and the child runs the workload. liveio: this process
// runs the same workload with the host (both engines, one after the other) behind GOT hooks on
// this binary. (tests/ebpf/test_kernel_parity_syscount.cpp compares the programs alone, fed
// recorded calls; this one goes through interception and the host's context building.)
// Needs root and kernel BPF with tracepoints; skips with the reason otherwise.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <map>

#include <gtest/gtest.h>

#include "agent/bpf_host.h"
#include "ebpf/test_kernel_parity.h"
#include "hook/dispatcher.h"
#include "hook/interceptor.h"
#include "liveio/io_stats.h"
#include "tracefs.h"

namespace liveio::agent {
namespace {

namespace fs = std::filesystem;
using ebpf::parity::KernelObject;
using ebpf::parity::rodata;

// <build>/bpf/syscount.bpf.o, found from the CLI's location (<build>/src/cli/liveio).
std::string syscount_object() {
    return fs::path(LIVEIO_CLI_PATH).parent_path().parent_path().parent_path() / "bpf" /
           "syscount.bpf.o";
}

struct Counts {
    uint64_t calls = 0, errors = 0, hist_total = 0;
    bool operator==(const Counts&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Counts& c) {
    return os << "{calls " << c.calls << ", errors " << c.errors << ", histogram total "
              << c.hist_total << "}";
}

Counts counts_from(const liveio_io_stats& s) {
    Counts c{s.calls, s.errors, 0};
    for (uint64_t h : s.hist) c.hist_total += h;
    return c;
}

// What the workload did, per syscall; filled without making any call.
struct Tally {
    Counts pread, write, lseek;
    void note(Counts& c, bool failed) {
        c.calls++;
        c.hist_total++;
        c.errors += failed;
    }
};

// Through libc, i.e. this binary's PLT (what the GOT mechanism patches) — pread is the
// pread64 syscall, lseek is lseek. Some calls fail: writes to a read-only descriptor, preads
// on a closed one, lseeks with an invalid whence.
void workload(int fd, int ro_fd, Tally& t) {
    char buf[64] = {};
    for (int i = 0; i < 60; ++i) {
        t.note(t.write, ::write(i % 7 == 6 ? ro_fd : fd, buf, static_cast<size_t>(1 + i % 50)) < 0);
        // 500 + i: never open (liveio's own descriptors sit from base/high_fd.h's 1024 up).
        t.note(t.pread, ::pread(i % 9 == 8 ? 500 + i : fd, buf, sizeof buf,
                                i % 5 == 4 ? 1 << 20 : i * 3) < 0);
        if (i % 2 == 0) t.note(t.lseek, ::lseek(fd, i, i % 10 == 8 ? 77 : SEEK_SET) < 0);
    }
}

std::map<long, Counts> by_nr(const Tally& t) {
    return {{SYS_pread64, t.pread}, {SYS_write, t.write}, {SYS_lseek, t.lseek}};
}

struct LinkCloser {
    void operator()(bpf_link* l) const { bpf_link__destroy(l); }
};

class TempFile {
public:
    TempFile() {
        char path[] = "/tmp/liveio-parity-agent-XXXXXX";
        fd_ = ::mkstemp(path);
        if (fd_ >= 0) {
            ro_fd_ = ::open(path, O_RDONLY);
            ::unlink(path);
        }
    }
    ~TempFile() {
        if (fd_ >= 0) ::close(fd_);
        if (ro_fd_ >= 0) ::close(ro_fd_);
    }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
    int fd() const { return fd_; }
    int ro_fd() const { return ro_fd_; }

private:
    int fd_ = -1, ro_fd_ = -1;
};

// The workload run in a child at the kernel's tracepoints: the kernel's counts and the tally.
void run_in_kernel(std::map<long, Counts>& kernel, Tally& tally) {
    TempFile file;
    ASSERT_TRUE(file.fd() >= 0 && file.ro_fd() >= 0) << std::strerror(errno);
    void* shared =
        ::mmap(nullptr, sizeof(Tally), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(shared, MAP_FAILED);
    auto* child_tally = new (shared) Tally{};
    int go[2];
    ASSERT_EQ(::pipe(go), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0) << std::strerror(errno);
    if (child == 0) {
        ::close(go[1]);
        char c;
        if (::syscall(SYS_read, go[0], &c, 1) != 1) ::_exit(1);  // released when attached
        workload(file.fd(), file.ro_fd(), *child_tally);
        ::_exit(0);
    }
    ::close(go[0]);
    int status = -1;
    {
        // Releases (EOF or the go byte) and reaps the child on every path.
        struct Release {
            int go;
            pid_t pid;
            int& status;
            ~Release() {
                ::close(go);
                if (pid > 0) ::waitpid(pid, &status, 0);
            }
        } release{go[1], child, status};
        if (auto why = liveio::testing::ensure_tracefs(); !why.empty()) GTEST_SKIP() << why;
        auto obj = KernelObject::load(
            syscount_object(), {rodata<uint32_t>("target_tgid", static_cast<uint32_t>(child))});
        ASSERT_TRUE(obj.ok()) << obj.error().message;
        {
            std::vector<std::unique_ptr<bpf_link, LinkCloser>> links;
            for (const char* name : {"syscount_enter", "syscount_exit"}) {
                bpf_program* prog = bpf_object__find_program_by_name(obj.value().get(), name);
                ASSERT_NE(prog, nullptr) << name;
                links.emplace_back(bpf_program__attach(prog));
                if (!links.back())
                    GTEST_SKIP() << "cannot attach " << name
                                 << " to its kernel tracepoint: " << std::strerror(errno);
            }
            ASSERT_EQ(::write(go[1], "g", 1), 1);
            ::waitpid(child, &status, 0);
            release.pid = -1;
        }
        bpf_map* m = bpf_object__find_map_by_name(obj.value().get(), "syscalls");
        ASSERT_NE(m, nullptr);
        for (long nr : {SYS_pread64, SYS_write, SYS_lseek}) {
            const uint32_t key = static_cast<uint32_t>(nr);
            liveio_io_stats s{};
            ASSERT_EQ(bpf_map_lookup_elem(bpf_map__fd(m), &key, &s), 0);
            kernel[nr] = counts_from(s);
        }
    }
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "workload child failed, status " << status;
    tally = *child_tally;
    ::munmap(shared, sizeof(Tally));
}

TEST(KernelParityAgent, SyscountInTheAgentCountsAsTheKernelTracepoints) {
    const std::string why = ebpf::parity::kernel_bpf_unavailable();
    if (!why.empty()) GTEST_SKIP() << why;
    ASSERT_TRUE(fs::exists(syscount_object())) << "BPF programs not built: " << syscount_object();

    std::map<long, Counts> kernel;
    Tally kernel_tally;
    run_in_kernel(kernel, kernel_tally);
    if (::testing::Test::IsSkipped() || ::testing::Test::HasFatalFailure()) return;
    const auto expected = by_nr(kernel_tally);
    ASSERT_GT(kernel_tally.pread.errors, 0u);
    ASSERT_GT(kernel_tally.write.errors, 0u);
    ASSERT_GT(kernel_tally.lseek.errors, 0u);
    EXPECT_EQ(kernel, expected) << "the kernel's counts differ from what the workload did";

    for (ebpf::Engine engine : {ebpf::Engine::Interpreter, ebpf::Engine::Jit}) {
        SCOPED_TRACE(ebpf::engine_name(engine));
        auto host = BpfHost::create({});
        ASSERT_TRUE(host.ok()) << host.error().message;
        auto loaded = host.value()->load({syscount_object(), engine, {}});
        ASSERT_TRUE(loaded.ok()) << loaded.error().message;
        const uint32_t object = loaded.value().id;
        TempFile file;
        ASSERT_TRUE(file.fd() >= 0 && file.ro_fd() >= 0);
        Tally tally;
        {
            CallPipelineOf<BpfHost> pipeline(*host.value());
            auto interceptor = hook::Interceptor::install(
                {hook::Mechanism::Got, {hook::kMainProgram}, {}}, &pipeline);
            ASSERT_TRUE(interceptor.ok()) << interceptor.error().message;
            workload(file.fd(), file.ro_fd(), tally);
            auto done = interceptor.value()->uninstall();
            ASSERT_TRUE(done.ok()) << done.error().message;
        }
        EXPECT_EQ(by_nr(tally), expected) << "the workload behaved differently in this process";
        auto map = host.value()->map(object, "syscalls");
        ASSERT_TRUE(map);
        for (const auto& [nr, want] : expected) {
            const uint32_t key = static_cast<uint32_t>(nr);
            liveio_io_stats s{};
            ASSERT_EQ(map->copy_value(&key, &s), 0);
            EXPECT_EQ(counts_from(s), kernel[nr]) << "agent vs kernel, syscall " << nr;
        }
    }
}

}  // namespace
}  // namespace liveio::agent
