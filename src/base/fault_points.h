// Fault injection for the tests of liveio's error paths: a named step of the io_uring engine
// fails the next N times it runs, as the kernel can make it fail, and every injected failure
// is counted. Armed in a target by the agent's `fault.arm {point, times}` request (`liveio
// fault PID POINT TIMES`), in a test process directly; shown by `liveio status`.
//
// One plan per process: the steps that consult it run on any thread of the target (rings are
// per thread), and arming must reach engines created before and after the request. Unarmed,
// a step pays one relaxed load.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string_view>

namespace liveio::fault {

enum class Point : uint8_t {
    RingCreate,    // io_uring_setup fails (ENOMEM): the engine is not created
    SubmitEagain,  // io_uring_enter returns EAGAIN before submitting (the kernel wants CQEs reaped)
    SubmitEbusy,   // io_uring_enter returns EBUSY before submitting
    SubmitEintr,   // io_uring_enter returns EINTR before submitting
    SubmitEnomem,  // io_uring_enter returns ENOMEM: retried (bounded), then the ring is retired
    CompleteEagain,  // a file read/write completes with EAGAIN without transferring anything
    CompleteEio,     // a read/write completes with EIO without transferring anything
    CompleteShort,   // a read is submitted for half its length: the kernel returns a short count
    Count,
};

inline constexpr const char* kPointNames[] = {"ring_create",  "submit_eagain", "submit_ebusy",
                                              "submit_eintr", "submit_enomem", "complete_eagain",
                                              "complete_eio", "complete_short"};
static_assert(std::size(kPointNames) == static_cast<size_t>(Point::Count));

inline std::optional<Point> parse_point(std::string_view name) {
    for (size_t i = 0; i < std::size(kPointNames); ++i)
        if (name == kPointNames[i]) return static_cast<Point>(i);
    return std::nullopt;
}

class Plan {
public:
    void arm(Point p, uint32_t times) {
        armed_[index(p)].store(times, std::memory_order_relaxed);
        any_.store(true, std::memory_order_release);
    }
    // True when `p` is armed: one of its failures is used up and counted.
    bool fail_now(Point p) {
        if (!any_.load(std::memory_order_relaxed)) return false;
        auto& left = armed_[index(p)];
        uint32_t n = left.load(std::memory_order_relaxed);
        while (n != 0 && !left.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) {
        }
        if (n == 0) return false;
        injected_[index(p)].fetch_add(1, std::memory_order_relaxed);
        return true;
    }
    uint32_t armed(Point p) const { return armed_[index(p)].load(std::memory_order_relaxed); }
    uint64_t injected(Point p) const { return injected_[index(p)].load(std::memory_order_relaxed); }

private:
    static size_t index(Point p) { return static_cast<size_t>(p); }
    std::atomic<bool> any_{false};
    std::atomic<uint32_t> armed_[static_cast<size_t>(Point::Count)] = {};
    std::atomic<uint64_t> injected_[static_cast<size_t>(Point::Count)] = {};
};

// The process's plan.
inline Plan& plan() {
    static Plan p;
    return p;
}

inline bool fail_now(Point p) { return plan().fail_now(p); }

}  // namespace liveio::fault
