#include "clickhouse_report.h"

#include "clickhouse_system.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include <fmt/format.h>

namespace liveio::bench {
namespace {

// Stock's cold/hot ratio from which a query counts as having a cold-hot gap worth closing.
constexpr double kGapRatio = 1.3;

const Timings* find(const Phase& phase, const std::string& query, const std::string& config) {
    auto q = phase.timings.find(query);
    if (q == phase.timings.end()) return nullptr;
    auto c = q->second.find(config);
    return c == q->second.end() ? nullptr : &c->second;
}

std::optional<double> geomean(const std::vector<double>& ratios) {
    if (ratios.empty()) return std::nullopt;
    double log_sum = 0;
    for (double r : ratios) log_sum += std::log(r);
    return std::exp(log_sum / static_cast<double>(ratios.size()));
}

std::string fmt_ms(double ms) {
    return ms >= 100  ? fmt::format("{:.0f}", ms)
           : ms >= 10 ? fmt::format("{:.1f}", ms)
                      : fmt::format("{:.2f}", ms);
}

}  // namespace

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double spread(const std::vector<double>& v) {
    if (v.empty()) return 0;
    auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    return *hi - *lo;
}

ConfigSummary summarize(const Phase& phase, const std::vector<QueryInfo>& queries,
                        const std::string& config) {
    ConfigSummary s;
    std::vector<double> cold, hot, first, pk_cold, gap;
    for (const auto& q : queries) {
        const Timings* stock = find(phase, q.name, "stock");
        const Timings* t = find(phase, q.name, config);
        if (!stock || !t || stock->cold_ms.empty() || t->cold_ms.empty()) continue;
        const double sc = median(stock->cold_ms), c = median(t->cold_ms);
        if (sc <= 0 || c <= 0) continue;
        (q.point_lookup ? pk_cold : cold).push_back(sc / c);
        switch (compare(stock->cold_ms, t->cold_ms)) {
            case Verdict::Faster: ++s.cold_faster; break;
            case Verdict::Slower: ++s.cold_slower; break;
            default: ++s.cold_within_noise; break;
        }
        if (compare(stock->hot_ms, t->hot_ms) == Verdict::Slower) ++s.hot_slower;
        if (!stock->hot_ms.empty() && !t->hot_ms.empty()) {
            const double sh = median(stock->hot_ms), h = median(t->hot_ms);
            if (sh > 0 && h > 0) {
                if (!q.point_lookup) hot.push_back(h / sh);
                // The share of this query's stock cold-hot gap the config removed.
                if (!q.point_lookup && sc / sh >= kGapRatio) gap.push_back((sc - c) / (sc - sh));
            }
        }
        if (!q.point_lookup && !stock->first_ms.empty() && !t->first_ms.empty()) {
            const double sf = median(stock->first_ms), f = median(t->first_ms);
            if (sf > 0 && f > 0) first.push_back(f / sf);
        }
    }
    s.cold_speedup_geomean = geomean(cold);
    if (auto g = geomean(hot)) s.hot_slowdown_pct = 100.0 * (*g - 1);
    if (auto g = geomean(first)) s.first_after_switch_slowdown_pct = 100.0 * (*g - 1);
    s.point_lookup_cold_speedup = geomean(pk_cold);
    s.gap_queries = gap.size();
    if (!gap.empty()) {
        double sum = 0;
        for (double g : gap) sum += g;
        s.cold_gap_recovered_pct = 100.0 * sum / static_cast<double>(gap.size());
    }
    return s;
}

Verdict compare(const std::vector<double>& stock, const std::vector<double>& config) {
    if (stock.empty() || config.empty()) return Verdict::Unknown;
    const double s = median(stock), c = median(config);
    const double noise = std::max(spread(stock), spread(config));
    if (std::abs(c - s) <= noise) return Verdict::WithinNoise;
    return c < s ? Verdict::Faster : Verdict::Slower;
}

namespace {

const char* mark(Verdict v) {
    switch (v) {
        case Verdict::Faster: return "+";
        case Verdict::Slower: return "!";
        case Verdict::WithinNoise: return "~";
        case Verdict::Unknown: break;
    }
    return " ";
}

// "median [min-max]" of one configuration's runs.
std::string cell_of(const std::vector<double>& v) {
    if (v.empty()) return "-";
    auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    return fmt::format("{} [{}-{}]", fmt_ms(median(v)), fmt_ms(*lo), fmt_ms(*hi));
}

void print_kind_table(const Phase& phase, const std::vector<QueryInfo>& queries,
                      const std::vector<Config>& configs, bool hot) {
    auto runs_of = [hot](const Timings& t) -> const std::vector<double>& {
        return hot ? t.hot_ms : t.cold_ms;
    };
    std::string header = fmt::format("{:<5}", hot ? "hot" : "cold");
    for (const auto& c : configs)
        if (c.available) header += fmt::format(" | {:>30}", c.name);
    if (!phase.device.empty()) header += " | device";
    fmt::print("{}\n{}\n", header, std::string(header.size(), '-'));
    for (const auto& q : queries) {
        const Timings* stock = find(phase, q.name, "stock");
        std::string line = fmt::format("{:<5}", q.name);
        for (const auto& c : configs) {
            if (!c.available) continue;
            const Timings* t = find(phase, q.name, c.name);
            if (!t || runs_of(*t).empty()) {
                line += fmt::format(" | {:>30}", "-");
                continue;
            }
            std::string cell = cell_of(runs_of(*t));
            if (c.kind != ConfigKind::Stock && stock && !runs_of(*stock).empty()) {
                const double ratio = hot ? median(runs_of(*t)) / median(runs_of(*stock))
                                         : median(runs_of(*stock)) / median(runs_of(*t));
                cell +=
                    fmt::format(" {:.2f}{}", ratio, mark(compare(runs_of(*stock), runs_of(*t))));
            }
            line += fmt::format(" | {:>30}", cell);
        }
        if (!phase.device.empty()) line += " | " + phase.device;
        fmt::print("{}\n", line);
    }
}

}  // namespace

void print_phase_table(const Phase& phase, const std::vector<QueryInfo>& queries,
                       const std::vector<Config>& configs) {
    print_kind_table(phase, queries, configs, false);
    if (phase.hot) {
        fmt::print("\n");
        print_kind_table(phase, queries, configs, true);
    }
    fmt::print(
        "ms: median [min-max] over the runs; then cold: stock's median / this config's (> 1 is "
        "faster), hot: this\n"
        "config's median / stock's (> 1 is slower); '~' the difference of the medians lies inside "
        "the larger\n"
        "run-to-run spread (max - min) of the two (no measurable effect), '+' faster and '!' "
        "slower than stock\n"
        "by more than that spread.\n");
}

Result<std::string> plot_cold_speedups(const Phase& phase, const std::vector<QueryInfo>& queries,
                                       const std::vector<Config>& configs,
                                       const std::string& out_dir, const std::string& title,
                                       const std::string& stem) {
    std::vector<const Config*> shown;
    for (const auto& c : configs)
        if (c.available && c.kind != ConfigKind::Stock) shown.push_back(&c);
    if (shown.empty()) return make_error(ENODATA, "no configuration besides stock to plot");
    const std::string data = out_dir + "/" + stem + ".tsv";
    const std::string script = out_dir + "/" + stem + ".gp";
    const std::string svg = out_dir + "/" + stem + ".svg";
    {
        std::ofstream out(data);
        // Per config: the median speedup and its range over the config's runs (stock's median
        // over this config's slowest and fastest run).
        out << "query";
        for (auto* c : shown)
            out << '\t' << c->name << '\t' << c->name << "_low\t" << c->name << "_high";
        out << '\n';
        for (const auto& q : queries) {
            const Timings* stock = find(phase, q.name, "stock");
            out << q.name;
            for (auto* c : shown) {
                const Timings* t = find(phase, q.name, c->name);
                if (stock && t && !stock->cold_ms.empty() && !t->cold_ms.empty()) {
                    const double sm = median(stock->cold_ms);
                    auto [lo, hi] = std::minmax_element(t->cold_ms.begin(), t->cold_ms.end());
                    out << '\t'
                        << fmt::format("{:.4f}\t{:.4f}\t{:.4f}", sm / median(t->cold_ms), sm / *hi,
                                       sm / *lo);
                } else {
                    out << "\t?\t?\t?";
                }
            }
            out << '\n';
        }
        if (!out) return make_error(EIO, "cannot write " + data);
    }
    {
        std::ofstream gp(script);
        gp << "set terminal svg size 1600,600 dynamic background rgb 'white'\n"
           << "set output '" << svg << "'\n"
           << "set datafile missing '?'\n"
           << "set title \"" << title
           << "\\nbar: stock median / config median; whisker: stock median / config "
              "slowest..fastest run\" noenhanced\n"
           << "set ylabel 'cold speedup vs stock (x)'\n"
           << "set style data histograms\nset style histogram errorbars gap 1 lw 1\n"
           << "set style fill solid 0.8 border -1\nset boxwidth 0.9\n"
           << "set xtics rotate by -60 font ',9' noenhanced\nset grid ytics\nset key top left "
              "noenhanced\n"
           << "set yrange [0:*]\n"
           << "set arrow from graph 0, first 1 to graph 1, first 1 nohead lw 1 dt 2\n"
           << "plot '" << data << "' using 2:3:4:xtic(1) title columnhead(2)";
        for (size_t i = 1; i < shown.size(); ++i)
            gp << ", '' using " << 3 * i + 2 << ":" << 3 * i + 3 << ":" << 3 * i + 4
               << " title columnhead(" << 3 * i + 2 << ")";
        gp << '\n';
        if (!gp) return make_error(EIO, "cannot write " + script);
    }
    if (auto r = run_command(fmt::format("gnuplot '{}' 2>&1", script)); !r)
        return make_error(r.error().code, "gnuplot (Debian: gnuplot-nox): " + r.error().message);
    return svg;
}

}  // namespace liveio::bench
