// Fuzz target: the ClickHouse sink's parsers: the --sink URL (src/observe/sink) and the
// TabSeparated answers of the ClickHouse HTTP client (src/clickhouse/http_client). The input
// is split at its first NUL: URL before, TSV after. An accepted URL must yield identifiers the
// sink quotes safely (no backquote, no backslash) and a numeric IPv4 host.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <arpa/inet.h>

#include "clickhouse/http_client.h"
#include "observe/sink.h"

using namespace liveio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view all(reinterpret_cast<const char*>(data), size);
    const size_t nul = all.find('\0');
    const std::string_view url = all.substr(0, nul);
    const std::string_view tsv =
        nul == std::string_view::npos ? std::string_view() : all.substr(nul + 1);

    if (auto t = observe::parse_sink_url(url)) {
        for (const std::string* id : {&t->database, &t->table})
            if (id->empty() || id->find_first_of("`\\\n") != std::string::npos) {
                std::fprintf(stderr, "accepted an unsafe identifier: %s\n", id->c_str());
                std::abort();
            }
        in_addr addr;
        if (inet_pton(AF_INET, t->host.c_str(), &addr) != 1) std::abort();
        (void)observe::sink_create_table_sql(*t);
    }
    // Escaping what was parsed and parsing it again gives the same fields.
    const clickhouse::Rows rows = clickhouse::parse_tsv(tsv);
    std::string again;
    for (const auto& row : rows) {
        for (size_t i = 0; i < row.size(); ++i)
            again += (i ? "\t" : "") + clickhouse::tsv_escape(row[i]);
        again += "\n";
    }
    if (clickhouse::parse_tsv(again) != rows) {
        std::fprintf(stderr, "parse_tsv(tsv_escape(fields)) differs from the fields\n");
        std::abort();
    }
    return 0;
}
