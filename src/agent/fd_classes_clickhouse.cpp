// clickhouse-glue
// The ClickHouse glue of the file classification: MergeTree part files by name.
//
// A part is a directory <data path>/data/<database>/<table>/<part>/ whose name is
// <partition>_<min block>_<max block>_<level>[_<mutation>] (e.g. 201901_1_1_0, all_3_8_1);
// it holds one <column>.bin (compressed data) and <column>.mrk / .mrk2 (marks) per column,
// primary.idx, and small files (checksums.txt, columns.txt, count.txt, minmax_*.idx,
// partition.dat).
#include <string_view>

#include "agent/fd_classes.h"
#include "liveio/io_edge.h"

namespace liveio::agent {
namespace {

bool all_digits(std::string_view s) {
    if (s.empty()) return false;
    for (char c : s)
        if (c < '0' || c > '9') return false;
    return true;
}

// <partition>_<min>_<max>_<level>[_<mutation>]: at least three numeric fields after the
// partition id (which may itself contain underscores).
bool is_part_name(std::string_view dir) {
    int numeric = 0;
    while (!dir.empty()) {
        const size_t us = dir.rfind('_');
        if (us == std::string_view::npos) break;
        if (!all_digits(dir.substr(us + 1))) break;
        ++numeric;
        dir = dir.substr(0, us);
    }
    return numeric >= 3 && !dir.empty();
}

// Whether `dir` lies at least two levels (database, table) below a "data" directory.
bool under_data_dir(std::string_view dir) {
    for (size_t pos = dir.find("/data/"); pos != std::string_view::npos;
         pos = dir.find("/data/", pos + 1)) {
        std::string_view below = dir.substr(pos + 6);
        const size_t slash = below.find('/');
        if (slash != std::string_view::npos && slash > 0 && slash + 1 < below.size()) return true;
    }
    return false;
}

}  // namespace

uint32_t classify_clickhouse_path(std::string_view path) {
    const size_t slash = path.rfind('/');
    const std::string_view name = slash == std::string_view::npos ? path : path.substr(slash + 1);
    const std::string_view dir =
        slash == std::string_view::npos ? std::string_view() : path.substr(0, slash);
    if (name.ends_with(".bin")) return LIVEIO_CLASS_CH_BIN;
    if (name.ends_with(".mrk") || name.ends_with(".mrk2")) return LIVEIO_CLASS_CH_MRK;
    if (name == "primary.idx") return LIVEIO_CLASS_CH_PRIMARY;
    const size_t dslash = dir.rfind('/');
    const std::string_view dir_name =
        dslash == std::string_view::npos ? dir : dir.substr(dslash + 1);
    if (is_part_name(dir_name) || under_data_dir(dir)) return LIVEIO_CLASS_CH_OTHER;
    return LIVEIO_CLASS_FILE;
}

}  // namespace liveio::agent
