#include "hook/interceptor.h"

#include "hook/got.h"
#include "hook/syscall_rewrite.h"

namespace liveio::hook {

Result<std::unique_ptr<Interceptor>> Interceptor::install(const InterceptOptions& options,
                                                          CallHandler* handler) {
    switch (options.mechanism) {
        case Mechanism::Got: return install_got(options, handler);
        case Mechanism::Inline: return install_inline(options, handler);
        case Mechanism::SyscallRewrite: return install_syscall_rewrite(options, handler);
    }
    return make_error(EINVAL, "unknown interception mechanism");
}

}  // namespace liveio::hook
