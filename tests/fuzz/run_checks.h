// What the program fuzz targets check around one run: the context is a heap block of exactly
// its size (AddressSanitizer reports any access past it), a read-only context is unchanged
// afterwards, and a verified program never reaches one of the interpreter's run-time faults
// (each is a construct the verifier must have refused).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "ebpf/helpers.h"
#include "ebpf/runtime.h"
#include "ebpf/verifier.h"
#include "ebpf/vm.h"
#include "fuzz/program_input.h"

namespace liveio::fuzz {

[[noreturn]] inline void fail(const char* what, const char* detail = "") {
    std::fprintf(stderr, "fuzz check failed: %s %s\n", what, detail);
    std::abort();
}

// A context block of exactly `size` bytes (nullptr for 0) with a recognizable pattern.
struct Context {
    explicit Context(uint32_t size) : size(size), bytes(size ? new uint8_t[size] : nullptr) {
        for (uint32_t i = 0; i < size; ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 3);
    }
    uint32_t size;
    std::unique_ptr<uint8_t[]> bytes;
    bool unchanged() const {
        for (uint32_t i = 0; i < size; ++i)
            if (bytes[i] != static_cast<uint8_t>(i * 7 + 3)) return false;
        return true;
    }
};

// Verification within a small exploration budget first: Executable::load verifies again with
// the production budget, which instrumented code needs seconds to exhaust on big programs;
// what passes the small budget passes the large one with the same work.
// `allow_pointer_leaks` as in VerifierOptions.
inline bool verifies_quickly(const ebpf::Program& program, const ebpf::HelperTable& helpers,
                             bool allow_pointer_leaks = true) {
    ebpf::VerifierOptions options;
    options.max_explored_insns = kVerifierBudget;
    options.allow_pointer_leaks = allow_pointer_leaks;
    return static_cast<bool>(ebpf::verify(program, helpers, options));
}

// The standard helpers without the ones whose results differ from run to run (clocks,
// random numbers, ids of the calling thread and CPU), so two engines can be compared.
inline ebpf::HelperTable deterministic_helpers() {
    namespace id = ebpf::helper_id;
    const ebpf::HelperTable all = ebpf::HelperTable::standard();
    ebpf::HelperTable out;
    const int32_t keep[] = {id::kMapLookupElem, id::kMapUpdateElem,  id::kMapDeleteElem,
                            id::kLoop,          id::kRingbufOutput,  id::kRingbufReserve,
                            id::kRingbufSubmit, id::kRingbufDiscard, id::kRingbufQuery,
                            id::kTailCall};
    for (int32_t h : keep)
        if (const ebpf::HelperProto* p = all.find(h)) out.add(h, *p);
    return out;
}

}  // namespace liveio::fuzz
