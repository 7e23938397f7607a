// Installing and removing interception in the current process. One interface over the
// three mechanisms; every intercepted call reaches the CallHandler (dispatch.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/result.h"
#include "hook/dispatch.h"

namespace liveio::hook {

enum class Mechanism {
    Got,             // rewrite GOT/PLT slots of imported I/O functions in chosen objects
    Inline,          // patch the entry of libc's I/O functions with a jump to a trampoline
    SyscallRewrite,  // zpoline-style: redirect every `syscall` instruction (needs mmap_min_addr=0)
};

inline constexpr const char* kMainProgram = "[main]";

struct InterceptOptions {
    Mechanism mechanism = Mechanism::Got;
    // GOT: names (or path suffixes) of loaded objects whose slots are patched; empty means
    // every loaded object except liveio's own, libc and the dynamic loader. kMainProgram
    // names the main executable (which has no path in the loader's list).
    std::vector<std::string> objects;
    // libc function names to intercept (read, pread64, write, send, recv, ...); empty means
    // the default I/O set. Ignored by SyscallRewrite, which sees every syscall.
    std::vector<std::string> functions;
};

// What the last uninstall had to do to finish in bounded time: threads it moved out of calls
// in progress (sleeping in the original function or in a system call made for them, which it
// does not wait for), world stops, and the time it spent waiting for handler code to return.
struct UninstallReport {
    unsigned moved_out = 0;
    unsigned world_stops = 0;
    double waited_ms = 0;
    // Memory the uninstall could not prove unreachable and left mapped (see docs/SECURITY.md).
    std::string kept;
};

// An installed interception. Destruction uninstalls: every patched byte and pointer is
// restored, then it waits until no thread is inside a hook or trampoline.
class Interceptor {
public:
    static Result<std::unique_ptr<Interceptor>> install(const InterceptOptions& options,
                                                        CallHandler* handler);
    virtual ~Interceptor() = default;
    virtual Result<void> uninstall() = 0;
    virtual uint64_t calls_dispatched() const = 0;
    virtual Mechanism mechanism() const = 0;
    virtual UninstallReport last_uninstall() const { return {}; }
};

}  // namespace liveio::hook
