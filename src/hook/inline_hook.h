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
// so concurrent callers never execute half-old, half-new code. Trampolines are cached per
// target and never unmapped: a thread may still be between the entry stub and the wrapper
// after removal, and reinstalling reuses the same page.
#pragma once

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

// A set of inline hooks installed together (one world stop for all of them).
class InlineHooks {
public:
    static Result<std::unique_ptr<InlineHooks>> install(const std::vector<InlineHookSpec>& specs);
    // Plans and builds the trampolines without patching: original() is usable before any
    // call can reach a replacement. apply() then patches every target in one world stop.
    static Result<std::unique_ptr<InlineHooks>> prepare(const std::vector<InlineHookSpec>& specs);
    Result<void> apply();
    ~InlineHooks();
    // Restores every patched byte exactly. Idempotent.
    Result<void> remove();
    // The trampoline that runs target i's original code.
    void* original(size_t i) const;
    // Bytes overwritten at target i (the patch length, >= 5).
    size_t patched_length(size_t i) const;

    struct Site;

private:
    std::vector<Site*> sites_;
    bool installed_ = false;
};

// Checks whether `target` can be hooked, without patching anything; the error names why not.
Result<void> can_inline_hook(void* target);

}  // namespace liveio::hook
