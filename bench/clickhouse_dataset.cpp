#include "clickhouse_dataset.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "clickhouse/dataset.h"
#include "clickhouse_hits.h"

namespace liveio::bench {
namespace {

namespace ch = liveio::clickhouse;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string marker_path(const std::string& dir) { return dir + "/dataset.ok"; }

// The marker's text for a complete data set; generation_seconds is informative only.
std::string marker_text(uint64_t rows, double seconds) {
    return fmt::format(
        "liveio bench clickhouse data set\ngenerator {}\nrows {}\ngeneration_seconds {:.0f}\n",
        hits::kGeneratorVersion, rows, seconds);
}

// True when the marker names this generator version and row count; *seconds from it.
bool marker_matches(const std::string& dir, uint64_t rows, double* seconds) {
    std::ifstream in(marker_path(dir));
    std::string line;
    int version = -1;
    uint64_t marked_rows = 0;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string key;
        fields >> key;
        if (key == "generator") fields >> version;
        if (key == "rows") fields >> marked_rows;
        if (key == "generation_seconds") fields >> *seconds;
    }
    return version == hits::kGeneratorVersion && marked_rows == rows;
}

Result<double> generate(const std::string& dir, uint64_t rows, uint64_t batch_rows) {
    ::unlink(marker_path(dir).c_str());
    auto options = bench_server_options(dir);
    options.nice = 10;  // a shared machine: the load yields to interactive work
    auto server = ch::LocalServer::start(options);
    if (!server) return server.error();
    auto client = server->client(std::chrono::minutes(120));
    const auto started = Clock::now();
    // One part per batch: the whole batch is one insert block.
    const std::string insert_settings = fmt::format(
        "max_memory_usage=12000000000&min_insert_block_size_rows={0}&min_insert_block_size_bytes="
        "8000000000"
        "&max_insert_block_size={0}",
        batch_rows);
    if (auto r = client.execute("DROP TABLE IF EXISTS hits"); !r) return r.error();
    if (auto r = client.execute(hits::create_table_sql("hits")); !r) return r.error();
    for (uint64_t first = 0; first < rows; first += batch_rows) {
        const uint64_t count = std::min(batch_rows, rows - first);
        auto r =
            query_with(client, hits::insert_batch_sql("hits", first, count, rows), insert_settings);
        if (!r)
            return make_error(r.error().code, fmt::format("generating rows {}..{}: {}", first,
                                                          first + count, r.error().message));
        fmt::print("  generated {} of {} rows ({:.0f} s)\n", first + count, rows,
                   std::chrono::duration<double>(Clock::now() - started).count());
        std::fflush(stdout);
    }
    if (auto r = client.execute("OPTIMIZE TABLE hits FINAL"); !r) return r.error();
    auto count = client.query("SELECT count() FROM hits");
    if (!count) return count.error();
    if (std::stoull(*count) != rows)
        return make_error(EIO,
                          fmt::format("the generated table holds {} rows, not {}", *count, rows));
    auto active = client.query_rows(
        "SELECT name FROM system.parts WHERE database = currentDatabase() AND table = 'hits' AND "
        "active");
    if (!active || active->size() != 1)
        return make_error(EIO, "the generated table is not one part after OPTIMIZE FINAL");
    const std::string part = active->at(0).at(0);
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    if (auto r = server->stop(); !r) return r.error();
    // The merged-away parts would be deleted by the next server minutes after its start, in
    // the middle of measuring: they go now, while no server runs.
    const fs::path table_dir = fs::path(dir) / "data" / "data" / "default" / "hits";
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(table_dir, ec))
        if (entry.is_directory() && entry.path().filename() != part &&
            entry.path().filename() != "detached")
            fs::remove_all(entry.path(), ec);
    std::ofstream marker(marker_path(dir));
    marker << marker_text(rows, seconds);
    marker.close();
    if (!marker) return make_error(EIO, "cannot write " + marker_path(dir));
    return seconds;
}

}  // namespace

std::string dataset_dir(const std::string& cache_dir, uint64_t rows) {
    if (rows % 1'000'000 == 0) return fmt::format("{}/{}m", cache_dir, rows / 1'000'000);
    return fmt::format("{}/{}k", cache_dir, (rows + 999) / 1000);
}

ch::ServerOptions bench_server_options(const std::string& dir) {
    ch::ServerOptions o;
    o.dir = dir;
    o.keep_dir = true;
    o.environment = {ch::kStaticTlsReserve};
    // Every run reads its column files (see clickhouse/dataset.h on 18.16's uncompressed
    // cache), so hot runs measure the page-cache path the policies sit on.
    o.profile_settings = ch::kProfileSettings;
    o.start_timeout = std::chrono::minutes(5);
    return o;
}

Result<std::string> query_with(ch::HttpClient& client, std::string_view sql,
                               std::string_view params) {
    std::string target = "/?wait_end_of_query=1";
    if (!params.empty()) target += fmt::format("&{}", params);
    auto response = client.request("POST", target, sql);
    if (!response) return response.error();
    if (response->status != 200) {
        std::string message = std::move(response->body);
        while (!message.empty() && (message.back() == '\n' || message.back() == '\r'))
            message.pop_back();
        return make_error(
            EREMOTEIO,
            fmt::format("ClickHouse: {}",
                        message.empty() ? fmt::format("HTTP {}", response->status) : message));
    }
    return std::move(response->body);
}

Result<void> describe_dataset(ch::HttpClient& client, DatasetInfo* info) {
    auto parts = client.query_rows(
        "SELECT count(), sum(rows), sum(bytes_on_disk) FROM system.parts WHERE database = "
        "currentDatabase() "
        "AND table = 'hits' AND active");
    if (!parts) return parts.error();
    auto columns = client.query_rows(
        "SELECT sum(data_uncompressed_bytes) FROM system.columns WHERE database = "
        "currentDatabase() AND table = 'hits'");
    if (!columns) return columns.error();
    try {
        info->parts = std::stoull(parts->at(0).at(0));
        info->rows = std::stoull(parts->at(0).at(1));
        info->bytes_on_disk = std::stoull(parts->at(0).at(2));
        info->bytes_uncompressed = std::stoull(columns->at(0).at(0));
    } catch (const std::exception& e) {
        return make_error(EPROTO, fmt::format("reading the size of table hits: {}", e.what()));
    }
    return {};
}

Result<DatasetInfo> ensure_dataset(const std::string& dir, uint64_t rows, uint64_t batch_rows) {
    DatasetInfo info;
    info.dir = dir;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return make_error(ec.value(), fmt::format("cannot create {}: {}", dir, ec.message()));
    if (!marker_matches(dir, rows, &info.generation_seconds)) {
        fmt::print("generating the data set: {} rows into {} (once; later runs reuse it)\n", rows,
                   dir);
        std::fflush(stdout);
        auto seconds = generate(dir, rows, batch_rows);
        if (!seconds) return seconds.error();
        info.generation_seconds = *seconds;
        info.generated_now = true;
    }
    return info;
}

}  // namespace liveio::bench
