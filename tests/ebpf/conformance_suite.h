// Reading the bpf_conformance suite (../shared/bpf-conformance next to the source tree):
// each .data file holds `-- asm` or `-- raw` program text, optional `-- mem` input bytes and
// either `-- result` (expected r0) or `-- error` (the program must be rejected).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "ebpf/helpers.h"
#include "ebpf/insn.h"

namespace liveio::ebpf::testing {

struct ConformanceCase {
    std::filesystem::path file;
    std::string asm_text;
    std::string raw_text;
    std::vector<uint8_t> mem;
    std::optional<uint64_t> result;
    bool expect_error = false;
};

// The suite directory, located from this source file (the suite is a sibling of the tree).
std::filesystem::path conformance_dir();
std::vector<ConformanceCase> load_cases(const std::filesystem::path& dir);
// The program of a case: `-- raw` bytes when present, else the assembled `-- asm`.
Result<std::vector<Insn>> case_program(const ConformanceCase& c);
// Helpers the suite calls by id (5: returns r1).
HelperTable conformance_helpers();

}  // namespace liveio::ebpf::testing
