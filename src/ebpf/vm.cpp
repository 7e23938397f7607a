#include "ebpf/vm.h"

#include "ebpf/interpreter.h"
#include "ebpf/jit.h"

namespace liveio::ebpf {

Result<std::unique_ptr<Executable>> Executable::load(std::shared_ptr<const Program> program,
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

}  // namespace liveio::ebpf
