// Concurrent verified I/O while interception is installed and removed over and over.
#pragma once

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hook/dispatch.h"
#include "hook/dispatcher.h"

namespace liveio::hook {

// Takes pread64 over by performing it itself (raw syscall): the data path changes while the
// caller must still see exactly the same bytes.
class PreadTakeover : public CallHandler {
public:
    std::atomic<uint64_t> taken{0}, seen{0};
    bool on_enter(CallFrame& frame) override {
        if (frame.call.nr != SYS_pread64) return false;
        frame.result = raw_syscall(frame.call);
        taken.fetch_add(1, std::memory_order_relaxed);
        return true;
    }
    void on_exit(CallFrame&) override { seen.fetch_add(1, std::memory_order_relaxed); }
};

using PwriteFn = ssize_t (*)(int, const void*, size_t, off_t);
using PreadFn = ssize_t (*)(int, void*, size_t, off_t);

// Four threads write and read back their own block through `pw`/`pr` while `cycle` (install,
// wait, uninstall) runs `cycles` times; returns the number of wrong results seen.
inline uint64_t wrong_bytes_under_cycles(
    PwriteFn pw, PreadFn pr, int cycles,
    const std::function<void(const std::function<void()>&)>& cycle) {
    char path[] = "/tmp/liveio-hook-stress-XXXXXX";
    int fd = mkstemp(path);
    EXPECT_GE(fd, 0);
    unlink(path);
    constexpr int kThreads = 4;
    constexpr size_t kBlock = 512;
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> wrong{0}, ops{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < kThreads; ++t) {
        workers.emplace_back([&, t] {
            std::vector<unsigned char> out(kBlock), in(kBlock);
            for (uint32_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
                for (size_t k = 0; k < kBlock; ++k)
                    out[k] = static_cast<unsigned char>(t * 31 + i + k);
                const off_t off = static_cast<off_t>(t * kBlock);
                if (pw(fd, out.data(), kBlock, off) != static_cast<ssize_t>(kBlock) ||
                    pr(fd, in.data(), kBlock, off) != static_cast<ssize_t>(kBlock) || in != out)
                    wrong.fetch_add(1);
                ops.fetch_add(1, std::memory_order_relaxed);
            }
        });
    }
    // Lets the workers make progress while interception is in place. Workers that make none
    // for kStallLimit are deadlocked (in a hook, or on a lock a hook holds): they can be
    // neither joined nor detached safely, so the test fails and the process ends right there
    // instead of hanging until the runner's timeout.
    constexpr auto kStallLimit = std::chrono::seconds(120);
    auto wait_for_io = [&] {
        const uint64_t target = ops.load() + 2;
        const auto deadline = std::chrono::steady_clock::now() + kStallLimit;
        while (ops.load() < target) {
            if (std::chrono::steady_clock::now() > deadline) {
                ADD_FAILURE() << "the I/O threads made no progress for "
                              << std::chrono::seconds(kStallLimit).count() << " s";
                std::abort();
            }
            std::this_thread::yield();
        }
    };
    for (int c = 0; c < cycles; ++c) cycle(wait_for_io);
    stop = true;
    for (auto& w : workers) w.join();
    close(fd);
    return wrong.load();
}

}  // namespace liveio::hook
