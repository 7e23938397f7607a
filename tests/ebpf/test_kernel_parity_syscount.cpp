// Program parity for a syscall tracepoint program (issue 5): bpf/syscount.bpf.c, written
// against the kernel's raw_syscalls tracepoints, counts the same calls and errors in liveio as
// in the kernel for the same workload.
//
// Kernel: the object is loaded with libbpf, .rodata target_tgid set to a child process before
// load, both programs attached to the kernel tracepoints while the child runs a fixed workload
// (preads, writes, lseeks, some failing) that it records in shared memory; then the kernel's
// `syscalls` map is read. liveio: the same object, on both engines, is fed each recorded call
// as the kernel's tracepoint contexts (struct trace_event_raw_sys_enter: 8-byte common header,
// long id, unsigned long args[6]; sys_exit: header, id, long ret) through Executable::run.
// Needs root and kernel BPF with tracepoints; skips with the reason otherwise.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <array>

#include <gtest/gtest.h>

#include "ebpf/helpers.h"
#include "liveio/io_stats.h"
#include "test_kernel_parity.h"
#include "test_loader_objects.h"
#include "tracefs.h"

namespace liveio::ebpf::parity {
namespace {

using liveio::ebpf::testing::shipped_object_path;

struct RecordedCall {
    long nr;
    std::array<uint64_t, 6> args;
    long ret;  // the raw kernel return: value or -errno
};

// Written by the child, read by the parent after the child exited.
struct Recording {
    uint32_t count;
    RecordedCall calls[512];
};

// The workload: interleaved preads (some past EOF, some on a closed descriptor), writes (some
// on a descriptor open read-only, hence EBADF) and lseeks (some with an invalid whence).
// Only raw syscalls, so the child makes no call of these numbers beyond the recorded ones.
void workload(int fd, int ro_fd, Recording* rec) {
    char buf[64] = {};
    auto call = [&](long nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3 = 0) {
        long r = syscall(nr, a0, a1, a2, a3);
        if (r < 0) r = -errno;
        if (rec->count < std::size(rec->calls))
            rec->calls[rec->count++] = {nr, {a0, a1, a2, a3, 0, 0}, r};
    };
    const auto p = [](const void* x) {
        return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(x));
    };
    for (int i = 0; i < 60; ++i) {
        call(SYS_write, static_cast<uint64_t>(i % 7 == 6 ? ro_fd : fd), p(buf),
             static_cast<uint64_t>(1 + i % 50));
        call(SYS_pread64, static_cast<uint64_t>(i % 9 == 8 ? 1000 + i : fd), p(buf), sizeof(buf),
             static_cast<uint64_t>(i % 5 == 4 ? 1 << 20 : i * 3));
        if (i % 2 == 0)
            call(SYS_lseek, static_cast<uint64_t>(fd), static_cast<uint64_t>(i),
                 static_cast<uint64_t>(i % 10 == 8 ? 77 : SEEK_SET));
    }
}

struct LinkCloser {
    void operator()(bpf_link* l) const { bpf_link__destroy(l); }
};
using Link = std::unique_ptr<bpf_link, LinkCloser>;

struct Counts {
    uint64_t calls = 0, errors = 0, hist_total = 0;
    bool operator==(const Counts&) const = default;
};

Counts counts_from(const liveio_io_stats& s) {
    Counts c{s.calls, s.errors, 0};
    for (uint64_t h : s.hist) c.hist_total += h;
    return c;
}

std::ostream& operator<<(std::ostream& os, const Counts& c) {
    return os << "{calls " << c.calls << ", errors " << c.errors << ", histogram total "
              << c.hist_total << "}";
}

TEST(KernelParitySyscount, SameCountsAsTheKernelTracepoints) {
    const std::string why = kernel_bpf_unavailable();
    if (!why.empty()) GTEST_SKIP() << why;
    const std::string object = shipped_object_path("syscount");

    // The child's files and its recording, set up before fork.
    char path[] = "/tmp/liveio-syscount-XXXXXX";
    const int fd = mkstemp(path);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    const int ro_fd = open(path, O_RDONLY);
    unlink(path);
    ASSERT_GE(ro_fd, 0);
    void* shared =
        mmap(nullptr, sizeof(Recording), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(shared, MAP_FAILED);
    auto* rec = new (shared) Recording{};
    int go[2];
    ASSERT_EQ(pipe(go), 0);

    const pid_t child = fork();
    ASSERT_GE(child, 0) << std::strerror(errno);
    if (child == 0) {
        close(go[1]);
        char c;
        // Blocks until the parent attached; EOF means the parent gave up.
        if (syscall(SYS_read, go[0], &c, 1) != 1) _exit(1);
        workload(fd, ro_fd, rec);
        _exit(0);
    }
    close(go[0]);
    // Whatever happens below, the child is released (EOF) and reaped.
    struct Reaper {
        pid_t pid;
        int go;
        int status = -1;
        void release() {
            if (go >= 0) close(go);
            go = -1;
            if (pid > 0) waitpid(pid, &status, 0);
            pid = -1;
        }
        ~Reaper() { release(); }
    } reaper{child, go[1]};

    if (auto why = liveio::testing::ensure_tracefs(); !why.empty()) GTEST_SKIP() << why;
    auto kernel =
        KernelObject::load(object, {rodata<uint32_t>("target_tgid", static_cast<uint32_t>(child))});
    ASSERT_TRUE(kernel.ok()) << kernel.error().message;
    std::vector<Link> links;
    for (const char* name : {"syscount_enter", "syscount_exit"}) {
        bpf_program* prog = bpf_object__find_program_by_name(kernel.value().get(), name);
        ASSERT_NE(prog, nullptr) << name;
        Link link(bpf_program__attach(prog));
        if (!link)
            GTEST_SKIP() << "cannot attach " << name
                         << " to its kernel tracepoint: " << std::strerror(errno);
        links.push_back(std::move(link));
    }
    ASSERT_EQ(write(reaper.go, "g", 1), 1);
    reaper.release();
    links.clear();  // detached: nothing else is counted
    ASSERT_TRUE(WIFEXITED(reaper.status) && WEXITSTATUS(reaper.status) == 0)
        << "workload child failed";
    ASSERT_EQ(rec->count, 60u * 2 + 30);

    // What the workload did, from its own recording.
    std::map<long, Counts> expected;
    for (uint32_t i = 0; i < rec->count; ++i) {
        Counts& c = expected[rec->calls[i].nr];
        c.calls++;
        c.hist_total++;
        c.errors += rec->calls[i].ret < 0;
    }
    ASSERT_GT(expected[SYS_pread64].errors, 0u);
    ASSERT_GT(expected[SYS_write].errors, 0u);
    ASSERT_GT(expected[SYS_lseek].errors, 0u);

    bpf_map* kmap = bpf_object__find_map_by_name(kernel.value().get(), "syscalls");
    ASSERT_NE(kmap, nullptr);
    for (const auto& [nr, want] : expected) {
        const uint32_t key = static_cast<uint32_t>(nr);
        liveio_io_stats s{};
        ASSERT_EQ(bpf_map_lookup_elem(bpf_map__fd(kmap), &key, &s), 0);
        EXPECT_EQ(counts_from(s), want) << "kernel, syscall " << nr;
    }

    // liveio: the same object, fed the recorded calls with the kernel's context layouts. The
    // calls are fed from this process, whose tgid the program sees, hence target_tgid.
    const HelperTable helpers = HelperTable::standard();
    for (Engine engine : {Engine::Interpreter, Engine::Jit}) {
        SCOPED_TRACE(engine_name(engine));
        auto ours = open_ours(object, kernel.value(),
                              {rodata<uint32_t>("target_tgid", static_cast<uint32_t>(getpid()))});
        ASSERT_TRUE(ours.ok()) << ours.error().message;
        auto load = [&](const char* name) -> std::unique_ptr<Executable> {
            auto prog = ours.value().program(name);
            if (!prog) {
                ADD_FAILURE() << prog.error().message;
                return nullptr;
            }
            auto exe = Executable::load(prog.value(), helpers, engine);
            if (!exe) {
                ADD_FAILURE() << "liveio refuses " << name << ": " << exe.error().message;
                return nullptr;
            }
            return std::move(exe.value());
        };
        auto enter = load("syscount_enter");
        auto exit = load("syscount_exit");
        ASSERT_TRUE(enter && exit);
        ASSERT_EQ(enter->program().context.size, 64u);
        ASSERT_EQ(exit->program().context.size, 24u);
        for (uint32_t i = 0; i < rec->count; ++i) {
            const RecordedCall& c = rec->calls[i];
            struct {
                uint64_t common;
                int64_t id;
                uint64_t args[6];
            } enter_ctx{0, c.nr, {}};
            std::copy(c.args.begin(), c.args.end(), enter_ctx.args);
            struct {
                uint64_t common;
                int64_t id;
                int64_t ret;
            } exit_ctx{0, c.nr, c.ret};
            static_assert(sizeof(enter_ctx) == 64 && sizeof(exit_ctx) == 24);
            EXPECT_EQ(enter->run(&enter_ctx, sizeof(enter_ctx)), 0u);
            EXPECT_EQ(exit->run(&exit_ctx, sizeof(exit_ctx)), 0u);
        }
        auto map = ours.value().map("syscalls");
        ASSERT_TRUE(map);
        for (const auto& [nr, want] : expected) {
            const uint32_t key = static_cast<uint32_t>(nr);
            liveio_io_stats kernel_stats{}, our_stats{};
            ASSERT_EQ(bpf_map_lookup_elem(bpf_map__fd(kmap), &key, &kernel_stats), 0);
            ASSERT_EQ(map->copy_value(&key, &our_stats), 0);
            EXPECT_EQ(counts_from(our_stats), counts_from(kernel_stats))
                << "liveio vs kernel, syscall " << nr;
            EXPECT_EQ(counts_from(our_stats), want) << "liveio vs the workload, syscall " << nr;
        }
        // Nothing else counted, and no entry left pending.
        uint64_t total = 0;
        for (uint32_t nr = 0; nr < LIVEIO_MAX_SYSCALL_NR; ++nr) {
            liveio_io_stats s{};
            ASSERT_EQ(map->copy_value(&nr, &s), 0);
            total += s.calls;
        }
        EXPECT_EQ(total, rec->count);
        auto pending = our_contents(*ours.value().map("start_ns"));
        ASSERT_TRUE(pending.ok()) << pending.error().message;
        EXPECT_TRUE(pending.value().empty());
    }
    munmap(shared, sizeof(Recording));
    close(fd);
    close(ro_fd);
}

}  // namespace
}  // namespace liveio::ebpf::parity
