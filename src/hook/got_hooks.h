// The libc I/O functions the GOT and inline mechanisms can intercept: for each, its name,
// the wrapper that translates it into a SyscallCall for the dispatcher, and where the
// wrapper finds the original function to fall back to.
#pragma once

#include <string_view>
#include <vector>

#include "hook/interceptor.h"
#include "hook/world_stop.h"

namespace liveio::hook {

struct LibcHook {
    const char* name;
    void* wrapper;    // replacement installed in place of the libc function
    void** original;  // the libc function the wrapper calls when the call is passed through
};

// `name` as libc.so.6 itself defines it (its default version), or null. Not the global
// lookup (dlsym(RTLD_DEFAULT)): a library that interposes the function -- a sanitizer
// runtime, an LD_PRELOAD wrapper -- comes first there, and patching its copy would miss libc's
// aliases (pread is pread64 in libc, two functions in the interposer), libc's internal callers
// and every call the interposer itself forwards to libc.
void* libc_function(const char* name);

// Every hookable function (aliases such as pread/pread64 are separate entries).
const std::vector<LibcHook>& libc_hooks(Mechanism mechanism);
// The default I/O set, when InterceptOptions::functions is empty.
const std::vector<std::string_view>& default_hooked_functions();

// Uninstall of a libc-level mechanism, once its slots or patches are restored: clears the
// handler, waits for threads running handler code, then stops the world until no thread runs
// the wrappers' code or sleeps in an original function called from them (those are moved out:
// their return goes straight to the application). `extra` (may be null) is applied to every
// parked thread first (inline: out of the trampolines). Afterwards nothing can reach the
// wrappers' return path: the library may be unloaded, trampolines unmapped.
Result<UninstallReport> drain_libc_hooks(Mechanism mechanism, ContextFixup extra = nullptr,
                                         const void* extra_context = nullptr);

}  // namespace liveio::hook
