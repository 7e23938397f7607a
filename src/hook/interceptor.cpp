#include "hook/interceptor.h"

#include "hook/got.h"

namespace liveio::hook {

Result<std::unique_ptr<Interceptor>> Interceptor::install(const InterceptOptions& options,
                                                          CallHandler* handler) {
    switch (options.mechanism) {
        case Mechanism::Got: return install_got(options, handler);
        case Mechanism::Inline: return install_inline(options, handler);
        case Mechanism::SyscallRewrite:
            return make_error(ENOSYS, "syscall-instruction rewriting is not implemented yet");
    }
    return make_error(EINVAL, "unknown interception mechanism");
}

}  // namespace liveio::hook
