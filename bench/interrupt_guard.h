// Ctrl-C, SIGTERM and SIGHUP while a long command (the demo, `liveio bench clickhouse`) runs
// servers. The signals are blocked in every thread (and so in the threads started later) and
// taken by one watcher thread, which runs the registered actions at once: kill the servers
// (whatever request the main thread is blocked in then fails and it unwinds normally, so
// destructors reap servers and remove files) and undo system settings (device readahead).
// Children get an empty mask back (LocalServer and run_liveio reset it).
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace liveio::bench {

class InterruptGuard {
public:
    // `message` is printed to stderr on the first interrupt.
    explicit InterruptGuard(std::string message);
    ~InterruptGuard();
    InterruptGuard(const InterruptGuard&) = delete;
    InterruptGuard& operator=(const InterruptGuard&) = delete;

    // Runs `action` in the watcher thread on every interrupt (at once when one already came).
    void on_interrupt(std::function<void()> action);
    void kill_on_interrupt(pid_t pid);
    bool interrupted() const { return interrupted_; }
    int signal() const { return signal_; }

private:
    void watch();

    std::string message_;
    sigset_t set_, old_mask_;
    std::mutex mu_;
    std::vector<std::function<void()>> actions_;
    std::atomic<bool> interrupted_{false}, stop_{false};
    std::atomic<int> signal_{0};
    std::thread thread_;
};

}  // namespace liveio::bench
