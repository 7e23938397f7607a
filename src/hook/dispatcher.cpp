#include "hook/dispatcher.h"

namespace liveio::hook {

Dispatcher& Dispatcher::instance() {
    // Constant-initialized (no dynamic init), so hooks may run before main or after exit.
    static constinit Dispatcher dispatcher;
    return dispatcher;
}

Result<void> Dispatcher::attach(Mechanism mechanism, CallHandler* handler) {
    if (handler == nullptr) return make_error(EINVAL, "interceptor needs a CallHandler");
    // Before any thread can see the handler, so every entry made with plain stores is
    // covered by the barrier detach will run.
    sections_.register_membarrier();
    slots_[index(mechanism)].timed.store(handler->wants_start_time(), std::memory_order_relaxed);
    slots_[index(mechanism)].epoch.fetch_add(1, std::memory_order_relaxed);
    CallHandler* expected = nullptr;
    if (!slots_[index(mechanism)].handler.compare_exchange_strong(expected, handler))
        return make_error(EBUSY, "an interceptor with this mechanism is already installed");
    return {};
}

void Dispatcher::detach(Mechanism mechanism) {
    clear_handler(mechanism);
    // Threads inside a hook finish a syscall at most; blocking ones (read on an idle socket)
    // may take long, and uninstall must wait for them.
    sections_.wait_until_idle(index(mechanism));
}

void Dispatcher::clear_handler(Mechanism mechanism) {
    slots_[index(mechanism)].handler.store(nullptr, std::memory_order_seq_cst);
    // Every thread that entered with a plain store is now visible, or will see the null.
    sections_.barrier();
}

uint64_t Dispatcher::in_flight(Mechanism mechanism) const {
    return sections_.inside(index(mechanism));
}

}  // namespace liveio::hook
