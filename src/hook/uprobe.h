// Userspace uprobes and uretprobes: a callback receives the registers of the probed function
// as a struct pt_regs (the kernel's x86-64 uapi layout, as SEC("uprobe") BPF programs expect)
// at its entry, or at its return (uretprobe).
//
// Built on an inline hook (inline_hook.h) whose replacement is a per-probe thunk loading the
// probe into r11 and entering an assembly stub that saves every register into pt_regs.
// Return probes replace the return address on the stack with liveio's return stub and keep
// the real one on a per-thread shadow stack (256 deep; deeper calls go unprobed on return).
// Unwinding (exceptions, longjmp) through a function with a pending return probe is not
// supported, as with return-address-swapping probes in general.
//
// The callback runs with the dispatcher's "inside liveio" flag set: probes hit by the
// callback itself are skipped. Editing regs other than rip/rsp changes the registers the
// function continues (or its caller resumes) with.
#pragma once

#include <asm/ptrace.h>

#include <functional>
#include <memory>

#include "base/result.h"

namespace liveio::hook {

using UprobeCallback = std::function<void(pt_regs*)>;

class Uprobe {
public:
    virtual ~Uprobe() = default;
    // Detaches (restores the function's bytes) and waits until no callback runs.
    virtual Result<void> detach() = 0;
    virtual uint64_t hits() const = 0;
};

// Attaches `callback` to the function at `function`: at entry, or at return when `retprobe`.
// One probe per function address at a time (EBUSY otherwise).
Result<std::unique_ptr<Uprobe>> attach_uprobe(void* function, UprobeCallback callback,
                                              bool retprobe);

}  // namespace liveio::hook
