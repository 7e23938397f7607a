// GOT/PLT interception: rewrites the import slots (JUMP_SLOT and GLOB_DAT relocations) of
// chosen libc functions in the chosen loaded objects so they point to liveio's wrappers.
#pragma once

#include <memory>

#include "hook/interceptor.h"

namespace liveio::hook {

Result<std::unique_ptr<Interceptor>> install_got(const InterceptOptions& options,
                                                 CallHandler* handler);

// Mechanism::Inline (inline_interceptor.cpp): hooks libc's own entry points.
Result<std::unique_ptr<Interceptor>> install_inline(const InterceptOptions& options,
                                                    CallHandler* handler);

// One patched import slot, for inspection and tests.
struct GotSlot {
    std::string object;
    std::string function;
    void** slot;
    void* original_value;
};

}  // namespace liveio::hook
