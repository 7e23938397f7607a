// The layout of a ClickHouse MergeTree part, for PartPrefetcher (policy/part_prefetch.h): the
// manifest naming the part's columns, and each column's files. Defined in clickhouse_part.cpp,
// which the glue line count (scripts/) includes.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace liveio::policy::clickhouse {

// The file of a part directory listing its columns.
extern const char* const kPartManifest;
// Per column: the marks file (read whole on a mark-cache miss) and the compressed data.
extern const char* const kIndexSuffix;
extern const char* const kDataSuffix;

// The column names of a manifest, in its order; empty when it is not one.
std::vector<std::string> part_columns(std::string_view manifest);
// A column's file name without its suffix.
std::string column_file_base(std::string_view column);
// The table a part directory belongs to (its parts share the columns' names, not the files).
std::string table_of(std::string_view part_dir);

}  // namespace liveio::policy::clickhouse
