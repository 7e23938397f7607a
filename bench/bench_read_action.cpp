// `liveio bench read-action`: what the policy I/O worker's Read action costs, per mechanism of
// reaching the target's file, side by side on one ring:
//   proc_open   the former way: fstat the target's descriptor N, open /proc/self/fd/N (a
//               descriptor of our own, the lowest free number in the shared table), fstat it,
//               IORING_OP_READ through it, close it;
//   fixed_slot  the worker's way: fstat N, IORING_REGISTER_FILES_UPDATE puts N's file into a
//               fixed-file slot, fstat N again, sync_file_range(0, 0, 0) on the slot (type
//               check), after its completion IORING_OP_READ on the slot, the slot emptied on
//               the read's completion.
// Random 4 KiB-aligned reads of one file, at queue depth 1 and a deeper one, hot (in the page
// cache) and cold (POSIX_FADV_DONTNEED before every run); the two mechanisms alternate which
// goes first. Wall time per read and the process's CPU time per read.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bench.h"
#include "uring/engine.h"

namespace liveio::bench {
namespace {

namespace fs = std::filesystem;

struct ReadActionOptions {
    uint64_t file_mb = 256;
    uint64_t read_kb = 64;
    unsigned depth = 16;
    int reads = 2000;  // per run
    int runs = 5;      // per mechanism and row
    std::string dir = "/tmp/liveio-bench-read-action";
};

enum class Mechanism { ProcOpen, FixedSlot };
const char* name(Mechanism m) { return m == Mechanism::ProcOpen ? "proc_open" : "fixed_slot"; }

constexpr uint64_t kCheckTag = uint64_t{1} << 32;

double now_ns() {
    return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

double process_cpu_ns() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e9 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e3;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

std::string make_file(const ReadActionOptions& o) {
    fs::create_directories(o.dir);
    const std::string path = o.dir + "/data.bin";
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) == o.file_mb << 20)
        return path;
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char> block(1 << 20);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (uint64_t m = 0; m < o.file_mb; ++m) {
        for (char& c : block) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c = static_cast<char>(x);
        }
        if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size())) break;
    }
    ::fsync(fd);
    ::close(fd);
    return path;
}

struct RunResult {
    double wall_ns_per_read = 0, cpu_ns_per_read = 0;
    int failed = 0;
};

// `reads` reads of `len` bytes at random aligned offsets through `mechanism`, `depth` in flight.
RunResult run(uring::Engine& engine, Mechanism mechanism, int fd, uint64_t file_size, uint32_t len,
              unsigned depth, int reads, uint64_t seed) {
    struct Slot {
        std::vector<char> buf;
        int own_fd = -1;
        int64_t offset = 0;
    };
    std::vector<Slot> slots(depth);
    for (Slot& s : slots) s.buf.resize(len);
    std::vector<unsigned> free_slots;
    for (unsigned i = depth; i-- > 0;) free_slots.push_back(i);
    std::vector<uring::Completion> done(2 * depth + 2);
    RunResult r;
    const uint64_t blocks = (file_size - len) / 4096;
    uint64_t x = seed | 1;
    int issued = 0, completed = 0;
    const double w0 = now_ns(), c0 = process_cpu_ns();
    char path[40];
    while (completed < reads) {
        while (issued < reads && !free_slots.empty()) {
            const unsigned i = free_slots.back();
            free_slots.pop_back();
            Slot& s = slots[i];
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.offset = static_cast<int64_t>((x % blocks) * 4096);
            struct stat st {};
            ::fstat(fd, &st);
            if (mechanism == Mechanism::ProcOpen) {
                std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
                s.own_fd = ::open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
                ::fstat(s.own_fd, &st);
                engine.prepare(uring::Op::read(s.own_fd, s.buf.data(), len, s.offset), i);
            } else {
                engine.register_files_update(i, std::span<const int>(&fd, 1));
                ::fstat(fd, &st);
                engine.prepare(uring::Op::sync_file_range(static_cast<int>(i), 0, 0, 0).fixed(),
                               kCheckTag | i);
            }
            ++issued;
        }
        const size_t n = engine.submit_and_reap(done, 1);
        for (size_t k = 0; k < n; ++k) {
            const auto i = static_cast<unsigned>(done[k].tag & (kCheckTag - 1));
            Slot& s = slots[i];
            if (done[k].tag & kCheckTag) {
                if (done[k].res == 0) {
                    engine.prepare(
                        uring::Op::read(static_cast<int>(i), s.buf.data(), len, s.offset).fixed(),
                        i);
                    continue;
                }
                ++r.failed;
            } else if (done[k].res != static_cast<int32_t>(len)) {
                ++r.failed;
            }
            if (mechanism == Mechanism::ProcOpen) {
                ::close(s.own_fd);
            } else {
                const int none = -1;
                engine.register_files_update(i, std::span<const int>(&none, 1));
            }
            free_slots.push_back(i);
            ++completed;
        }
    }
    r.wall_ns_per_read = (now_ns() - w0) / reads;
    r.cpu_ns_per_read = (process_cpu_ns() - c0) / reads;
    return r;
}

// Reads the whole file once: the hot rows find every page cached.
void warm(int fd) {
    std::vector<char> buf(1 << 20);
    for (off_t off = 0; ::pread(fd, buf.data(), buf.size(), off) > 0;)
        off += static_cast<off_t>(buf.size());
}

int run_read_action_bench(const ReadActionOptions& o) {
    const std::string path = make_file(o);
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) {
        std::fprintf(stderr, "cannot open %s\n", path.c_str());
        return 1;
    }
    const uint64_t size = o.file_mb << 20;
    const auto len = static_cast<uint32_t>(o.read_kb << 10);
    std::printf(
        "Read action: %d random %llu KiB reads of a %llu MiB file per run, %d runs per cell, "
        "mechanisms alternated; medians. The machine may be shared with other work.\n",
        o.reads, static_cast<unsigned long long>(o.read_kb),
        static_cast<unsigned long long>(o.file_mb), o.runs);
    std::printf("%-5s %5s  %-10s %12s %12s %10s %8s\n", "cache", "depth", "mechanism",
                "wall ns/read", "cpu ns/read", "MB/s", "failed");
    std::vector<std::string> metrics;
    int failures = 0;
    for (bool cold : {false, true}) {
        for (unsigned depth : {1u, o.depth}) {
            uring::Options eo;
            eo.sq_entries = 2 * depth + 2;
            eo.max_inflight = 2 * depth + 2;
            auto engine = uring::Engine::create(eo);
            if (!engine || (*engine)->backend() != uring::BackendKind::Uring) {
                std::printf("io_uring unusable here\n");
                ::close(fd);
                return 1;
            }
            if (auto r = (*engine)->register_files_sparse(depth); !r) {
                std::printf("register_files_sparse: %s\n", r.error().message.c_str());
                ::close(fd);
                return 1;
            }
            std::vector<double> wall[2], cpu[2];
            int failed[2] = {0, 0};
            for (int r = 0; r < o.runs; ++r) {
                for (int k = 0; k < 2; ++k) {
                    const auto m = static_cast<Mechanism>((k + r) % 2);
                    if (cold) ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
                    if (!cold && r == 0 && k == 0) warm(fd);
                    const RunResult res = run(**engine, m, fd, size, len, depth, o.reads,
                                              0x1234567ull + static_cast<uint64_t>(r));
                    const int mi = static_cast<int>(m);
                    wall[mi].push_back(res.wall_ns_per_read);
                    cpu[mi].push_back(res.cpu_ns_per_read);
                    failed[mi] += res.failed;
                }
            }
            for (int mi = 0; mi < 2; ++mi) {
                const double w = median(wall[mi]), c = median(cpu[mi]);
                const char* cache = cold ? "cold" : "hot";
                const char* mech = name(static_cast<Mechanism>(mi));
                std::printf("%-5s %5u  %-10s %12.0f %12.0f %10.1f %8d\n", cache, depth, mech, w, c,
                            len / w * 1e3, failed[mi]);
                metrics.push_back(
                    fmt::format("metric: read_action_{}_qd{}_{}_ns {:.0f}", cache, depth, mech, w));
                failures += failed[mi];
            }
        }
    }
    ::close(fd);
    for (const std::string& m : metrics) std::printf("%s\n", m.c_str());
    return failures == 0 ? 0 : 1;
}

}  // namespace

void add_read_action_bench(CLI::App& bench) {
    auto o = std::make_shared<ReadActionOptions>();
    auto* cmd = bench.add_subcommand(
        "read-action",
        "The policy I/O worker's Read action: own descriptor via /proc vs a fixed-file slot");
    cmd->add_option("--file-mb", o->file_mb, "size of the file read (MiB)")->capture_default_str();
    cmd->add_option("--read-kb", o->read_kb, "bytes per read (KiB)")->capture_default_str();
    cmd->add_option("--depth", o->depth, "reads in flight of the deeper row")
        ->check(CLI::Range(2, 512))
        ->capture_default_str();
    cmd->add_option("--reads", o->reads, "reads per run")->capture_default_str();
    cmd->add_option("--runs", o->runs, "runs per mechanism and row")->capture_default_str();
    cmd->add_option("--dir", o->dir, "where the file is kept")->capture_default_str();
    cmd->callback([o] {
        if (const int rc = run_read_action_bench(*o); rc != 0) throw CLI::RuntimeError(rc);
    });
}

}  // namespace liveio::bench
