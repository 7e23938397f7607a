#include "hook/dispatcher.h"

#include <sched.h>

namespace liveio::hook {

thread_local bool Dispatcher::inside_ = false;

Dispatcher& Dispatcher::instance() {
    // Constant-initialized (no dynamic init), so hooks may run before main or after exit.
    static constinit Dispatcher dispatcher;
    return dispatcher;
}

Result<void> Dispatcher::attach(Mechanism mechanism, CallHandler* handler) {
    if (handler == nullptr) return make_error(EINVAL, "interceptor needs a CallHandler");
    slots_[index(mechanism)].timed.store(handler->wants_start_time(), std::memory_order_relaxed);
    CallHandler* expected = nullptr;
    if (!slots_[index(mechanism)].handler.compare_exchange_strong(expected, handler))
        return make_error(EBUSY, "an interceptor with this mechanism is already installed");
    return {};
}

void Dispatcher::detach(Mechanism mechanism) {
    Slot& slot = slots_[index(mechanism)];
    slot.handler.store(nullptr, std::memory_order_seq_cst);
    // Threads inside a hook finish a syscall at most; blocking ones (read on an idle socket)
    // may take long, and uninstall must wait for them, so yield rather than spin hot.
    while (slot.in_flight.load(std::memory_order_acquire) != 0) sched_yield();
}

}  // namespace liveio::hook
