// A text assembler for the BPF syntax of the bpf_conformance suite and ubpf
// (`add32 %r0, 1`, `ldxdw %r0, [%r1+8]`, `lock fetch add [%r10-8], %r1`, `jne %r1, 3, label`).
// Used by the conformance test and the VM benchmark to write programs readably.
#pragma once

#include <string_view>
#include <vector>

#include "base/result.h"
#include "ebpf/insn.h"

namespace liveio::ebpf {

// Assembles one instruction per line; `name:` defines a label, `#` starts a comment.
// Errors name the line and what is wrong.
Result<std::vector<Insn>> assemble(std::string_view text);

}  // namespace liveio::ebpf
