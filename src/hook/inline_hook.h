// Inline function hooks: the first instructions of a function are replaced by a 5-byte
// `jmp rel32` to a trampoline page allocated within +-2 GiB of it. The trampoline holds
//   - an entry stub `jmp *[rip]` to the replacement (which may be anywhere), and
//   - the relocated original instructions followed by a jump back to the rest of the
//     function: calling `original()` runs the function as if unhooked.
// Relocation rewrites RIP-relative operands (new disp32), relative jmp/jcc/call (to absolute
// forms). A hook is refused, with the reason, when the function is too short (ret/jmp before
// 5 bytes), a branch elsewhere in the function targets bytes 1..n-1 of the patched range, or
// the prologue holds instructions that cannot be moved (loop/jrcxz, undecodable bytes).
//
// Patching happens with every other thread parked (world_stop.h); a thread parked inside the
// replaced bytes resumes at the same instruction inside the trampoline (and back on removal),
// so concurrent callers never execute half-old, half-new code. Code pages are written while
// writable and not executable (text_patch.h); restored pages are given back to their file.
//
// Trampolines are written into small pooled mappings while these are writable, and sealed
// read+execute before any jump can reach them: no mapping is writable and executable at once.
// Their lifetime is chosen by the owner:
//   - Process: cached per target and never unmapped (uprobes, whose probe records keep
//     pointing at them); hooking the same target again reuses the identical trampoline.
//   - Owned: mapped for this set of hooks and unmapped by release_trampolines(), which the
//     owner calls once it has proven that no thread can reach them any more (after remove(),
//     at a world stop where move_out() moved every thread out and none could still be on its
//     way in; inline_interceptor.cpp).
#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/result.h"

namespace liveio::hook {

struct InlineHookSpec {
    void* target;
    void* replacement;
};

enum class TrampolineLifetime { Process, Owned };

// A set of inline hooks installed together (one world stop for all of them).
class InlineHooks {
public:
    static Result<std::unique_ptr<InlineHooks>> install(
        const std::vector<InlineHookSpec>& specs,
        TrampolineLifetime lifetime = TrampolineLifetime::Process);
    // Plans and builds the trampolines without patching: original() is usable before any
    // call can reach a replacement. apply() then patches every target in one world stop.
    static Result<std::unique_ptr<InlineHooks>> prepare(
        const std::vector<InlineHookSpec>& specs,
        TrampolineLifetime lifetime = TrampolineLifetime::Process);
    Result<void> apply();
    ~InlineHooks();
    // Restores every patched byte exactly. Idempotent.
    Result<void> remove();
    // The trampoline that runs target i's original code.
    void* original(size_t i) const;
    // Bytes overwritten at target i (the patch length, >= 5).
    size_t patched_length(size_t i) const;

    // After remove(), in a parked thread's fixup (async-signal-safe): a thread inside a
    // trampoline continues at the same instruction of the original function; one at an entry
    // stub goes to the replacement.
    void move_out(ucontext_t* uc) const;
    // Whether `ip` lies in this set's Owned trampoline mappings.
    bool in_trampolines(uintptr_t ip) const;
    // Unmaps Owned trampolines (after remove(); the caller proved them unreachable).
    void release_trampolines();
    size_t trampoline_mappings() const;

    struct Site;

private:
    struct Chunk {
        uintptr_t base;
        size_t used;
    };
    std::vector<Site*> sites_;
    std::vector<Chunk> chunks_;
    TrampolineLifetime lifetime_ = TrampolineLifetime::Process;
    bool installed_ = false;
    bool applied_ = false;
};

// Checks whether `target` can be hooked, without patching anything; the error names why not.
// `releasable`: with an Owned trampoline, which a call in the relocated prologue would leave
// as a return address on some stack (so it could never be proven unreachable).
Result<void> can_inline_hook(void* target, bool releasable = false);

}  // namespace liveio::hook
