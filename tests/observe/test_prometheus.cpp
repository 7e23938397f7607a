// The Prometheus exposition we serve, checked by parsing it back with a strict parser, and the
// parser checked against texts Prometheus rejects.
#include <gtest/gtest.h>

#include <cmath>

#include "observe/prometheus.h"

namespace liveio::observe {
namespace {

// The sample's value, or NaN (failing the test) when there is not exactly one.
double val(const PromExposition& e, std::string_view name,
           const std::map<std::string, std::string>& labels) {
    auto r = e.value(name, labels);
    EXPECT_TRUE(r) << r.error().message;
    return r ? r.value() : std::nan("");
}

ProcessMetrics process(pid_t pid, const std::string& comm) {
    ProcessMetrics p;
    p.pid = pid;
    p.comm = comm;
    p.up = true;
    Counters pread;
    pread.calls = 1000;
    pread.bytes = 1000 * 4096;
    pread.errors = 2;
    pread.hist[9] = 600;                    // [512, 1024) ns
    pread.hist[10] = 399;                   // [1024, 2048)
    pread.hist[LIVEIO_HIST_SLOTS - 1] = 1;  // >= 2^31 ns
    pread.latency_ns = 600 * 700 + 399 * 1500 + 3'000'000'000ull;
    Counters write;
    write.calls = 5;
    write.bytes = 50;
    write.hist[12] = 5;
    write.latency_ns = 5 * 5000;
    p.snapshot.syscalls = {{1, "write", write}, {17, "pread64", pread}};
    p.snapshot.classes = {{LIVEIO_CLASS_CH_BIN, LIVEIO_IO_READ, pread}};
    return p;
}

TEST(Prometheus, RenderedTextParsesBackToTheCounters) {
    ProcessMetrics gone;
    gone.pid = 99;
    gone.comm = "gone";
    gone.up = false;
    const std::string text =
        render_prometheus({process(42, "clickhouse-serv"), process(43, "we\"ird\\name\n"), gone});
    auto parsed = parse_prometheus(text);
    ASSERT_TRUE(parsed) << parsed.error().message << "\n" << text;
    const PromExposition& e = *parsed;

    EXPECT_EQ(val(e, "liveio_syscalls_total", {{"pid", "42"}, {"syscall", "pread64"}}), 1000);
    EXPECT_EQ(val(e, "liveio_io_bytes_total", {{"pid", "42"}, {"syscall", "pread64"}}), 4096000);
    EXPECT_EQ(val(e, "liveio_syscall_errors_total", {{"pid", "42"}, {"syscall", "pread64"}}), 2);
    EXPECT_EQ(val(e, "liveio_syscalls_total", {{"pid", "43"}, {"syscall", "write"}}), 5);
    // Escaped label values come back as they were.
    EXPECT_EQ(val(e, "liveio_syscalls_total", {{"comm", "we\"ird\\name\n"}, {"syscall", "write"}}),
              5);
    // Buckets: cumulative, le in seconds at the slots' upper bounds.
    EXPECT_EQ(val(e, "liveio_io_latency_seconds_bucket",
                  {{"pid", "42"}, {"syscall", "pread64"}, {"le", "1.024e-06"}}),
              600);
    EXPECT_EQ(val(e, "liveio_io_latency_seconds_bucket",
                  {{"pid", "42"}, {"syscall", "pread64"}, {"le", "2.048e-06"}}),
              999);
    EXPECT_EQ(val(e, "liveio_io_latency_seconds_bucket",
                  {{"pid", "42"}, {"syscall", "pread64"}, {"le", "+Inf"}}),
              1000);
    EXPECT_EQ(val(e, "liveio_io_latency_seconds_count", {{"pid", "42"}, {"syscall", "pread64"}}),
              1000);
    EXPECT_NEAR(val(e, "liveio_io_latency_seconds_sum", {{"pid", "42"}, {"syscall", "pread64"}}),
                3.00102, 1e-5);
    EXPECT_EQ(val(e, "liveio_class_calls_total",
                  {{"pid", "42"}, {"class", ".bin"}, {"direction", "read"}}),
              1000);
    EXPECT_EQ(val(e, "liveio_target_up", {{"pid", "42"}}), 1);
    EXPECT_EQ(val(e, "liveio_target_up", {{"pid", "99"}}), 0);
    EXPECT_FALSE(e.value("liveio_syscalls_total", {{"pid", "99"}}));

    bool typed = false;
    for (const auto& f : e.families)
        if (f.name == "liveio_io_latency_seconds") typed = f.type == "histogram" && !f.help.empty();
    EXPECT_TRUE(typed);
}

TEST(Prometheus, EmptyProcessListIsValid) {
    auto parsed = parse_prometheus(render_prometheus({}));
    ASSERT_TRUE(parsed) << parsed.error().message;
    EXPECT_TRUE(parsed->samples.empty());
    EXPECT_FALSE(parsed->families.empty());
}

void expect_rejected(const std::string& text, const std::string& fragment) {
    auto parsed = parse_prometheus(text);
    ASSERT_FALSE(parsed) << "accepted:\n" << text;
    EXPECT_NE(parsed.error().message.find(fragment), std::string::npos) << parsed.error().message;
}

TEST(PrometheusParser, RejectsMalformedExpositions) {
    expect_rejected("a 1", "newline");
    expect_rejected("1abc 1\n", "bad metric name");
    expect_rejected("a{b=\"x} 1\n", "unterminated");
    expect_rejected("a{b=x} 1\n", "not quoted");
    expect_rejected("a{b=\"\\t\"} 1\n", "bad escape");
    expect_rejected("a{b:c=\"1\"} 1\n", "bad label name");
    expect_rejected("a{b=\"1\",b=\"2\"} 1\n", "twice");
    expect_rejected("a one\n", "bad value");
    expect_rejected("a 1 12x\n", "bad timestamp");
    expect_rejected("a 1\n# TYPE a counter\n", "after its samples");
    expect_rejected("# TYPE a counter\n# TYPE a gauge\n", "second TYPE");
    expect_rejected("# TYPE a countr\n", "unknown type");
    expect_rejected("a 1\nb 1\na 2\n", "not together");
    const std::string h = "# TYPE h histogram\n";
    expect_rejected(
        h + "h_bucket{le=\"1\"} 5\nh_bucket{le=\"2\"} 3\nh_bucket{le=\"+Inf\"} 5\nh_count 5\n",
        "not cumulative");
    expect_rejected(h + "h_bucket{le=\"1\"} 5\nh_count 5\n", "+Inf");
    expect_rejected(h + "h_bucket{le=\"+Inf\"} 5\nh_count 4\n", "_count");
    expect_rejected(h + "h_bucket 5\n", "without le");
}

TEST(PrometheusParser, AcceptsTheFormatsVariants) {
    auto parsed = parse_prometheus(
        "# HELP a some help\n# TYPE a counter\na{x=\"1\",} 1e3 1700000000000\n# a comment\n\n"
        "b NaN\nc +Inf\nd -1.5e-3\n");
    ASSERT_TRUE(parsed) << parsed.error().message;
    EXPECT_EQ(val(*parsed, "a", {{"x", "1"}}), 1000);
    EXPECT_EQ(val(*parsed, "d", {}), -0.0015);
    EXPECT_EQ(parsed->families.size(), 1u);
    EXPECT_EQ(parsed->families[0].help, "some help");
}

}  // namespace
}  // namespace liveio::observe
