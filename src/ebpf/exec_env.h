// The environment of one running BPF program, passed to every helper as the hidden sixth
// argument (see helpers.h). Engines fill the engine fields; the runtime that owns maps,
// ring buffers and the trace log fills `services`.
#pragma once

#include <cstdint>

namespace liveio::ebpf {

struct Program;
class Map;
class Executable;

// Kernel limit on chained tail calls (MAX_TAIL_CALL_CNT).
inline constexpr uint32_t kMaxTailCalls = 33;

struct ExecEnv;

// Calls the BPF subprogram `fn` (the value a `lddw src=kPseudoFunc` put in a register: an
// instruction index in the interpreter, a native address in the JIT) with r1..r5 = args and
// returns its r0. Engine-provided, so helpers such as bpf_loop need not know the engine.
using CallbackInvoker = uint64_t (*)(ExecEnv* env, uint64_t fn, uint64_t a1, uint64_t a2,
                                     uint64_t a3, uint64_t a4, uint64_t a5);

// Resolves bpf_tail_call(ctx, prog_array, index): the program stored at `index` of the
// ProgArray `map`, or nullptr when the slot is empty. Provided by whoever owns the program
// registry (the runtime behind `services`); when null, every tail call fails (falls through).
using TailCallResolver = const Executable* (*)(void* services, Map* map, uint32_t index);

struct ExecEnv {
    const Program* program = nullptr;  // the program currently executing
    CallbackInvoker invoke_callback = nullptr;
    void* engine_state = nullptr;  // private to the engine behind invoke_callback
    uint32_t tail_calls = 0;       // tail calls taken so far in this run
    TailCallResolver resolve_tail_call = nullptr;
    void* services = nullptr;  // the runtime: trace log, ring buffers, ...
    // Set by an engine that had to stop a program at run time (only possible for programs
    // that skipped verification, e.g. call depth exceeded); run() then returns 0.
    const char* fault = nullptr;
};

// Installs an engine's fields in `env` for one run and restores the previous ones on exit:
// tail calls and callbacks nest runs of different programs and engines on one environment.
class EngineScope {
public:
    EngineScope(ExecEnv& env, const Program* program, CallbackInvoker invoker, void* state)
        : env_(env),
          program_(env.program),
          invoker_(env.invoke_callback),
          state_(env.engine_state) {
        env.program = program;
        env.invoke_callback = invoker;
        env.engine_state = state;
    }
    ~EngineScope() {
        env_.program = program_;
        env_.invoke_callback = invoker_;
        env_.engine_state = state_;
    }
    EngineScope(const EngineScope&) = delete;
    EngineScope& operator=(const EngineScope&) = delete;

private:
    ExecEnv& env_;
    const Program* program_;
    CallbackInvoker invoker_;
    void* state_;
};

}  // namespace liveio::ebpf
