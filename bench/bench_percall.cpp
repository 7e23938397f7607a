// `liveio bench percall`: what one hooked call costs the calling thread with each policy on,
// on files in the page cache (the hot queries' case), in-process with the agent's own pipeline
// (counters + BPF host + policy host, GOT hooks on this executable).
//
// Columns: the call made with raw syscalls (no hook), through the GOT hook with no policy, and
// with each policy switched on alone (PolicyHost::on with the catalog's default knobs, the
// objects of the built tree). Rows: the calls a ClickHouse 18.16 hot query makes on its column
// files (lseek to a mark + read, pread, a 1 MiB read, open + close), on *.bin files of a
// MergeTree-like part directory so the policies classify them as column data. Per round every
// column runs once, in a rotated order; each cell is the median over rounds of the thread's CPU
// time per call (wall time on this shared machine mostly measures preemption).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "agent/bpf_host.h"
#include "agent/call_counters.h"
#include "agent/call_pipeline.h"
#include "agent/policy_host.h"
#include "base/raw_syscall.h"
#include "bench.h"
#include "hook/interceptor.h"
#include "observe/bpf_client.h"

namespace liveio::bench {
namespace {

struct PercallOptions {
    std::string dir = "/var/tmp";
    std::string policies = "prefetch,marks,uring";
    std::string rows;  // only rows whose name contains this (empty: all)
    int rounds = 7;
    double scale = 1.0;  // multiplies the call counts
};

double thread_cpu_ns() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// A part directory <dir>/liveio-percall-XXXXXX/data/db/t/all_1_1_0 with column files, read
// once so they are in the page cache; removed with the object.
class PartFiles {
public:
    static constexpr size_t kColumns = 4;
    static constexpr size_t kFileBytes = size_t{16} << 20;

    Result<void> create(const std::string& dir) {
        std::string tmpl = dir + "/liveio-percall-XXXXXX";
        if (::mkdtemp(tmpl.data()) == nullptr)
            return make_error(errno, "mkdtemp in " + dir + ": " + std::strerror(errno));
        root_ = tmpl;
        std::string path = root_;
        for (const char* part : {"/data", "/db", "/t", "/all_1_1_0"}) {
            path += part;
            if (::mkdir(path.c_str(), 0755) != 0)
                return make_error(errno, "mkdir " + path + ": " + std::strerror(errno));
            dirs_.push_back(path);
        }
        std::vector<char> data(kFileBytes);
        for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 131 + (i >> 12));
        for (size_t c = 0; c < kColumns; ++c) {
            const std::string file = path + fmt::format("/c{}.bin", c);
            const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (fd < 0) return make_error(errno, "create " + file + ": " + std::strerror(errno));
            files_.push_back(file);
            const bool ok =
                ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()) &&
                ::pread(fd, data.data(), data.size(), 0) == static_cast<ssize_t>(data.size());
            ::close(fd);
            if (!ok) return make_error(EIO, "cannot fill " + file);
        }
        return {};
    }
    ~PartFiles() {
        for (const std::string& f : files_) ::unlink(f.c_str());
        for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) ::rmdir(it->c_str());
        if (!root_.empty()) ::rmdir(root_.c_str());
    }
    const std::string& file(size_t c) const { return files_[c]; }

private:
    std::string root_;
    std::vector<std::string> dirs_, files_;
};

// One row: `run(native, n)` makes n units of calls (through libc, or with raw syscalls when
// `native`) and returns how many calls a unit is, for the per-call figure.
struct Row {
    std::string name;
    int calls_per_unit = 1;
    size_t units = 0;
    std::function<bool(bool native, size_t n)> run;  // false: a call returned an error
};

struct Column {
    std::string name;
    std::string policy;  // empty: none
    bool native = false;
};

class Workloads {
public:
    explicit Workloads(const PartFiles& part) : part_(part), buf_(size_t{1} << 20) {}
    ~Workloads() {
        for (int fd : fds_)
            if (fd >= 0) ::close(fd);
    }
    Result<void> open_files() {
        for (size_t c = 0; c < PartFiles::kColumns; ++c) {
            const int fd = ::open(part_.file(c).c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0) return make_error(errno, "open " + part_.file(c));
            fds_.push_back(fd);
        }
        return {};
    }

    std::vector<Row> rows(double scale) {
        auto n = [&](size_t base) {
            return std::max<size_t>(16, static_cast<size_t>(base * scale));
        };
        std::vector<Row> rows;
        // ClickHouse's column read: lseek to the mark's offset, then read the compressed
        // block (64 KiB here), the columns of a granule range one after the other.
        rows.push_back({"lseek + read 64 KiB", 2, n(3000), [this](bool native, size_t count) {
                            return seek_read(native, count, 64 << 10);
                        }});
        rows.push_back({"lseek + read 4 KiB", 2, n(6000), [this](bool native, size_t count) {
                            return seek_read(native, count, 4 << 10);
                        }});
        rows.push_back({"pread 4 KiB", 1, n(12000), [this](bool native, size_t count) {
                            return pread_loop(native, count, 4 << 10);
                        }});
        rows.push_back({"read 1 MiB (sequential)", 1, n(300),
                        [this](bool native, size_t count) { return sequential(native, count); }});
        rows.push_back({"openat + close", 2, n(4000),
                        [this](bool native, size_t count) { return open_close(native, count); }});
        return rows;
    }

private:
    static long sys_read(bool native, int fd, void* buf, size_t len) {
        return native
                   ? raw_syscall(SYS_read, fd, reinterpret_cast<long>(buf), static_cast<long>(len))
                   : ::read(fd, buf, len);
    }
    static long sys_lseek(bool native, int fd, off_t off) {
        return native ? raw_syscall(SYS_lseek, fd, off, SEEK_SET) : ::lseek(fd, off, SEEK_SET);
    }
    bool seek_read(bool native, size_t count, size_t len) {
        const size_t span = PartFiles::kFileBytes / len;
        for (size_t i = 0; i < count; ++i) {
            const int fd = fds_[i % fds_.size()];
            const off_t off = static_cast<off_t>(((i / fds_.size()) % span) * len);
            if (sys_lseek(native, fd, off) != off) return false;
            if (sys_read(native, fd, buf_.data(), len) != static_cast<long>(len)) return false;
        }
        return true;
    }
    bool pread_loop(bool native, size_t count, size_t len) {
        const int fd = fds_[0];
        const size_t span = PartFiles::kFileBytes / len;
        for (size_t i = 0; i < count; ++i) {
            const off_t off = static_cast<off_t>((i % span) * len);
            const long r = native
                               ? raw_syscall(SYS_pread64, fd, reinterpret_cast<long>(buf_.data()),
                                             static_cast<long>(len), off)
                               : ::pread(fd, buf_.data(), len, off);
            if (r != static_cast<long>(len)) return false;
        }
        return true;
    }
    bool sequential(bool native, size_t count) {
        const int fd = fds_[1];
        if (sys_lseek(native, fd, 0) != 0) return false;
        for (size_t i = 0; i < count; ++i) {
            long r = sys_read(native, fd, buf_.data(), buf_.size());
            if (r == 0) {  // end of file: start over (one lseek per 16 reads)
                if (sys_lseek(native, fd, 0) != 0) return false;
                r = sys_read(native, fd, buf_.data(), buf_.size());
            }
            if (r <= 0) return false;
        }
        return true;
    }
    bool open_close(bool native, size_t count) {
        const char* path = part_.file(2).c_str();
        for (size_t i = 0; i < count; ++i) {
            const long fd = native ? raw_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path),
                                                 O_RDONLY | O_CLOEXEC, 0)
                                   : ::openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) return false;
            if (native)
                raw_syscall(SYS_close, fd);
            else
                ::close(static_cast<int>(fd));
        }
        return true;
    }

    const PartFiles& part_;
    std::vector<int> fds_;
    std::vector<char> buf_;
};

int run_percall(const PercallOptions& o) {
    PartFiles part;
    if (auto r = part.create(o.dir); !r) {
        fmt::print("percall: {}\n", r.error().message);
        return 1;
    }
    Workloads work(part);
    if (auto r = work.open_files(); !r) {
        fmt::print("percall: {}\n", r.error().message);
        return 1;
    }
    std::vector<Column> columns = {{"native", "", true}, {"hooked", "", false}};
    for (size_t pos = 0; pos < o.policies.size();) {
        size_t comma = o.policies.find(',', pos);
        if (comma == std::string::npos) comma = o.policies.size();
        if (comma > pos) {
            const std::string name = o.policies.substr(pos, comma - pos);
            columns.push_back({name, name, false});
        }
        pos = comma + 1;
    }
    std::vector<std::string> objects(columns.size());
    auto bpf_dir = observe::builtin_bpf_dir();
    for (size_t c = 0; c < columns.size(); ++c) {
        if (columns[c].policy.empty()) continue;
        if (!bpf_dir) {
            fmt::print("percall: {}\n", bpf_dir.error().message);
            return 1;
        }
        objects[c] = *bpf_dir + "/policies/" + columns[c].policy + ".bpf.o";
        if (::access(objects[c].c_str(), R_OK) != 0) {
            fmt::print("percall: no object {}\n", objects[c]);
            return 1;
        }
    }

    agent::CallCounters counters;
    auto host = agent::BpfHost::create({});
    if (!host) {
        fmt::print("percall: {}\n", host.error().message);
        return 1;
    }
    agent::CallPipelineOf<agent::CallCounters, agent::BpfHost> pipeline(counters, **host);
    auto policies = std::make_unique<agent::PolicyHost>(**host, pipeline);
    hook::InterceptOptions io;
    io.mechanism = hook::Mechanism::Got;
    io.objects = {hook::kMainProgram};
    io.functions = {"read", "pread", "pread64", "lseek", "lseek64", "openat", "close"};
    auto icpt = hook::Interceptor::install(io, &pipeline);
    if (!icpt) {
        fmt::print("percall: GOT hooks: {}\n", icpt.error().message);
        return 1;
    }

    std::vector<Row> rows = work.rows(o.scale);
    std::erase_if(rows, [&](const Row& r) { return r.name.find(o.rows) == std::string::npos; });
    // samples[row][column]: ns per call, one per round
    std::vector<std::vector<std::vector<double>>> samples(
        rows.size(), std::vector<std::vector<double>>(columns.size()));
    std::vector<std::string> notes(columns.size());
    int failures = 0;
    for (int round = 0; round < o.rounds; ++round) {
        for (size_t k = 0; k < columns.size(); ++k) {
            const size_t c = (k + static_cast<size_t>(round)) % columns.size();
            const Column& col = columns[c];
            if (!col.policy.empty()) {
                auto on = policies->on(col.policy, objects[c], {});
                if (!on) {
                    fmt::print("percall: policy {} on: {}\n", col.policy, on.error().message);
                    return 1;
                }
            }
            const uint64_t before = counters.total_calls();
            for (size_t r = 0; r < rows.size(); ++r) {
                Row& row = rows[r];
                const double t0 = thread_cpu_ns();
                if (!row.run(col.native, row.units)) ++failures;
                const double t1 = thread_cpu_ns();
                samples[r][c].push_back((t1 - t0) /
                                        static_cast<double>(row.units * row.calls_per_unit));
            }
            const uint64_t seen = counters.total_calls() - before;
            if (col.native ? seen != 0 : seen == 0)
                notes[c] = fmt::format("hook saw {} calls (expected {})", seen,
                                       col.native ? "none" : "all");
            if (!col.policy.empty()) {
                if (round == o.rounds - 1) {
                    const auto listed = policies->list();
                    for (const auto& p : listed["policies"]) {
                        if (p.value("name", "") != col.policy || !p.contains("counters")) continue;
                        const auto& k = p["counters"];
                        notes[c] = fmt::format(
                            "last round: actions {}, fallbacks {}{}",
                            k.value("actions", uint64_t{0}), k.value("fallbacks", uint64_t{0}),
                            k.contains("redirected")
                                ? fmt::format(", redirected {}", k.value("redirected", uint64_t{0}))
                                : std::string());
                    }
                }
                if (auto off = policies->off(col.policy); !off) {
                    fmt::print("percall: policy {} off: {}\n", col.policy, off.error().message);
                    return 1;
                }
            }
        }
    }
    (void)(*icpt)->uninstall();
    policies.reset();

    fmt::print("per hooked call, thread CPU ns (median of {} rounds, columns rotated per round)\n",
               o.rounds);
    fmt::print("{:<26}", "call");
    for (const Column& c : columns) fmt::print(" {:>10}", c.name);
    fmt::print("\n");
    std::vector<std::vector<double>> med(rows.size(), std::vector<double>(columns.size()));
    for (size_t r = 0; r < rows.size(); ++r) {
        fmt::print("{:<26}", rows[r].name);
        for (size_t c = 0; c < columns.size(); ++c) {
            med[r][c] = median(samples[r][c]);
            fmt::print(" {:>10.0f}", med[r][c]);
        }
        fmt::print("\n");
    }
    fmt::print("\nadded per call over the hook without policy (ns)\n{:<26}", "call");
    for (size_t c = 2; c < columns.size(); ++c) fmt::print(" {:>10}", columns[c].name);
    fmt::print("\n");
    for (size_t r = 0; r < rows.size(); ++r) {
        fmt::print("{:<26}", rows[r].name);
        for (size_t c = 2; c < columns.size(); ++c)
            fmt::print(" {:>+10.0f}", med[r][c] - med[r][1]);
        fmt::print("\n");
    }
    for (size_t c = 0; c < columns.size(); ++c)
        if (!notes[c].empty()) fmt::print("note: {}: {}\n", columns[c].name, notes[c]);
    if (failures > 0) fmt::print("note: {} runs had a call that failed\n", failures);
    auto slug = [](std::string s) {
        for (char& ch : s)
            if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
        std::string out;
        for (char ch : s)
            if (ch != '_' || (!out.empty() && out.back() != '_')) out += ch;
        while (!out.empty() && out.back() == '_') out.pop_back();
        return out;
    };
    for (size_t r = 0; r < rows.size(); ++r)
        for (size_t c = 1; c < columns.size(); ++c)
            fmt::print("metric: percall_ns_{}_{} {:.0f}\n", slug(rows[r].name), columns[c].name,
                       med[r][c]);
    return failures == 0 ? 0 : 1;
}

}  // namespace

void add_percall_bench(CLI::App& bench) {
    auto o = std::make_shared<PercallOptions>();
    auto* cmd = bench.add_subcommand(
        "percall", "Per hooked call cost with each policy on, files in the page cache");
    cmd->add_option("--dir", o->dir, "where the part directory is created")->capture_default_str();
    cmd->add_option("--policies", o->policies, "policies, one column each")->capture_default_str();
    cmd->add_option("--rounds", o->rounds, "rounds (every column once per round)")
        ->check(CLI::Range(1, 1000))
        ->capture_default_str();
    cmd->add_option("--scale", o->scale, "multiplies the calls per cell")->capture_default_str();
    cmd->add_option("--rows", o->rows, "only the rows whose name contains this");
    cmd->callback([o] {
        if (const int rc = run_percall(*o); rc != 0) throw CLI::RuntimeError(rc);
    });
}

}  // namespace liveio::bench
