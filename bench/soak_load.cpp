#include "soak_load.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <fmt/format.h>

#include "base/errno_error.h"

namespace liveio::bench {
namespace {

constexpr size_t kFirstFailures = 5;
// One clickhouse-benchmark run lasts at most this long, so the load stops close to its deadline.
constexpr int kBenchmarkChunkSeconds = 15;

std::string read_all(const std::string& path) {
    std::ifstream in(path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string find_benchmark() {
    for (const char* p : {"/usr/bin/clickhouse-benchmark", "/usr/local/bin/clickhouse-benchmark"})
        if (::access(p, X_OK) == 0) return p;
    return "";
}

}  // namespace

std::string soak_value(uint64_t n) {
    return fmt::format("soak-{}-{}", n, (n * 2654435761u) % 1000003);
}

std::vector<std::string> soak_create_sql() {
    return {"DROP TABLE IF EXISTS soak_log", "DROP TABLE IF EXISTS soak_mt",
            "CREATE TABLE soak_log (n UInt64, v String) ENGINE = Log",
            "CREATE TABLE soak_mt (n UInt64, v String) ENGINE = MergeTree ORDER BY n"};
}

void FailureLog::add(std::string message) {
    std::lock_guard lock(mu_);
    ++count_;
    if (first_.size() < kFirstFailures) first_.push_back(message.substr(0, 600));
}

uint64_t FailureLog::count() const {
    std::lock_guard lock(mu_);
    return count_;
}

std::vector<std::string> FailureLog::first() const {
    std::lock_guard lock(mu_);
    return first_;
}

SoakLoad::SoakLoad(const clickhouse::LocalServer& server, std::vector<clickhouse::Query> mix,
                   SoakLoadOptions options)
    : server_(server), mix_(std::move(mix)), options_(options), written_(std::size(kSoakTables)) {
    if (options_.benchmark_concurrency == 0) {
        bench_note_ = "clickhouse-benchmark not used (--benchmark-concurrency 0)";
        return;
    }
    bench_binary_ = find_benchmark();
    if (bench_binary_.empty()) {
        bench_note_ =
            "clickhouse-benchmark not found (Debian clickhouse-tools): queries from the checkers "
            "only";
        return;
    }
    bench_queries_file_ = server_.dir() + "/soak-queries.sql";
    std::ofstream out(bench_queries_file_);
    for (const auto& q : mix_) {
        std::string line = q.sql;
        for (char& c : line)
            if (c == '\n') c = ' ';
        out << line << '\n';
    }
}

SoakLoad::~SoakLoad() { join(); }

void SoakLoad::run(SoakClock::time_point deadline) {
    for (size_t i = 0; i < options_.checkers; ++i)
        threads_.emplace_back([this, i, deadline] { check_loop(i, deadline); });
    threads_.emplace_back([this, deadline] { write_loop(deadline); });
    if (!bench_binary_.empty())
        threads_.emplace_back([this, deadline] { benchmark_loop(deadline); });
}

void SoakLoad::join() {
    for (auto& t : threads_)
        if (t.joinable()) t.join();
    threads_.clear();
}

std::vector<WrittenRows> SoakLoad::written() const {
    std::lock_guard lock(written_mu_);
    return written_;
}

void SoakLoad::check_loop(size_t index, SoakClock::time_point deadline) {
    auto client = server_.client();
    // Checkers start at different queries, so different queries overlap.
    size_t i = index * mix_.size() / std::max<size_t>(options_.checkers, 1);
    while (SoakClock::now() < deadline) {
        const auto& q = mix_[i % mix_.size()];
        // Every few passes the first checker empties the mark cache, so marks are read from
        // their files again while liveio is attached.
        if (index == 0 && i % (mix_.size() * 4) == 0) {
            if (auto r = client.execute("SYSTEM DROP MARK CACHE"); !r)
                query_failures_.add("SYSTEM DROP MARK CACHE: " + r.error().message);
        }
        auto got = client.query(q.sql);
        checked_.fetch_add(1);
        if (!got)
            query_failures_.add(fmt::format("{}: error: {}", q.name, got.error().message));
        else if (*got != q.expected)
            query_failures_.add(fmt::format("{}: answered '{}' instead of '{}'", q.name,
                                            got->substr(0, 200), q.expected.substr(0, 200)));
        ++i;
    }
}

void SoakLoad::write_loop(SoakClock::time_point deadline) {
    auto client = server_.client();
    while (SoakClock::now() < deadline) {
        const uint64_t batch = next_batch_++;
        std::string rows;
        WrittenRows add;
        for (uint64_t n = batch * kSoakBatchRows; n < (batch + 1) * kSoakBatchRows; ++n) {
            const std::string v = soak_value(n);
            rows += fmt::format("{}\t{}\n", n, v);
            add.rows += 1;
            add.sum_n += n;
            add.sum_len += v.size();
        }
        for (size_t t = 0; t < std::size(kSoakTables); ++t) {
            auto r = client.insert(kSoakTables[t], clickhouse::InsertFormat::TabSeparated, rows);
            inserts_.fetch_add(1);
            if (!r) {
                insert_failures_.add(fmt::format("insert of batch {} into {}: {}", batch,
                                                 kSoakTables[t], r.error().message));
                continue;
            }
            std::lock_guard lock(written_mu_);
            written_[t].rows += add.rows;
            written_[t].sum_n += add.sum_n;
            written_[t].sum_len += add.sum_len;
        }
        std::this_thread::sleep_for(options_.write_interval);
    }
}

void SoakLoad::benchmark_loop(SoakClock::time_point deadline) {
    for (;;) {
        const auto left =
            std::chrono::duration_cast<std::chrono::seconds>(deadline - SoakClock::now()).count();
        if (left < 1) return;
        auto r = run_benchmark(static_cast<int>(std::min<long>(left, kBenchmarkChunkSeconds)));
        if (!r) {
            bench_failures_.add(r.error().message);
            // A benchmark that cannot even start (e.g. it fails at once each time) must not spin.
            std::this_thread::sleep_for(std::chrono::seconds(1));
        } else {
            bench_queries_.fetch_add(*r);
        }
    }
}

// One clickhouse-benchmark run over the mix: the queries it completed. It stops at its first
// failed query with a non-zero status, which is a failure here.
Result<uint64_t> SoakLoad::run_benchmark(int seconds) {
    const std::string json_path = server_.dir() + "/soak-benchmark.json";
    const std::string log_path = server_.dir() + "/soak-benchmark.log";
    ::unlink(json_path.c_str());
    std::vector<std::string> args = {bench_binary_,
                                     "--host",
                                     "127.0.0.1",
                                     "--port",
                                     std::to_string(server_.ports().tcp),
                                     "--concurrency",
                                     std::to_string(options_.benchmark_concurrency),
                                     "--delay",
                                     "0",
                                     "--timelimit",
                                     std::to_string(seconds),
                                     "--json",
                                     json_path};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int in = ::open(bench_queries_file_.c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (in < 0 || out < 0) {
        const int err = errno;
        if (in >= 0) ::close(in);
        if (out >= 0) ::close(out);
        return errno_error(err, "opening the files of clickhouse-benchmark");
    }
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(127);
        ::dup2(in, 0);
        ::dup2(out, 1);
        ::dup2(out, 2);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    const int fork_errno = errno;
    ::close(in);
    ::close(out);
    if (pid < 0) return errno_error(fork_errno, "fork");
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    const std::string report = read_all(json_path);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        // Its message is the first line naming the exception or error.
        std::istringstream log(read_all(log_path));
        std::string why;
        for (std::string line; std::getline(log, line);)
            if (line.find("Exception") != std::string::npos ||
                line.find("rror") != std::string::npos) {
                why += line + " ";
                if (why.size() > 300) break;
            }
        return make_error(
            EIO, fmt::format("clickhouse-benchmark {}: {}",
                             WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                                               : fmt::format("signal {}", WTERMSIG(status)),
                             why));
    }
    std::smatch m;
    if (!std::regex_search(report, m, std::regex(R"("num_queries":\s*(\d+))")))
        return make_error(
            EIO, "clickhouse-benchmark wrote no report: " + read_all(log_path).substr(0, 300));
    return std::stoull(m[1].str());
}

}  // namespace liveio::bench
