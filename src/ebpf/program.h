// A BPF program ready for verification and execution: instructions after relocation, the
// maps they reference, and what the context (r1) looks like.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ebpf/insn.h"
#include "ebpf/map.h"

namespace liveio::ebpf {

// How r1 is described to the verifier. Programs for kernel hook points get the kernel's
// context layout (e.g. struct trace_event_raw_sys_enter for syscall tracepoints).
struct ContextDescriptor {
    uint32_t size = 0;      // bytes readable from r1
    bool writable = false;  // may the program store into the context?
};

// After the loader's relocation, map references are lddw instructions with
//   src = op::kPseudoMapIdx,      imm = index into `maps`            -> r = Map*
//   src = op::kPseudoMapIdxValue, imm = index, next slot imm = offset -> r = value memory + offset
// (the kernel's BPF_PSEUDO_MAP_IDX[_VALUE] form), bpf-to-bpf calls are `call` with
// src = op::kPseudoCall and imm = relative target, and callback references are lddw with
// src = op::kPseudoFunc and imm = relative target. All subprograms are appended after the
// entry function in `insns`.
struct Program {
    std::string name;     // function name in the object
    std::string section;  // SEC() name, e.g. "tracepoint/syscalls/sys_enter_read"
    std::string license;
    std::vector<Insn> insns;
    std::vector<std::shared_ptr<Map>> maps;
    ContextDescriptor context;
};

}  // namespace liveio::ebpf
