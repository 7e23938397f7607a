// Fuzz target: the ELF loader (src/ebpf/loader) on arbitrary bytes, seeded with the repo's
// BPF objects. An object that opens has its programs verified (bounded budget), as
// `bpf.load` does next; nothing may crash or read outside the input.
#include <cstddef>
#include <cstdint>
#include <span>

#include "ebpf/helpers.h"
#include "ebpf/loader.h"
#include "ebpf/verifier.h"

using namespace liveio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const ebpf::HelperTable helpers = ebpf::HelperTable::standard();
    ebpf::OpenOptions options;
    options.require_license = false;  // reach the code behind the license check too
    auto object = ebpf::Object::open(std::span<const uint8_t>(data, size), options);
    if (!object) return 0;
    ebpf::VerifierOptions vopts;
    vopts.max_explored_insns = 2000;  // keeps one input cheap; the verifier has its own target
    for (const auto& program : object->programs()) (void)ebpf::verify(*program, helpers, vopts);
    for (const auto& map : object->maps()) (void)object->map(map.name);
    return 0;
}
