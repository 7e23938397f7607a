// The data set and queries of `liveio bench clickhouse`: a hits-like table (the columns of
// ClickBench's `hits` that its 43 queries read, with ClickBench's types, column order and
// primary key) generated inside ClickHouse 18.16 by INSERT ... SELECT over numbers(), and
// ClickBench's queries adapted to 18.16, plus primary-key point lookups.
//
// The generator is deterministic (hashes of the row number, no rand()): a given row count
// always yields the same rows, so a cached data directory can be reused and results compared
// between runs. Distributions follow the real data's shape: CounterID and UserID skewed (a
// handful of counters, CounterID 62 the largest, hold most hits), URL/Referer 60-120 bytes
// sharing per-site prefixes, Title per page, SearchPhrase empty on ~87% of rows, EventTime
// spread over July 2013.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace liveio::bench::hits {

// Bumped whenever the generator or the table definition changes: a cache directory made by
// another version is regenerated.
inline constexpr int kGeneratorVersion = 1;

std::string create_table_sql(const std::string& table);

// INSERT ... SELECT of rows [first, first + count) of a data set of `total_rows` rows.
std::string insert_batch_sql(const std::string& table, uint64_t first, uint64_t count,
                             uint64_t total_rows);

struct Query {
    std::string name;  // "q00".."q42" (ClickBench's numbering from 0), "pk0".."pkN"
    std::string sql;
    std::string change;  // how it differs from ClickBench's text, "" when it does not
    bool point_lookup = false;
};

// Constants the queries take from the data (values that exist in it), resolved once per run.
struct QueryConstants {
    int64_t user_id = 0;             // Q19: a UserID present in the table
    int64_t referer_hash = 0;        // Q39: a RefererHash of CounterID 62
    int64_t url_hash = 0;            // Q40: a URLHash of CounterID 62
    std::vector<int64_t> watch_ids;  // point lookups: WatchIDs spread over the table
    std::vector<int32_t> counters;   // point lookups: (CounterID, EventDate, UserID) keys
    std::vector<std::string> dates;
    std::vector<int64_t> users;
};

// The SQL that finds the constants (each returns TabSeparated rows).
std::string constants_user_sql(const std::string& table);
std::string constants_hashes_sql(const std::string& table);
std::string constants_keys_sql(const std::string& table, uint64_t rows, int count);

// ClickBench's queries read table `hits`.
std::vector<Query> clickbench_queries(const QueryConstants& c);
std::vector<Query> point_lookup_queries(const std::string& table, const QueryConstants& c);

}  // namespace liveio::bench::hits
