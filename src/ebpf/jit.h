// The x86-64 JIT: translates a verified program to native code once, at load.
//
// Why a hand-written emitter and not LLVM (ORC): liveio loads programs inside the target
// process (ClickHouse), where startup latency and footprint matter. LLVM would add ~100 MB
// of libraries and tens of milliseconds per program; this emitter is a few hundred lines,
// translates one BPF instruction into a short fixed x86 sequence in microseconds, and needs
// no dependency. The price is no cross-instruction optimization (register allocation is the
// kernel's fixed mapping), which is what the kernel's JIT does too.
//
// Register mapping (as the kernel): r0=rax, r1..r5=rdi,rsi,rdx,rcx,r8, r6..r9=rbx,r13,r14,r15,
// r10=rbp (frame pointer). r12 holds the ExecEnv* for the whole run; r10/r11 are scratch.
// Helpers receive r1..r5 in the SysV argument registers unchanged and ExecEnv* in r9.
// Every BPF function (entry, bpf-to-bpf callees, callbacks) is a native function with its
// own 512-byte frame on the native stack and saves r6..r9 (callee-saved in SysV too).
// Code memory is mapped RW, filled, then switched to R+X: never writable and executable.
#pragma once

#include <memory>

#include "ebpf/interpreter.h"

namespace liveio::ebpf {

// Whether the JIT translates `program`; false only for constructs it leaves to the
// interpreter: callx (a helper chosen at run time by a register, which clang emits only for
// indirect calls the kernel rejects anyway), with the reason in `why`.
bool jit_supports(const Program& program, std::string* why = nullptr);

class JitProgram final : public Executable {
public:
    static Result<std::unique_ptr<JitProgram>> compile(std::shared_ptr<const Program> program,
                                                       const HelperTable& helpers);
    ~JitProgram() override;
    uint64_t run(ExecEnv& env, uint64_t r1, uint64_t r2) const override;
    Engine engine() const override { return Engine::Jit; }
    size_t code_size() const { return code_size_; }

    // Calls the native function at `fn` (an address lddw src=kPseudoFunc produced) with args.
    uint64_t call_native(ExecEnv& env, uint64_t fn, const uint64_t args[5]) const;

private:
    explicit JitProgram(std::shared_ptr<const Program> program) : Executable(std::move(program)) {}
    void* code_ = nullptr;
    size_t mapped_size_ = 0;
    size_t code_size_ = 0;
    uint64_t entry_ = 0;  // native address of insn 0's function
    using Trampoline = uint64_t (*)(ExecEnv* env, uint64_t target, const uint64_t* args);
    Trampoline trampoline_ = nullptr;
};

}  // namespace liveio::ebpf
