// liveio-conformance-plugin end to end: the suite's cases through the plugin protocol
// (program hex on stdin, memory hex as argument, r0 as hex on stdout, non-zero exit on rejection).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include <fmt/format.h>

#include "ebpf/conformance_suite.h"

namespace liveio::ebpf {
namespace {

// The plugin is built next to this test: <build>/tools/conformance_plugin/.
std::filesystem::path plugin_path() {
    const auto self = std::filesystem::read_symlink("/proc/self/exe");
    return self.parent_path().parent_path().parent_path() / "tools" / "conformance_plugin" /
           "liveio-conformance-plugin";
}

struct PluginRun {
    int status = -1;
    std::string out;
};

PluginRun run_plugin(const std::filesystem::path& plugin, const std::string& program_hex,
                     const std::string& mem_hex, const char* engine) {
    const auto dir = std::filesystem::temp_directory_path();
    const auto in_path = dir / fmt::format("liveio-plugin-in-{}", getpid());
    {
        FILE* f = std::fopen(in_path.c_str(), "w");
        std::fputs(program_hex.c_str(), f);
        std::fclose(f);
    }
    const std::string cmd = fmt::format("'{}' {} {} < '{}' 2>/dev/null", plugin.string(), engine,
                                        mem_hex.empty() ? "" : mem_hex, in_path.string());
    PluginRun r;
    FILE* p = popen(cmd.c_str(), "r");
    char buf[256];
    while (std::fgets(buf, sizeof(buf), p)) r.out += buf;
    const int st = pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    std::filesystem::remove(in_path);
    return r;
}

std::string hex(const uint8_t* data, size_t len) {
    std::string s;
    for (size_t i = 0; i < len; ++i) s += fmt::format("{:02x}", data[i]);
    return s;
}

TEST(ConformancePlugin, SuiteThroughTheProtocol) {
    const auto plugin = plugin_path();
    if (!std::filesystem::exists(plugin)) GTEST_SKIP() << "plugin not built at " << plugin;
    const auto dir = testing::conformance_dir();
    if (!std::filesystem::exists(dir / "tests"))
        GTEST_SKIP() << "bpf_conformance suite not found at " << dir;
    for (const char* engine : {"--engine=interp", "--engine=jit"}) {
        int passed = 0, total = 0;
        for (const auto& c : testing::load_cases(dir / "tests")) {
            auto insns = testing::case_program(c);
            ASSERT_TRUE(insns.ok()) << c.file << ": " << insns.error().message;
            ++total;
            const auto r = run_plugin(
                plugin, hex(reinterpret_cast<const uint8_t*>(insns->data()), insns->size() * 8),
                hex(c.mem.data(), c.mem.size()), engine);
            if (c.expect_error) {
                EXPECT_NE(r.status, 0) << c.file;
            } else {
                ASSERT_TRUE(c.result.has_value()) << c.file;
                EXPECT_EQ(r.status, 0) << c.file;
                EXPECT_EQ(r.out, fmt::format("{:#x}\n", *c.result)) << c.file << " " << engine;
                if (r.status == 0 && r.out == fmt::format("{:#x}\n", *c.result)) ++passed;
            }
        }
        std::cout << fmt::format("[plugin {}] {}/{} passed\n", engine, passed, total);
    }
}

TEST(ConformancePlugin, RejectsMalformedInputWithAnError) {
    const auto plugin = plugin_path();
    if (!std::filesystem::exists(plugin)) GTEST_SKIP() << "plugin not built at " << plugin;
    EXPECT_NE(run_plugin(plugin, "zz", "", "--engine=jit").status, 0);      // not hex
    EXPECT_NE(run_plugin(plugin, "950000", "", "--engine=jit").status, 0);  // partial insn
    EXPECT_NE(run_plugin(plugin,
                         "0700010001000000"
                         "9500000000000000",
                         "", "--engine=jit")
                  .status,
              0);  // reserved offset
    EXPECT_EQ(run_plugin(plugin,
                         "b700000007000000"
                         "9500000000000000",
                         "", "--engine=jit")
                  .out,
              "0x7\n");
}

}  // namespace
}  // namespace liveio::ebpf
