// The BPF verifier: proves, before any engine runs a program, that it only reads initialized
// registers and stack, only touches memory inside the regions it was given (stack, context,
// map values, ring buffer records), null-checks map lookups, calls known helpers with the
// argument types they declare, releases every ring buffer record it reserves, and terminates.
//
// Method: an abstract interpreter that walks every path of the program over abstract register
// and stack states (scalars as unsigned and signed ranges, pointers as region + constant
// offset + bounded variable offset), pruning a path when an already fully explored state at
// the same instruction covers it. Loops are accepted when exploration terminates, which proves
// them bounded; a path that returns to an identical state is an infinite loop, and the
// exploration budget rejects what cannot be proven within it. The comparisons stay few
// whatever the program: as in the kernel, an explored state that keeps failing to cover
// later paths is evicted (which only costs pruning, never soundness), and a path is compared
// with the states of its own ancestors (a loop's earlier iterations) only where their
// fingerprints say they may be equal.
//
// Every rejection is an Error whose message starts with "insn N: " and gives the reason.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/result.h"
#include "ebpf/helpers.h"
#include "ebpf/program.h"

namespace liveio::ebpf {

struct VerifierOptions {
    // Programs longer than this are refused outright (the kernel's limit for root).
    uint32_t max_insns = kMaxInsns;
    // Instructions the abstract interpreter may step through, all paths together (the
    // kernel's BPF_COMPLEXITY_LIMIT_INSNS). Bounded loops are unrolled against this budget.
    uint64_t max_explored_insns = 1'000'000;
    // Abstract states kept for pruning at once, all instructions together (bounds verifier
    // memory; evicted states no longer count).
    uint32_t max_stored_states = 32768;
    // Whether a program may turn addresses into numbers it can observe: subtract pointers
    // into different regions, apply 32-bit or unary ALU operations to pointers, copy part of
    // one, store one into the context or a map, compare pointers, return one. The kernel
    // grants this (allow_ptr_leaks) to privileged loaders, as liveio's control socket only
    // admits the target's owner and root. Off, the kernel's rules for unprivileged programs
    // apply: no value the program can observe depends on where its memory lies, so two
    // engines running it on memory at different addresses must compute the same results.
    bool allow_pointer_leaks = true;
};

struct VerifierReport {
    uint64_t explored_insns = 0;   // instructions stepped through, all paths
    uint64_t pruned_paths = 0;     // paths cut because a covering state was already proven
    uint64_t compared_states = 0;  // comparisons of a path's state with a stored one
    uint32_t stored_states = 0;    // states stored for pruning, all of the run
    uint32_t evicted_states = 0;   // of those, dropped after missing too often
    uint32_t peak_states = 0;      // most states kept at once
    uint32_t max_call_depth = 1;   // frames reached, including callbacks
};

// Verifies `program` against `helpers` (the helpers it may call, with their prototypes).
// Besides helpers in the table, bpf_tail_call (helper_id::kTailCall) is always known: the
// engines implement it inline.
Result<VerifierReport> verify(const Program& program, const HelperTable& helpers,
                              const VerifierOptions& options = {});

}  // namespace liveio::ebpf
