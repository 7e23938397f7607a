#include "interrupt_guard.h"

#include <time.h>
#include <unistd.h>

namespace liveio::bench {

InterruptGuard::InterruptGuard(std::string message) : message_(std::move(message)) {
    sigemptyset(&set_);
    for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set_, s);
    pthread_sigmask(SIG_BLOCK, &set_, &old_mask_);
    thread_ = std::thread([this] { watch(); });
}

InterruptGuard::~InterruptGuard() {
    stop_ = true;
    thread_.join();
    // A signal that arrived after the watcher stopped is discarded, not delivered late.
    timespec zero{};
    while (sigtimedwait(&set_, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
}

void InterruptGuard::on_interrupt(std::function<void()> action) {
    std::lock_guard lock(mu_);
    if (interrupted_) action();
    actions_.push_back(std::move(action));
}

void InterruptGuard::kill_on_interrupt(pid_t pid) {
    on_interrupt([pid] { ::kill(pid, SIGKILL); });
}

void InterruptGuard::watch() {
    const timespec tick{0, 100 * 1000 * 1000};
    while (!stop_) {
        siginfo_t info;
        const int s = sigtimedwait(&set_, &info, &tick);
        if (s <= 0) continue;
        std::lock_guard lock(mu_);
        if (!interrupted_) {
            signal_ = s;
            interrupted_ = true;
            (void)!::write(2, message_.data(), message_.size());
        }
        for (auto& action : actions_) action();
    }
}

}  // namespace liveio::bench
