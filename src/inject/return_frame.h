// How a function call injected into a stopped thread returns without needing the tracer.
//
// The call returns into two pieces of the target's own libc code: a "store" gadget
// (`mov %rax,(REG); [pop ...;] ret`, REG a callee-saved register the call preserves) that
// writes the function's result into a slot of the frame, then `__restore_rt`
// (`mov $15,%rax; syscall`), whose rt_sigreturn loads the kernel signal frame built below
// the thread's red zone: the thread's registers, extended (FP/SSE/AVX) state and signal mask
// as they were when it was stopped. So if the tracer dies at any moment of the call (ptrace
// detaches a dead tracer's tracees, which then run on), the thread finishes the call and
// continues exactly where it was stopped. A live tracer catches the rt_sigreturn at its
// syscall-entry stop, reads the result slot and restores the thread itself (see inject.cpp).
//
// A thread stopped inside a blocking system call has it restarted (the instruction pointer
// moved back onto the `syscall` instruction, rax the call's number), as the kernel does for an
// interrupted call when no handler runs. One difference remains on the tracer-less path only:
// rt_sigreturn discards the kernel's restart block, so a call that would have resumed with its
// remaining time (nanosleep, poll, futex waits with a relative timeout) starts again with its
// full timeout.
#pragma once

#include <sys/user.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace liveio::inject {

// The two pieces of libc code the return path uses (file virtual addresses when found by
// find_return_gadgets, runtime addresses once biased).
struct ReturnGadgets {
    uint64_t restore_rt = 0;  // mov $15,%rax; syscall
    uint64_t store = 0;       // mov %rax,(REG); pop x store_pops; ret
    int store_pops = 0;
    enum class Base { rbx, rbp, r12, r13, r14, r15 } base = Base::rbx;
};

// Searches executable code `code` (loaded at file virtual address `vaddr`) for both pieces;
// nullopt when either is missing. The store gadget with the fewest pops wins.
std::optional<ReturnGadgets> find_return_gadgets(std::span<const uint8_t> code, uint64_t vaddr);

// Where a stopped thread's call lives on its stack and what it writes there.
struct CallFrame {
    uint64_t entry_sp = 0;       // rsp at the function's first instruction (holds `store`)
    uint64_t data_addr = 0;      // the call's data (a C string) copy
    uint64_t result_slot = 0;    // where the store gadget writes rax
    uint64_t sigreturn_sp = 0;   // rsp when __restore_rt's syscall enters rt_sigreturn
    std::vector<uint8_t> bytes;  // to be written at entry_sp
    uint64_t end = 0;            // entry_sp + bytes.size(), below the red zone
};

// The registers a thread stopped with `stopped` must continue with when nothing else
// (no signal delivery) restarts its interrupted system call: -ERESTART* results move rip back
// onto the `syscall` instruction, with rax the call number (or restart_syscall's for
// -ERESTART_RESTARTBLOCK when `restart_block_intact`; otherwise the original call again).
// orig_rax is -1 in the result.
user_regs_struct resumed_registers(const user_regs_struct& stopped, bool restart_block_intact);

// Builds the stack contents for calling a function on a thread stopped with `regs`:
// `xstate` is the thread's NT_X86_XSTATE regset (XSAVE layout), or its 512-byte FXSAVE area
// when `xsave` is false; `sigmask` its blocked signals; `data` is copied (NUL-terminated) for
// the call's pointer argument. `gadgets` hold runtime addresses.
CallFrame build_call_frame(const user_regs_struct& regs, std::span<const uint8_t> xstate,
                           bool xsave, uint64_t sigmask, const ReturnGadgets& gadgets,
                           const std::string& data);

// Points the store gadget's base register of `regs` at `slot`.
void set_store_base(user_regs_struct& regs, ReturnGadgets::Base base, uint64_t slot);

}  // namespace liveio::inject
