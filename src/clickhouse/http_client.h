// A small client for ClickHouse's HTTP interface (the one every ClickHouse since 1.1 serves on
// http_port): run a query and get its text output, insert rows given as TabSeparated or
// JSONEachRow text, ping. Errors carry ClickHouse's own message ("Code: 47, e.displayText() =
// DB::Exception: Unknown identifier: x ...") and its numeric code.
//
// Plain sockets, HTTP/1.1 with keep-alive: one connection is reused across requests, which is
// what a real client (and the server's I/O we observe) looks like. Not thread-safe: one client
// per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace liveio::clickhouse {

enum class InsertFormat { TabSeparated, JSONEachRow };

struct HttpClientOptions {
    std::string host = "127.0.0.1";  // numeric IPv4 address; the test bed listens on loopback
    uint16_t port = 8123;
    std::string user = "default";
    std::string database;  // empty: the server's default database
    // Bounds every connect, send and receive; a query running longer fails with ETIMEDOUT.
    std::chrono::milliseconds timeout{120000};
};

// Parsed reply of one request.
struct HttpResponse {
    int status = 0;
    std::string body;
};

// Result of a query with its tab-separated rows split into fields (TSV escapes undone).
using Rows = std::vector<std::vector<std::string>>;

class HttpClient {
public:
    explicit HttpClient(HttpClientOptions options);
    ~HttpClient();
    HttpClient(HttpClient&& other) noexcept;
    HttpClient& operator=(HttpClient&& other) noexcept;
    HttpClient(const HttpClient&) = delete;
    HttpClient& operator=(const HttpClient&) = delete;

    // Runs `sql` and returns the server's output verbatim (TabSeparated unless the query says
    // FORMAT ...). The server is asked to finish the query before answering
    // (wait_end_of_query=1), so an exception thrown mid-query is an error here, never a
    // truncated result.
    Result<std::string> query(std::string_view sql);

    // Runs a statement whose output is not needed (DDL, INSERT ... SELECT).
    Result<void> execute(std::string_view sql);

    // Runs `sql` (TabSeparated output) and splits the output into rows and fields.
    Result<Rows> query_rows(std::string_view sql);

    // Inserts rows given in `format` into `table` ("db.table" or "table"); `columns` optionally
    // names the columns the rows hold, in order.
    Result<void> insert(std::string_view table, InsertFormat format, std::string_view rows,
                        const std::vector<std::string>& columns = {});

    // True when GET /ping answers "Ok.".
    Result<void> ping();

    // Sends one raw request (method "GET" or "POST", `target` is the path with query string)
    // and returns the reply whatever its status.
    Result<HttpResponse> request(std::string_view method, std::string_view target,
                                 std::string_view body);

    const HttpClientOptions& options() const { return options_; }

    // Closes the kept-alive connection; the next request opens a new one.
    void disconnect();

private:
    Result<void> connect_socket();
    Result<HttpResponse> exchange(const std::string& request_bytes, bool* nothing_received);
    Result<std::string> post_query(std::string_view query_in_url, std::string_view body);

    HttpClientOptions options_;
    int fd_ = -1;
};

// Percent-encodes `text` for a URL query string component.
std::string url_encode(std::string_view text);

// Splits TabSeparated text into rows of fields, undoing the format's escapes (\t \n \\ ...).
Rows parse_tsv(std::string_view text);

// Escapes a field for TabSeparated input.
std::string tsv_escape(std::string_view field);

// ClickHouse's exception code from a message "Code: N, ...", or 0 when it has none.
int clickhouse_error_code(std::string_view message);

}  // namespace liveio::clickhouse
