#include "observe/prometheus.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <set>
#include <tuple>

#include <fmt/format.h>

namespace liveio::observe {
namespace {

std::string escape_label(std::string_view v) {
    std::string out;
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

using Labels = std::vector<std::pair<std::string, std::string>>;

std::string label_text(const Labels& labels) {
    std::string out;
    for (const auto& [k, v] : labels)
        out += fmt::format("{}{}=\"{}\"", out.empty() ? "" : ",", k, escape_label(v));
    return "{" + out + "}";
}

// Collects the lines of each family so that the output keeps every family's samples together
// whatever order the processes and rows come in.
class Writer {
public:
    void family(const std::string& name, const char* type, const char* help) {
        order_.push_back(name);
        head_[name] = fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    }
    void sample(const std::string& family, const std::string& name, const Labels& labels,
                std::string value) {
        body_[family] += fmt::format("{}{} {}\n", name, label_text(labels), value);
    }
    void histogram(const std::string& family, Labels labels, const Counters& c) {
        uint64_t cumulative = 0;
        labels.emplace_back("le", "");
        for (size_t i = 0; i + 1 < c.hist.size(); ++i) {
            cumulative += c.hist[i];
            labels.back().second = fmt::format("{}", static_cast<double>(*slot_high_ns(i)) / 1e9);
            sample(family, family + "_bucket", labels, std::to_string(cumulative));
        }
        cumulative += c.hist.back();
        labels.back().second = "+Inf";
        sample(family, family + "_bucket", labels, std::to_string(cumulative));
        labels.pop_back();
        sample(family, family + "_sum", labels,
               fmt::format("{}", static_cast<double>(c.latency_ns) / 1e9));
        // _count must equal the +Inf bucket; calls may run one ahead of the slots in a read
        // that raced with the program, so the histogram's own total is what is consistent.
        sample(family, family + "_count", labels, std::to_string(cumulative));
    }
    std::string text() const {
        std::string out;
        for (const auto& name : order_) {
            out += head_.at(name);
            if (auto it = body_.find(name); it != body_.end()) out += it->second;
        }
        return out;
    }

private:
    std::vector<std::string> order_;
    std::map<std::string, std::string> head_, body_;
};

}  // namespace

std::string render_prometheus(const std::vector<ProcessMetrics>& processes) {
    Writer w;
    w.family("liveio_target_up", "gauge",
             "1 when the io_stats maps of the process were read for this scrape.");
    w.family("liveio_syscalls_total", "counter",
             "Calls of each syscall seen at liveio's I/O edge.");
    w.family("liveio_syscall_errors_total", "counter", "Calls that returned an error (-errno).");
    w.family("liveio_io_bytes_total", "counter",
             "Bytes transferred by read- and write-direction calls.");
    w.family("liveio_io_latency_seconds", "histogram", "Latency of each syscall (log2 buckets).");
    w.family("liveio_class_calls_total", "counter", "Calls per file class and direction.");
    w.family("liveio_class_bytes_total", "counter", "Bytes per file class and direction.");
    w.family("liveio_class_latency_seconds", "histogram",
             "Latency per file class and direction (log2 buckets).");
    w.family("liveio_socket_calls_total", "counter",
             "Calls per TCP socket (local and remote address) and direction.");
    w.family("liveio_socket_bytes_total", "counter", "Bytes per TCP socket and direction.");
    w.family("liveio_socket_latency_seconds", "histogram",
             "Call latency per TCP socket and direction (log2 buckets).");
    for (const auto& p : processes) {
        const Labels base{{"pid", std::to_string(p.pid)}, {"comm", p.comm}};
        w.sample("liveio_target_up", "liveio_target_up", base, p.up ? "1" : "0");
        if (!p.up) continue;
        for (const auto& row : p.snapshot.syscalls) {
            Labels l = base;
            l.emplace_back("syscall", row.name);
            w.sample("liveio_syscalls_total", "liveio_syscalls_total", l,
                     std::to_string(row.counters.calls));
            w.sample("liveio_syscall_errors_total", "liveio_syscall_errors_total", l,
                     std::to_string(row.counters.errors));
            w.sample("liveio_io_bytes_total", "liveio_io_bytes_total", l,
                     std::to_string(row.counters.bytes));
            w.histogram("liveio_io_latency_seconds", l, row.counters);
        }
        for (const auto& row : p.snapshot.classes) {
            Labels l = base;
            l.emplace_back("class", class_name(row.file_class));
            l.emplace_back("direction", direction_name(row.direction));
            w.sample("liveio_class_calls_total", "liveio_class_calls_total", l,
                     std::to_string(row.counters.calls));
            w.sample("liveio_class_bytes_total", "liveio_class_bytes_total", l,
                     std::to_string(row.counters.bytes));
            w.histogram("liveio_class_latency_seconds", l, row.counters);
        }
        // Sockets closed before their address was seen share one (empty) label set: summed, as
        // a series may appear once per scrape.
        std::map<std::tuple<std::string, std::string, uint32_t>, Counters> by_labels;
        for (const auto& sock : p.sockets)
            for (uint32_t dir = 0; dir < 3; ++dir)
                if (!sock.counters.dir[dir].empty())
                    by_labels[{sock.connection.local(), sock.connection.remote(), dir}] +=
                        sock.counters.dir[dir];
        for (const auto& [key, c] : by_labels) {
            const auto& [local, remote, dir] = key;
            Labels l = base;
            l.emplace_back("local", local);
            l.emplace_back("remote", remote);
            l.emplace_back("direction", direction_name(dir));
            w.sample("liveio_socket_calls_total", "liveio_socket_calls_total", l,
                     std::to_string(c.calls));
            w.sample("liveio_socket_bytes_total", "liveio_socket_bytes_total", l,
                     std::to_string(c.bytes));
            w.histogram("liveio_socket_latency_seconds", l, c);
        }
    }
    return w.text();
}

// ---- parsing ----

namespace {

bool valid_metric_name(std::string_view n) {
    if (n.empty()) return false;
    for (size_t i = 0; i < n.size(); ++i) {
        const char c = n[i];
        const bool ok = std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
                        (i > 0 && std::isdigit(static_cast<unsigned char>(c)));
        if (!ok) return false;
    }
    return true;
}

bool valid_label_name(std::string_view n) {
    return valid_metric_name(n) && n.find(':') == std::string_view::npos;
}

// Go's strconv.ParseFloat as Prometheus uses it: decimal/exponent forms, +Inf, -Inf, NaN.
std::optional<double> parse_value(std::string_view s) {
    if (s == "+Inf" || s == "Inf") return HUGE_VAL;
    if (s == "-Inf") return -HUGE_VAL;
    if (s == "NaN") return std::nan("");
    if (s.empty()) return std::nullopt;
    const std::string copy(s);
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(copy.c_str(), &end);
    if (end != copy.c_str() + copy.size() || copy.find_first_of("xXpP") != std::string::npos)
        return std::nullopt;
    if (std::isinf(v) || std::isnan(v)) return std::nullopt;  // "inf"/"nan" spellings Go rejects
    return v;
}

Error line_error(size_t line, const std::string& what) {
    return make_error(EINVAL, fmt::format("line {}: {}", line, what));
}

std::string base_name(const std::string& name, const std::map<std::string, PromFamily>& families) {
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        const std::string_view sv(suffix);
        if (name.size() > sv.size() && name.ends_with(sv)) {
            const std::string base = name.substr(0, name.size() - sv.size());
            auto it = families.find(base);
            if (it != families.end() &&
                (it->second.type == "histogram" || it->second.type == "summary"))
                return base;
        }
    }
    return name;
}

Result<void> check_histograms(const PromExposition& e) {
    for (const auto& fam : e.families) {
        if (fam.type != "histogram") continue;
        // Series: labels without le -> (le -> value), and _count.
        std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>>
            buckets;
        std::map<std::map<std::string, std::string>, double> counts;
        for (const auto& s : e.samples) {
            auto labels = s.labels;
            if (s.name == fam.name + "_bucket") {
                auto le = labels.find("le");
                if (le == labels.end())
                    return make_error(EINVAL, fmt::format("{}: bucket without le label", s.name));
                auto bound = parse_value(le->second);
                if (!bound)
                    return make_error(EINVAL, fmt::format("{}: bad le \"{}\"", s.name, le->second));
                labels.erase(le);
                buckets[labels].emplace_back(*bound, s.value);
            } else if (s.name == fam.name + "_count") {
                counts[labels] = s.value;
            }
        }
        for (auto& [labels, series] : buckets) {
            std::stable_sort(series.begin(), series.end());
            for (size_t i = 1; i < series.size(); ++i)
                if (series[i].second < series[i - 1].second)
                    return make_error(
                        EINVAL,
                        fmt::format("{}: bucket le={} holds {} < {} of le={} (not cumulative)",
                                    fam.name, series[i].first, series[i].second,
                                    series[i - 1].second, series[i - 1].first));
            if (series.empty() || !std::isinf(series.back().first))
                return make_error(EINVAL, fmt::format("{}: a series has no +Inf bucket", fam.name));
            auto c = counts.find(labels);
            if (c == counts.end() || c->second != series.back().second)
                return make_error(EINVAL,
                                  fmt::format("{}: _count differs from the +Inf bucket", fam.name));
        }
    }
    return {};
}

}  // namespace

Result<PromExposition> parse_prometheus(std::string_view text) {
    PromExposition out;
    std::map<std::string, PromFamily> families;
    std::set<std::string> finished;  // families whose samples ended (another family followed)
    std::set<std::string> sampled;
    std::string current;
    size_t lineno = 0;
    size_t pos = 0;
    if (!text.empty() && text.back() != '\n')
        return make_error(EINVAL, "the exposition does not end with a newline");
    while (pos < text.size()) {
        const size_t nl = text.find('\n', pos);
        const std::string_view line = text.substr(pos, nl - pos);
        pos = nl + 1;
        ++lineno;
        if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
        if (line[0] == '#') {
            // "# HELP name text" / "# TYPE name type"; other comments are ignored.
            std::string_view rest = line.substr(1);
            rest.remove_prefix(std::min(rest.find_first_not_of(' '), rest.size()));
            const bool help = rest.starts_with("HELP "), type = rest.starts_with("TYPE ");
            if (!help && !type) continue;
            rest.remove_prefix(5);
            const size_t sp = rest.find(' ');
            const std::string name(rest.substr(0, sp));
            const std::string arg(sp == std::string_view::npos ? "" : rest.substr(sp + 1));
            if (!valid_metric_name(name))
                return line_error(lineno, "bad metric name '" + name + "'");
            auto& fam = families[name];
            if (fam.name.empty()) {
                fam.name = name;
                out.families.push_back({name, "", ""});
            }
            if (sampled.count(name))
                return line_error(lineno, fmt::format("{} for '{}' after its samples",
                                                      help ? "HELP" : "TYPE", name));
            if (type) {
                static const std::set<std::string> kTypes{"counter", "gauge", "histogram",
                                                          "summary", "untyped"};
                if (!kTypes.count(arg)) return line_error(lineno, "unknown type '" + arg + "'");
                if (!fam.type.empty())
                    return line_error(lineno, "second TYPE line for '" + name + "'");
                fam.type = arg;
            } else {
                fam.help = arg;
            }
            for (auto& f : out.families)
                if (f.name == name) f = fam;
            continue;
        }
        PromSample s;
        size_t i = 0;
        while (i < line.size() && line[i] != '{' && line[i] != ' ' && line[i] != '\t') ++i;
        s.name = std::string(line.substr(0, i));
        if (!valid_metric_name(s.name))
            return line_error(lineno, "bad metric name '" + s.name + "'");
        if (i < line.size() && line[i] == '{') {
            ++i;
            while (true) {
                while (i < line.size() && line[i] == ' ') ++i;
                if (i < line.size() && line[i] == '}') {
                    ++i;
                    break;
                }
                size_t eq = line.find('=', i);
                if (eq == std::string_view::npos) return line_error(lineno, "label without '='");
                std::string key(line.substr(i, eq - i));
                while (!key.empty() && key.back() == ' ') key.pop_back();
                if (!valid_label_name(key))
                    return line_error(lineno, "bad label name '" + key + "'");
                i = eq + 1;
                while (i < line.size() && line[i] == ' ') ++i;
                if (i >= line.size() || line[i] != '"')
                    return line_error(lineno, "label value of '" + key + "' not quoted");
                ++i;
                std::string value;
                bool closed = false;
                while (i < line.size()) {
                    const char c = line[i++];
                    if (c == '"') {
                        closed = true;
                        break;
                    }
                    if (c == '\\') {
                        if (i >= line.size()) break;
                        const char e = line[i++];
                        if (e == 'n')
                            value += '\n';
                        else if (e == '\\' || e == '"')
                            value += e;
                        else
                            return line_error(
                                lineno, fmt::format("bad escape '\\{}' in label '{}'", e, key));
                    } else {
                        value += c;
                    }
                }
                if (!closed) return line_error(lineno, "unterminated value of label '" + key + "'");
                if (!s.labels.emplace(key, value).second)
                    return line_error(lineno, "label '" + key + "' twice");
                while (i < line.size() && line[i] == ' ') ++i;
                if (i < line.size() && line[i] == ',')
                    ++i;
                else if (i < line.size() && line[i] == '}')
                    continue;
                else
                    return line_error(lineno, "expected ',' or '}' after a label");
            }
        }
        std::string_view rest = line.substr(i);
        rest.remove_prefix(std::min(rest.find_first_not_of(" \t"), rest.size()));
        const size_t sp = rest.find_first_of(" \t");
        const std::string_view value_text = rest.substr(0, sp);
        if (sp != std::string_view::npos) {
            std::string_view ts = rest.substr(sp);
            ts.remove_prefix(std::min(ts.find_first_not_of(" \t"), ts.size()));
            int64_t t;
            if (!ts.empty() &&
                std::from_chars(ts.data(), ts.data() + ts.size(), t).ptr != ts.data() + ts.size())
                return line_error(lineno, "bad timestamp '" + std::string(ts) + "'");
        }
        auto v = parse_value(value_text);
        if (!v) return line_error(lineno, "bad value '" + std::string(value_text) + "'");
        s.value = *v;
        const std::string fam = base_name(s.name, families);
        if (fam != current) {
            if (finished.count(fam))
                return line_error(lineno, "samples of '" + fam + "' are not together");
            if (!current.empty()) finished.insert(current);
            current = fam;
        }
        sampled.insert(fam);
        out.samples.push_back(std::move(s));
    }
    if (auto ok = check_histograms(out); !ok) return ok.error();
    return out;
}

Result<double> PromExposition::value(std::string_view name,
                                     const std::map<std::string, std::string>& labels) const {
    const PromSample* found = nullptr;
    for (const auto& s : samples) {
        if (s.name != name) continue;
        const bool match = std::all_of(labels.begin(), labels.end(), [&](const auto& kv) {
            auto it = s.labels.find(kv.first);
            return it != s.labels.end() && it->second == kv.second;
        });
        if (!match) continue;
        if (found) return make_error(EINVAL, fmt::format("several samples of {} match", name));
        found = &s;
    }
    if (!found) return make_error(ENOENT, fmt::format("no sample of {} matches", name));
    return found->value;
}

}  // namespace liveio::observe
