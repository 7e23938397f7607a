// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/), so they can be
// regenerated when the objects or the input format change:
//
//   fuzz_make_corpus OUT_DIR CONFORMANCE_DIR OBJECT.bpf.o...
//
//   loader      the objects themselves
//   verifier,   every program of every object (relocated instructions, its maps' shapes, its
//   jit_diff    context) and every conformance case (its memory as a writable context)
//   prometheus  a rendering of a snapshot with syscall and class rows
//   sink        sink URLs with TabSeparated answers
//   protocol    request streams: each request, malformed lines, an oversized line
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "ebpf/conformance_suite.h"
#include "ebpf/loader.h"
#include "ebpf/verifier.h"
#include "fuzz/program_input.h"
#include "observe/prometheus.h"

using namespace liveio;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kSeedExploredInsns = 3000;

void write(const fs::path& dir, const std::string& name, const void* data, size_t size) {
    fs::create_directories(dir);
    std::ofstream(dir / name, std::ios::binary)
        .write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}
void write(const fs::path& dir, const std::string& name, const std::string& text) {
    write(dir, name, text.data(), text.size());
}

// Chunks as fuzz_protocol reads them: each chunk's length is its first byte.
std::string as_chunks(const std::string& stream) {
    std::string out;
    for (size_t pos = 0; pos < stream.size(); pos += 255) {
        const size_t n = std::min<size_t>(255, stream.size() - pos);
        out.push_back(static_cast<char>(n));
        out.append(stream, pos, n);
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s OUT_DIR CONFORMANCE_DIR OBJECT.bpf.o...\n", argv[0]);
        return 2;
    }
    const fs::path out = argv[1];
    size_t programs = 0;
    for (int i = 3; i < argc; ++i) {
        const fs::path obj_path = argv[i];
        std::ifstream f(obj_path, std::ios::binary);
        const std::string bytes((std::istreambuf_iterator<char>(f)),
                                std::istreambuf_iterator<char>());
        // -mcpu=v3 builds (a v3/ directory) of the same sources add jmp32/alu32 programs but
        // nothing new for the loader.
        const bool v3 = obj_path.parent_path().filename() == "v3";
        if (!v3) write(out / "loader", obj_path.filename().string(), bytes);
        auto obj = ebpf::Object::open(obj_path.string());
        if (!obj) {
            std::fprintf(stderr, "%s: %s (loader seed only)\n", argv[i],
                         obj.error().message.c_str());
            continue;
        }
        for (const auto& p : obj->programs()) {
            if (p->insns.size() > fuzz::kMaxInsns || p->maps.size() > fuzz::kMaxMaps) continue;
            // Seeds must be cheap to run often: programs whose verification explores more than a
            // few thousand instructions (comparing each against the stored states takes
            // seconds once instrumented) stay with test_ebpf.
            ebpf::VerifierOptions budget;
            budget.max_explored_insns = fuzz::kVerifierBudget;
            auto report = ebpf::verify(*p, ebpf::HelperTable::standard(), budget);
            if (report && report->explored_insns > kSeedExploredInsns) {
                std::fprintf(stderr, "%s: %s: %llu instructions explored, left out\n", argv[i],
                             p->name.c_str(),
                             static_cast<unsigned long long>(report->explored_insns));
                continue;
            }
            fuzz::ProgramShape shape;
            shape.ctx_size =
                static_cast<uint16_t>(std::min<uint32_t>(p->context.size, fuzz::kMaxCtx));
            shape.ctx_writable = p->context.writable;
            shape.nmaps = static_cast<uint8_t>(p->maps.size());
            for (size_t m = 0; m < p->maps.size(); ++m) {
                const ebpf::MapSpec& s = p->maps[m]->spec();
                shape.maps[m] = {
                    static_cast<uint8_t>(s.type), static_cast<uint8_t>(s.key_size),
                    static_cast<uint16_t>(s.value_size),
                    static_cast<uint16_t>(s.type == ebpf::MapType::RingBuf ? 0 : s.max_entries)};
            }
            const auto input = fuzz::encode_program_input(shape, p->insns);
            const std::string name =
                (v3 ? "v3." : "") + obj_path.stem().stem().string() + "." + p->name;
            write(out / "verifier", name, input.data(), input.size());
            write(out / "jit_diff", name, input.data(), input.size());
            ++programs;
        }
    }
    size_t cases = 0;
    for (const auto& sub : {"tests", "negative"}) {
        const fs::path dir = fs::path(argv[2]) / sub;
        if (!fs::exists(dir)) continue;
        for (const auto& c : ebpf::testing::load_cases(dir)) {
            auto insns = ebpf::testing::case_program(c);
            if (!insns || insns->empty() || insns->size() > fuzz::kMaxInsns) continue;
            fuzz::ProgramShape shape;
            shape.ctx_size = static_cast<uint16_t>(std::min<size_t>(c.mem.size(), fuzz::kMaxCtx));
            shape.ctx_writable = 1;
            const auto input = fuzz::encode_program_input(shape, *insns);
            const std::string name =
                std::string("conformance.") + sub + "." + c.file.stem().string();
            write(out / "verifier", name, input.data(), input.size());
            write(out / "jit_diff", name, input.data(), input.size());
            ++cases;
        }
    }

    observe::ProcessMetrics pm;
    pm.pid = 4242;
    pm.comm = "clickhouse-serv";
    pm.up = true;
    observe::SyscallRow row;
    row.nr = 17;
    row.name = "pread64";
    row.counters.calls = 10;
    row.counters.errors = 1;
    row.counters.bytes = 40960;
    row.counters.latency_ns = 123456;
    row.counters.hist[10] = 6;
    row.counters.hist[12] = 4;
    pm.snapshot.syscalls.push_back(row);
    observe::ClassRow cls;
    cls.file_class = 1;
    cls.direction = 0;
    cls.counters = row.counters;
    pm.snapshot.classes.push_back(cls);
    observe::ProcessMetrics down;
    down.pid = 7;
    down.comm = "python3";
    down.error = "no agent";
    write(out / "prometheus", "rendered", observe::render_prometheus({pm, down}));
    write(
        out / "prometheus", "escapes",
        "# HELP x_total a \\\\ help\\nline\n# TYPE x_total "
        "counter\nx_total{a=\"q\\\"\\\\\\n\",b=\"\"} 1e3\n"
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n"
        "u NaN\nv -Inf 1700000000000\n");

    const std::pair<const char*, const char*> sinks[] = {
        {"clickhouse://127.0.0.1:8123/liveio.io_stats", "1\tpread64\t\\N\n2\ta\\tb\\\\c\\n\t\n"},
        {"clickhouse://localhost/db.t", "x\n\ny\\0z\\'\n"},
        {"clickhouse://10.0.0.1:65535/_a1._b2", "\\"},
        {"clickhouse://[::1]:9000/db.t", ""},
    };
    int n = 0;
    for (const auto& [url, tsv] : sinks) {
        std::string input = url;
        input.push_back('\0');
        input += tsv;
        write(out / "sink", fmt::format("seed{}", n++), input);
    }

    const std::string requests[] = {
        R"({"v":1,"id":1,"cmd":"bpf.list"})"
        "\n",
        R"({"v":1,"id":"x","cmd":"bpf.load","path":"/nonexistent.bpf.o","engine":"interp","programs":["a"]})"
        "\n",
        R"({"v":1,"id":2,"cmd":"bpf.unload","object":4294967295})"
        "\n",
        R"({"v":1,"id":3,"cmd":"bpf.maps","object":1})"
        "\n"
        R"({"v":1,"id":4,"cmd":"bpf.log"})"
        "\n",
        R"({"v":2,"id":[1,{"a":null}],"cmd":"status"})"
        "\n"
        R"({"v":1.5})"
        "\n"
        "[1,2]\n"
        "{\"v\":1}\n",
        "not "
        "json\n\n{\"v\":1,\"id\":5,\"cmd\":\"nope\"}\n{\"v\":1,\"cmd\":\"bpf.load\",\"path\":\"/"
        "dev/null\"}\n",
        std::string(70000, 'x'),
    };
    n = 0;
    for (const auto& r : requests)
        write(out / "protocol", fmt::format("seed{}", n++), as_chunks(r));

    std::printf("corpus: %zu programs from objects, %zu conformance cases\n", programs, cases);
    return 0;
}
