// Mechanism::Inline: libc's own I/O functions get an inline hook whose replacement is the
// libc wrapper for that function; the wrapper's "original" is the hook's trampoline. Unlike
// GOT patching this catches calls from every object, libc-internal callers included.
#include <dlfcn.h>

#include <algorithm>

#include "hook/dispatcher.h"
#include "hook/got_hooks.h"
#include "hook/inline_hook.h"
#include "hook/interceptor.h"

namespace liveio::hook {
namespace {

class InlineInterceptor final : public Interceptor {
public:
    explicit InlineInterceptor(std::unique_ptr<InlineHooks> hooks) : hooks_(std::move(hooks)) {}
    ~InlineInterceptor() override { (void)uninstall(); }
    Result<void> uninstall() override {
        if (!hooks_) return {};
        auto r = hooks_->remove();
        if (!r) return r;
        hooks_.reset();
        Dispatcher::instance().detach(Mechanism::Inline);
        return {};
    }
    uint64_t calls_dispatched() const override {
        return Dispatcher::instance().calls(Mechanism::Inline);
    }
    Mechanism mechanism() const override { return Mechanism::Inline; }

private:
    std::unique_ptr<InlineHooks> hooks_;
};

}  // namespace

Result<std::unique_ptr<Interceptor>> install_inline(const InterceptOptions& options,
                                                    CallHandler* handler) {
    const auto& table = libc_hooks(Mechanism::Inline);
    std::vector<std::string> names(options.functions.begin(), options.functions.end());
    const bool explicit_names = !names.empty();
    if (!explicit_names)
        for (auto n : default_hooked_functions()) names.emplace_back(n);

    std::vector<InlineHookSpec> specs;
    std::vector<const LibcHook*> chosen;
    for (const auto& name : names) {
        auto it = std::find_if(table.begin(), table.end(),
                               [&](const LibcHook& h) { return name == h.name; });
        if (it == table.end())
            return make_error(EINVAL, "no inline wrapper for function '" + name + "'");
        void* target = dlsym(RTLD_DEFAULT, it->name);
        if (target == nullptr) return make_error(ENOENT, "function not found: " + name);
        // Aliases (pread/pread64, lseek/lseek64, open/open64) share one entry point.
        if (std::any_of(specs.begin(), specs.end(),
                        [&](const InlineHookSpec& s) { return s.target == target; }))
            continue;
        if (auto ok = can_inline_hook(target); !ok) {
            if (explicit_names) return ok.error();
            continue;  // the default set hooks what can be hooked safely
        }
        specs.push_back({target, it->wrapper});
        chosen.push_back(&*it);
    }
    if (auto r = Dispatcher::instance().attach(Mechanism::Inline, handler); !r) return r.error();
    auto hooks = InlineHooks::prepare(specs);
    if (!hooks) {
        Dispatcher::instance().detach(Mechanism::Inline);
        return hooks.error();
    }
    // Wrappers must find their trampolines before the first patched call reaches them.
    for (size_t i = 0; i < chosen.size(); ++i)
        __atomic_store_n(chosen[i]->original, (*hooks)->original(i), __ATOMIC_RELEASE);
    if (auto r = (*hooks)->apply(); !r) {
        Dispatcher::instance().detach(Mechanism::Inline);
        return r.error();
    }
    return std::unique_ptr<Interceptor>(std::make_unique<InlineInterceptor>(std::move(hooks).value()));
}

}  // namespace liveio::hook
