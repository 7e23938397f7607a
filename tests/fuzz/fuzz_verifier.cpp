// Fuzz target: random and mutated instruction streams through the verifier. Each program is
// either rejected, or runs in the interpreter with the full standard helper set without
// crashing, without touching memory outside its context, stack and maps (AddressSanitizer:
// the context is an exact-size heap block, the stack a local array), without changing a
// read-only context and without hitting one of the interpreter's run-time faults. What the
// verifier accepts without pointer leaks it accepts with them.
#include <cstddef>
#include <cstdint>

#include "ebpf/runtime.h"
#include "ebpf/verifier.h"
#include "ebpf/vm.h"
#include "fuzz/program_input.h"
#include "fuzz/run_checks.h"

using namespace liveio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const ebpf::HelperTable helpers = ebpf::HelperTable::standard();
    static std::unique_ptr<ebpf::Runtime> runtime = ebpf::Runtime::create().value();

    auto in = fuzz::decode_program_input(data, size);
    if (!in) return 0;
    auto program = fuzz::build_program(*in);
    if (!program) return 0;
    const bool verified = fuzz::verifies_quickly(*program, helpers);
    // The rules without pointer leaks only add refusals.
    if (!verified && fuzz::verifies_quickly(*program, helpers, false))
        fuzz::fail("accepted without pointer leaks, refused with them");
    if (!verified) return 0;
    auto exe = ebpf::Executable::load(program, helpers, ebpf::Engine::Interpreter);
    if (!exe)
        fuzz::fail("load refused a program the verifier accepted:", exe.error().message.c_str());
    fuzz::Context ctx(in->shape.ctx_size);
    ebpf::ExecEnv env = runtime->make_env();
    (void)exe.value()->run(env, reinterpret_cast<uint64_t>(ctx.bytes.get()), ctx.size);
    if (env.fault) fuzz::fail("verified program faulted in the interpreter:", env.fault);
    if (!program->context.writable && !ctx.unchanged())
        fuzz::fail("verified program wrote its read-only context");
    return 0;
}
