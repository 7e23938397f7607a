#include "ebpf/vm.h"

#include <fmt/format.h>

#include "ebpf/interpreter.h"
#include "ebpf/jit.h"
#include "ebpf/verifier.h"
#include "ebpf/vm_internal.h"

namespace liveio::ebpf {

namespace internal {

Result<std::unique_ptr<Executable>> load_unverified(std::shared_ptr<const Program> program,
                                                    const HelperTable& helpers, Engine engine) {
    // The JIT leaves the constructs jit_supports() names to the interpreter.
    if (engine == Engine::Jit && program && jit_supports(*program)) {
        auto jit = JitProgram::compile(std::move(program), helpers);
        if (!jit) return jit.error();
        return std::unique_ptr<Executable>(std::move(jit.value()));
    }
    auto interp = Interpreter::create(std::move(program), helpers);
    if (!interp) return interp.error();
    return std::unique_ptr<Executable>(std::move(interp.value()));
}

}  // namespace internal

Result<std::unique_ptr<Executable>> Executable::load(std::shared_ptr<const Program> program,
                                                     const HelperTable& helpers, Engine engine) {
    if (!program) return make_error(EINVAL, "no program to load");
    // Verification is mandatory: the engines trust every memory access they execute.
    if (auto verified = verify(*program, helpers); !verified)
        return make_error(verified.error().code,
                          fmt::format("program '{}' rejected by the verifier: {}", program->name,
                                      verified.error().message));
    return internal::load_unverified(std::move(program), helpers, engine);
}

}  // namespace liveio::ebpf
