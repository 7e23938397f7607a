#include "clickhouse_device.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "clickhouse_system.h"

namespace liveio::bench {
namespace {

namespace fs = std::filesystem;

// How long fio may take to write its figures after SIGTERM before it is killed.
constexpr auto kStopWait = std::chrono::seconds(10);
// A load that exits within this time after its start did not start (bad file, bad option).
constexpr auto kStartCheck = std::chrono::milliseconds(300);

Result<std::string> find_in_path(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::stringstream ss(path ? path : "/usr/bin:/bin");
    for (std::string dir; std::getline(ss, dir, ':');) {
        const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    return make_error(ENOENT,
                      fmt::format("{} is not installed (Debian: apt-get install {})", name, name));
}

std::string read_text(const std::string& path) {
    std::ifstream in(path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

const char* condition_name(DeviceCondition c) {
    return c == DeviceCondition::Idle ? "idle" : "contended";
}

Result<std::vector<DeviceCondition>> parse_device_conditions(std::string_view list) {
    std::vector<DeviceCondition> out;
    size_t pos = 0;
    while (pos <= list.size()) {
        const size_t comma = std::min(list.find(',', pos), list.size());
        const std::string_view name = list.substr(pos, comma - pos);
        pos = comma + 1;
        if (name.empty()) continue;
        DeviceCondition c;
        if (name == "idle")
            c = DeviceCondition::Idle;
        else if (name == "contended")
            c = DeviceCondition::Contended;
        else
            return make_error(EINVAL, fmt::format("unknown device condition '{}' (known: idle, "
                                                  "contended)",
                                                  name));
        if (std::find(out.begin(), out.end(), c) != out.end())
            return make_error(EINVAL, fmt::format("device condition '{}' given twice", name));
        out.push_back(c);
    }
    if (out.empty()) return make_error(EINVAL, "no device condition given");
    return out;
}

std::string describe(const ContentionSpec& spec) {
    return fmt::format(
        "background fio: {} random O_DIRECT reads at QD{} through io_uring on its own {} MiB "
        "file on the same disk",
        spec.block_size, spec.queue_depth, spec.file_bytes >> 20);
}

Result<std::string> ensure_load_file(const std::string& dir, const std::string& data_dir,
                                     uint64_t bytes) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return make_error(ec.value(), fmt::format("cannot create {}: {}", dir, ec.message()));
    struct stat load_st, data_st;
    if (::stat(dir.c_str(), &load_st) != 0 || ::stat(data_dir.c_str(), &data_st) != 0)
        return make_error(errno,
                          fmt::format("stat {} / {}: {}", dir, data_dir, std::strerror(errno)));
    if (load_st.st_dev != data_st.st_dev)
        return make_error(EXDEV, fmt::format("{} and the data {} are on different devices: a load "
                                             "there would not contend for the data's disk",
                                             dir, data_dir));
    const std::string file = fmt::format("{}/load-{}m.dat", dir, bytes >> 20);
    if (fs::exists(file, ec) && fs::file_size(file, ec) == bytes) return file;
    auto fio = find_in_path("fio");
    if (!fio) return fio.error();
    // Written (not fallocated): reads of unwritten extents are answered without the device.
    const std::string tmp = file + ".tmp";
    auto r = run_command(fmt::format(
        "'{}' --name=liveio-load-file --filename='{}' --size={} --rw=write --bs=1m --direct=1 "
        "--ioengine=psync --output-format=terse 2>&1",
        *fio, tmp, bytes));
    if (!r) {
        fs::remove(tmp, ec);
        return r.error();
    }
    fs::rename(tmp, file, ec);
    if (ec) return make_error(ec.value(), fmt::format("rename {}: {}", tmp, ec.message()));
    return file;
}

Result<std::unique_ptr<BackgroundLoad>> BackgroundLoad::start(const std::string& file,
                                                              const ContentionSpec& spec,
                                                              const std::string& output_json) {
    auto fio = find_in_path("fio");
    if (!fio) return fio.error();
    struct stat st;
    if (::stat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
        return make_error(ENOENT, fmt::format("the load's file {} is missing or empty", file));
    auto setpriv = find_in_path("setpriv");
    if (!setpriv) return setpriv.error();
    // setpriv (util-linux) gives fio a parent-death signal: a bench killed with SIGKILL takes
    // its load with it instead of leaving it running until its bound.
    std::vector<std::string> args{*setpriv,
                                  "--pdeathsig",
                                  "KILL",
                                  *fio,
                                  "--name=liveio-bench-contention",
                                  "--thread",
                                  "--filename=" + file,
                                  "--readonly",
                                  "--direct=1",
                                  "--ioengine=io_uring",
                                  "--rw=randread",
                                  "--bs=" + spec.block_size,
                                  fmt::format("--iodepth={}", spec.queue_depth),
                                  fmt::format("--runtime={}", spec.max_seconds),
                                  "--time_based",
                                  "--output-format=json",
                                  "--output=" + output_json};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = output_json + ".log";
    // Its own process group (a Ctrl-C reaches it only through the bench: stop or SIGKILL) and
    // an empty signal mask (the bench blocks SIGINT/SIGTERM for its watcher thread, and the
    // mask survives exec); stdin /dev/null, stdout and stderr to the log.
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t actions;
    ::posix_spawnattr_init(&attr);
    ::posix_spawn_file_actions_init(&actions);
    sigset_t none;
    ::sigemptyset(&none);
    ::posix_spawnattr_setsigmask(&attr, &none);
    ::posix_spawnattr_setpgroup(&attr, 0);
    ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
    ::posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    ::posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                       0644);
    ::posix_spawn_file_actions_adddup2(&actions, 1, 2);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), environ);
    ::posix_spawn_file_actions_destroy(&actions);
    ::posix_spawnattr_destroy(&attr);
    if (rc != 0) return make_error(rc, fmt::format("spawning {}: {}", *fio, std::strerror(rc)));
    std::unique_ptr<BackgroundLoad> load(new BackgroundLoad(pid, output_json));
    std::this_thread::sleep_for(kStartCheck);
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
        load->pid_ = -1;
        return make_error(ECHILD, fmt::format("the background load exited at once (status {:#x}): "
                                              "{}",
                                              status, read_text(log).substr(0, 1000)));
    }
    return load;
}

void BackgroundLoad::terminate() {
    if (pid_ <= 0) return;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        ended_early_ = true;
        pid_ = -1;
        return;
    }
    ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + kStopWait;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() >= deadline) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, &status, 0);
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    pid_ = -1;
}

BackgroundLoad::~BackgroundLoad() { terminate(); }

Result<LoadFigures> BackgroundLoad::stop() {
    terminate();
    const std::string out = read_text(output_json_);
    const auto brace = out.find('{');
    if (brace == std::string::npos)
        return make_error(EPROTO,
                          fmt::format("the background load wrote no figures to {}", output_json_));
    try {
        const auto j = nlohmann::json::parse(out.substr(brace));
        const auto& job = j.at("jobs").at(0);
        const auto& read = job.at("read");
        LoadFigures f;
        f.iops = read.at("iops").get<double>();
        f.mbs = read.at("bw_bytes").get<double>() / 1e6;
        f.seconds = job.at("job_runtime").get<double>() / 1e3;
        f.mean_latency_us = read.at("clat_ns").at("mean").get<double>() / 1e3;
        f.ended_early = ended_early_;
        return f;
    } catch (const std::exception& e) {
        return make_error(
            EPROTO, fmt::format("the background load's JSON ({}): {}", output_json_, e.what()));
    }
}

}  // namespace liveio::bench
