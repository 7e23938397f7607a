// clickhouse-glue: ClickHouse 18.16 MergeTree part layout (declared in clickhouse_part.h).
#include "policy/clickhouse_part.h"

#include <fmt/format.h>

namespace liveio::policy::clickhouse {

const char* const kPartManifest = "columns.txt";
const char* const kIndexSuffix = ".mrk";
const char* const kDataSuffix = ".bin";

// "columns format version: 1", "N columns:", then "`name` Type" per line. A name holding an
// escaped backquote comes out wrong: its files are then not found, which costs one lookup.
std::vector<std::string> part_columns(std::string_view m) {
    std::vector<std::string> names;
    if (!m.starts_with("columns format version: 1\n")) return names;
    for (size_t at = m.find('`'); at != std::string_view::npos;
         at = m.find('`', m.find('\n', at))) {
        const size_t end = m.find('`', at + 1);
        if (end == std::string_view::npos) return {};
        names.emplace_back(m.substr(at + 1, end - at - 1));
    }
    return names;
}

// escapeForFileName: [A-Za-z0-9_] kept, every other byte %XX.
std::string column_file_base(std::string_view column) {
    std::string out;
    for (unsigned char c : column) {
        if ((c | 0x20) - 'a' < 26u || c - '0' < 10u || c == '_')
            out += static_cast<char>(c);
        else
            out += fmt::format("%{:02X}", c);
    }
    return out;
}

// A table's parts are the directories of the table's directory.
std::string table_of(std::string_view part_dir) {
    return std::string(part_dir.substr(0, part_dir.rfind('/')));
}

}  // namespace liveio::policy::clickhouse
