// Structural validity of instruction encodings (RFC 9669 "reserved fields must be zero",
// known opcodes, register numbers, lddw pairing). The engines check this at load so that
// malformed input is rejected with a clear error even where no verifier ran; the verifier
// adds the semantic checks (memory safety, termination, types).
#pragma once

#include <vector>

#include "base/result.h"
#include "ebpf/insn.h"

namespace liveio::ebpf {

Result<void> check_encoding(const std::vector<Insn>& insns);

}  // namespace liveio::ebpf
