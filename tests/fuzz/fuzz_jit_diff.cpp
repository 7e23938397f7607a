// Fuzz target: the JIT against the interpreter (the reference semantics) on programs the
// verifier accepts without pointer leaks (VerifierOptions::allow_pointer_leaks). Each engine
// runs the same program with its own copy of the context and its own freshly created maps;
// afterwards r0, the context bytes and every map's contents must be equal. Helpers are the
// deterministic subset (maps, ring buffer, bpf_loop).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <sched.h>
#include <sys/sysinfo.h>

#include "ebpf/runtime.h"
#include "ebpf/verifier.h"
#include "ebpf/vm.h"
#include "fuzz/program_input.h"
#include "fuzz/run_checks.h"

using namespace liveio;

namespace {

// Every key/value pair of `map`, sorted (each hash map has its own hash seed, so two maps
// with equal contents iterate in different orders), or for ring buffers their readable bytes.
std::string map_contents(ebpf::Map& map) {
    const ebpf::MapSpec& s = map.spec();
    std::string out;
    if (s.type == ebpf::MapType::RingBuf) {
        auto& ring = static_cast<ebpf::RingBuffer&>(map);
        ring.consume([&](const void* data, uint32_t len) {
            out.append(static_cast<const char*>(data), len);
            out.push_back('|');
        });
        return out;
    }
    std::string key(s.key_size, '\0'), next(s.key_size, '\0');
    // copy_value's layout: per-CPU maps hold one 8-byte-rounded value per possible CPU.
    static const size_t ncpus = static_cast<size_t>(get_nprocs_conf());
    const size_t rounded = (s.value_size + 7u) & ~size_t{7};
    std::string value(rounded * ncpus + 8, '\0');
    std::vector<std::string> pairs;
    bool first = true;
    for (uint32_t i = 0; i <= s.max_entries; ++i) {
        if (map.next_key(first ? nullptr : key.data(), next.data()) != 0) break;
        first = false;
        key = next;
        if (map.copy_value(key.data(), value.data()) != 0) continue;
        pairs.push_back(key + value);
    }
    std::sort(pairs.begin(), pairs.end());
    for (const auto& p : pairs) out += p;
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const ebpf::HelperTable helpers = fuzz::deterministic_helpers();
    static std::unique_ptr<ebpf::Runtime> runtime = ebpf::Runtime::create().value();
    // Per-CPU maps are compared slot by slot: both engines must run on the same CPU.
    static const bool pinned = [] {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(sched_getcpu(), &set);
        return sched_setaffinity(0, sizeof set, &set) == 0;
    }();
    (void)pinned;

    auto in = fuzz::decode_program_input(data, size);
    if (!in) return 0;
    auto interp_program = fuzz::build_program(*in);
    auto jit_program = fuzz::build_program(*in);
    // Without pointer leaks: the engines' stacks, contexts and maps lie at different
    // addresses, so only programs whose results cannot depend on addresses compare.
    if (!interp_program || !jit_program || !fuzz::verifies_quickly(*interp_program, helpers, false))
        return 0;
    auto interp = ebpf::Executable::load(interp_program, helpers, ebpf::Engine::Interpreter);
    if (!interp)
        fuzz::fail("load refused a program the verifier accepted:", interp.error().message.c_str());
    auto jit = ebpf::Executable::load(jit_program, helpers, ebpf::Engine::Jit);
    if (!jit)
        fuzz::fail("the interpreter loaded a program the JIT refused:",
                   jit.error().message.c_str());
    if (jit.value()->engine() != ebpf::Engine::Jit)
        return 0;  // left to the interpreter (jit_supports)

    fuzz::Context interp_ctx(in->shape.ctx_size), jit_ctx(in->shape.ctx_size);
    ebpf::ExecEnv interp_env = runtime->make_env(), jit_env = runtime->make_env();
    const uint64_t r0_interp = interp.value()->run(
        interp_env, reinterpret_cast<uint64_t>(interp_ctx.bytes.get()), interp_ctx.size);
    const uint64_t r0_jit =
        jit.value()->run(jit_env, reinterpret_cast<uint64_t>(jit_ctx.bytes.get()), jit_ctx.size);
    if (interp_env.fault)
        fuzz::fail("verified program faulted in the interpreter:", interp_env.fault);
    if (r0_interp != r0_jit) {
        const std::string d =
            std::to_string(r0_interp) + " (interpreter) vs " + std::to_string(r0_jit) + " (jit)";
        fuzz::fail("r0 differs:", d.c_str());
    }
    if (interp_ctx.size &&
        std::memcmp(interp_ctx.bytes.get(), jit_ctx.bytes.get(), interp_ctx.size) != 0)
        fuzz::fail("context bytes differ after the run");
    for (size_t i = 0; i < interp_program->maps.size(); ++i)
        if (map_contents(*interp_program->maps[i]) != map_contents(*jit_program->maps[i]))
            fuzz::fail("map contents differ after the run, map", std::to_string(i).c_str());
    return 0;
}
