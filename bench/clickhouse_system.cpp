#include "clickhouse_system.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace liveio::bench {
namespace {

namespace fs = std::filesystem;

Result<void> write_text(const std::string& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    out.close();
    if (!out) return make_error(EIO, fmt::format("cannot write '{}' to {}", text, path));
    return {};
}

}  // namespace

Result<std::string> run_command(const std::string& command) {
    std::FILE* pipe = ::popen(command.c_str(), "r");
    if (!pipe) return make_error(errno, fmt::format("popen {}: {}", command, std::strerror(errno)));
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
    const int status = ::pclose(pipe);
    if (status != 0)
        return make_error(ECHILD, fmt::format("`{}` failed (status {:#x}): {}", command, status,
                                              out.substr(0, 2000)));
    return out;
}

Result<int> read_int_file(const std::string& path) {
    std::ifstream in(path);
    long v;
    if (!(in >> v)) return make_error(EIO, fmt::format("cannot read a number from {}", path));
    return static_cast<int>(v);
}

Result<std::string> readahead_file_for(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0)
        return make_error(errno, fmt::format("stat {}: {}", path, std::strerror(errno)));
    std::error_code ec;
    fs::path dev =
        fs::canonical(fmt::format("/sys/dev/block/{}:{}", major(st.st_dev), minor(st.st_dev)), ec);
    if (ec)
        return make_error(ENODEV, fmt::format("{} is not on a block device ({}:{}): {}", path,
                                              major(st.st_dev), minor(st.st_dev), ec.message()));
    if (fs::exists(dev / "partition")) dev = dev.parent_path();
    const fs::path file = dev / "queue" / "read_ahead_kb";
    if (!fs::exists(file))
        return make_error(ENODEV, fmt::format("{} has no queue/read_ahead_kb", dev.string()));
    return file.string();
}

Result<ReadaheadSetting*> ReadaheadSetting::create(const std::string& file) {
    auto kb = read_int_file(file);
    if (!kb) return kb.error();
    return new ReadaheadSetting(file, *kb);
}

ReadaheadSetting::~ReadaheadSetting() { (void)restore(); }

Result<void> ReadaheadSetting::set_kb(int kb) {
    std::lock_guard lock(mu_);
    changed_ = true;
    return write_text(file_, std::to_string(kb));
}

Result<void> ReadaheadSetting::restore() {
    std::lock_guard lock(mu_);
    if (!changed_) return {};
    auto r = write_text(file_, std::to_string(original_kb_));
    if (r) changed_ = false;
    return r;
}

Result<void> drop_page_cache() {
    ::sync();
    return write_text("/proc/sys/vm/drop_caches", "3");
}

Result<Residency> page_cache_residency(const std::string& dir) {
    Residency r;
    const long page = ::sysconf(_SC_PAGESIZE);
    std::error_code ec;
    std::vector<unsigned char> vec;
    for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
        if (!e.is_regular_file(ec) || e.file_size(ec) == 0) continue;
        const size_t size = e.file_size(ec);
        const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return make_error(errno,
                              fmt::format("open {}: {}", e.path().string(), std::strerror(errno)));
        void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
        const int map_errno = errno;
        ::close(fd);
        if (map == MAP_FAILED)
            return make_error(
                map_errno, fmt::format("mmap {}: {}", e.path().string(), std::strerror(map_errno)));
        vec.assign((size + page - 1) / page, 0);
        const int rc = ::mincore(map, size, vec.data());
        const int mincore_errno = errno;
        ::munmap(map, size);
        if (rc != 0)
            return make_error(mincore_errno, fmt::format("mincore {}: {}", e.path().string(),
                                                         std::strerror(mincore_errno)));
        r.bytes += size;
        for (unsigned char v : vec) r.resident_bytes += (v & 1) ? static_cast<uint64_t>(page) : 0;
    }
    if (ec) return make_error(ec.value(), fmt::format("listing {}: {}", dir, ec.message()));
    return r;
}

Result<DeviceFigures> measure_device(const std::string& file, int seconds) {
    struct JobFigures {
        double value = 0;  // MB/s for sequential, IOPS for random reads
        double mean_latency_us = 0;
    };
    auto job = [&](const std::string& rw, const std::string& bs, int depth) -> Result<JobFigures> {
        const std::string cmd = fmt::format(
            "fio --name=dev --filename='{}' --readonly --direct=1 --ioengine=io_uring --rw={} "
            "--bs={} --iodepth={} "
            "--runtime={} --time_based --output-format=json 2>&1",
            file, rw, bs, depth, seconds);
        auto out = run_command(cmd);
        if (!out) return out.error();
        const auto brace = out->find('{');
        if (brace == std::string::npos)
            return make_error(EPROTO, "fio printed no JSON: " + out->substr(0, 500));
        try {
            const auto j = nlohmann::json::parse(out->substr(brace));
            const auto& read = j.at("jobs").at(0).at("read");
            return JobFigures{rw == "read" ? read.at("bw_bytes").get<double>() / 1e6
                                           : read.at("iops").get<double>(),
                              read.at("clat_ns").at("mean").get<double>() / 1e3};
        } catch (const std::exception& e) {
            return make_error(EPROTO, fmt::format("fio's JSON: {}", e.what()));
        }
    };
    DeviceFigures f;
    struct Step {
        double* out;
        double* latency_us;
        const char* rw;
        const char* bs;
        int depth;
    };
    for (const Step& s : {Step{&f.seq128k_qd1_mbs, &f.seq128k_qd1_lat_us, "read", "128k", 1},
                          Step{&f.seq128k_qd8_mbs, nullptr, "read", "128k", 8},
                          Step{&f.rand4k_qd1_iops, &f.rand4k_qd1_lat_us, "randread", "4k", 1},
                          Step{&f.rand4k_qd32_iops, nullptr, "randread", "4k", 32}}) {
        auto v = job(s.rw, s.bs, s.depth);
        if (!v) return v.error();
        *s.out = v->value;
        if (s.latency_us) *s.latency_us = v->mean_latency_us;
    }
    return f;
}

Result<long> clickhouse_glue_loc(std::string* report) {
    const std::string script = std::string(LIVEIO_SOURCE_DIR) + "/scripts/clickhouse-glue-loc";
    if (::access(script.c_str(), X_OK) != 0)
        return make_error(ENOENT, fmt::format("{} is missing (source tree moved?)", script));
    auto out = run_command(fmt::format("'{}' '{}'", script, LIVEIO_SOURCE_DIR));
    if (!out) return out.error();
    *report = *out;
    std::string last = *out;
    while (!last.empty() && last.back() == '\n') last.pop_back();
    last = last.substr(last.rfind('\n') + 1);
    const auto digits = last.find_last_not_of("0123456789");
    try {
        return std::stol(last.substr(digits == std::string::npos ? 0 : digits + 1));
    } catch (const std::exception&) {
        return make_error(EPROTO, fmt::format("{} ended with '{}', not a count", script, last));
    }
}

}  // namespace liveio::bench
