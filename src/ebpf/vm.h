// Running BPF programs: a verified Program is loaded once into an engine (the interpreter,
// the reference semantics, or the x86-64 JIT) and then run any number of times.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "base/result.h"
#include "ebpf/exec_env.h"
#include "ebpf/helpers.h"
#include "ebpf/program.h"

namespace liveio::ebpf {

enum class Engine { Interpreter, Jit };

const char* engine_name(Engine engine);

// A program loaded into an engine. load() runs the verifier (verifier.h) and refuses what it
// rejects, with its message; it then resolves helper calls and map references once.
// Thread-safe: run() keeps all mutable state on the caller's stack.
class Executable {
public:
    virtual ~Executable() = default;

    static Result<std::unique_ptr<Executable>> load(std::shared_ptr<const Program> program,
                                                    const HelperTable& helpers, Engine engine);

    // Runs with r1 = ctx, r2 = len and returns r0. `services` is handed to helpers in
    // ExecEnv::services.
    uint64_t run(void* ctx, size_t len, void* services = nullptr,
                 TailCallResolver resolver = nullptr) const {
        ExecEnv env;
        env.services = services;
        env.resolve_tail_call = resolver;
        return run(env, reinterpret_cast<uint64_t>(ctx), len);
    }
    // Runs within an existing environment (tail calls reuse the caller's counter).
    virtual uint64_t run(ExecEnv& env, uint64_t r1, uint64_t r2) const = 0;

    virtual Engine engine() const = 0;
    const Program& program() const { return *program_; }

protected:
    explicit Executable(std::shared_ptr<const Program> program) : program_(std::move(program)) {}
    std::shared_ptr<const Program> program_;
};

}  // namespace liveio::ebpf
