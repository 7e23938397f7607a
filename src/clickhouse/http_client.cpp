#include "clickhouse/http_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cctype>
#include <cstring>

#include "base/errno_error.h"

namespace liveio::clickhouse {
namespace {

using Clock = std::chrono::steady_clock;

// Waits until `fd` is ready for `events` or the deadline passes.
Result<void> wait_ready(int fd, short events, Clock::time_point deadline, std::string_view what) {
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return make_error(ETIMEDOUT, fmt::format("{}: timed out", what));
        pollfd p{fd, events, 0};
        int n = ::poll(&p, 1, static_cast<int>(left.count()));
        if (n > 0) return {};
        if (n < 0 && errno != EINTR) return errno_error(errno, what);
    }
}

Result<void> send_all(int fd, std::string_view data, Clock::time_point deadline) {
    while (!data.empty()) {
        ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            data.remove_prefix(static_cast<size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (auto r = wait_ready(fd, POLLOUT, deadline, "sending the request"); !r) return r;
            continue;
        }
        return errno_error(n < 0 ? errno : EPIPE, "sending the request");
    }
    return {};
}

// Buffered reader over the socket that knows the deadline.
class Reader {
public:
    Reader(int fd, Clock::time_point deadline) : fd_(fd), deadline_(deadline) {}

    size_t received() const { return total_; }

    // Reads more bytes into the buffer; returns false on orderly EOF.
    Result<bool> fill() {
        char chunk[65536];
        for (;;) {
            ssize_t n = ::recv(fd_, chunk, sizeof chunk, MSG_DONTWAIT);
            if (n > 0) {
                buf_.append(chunk, static_cast<size_t>(n));
                total_ += static_cast<size_t>(n);
                return true;
            }
            if (n == 0) return false;
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (auto r = wait_ready(fd_, POLLIN, deadline_, "waiting for the reply"); !r)
                    return r.error();
                continue;
            }
            return errno_error(errno, "receiving the reply");
        }
    }

    // One line ending in CRLF (or LF), without the terminator.
    Result<std::string> line() {
        for (;;) {
            auto pos = buf_.find('\n', pos_);
            if (pos != std::string::npos) {
                std::string out = buf_.substr(pos_, pos - pos_);
                if (!out.empty() && out.back() == '\r') out.pop_back();
                pos_ = pos + 1;
                return out;
            }
            if (buf_.size() - pos_ > kMaxLine)
                return make_error(EPROTO, "reply line longer than 64 KiB");
            auto more = fill();
            if (!more) return more.error();
            if (!*more)
                return make_error(ECONNRESET, "connection closed in the middle of the reply");
        }
    }

    Result<void> exact(size_t n, std::string& out) {
        while (buf_.size() - pos_ < n) {
            compact();
            auto more = fill();
            if (!more) return more.error();
            if (!*more)
                return make_error(ECONNRESET, "connection closed in the middle of the reply body");
        }
        out.append(buf_, pos_, n);
        pos_ += n;
        return {};
    }

    Result<void> until_eof(std::string& out) {
        for (;;) {
            out.append(buf_, pos_, std::string::npos);
            buf_.clear();
            pos_ = 0;
            auto more = fill();
            if (!more) return more.error();
            if (!*more) return {};
        }
    }

    bool drained() const { return pos_ == buf_.size(); }

private:
    static constexpr size_t kMaxLine = 65536;
    void compact() {
        if (pos_ > 0) {
            buf_.erase(0, pos_);
            pos_ = 0;
        }
    }
    int fd_;
    Clock::time_point deadline_;
    std::string buf_;
    size_t pos_ = 0;
    size_t total_ = 0;
};

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

Result<uint64_t> parse_number(std::string_view s, int base, std::string_view what) {
    s = trim(s);
    if (s.empty() || s.size() > 16) return make_error(EPROTO, fmt::format("bad {} '{}'", what, s));
    uint64_t v = 0;
    for (char c : s) {
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (base == 16 && c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (base == 16 && c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return make_error(EPROTO, fmt::format("bad {} '{}'", what, s));
        v = v * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
    }
    return v;
}

const char* format_name(InsertFormat f) {
    switch (f) {
        case InsertFormat::TabSeparated: return "TabSeparated";
        case InsertFormat::JSONEachRow: return "JSONEachRow";
    }
    return "TabSeparated";
}

}  // namespace

HttpClient::HttpClient(HttpClientOptions options) : options_(std::move(options)) {}

HttpClient::~HttpClient() { disconnect(); }

HttpClient::HttpClient(HttpClient&& other) noexcept
    : options_(std::move(other.options_)), fd_(std::exchange(other.fd_, -1)) {}

HttpClient& HttpClient::operator=(HttpClient&& other) noexcept {
    if (this != &other) {
        disconnect();
        options_ = std::move(other.options_);
        fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
}

void HttpClient::disconnect() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

Result<void> HttpClient::connect_socket() {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(options_.port);
    if (::inet_pton(AF_INET, options_.host.c_str(), &addr.sin_addr) != 1)
        return make_error(EINVAL, fmt::format("ClickHouse host '{}' is not a numeric IPv4 address",
                                              options_.host));
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return errno_error(errno, "socket");
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto where = fmt::format("connecting to ClickHouse at {}:{}", options_.host, options_.port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        if (errno != EINPROGRESS) {
            int e = errno;
            ::close(fd);
            return errno_error(e, where);
        }
        auto ready = wait_ready(fd, POLLOUT, Clock::now() + options_.timeout, where);
        int err = 0;
        socklen_t len = sizeof err;
        if (ready) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (!ready || err != 0) {
            ::close(fd);
            return ready ? errno_error(err, where) : ready.error();
        }
    }
    fd_ = fd;
    return {};
}

Result<HttpResponse> HttpClient::exchange(const std::string& request_bytes,
                                          bool* nothing_received) {
    *nothing_received = false;
    auto deadline = Clock::now() + options_.timeout;
    if (auto r = send_all(fd_, request_bytes, deadline); !r) {
        *nothing_received = true;
        return r.error();
    }
    Reader in(fd_, deadline);
    auto status_line = in.line();
    if (!status_line) {
        *nothing_received = in.received() == 0;
        return status_line.error();
    }
    // "HTTP/1.1 200 OK"
    std::string_view sl = *status_line;
    if (sl.substr(0, 5) != "HTTP/" || sl.find(' ') == std::string_view::npos)
        return make_error(EPROTO, fmt::format("not an HTTP reply: '{}'", sl.substr(0, 80)));
    sl.remove_prefix(sl.find(' ') + 1);
    auto status = parse_number(sl.substr(0, 3), 10, "HTTP status");
    if (!status) return status.error();

    bool chunked = false, close_after = false, have_length = false;
    uint64_t length = 0;
    for (;;) {
        auto header = in.line();
        if (!header) return header.error();
        if (header->empty()) break;
        std::string_view h = *header;
        auto colon = h.find(':');
        if (colon == std::string_view::npos) continue;
        auto name = trim(h.substr(0, colon));
        auto value = trim(h.substr(colon + 1));
        if (iequals(name, "Transfer-Encoding")) {
            chunked = iequals(value, "chunked");
        } else if (iequals(name, "Content-Length")) {
            auto n = parse_number(value, 10, "Content-Length");
            if (!n) return n.error();
            length = *n;
            have_length = true;
        } else if (iequals(name, "Connection")) {
            close_after = iequals(value, "close");
        }
    }

    HttpResponse response;
    response.status = static_cast<int>(*status);
    if (chunked) {
        for (;;) {
            auto size_line = in.line();
            if (!size_line) return size_line.error();
            std::string_view sz = *size_line;
            if (auto semi = sz.find(';'); semi != std::string_view::npos) sz = sz.substr(0, semi);
            auto n = parse_number(sz, 16, "chunk size");
            if (!n) return n.error();
            if (*n == 0) {
                // Trailers (none from ClickHouse) end with an empty line.
                for (;;) {
                    auto t = in.line();
                    if (!t) return t.error();
                    if (t->empty()) break;
                }
                break;
            }
            if (auto r = in.exact(*n, response.body); !r) return r.error();
            auto crlf = in.line();
            if (!crlf) return crlf.error();
        }
    } else if (have_length) {
        if (auto r = in.exact(length, response.body); !r) return r.error();
    } else {
        close_after = true;
        if (auto r = in.until_eof(response.body); !r) return r.error();
    }
    if (close_after || !in.drained()) disconnect();
    return response;
}

Result<HttpResponse> HttpClient::request(std::string_view method, std::string_view target,
                                         std::string_view body) {
    std::string req = fmt::format(
        "{} {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: liveio\r\nConnection: Keep-Alive\r\n"
        "X-ClickHouse-User: {}\r\nContent-Length: {}\r\n\r\n",
        method, target, options_.host, options_.port, options_.user, body.size());
    req.append(body);
    // A kept-alive connection the server has meanwhile closed (keep_alive_timeout) fails before
    // any reply byte arrives; the server never saw the request, so sending it again on a fresh
    // connection is safe. A fresh connection gets no second chance.
    for (int attempt = 0; attempt < 2; ++attempt) {
        bool reused = fd_ >= 0;
        if (!reused) {
            if (auto r = connect_socket(); !r) return r.error();
        }
        bool nothing_received = false;
        auto response = exchange(req, &nothing_received);
        if (response) return response;
        disconnect();
        if (!(reused && nothing_received)) return response.error();
    }
    return make_error(ECONNRESET, "ClickHouse closed the connection twice before replying");
}

Result<std::string> HttpClient::post_query(std::string_view query_in_url, std::string_view body) {
    std::string target = "/?wait_end_of_query=1";
    if (!options_.database.empty()) target += "&database=" + url_encode(options_.database);
    if (!query_in_url.empty()) target += "&query=" + url_encode(query_in_url);
    auto response = request("POST", target, body);
    if (!response) return response.error();
    if (response->status != 200) {
        std::string message = std::move(response->body);
        while (!message.empty() && (message.back() == '\n' || message.back() == '\r'))
            message.pop_back();
        if (message.empty()) message = fmt::format("HTTP status {}", response->status);
        // EREMOTEIO: the server ran the request and refused it; clickhouse_error_code() gives
        // ClickHouse's own code from the message.
        return make_error(EREMOTEIO, fmt::format("ClickHouse: {}", message));
    }
    return std::move(response->body);
}

Result<std::string> HttpClient::query(std::string_view sql) { return post_query({}, sql); }

Result<void> HttpClient::execute(std::string_view sql) {
    auto r = post_query({}, sql);
    if (!r) return r.error();
    return {};
}

Result<Rows> HttpClient::query_rows(std::string_view sql) {
    auto r = post_query({}, sql);
    if (!r) return r.error();
    return parse_tsv(*r);
}

Result<void> HttpClient::insert(std::string_view table, InsertFormat format, std::string_view rows,
                                const std::vector<std::string>& columns) {
    if (table.empty()) return make_error(EINVAL, "insert: empty table name");
    std::string sql = fmt::format("INSERT INTO {}", table);
    if (!columns.empty()) {
        sql += " (";
        for (size_t i = 0; i < columns.size(); ++i) sql += (i ? ", " : "") + columns[i];
        sql += ")";
    }
    sql += fmt::format(" FORMAT {}", format_name(format));
    auto r = post_query(sql, rows);
    if (!r) return r.error();
    return {};
}

Result<void> HttpClient::ping() {
    auto response = request("GET", "/ping", {});
    if (!response) return response.error();
    if (response->status != 200 || response->body != "Ok.\n")
        return make_error(EPROTO, fmt::format("/ping answered status {} '{}'", response->status,
                                              response->body.substr(0, 200)));
    return {};
}

std::string url_encode(std::string_view text) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(text.size() * 3);
    for (unsigned char c : text) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += kHex[c >> 4];
            out += kHex[c & 15];
        }
    }
    return out;
}

Rows parse_tsv(std::string_view text) {
    Rows rows;
    std::vector<std::string> row;
    std::string field;
    bool any = false;  // the current line has content (distinguishes "" from no row)
    for (size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c == '\\' && i + 1 < text.size()) {
            char e = text[++i];
            switch (e) {
                case 't': field += '\t'; break;
                case 'n': field += '\n'; break;
                case 'r': field += '\r'; break;
                case 'b': field += '\b'; break;
                case 'f': field += '\f'; break;
                case '0': field += '\0'; break;
                case 'a': field += '\a'; break;
                case 'v': field += '\v'; break;
                default: field += e; break;  // \\ \' and any other escaped character
            }
            any = true;
        } else if (c == '\t') {
            row.push_back(std::move(field));
            field.clear();
            any = true;
        } else if (c == '\n') {
            row.push_back(std::move(field));
            field.clear();
            rows.push_back(std::move(row));
            row.clear();
            any = false;
        } else {
            field += c;
            any = true;
        }
    }
    if (any) {
        row.push_back(std::move(field));
        rows.push_back(std::move(row));
    }
    return rows;
}

std::string tsv_escape(std::string_view field) {
    std::string out;
    out.reserve(field.size());
    for (char c : field) {
        switch (c) {
            case '\t': out += "\\t"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\\': out += "\\\\"; break;
            case '\0': out += "\\0"; break;
            default: out += c; break;
        }
    }
    return out;
}

int clickhouse_error_code(std::string_view message) {
    auto pos = message.find("Code: ");
    if (pos == std::string_view::npos) return 0;
    int code = 0;
    for (size_t i = pos + 6, end = std::min(message.size(), pos + 6 + 9);
         i < end && std::isdigit(static_cast<unsigned char>(message[i])); ++i)
        code = code * 10 + (message[i] - '0');
    return code;
}

}  // namespace liveio::clickhouse
