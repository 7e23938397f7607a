// The reference engine: executes BPF instructions one by one with RFC 9669 semantics.
#pragma once

#include <vector>

#include "ebpf/vm.h"

namespace liveio::ebpf {

// Load-time resolution shared by the engines: the helper each `call` reaches and the 64-bit
// value each lddw produces (map pointers, map value addresses).
struct ResolvedProgram {
    std::vector<HelperFn> helper_at;   // per insn; set for helper calls (src=0)
    std::vector<uint64_t> lddw_value;  // per insn; set for lddw other than kPseudoFunc
};
Result<ResolvedProgram> resolve_program(const Program& program, const HelperTable& helpers);

class Interpreter final : public Executable {
public:
    static Result<std::unique_ptr<Interpreter>> create(std::shared_ptr<const Program> program,
                                                       const HelperTable& helpers);
    uint64_t run(ExecEnv& env, uint64_t r1, uint64_t r2) const override;
    Engine engine() const override { return Engine::Interpreter; }

    // Runs the code starting at instruction `pc` as a function with r1..r5 = args, in a
    // fresh stack frame (used for bpf_loop-style callbacks).
    uint64_t call_at(ExecEnv& env, size_t pc, const uint64_t args[5]) const;

private:
    Interpreter(std::shared_ptr<const Program> program, ResolvedProgram resolved,
                HelperTable helpers)
        : Executable(std::move(program)),
          resolved_(std::move(resolved)),
          helpers_(std::move(helpers)) {}
    ResolvedProgram resolved_;
    HelperTable helpers_;  // for callx, whose helper id is only known at run time
};

}  // namespace liveio::ebpf
