#include "ebpf/vm.h"

#include "ebpf/interpreter.h"

namespace liveio::ebpf {

Result<std::unique_ptr<Executable>> Executable::load(std::shared_ptr<const Program> program,
                                                     const HelperTable& helpers, Engine engine) {
    (void)engine;  // the JIT is not built yet: every program runs on the interpreter
    auto interp = Interpreter::create(std::move(program), helpers);
    if (!interp) return interp.error();
    return std::unique_ptr<Executable>(std::move(interp.value()));
}

}  // namespace liveio::ebpf
