// Private to the engines and their tests: loading a program without running the verifier.
// Executable::load always verifies; this exists for tests that feed engines programs the
// verifier cannot follow (random differential programs) and must never be exposed further.
#pragma once

#include <memory>

#include "ebpf/vm.h"

namespace liveio::ebpf::internal {

Result<std::unique_ptr<Executable>> load_unverified(std::shared_ptr<const Program> program,
                                                    const HelperTable& helpers, Engine engine);

}  // namespace liveio::ebpf::internal
