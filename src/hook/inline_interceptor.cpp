// Mechanism::Inline: libc's own I/O functions get an inline hook whose replacement is the
// libc wrapper for that function; the wrapper's "original" is the hook's trampoline. Unlike
// GOT patching this catches calls from every object, libc-internal callers included.
#include <algorithm>

#include "hook/dispatcher.h"
#include "hook/got_hooks.h"
#include "hook/inline_hook.h"
#include "hook/interceptor.h"

namespace liveio::hook {
namespace {

void move_out_of_trampolines(void* hooks, ucontext_t* uc) {
    static_cast<const InlineHooks*>(hooks)->move_out(uc);
}

// After the entry patches are removed, the wrappers go back to the (restored) functions
// themselves, the wrappers are drained (threads sleeping in an original are moved out) and,
// once a world stop found no thread in the trampolines or on its way there, they are unmapped.
Result<UninstallReport> remove_and_drain(InlineHooks& hooks,
                                         const std::vector<std::pair<void**, void*>>& originals) {
    // This thread's own reads (/proc/self/maps, the text files) must reach the kernel, not a
    // handler that may answer them.
    Dispatcher::ScopedInside inside;
    if (auto r = hooks.remove(); !r) return r.error();
    for (auto [where, function] : originals) __atomic_store_n(where, function, __ATOMIC_RELEASE);
    auto drained = drain_libc_hooks(Mechanism::Inline, move_out_of_trampolines, &hooks);
    if (!drained) return drained.error();
    hooks.release_trampolines();
    return drained;
}

class InlineInterceptor final : public Interceptor {
public:
    InlineInterceptor(std::unique_ptr<InlineHooks> hooks,
                      std::vector<std::pair<void**, void*>> originals)
        : hooks_(std::move(hooks)), originals_(std::move(originals)) {}
    ~InlineInterceptor() override { (void)uninstall(); }
    Result<void> uninstall() override {
        if (!hooks_) return {};
        auto r = remove_and_drain(*hooks_, originals_);
        if (!r) return r.error();
        report_ = *r;
        hooks_.reset();
        return {};
    }
    UninstallReport last_uninstall() const override { return report_; }
    uint64_t calls_dispatched() const override {
        return Dispatcher::instance().calls(Mechanism::Inline);
    }
    Mechanism mechanism() const override { return Mechanism::Inline; }

private:
    std::unique_ptr<InlineHooks> hooks_;
    std::vector<std::pair<void**, void*>> originals_;  // wrapper's original pointer, libc function
    UninstallReport report_;
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
        void* target = libc_function(it->name);
        if (target == nullptr) return make_error(ENOENT, "libc function not found: " + name);
        // Aliases (pread/pread64, lseek/lseek64, open/open64) share one entry point.
        if (std::any_of(specs.begin(), specs.end(),
                        [&](const InlineHookSpec& s) { return s.target == target; }))
            continue;
        if (auto ok = can_inline_hook(target, /*releasable=*/true); !ok) {
            if (explicit_names) return ok.error();
            continue;  // the default set hooks what can be hooked safely
        }
        specs.push_back({target, it->wrapper});
        chosen.push_back(&*it);
    }
    Dispatcher::ScopedInside inside;  // this thread's own I/O while patching is liveio's
    if (auto r = Dispatcher::instance().attach(Mechanism::Inline, handler); !r) return r.error();
    auto hooks = InlineHooks::prepare(specs, TrampolineLifetime::Owned);
    if (!hooks) {
        Dispatcher::instance().detach(Mechanism::Inline);
        return hooks.error();
    }
    // Wrappers must find their trampolines before the first patched call reaches them.
    std::vector<std::pair<void**, void*>> originals;
    for (size_t i = 0; i < chosen.size(); ++i) {
        __atomic_store_n(chosen[i]->original, (*hooks)->original(i), __ATOMIC_RELEASE);
        originals.emplace_back(chosen[i]->original, specs[i].target);
    }
    if (auto r = (*hooks)->apply(); !r) {
        (void)remove_and_drain(**hooks, originals);
        return r.error();
    }
    return std::unique_ptr<Interceptor>(
        std::make_unique<InlineInterceptor>(std::move(hooks).value(), std::move(originals)));
}

}  // namespace liveio::hook
