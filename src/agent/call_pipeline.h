// The agent's path for every intercepted call: the one hook::CallHandler the agent installs,
// an explicit pipeline of stages around a frame that lives on the dispatcher's stack.
//
//   dispatcher (hook/dispatcher.h): builds the CallFrame {call, result, start_ns, word}
//     -> CallPipeline::on_enter
//          observers' enter(frame), in order      (the counters, then the BPF host's edges)
//          redirector->redirect(frame)            (at most one; may perform the call itself)
//     -> the native call, unless the redirector performed it
//     -> CallPipeline::on_exit
//          observers' exit(frame), in order       (frame.result: native or redirected alike)
//
// Observers are fixed when the pipeline is built (they live as long as it does). The
// redirector slot is the seam for acceleration policies: set_redirector() and
// clear_redirector() may run while calls run, and clear_redirector() returns only once no
// thread is inside redirect() any more, so the redirector may be destroyed then. Without a
// redirector the slot costs one load and a branch per call.
//
// The frame is the calls' only per-call state: a stage that needs to carry something from
// enter to exit keeps it in the frame (the BPF host's start time in start_ns, the redirector
// its own bits of word), never in thread-local stacks keyed by addresses.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <mutex>

#include "agent/bpf_host_rcu.h"
#include "base/result.h"
#include "hook/dispatch.h"

namespace liveio::agent {

using hook::CallFrame;

// Sees every call at its two edges. Runs on the application's thread, inside the dispatcher
// (its own I/O is not intercepted); must be re-entrant (a signal handler's hooked call may
// interrupt it) and must not change the call.
class CallObserver {
public:
    virtual ~CallObserver() = default;
    virtual void enter(CallFrame& frame) = 0;
    virtual void exit(CallFrame& frame) = 0;
};

// May take a call over: perform it itself (through io_uring, from a cache, ...) with exactly
// the semantics of the native call, set frame.result (a value >= 0 or -errno, as the kernel
// returns it) and return true. Returning false lets the native call run unchanged, which is
// also the answer to any failure of the redirector's own machinery.
class Redirector {
public:
    virtual ~Redirector() = default;
    virtual bool redirect(CallFrame& frame) = 0;
};

class CallPipeline final : public hook::CallHandler {
public:
    static constexpr size_t kMaxObservers = 4;
    // Set in frame.word when the redirector performed the call; the other bits of word
    // belong to the redirector.
    static constexpr uint64_t kRedirected = uint64_t{1} << 63;

    // `observers` run in this order at both edges; at most kMaxObservers, none null.
    explicit CallPipeline(std::initializer_list<CallObserver*> observers);
    CallPipeline(const CallPipeline&) = delete;
    CallPipeline& operator=(const CallPipeline&) = delete;

    // Fills the redirector slot. EBUSY when it is taken, EINVAL for null.
    Result<void> set_redirector(Redirector* redirector);
    // Empties the slot and returns once no thread runs the redirector's redirect().
    void clear_redirector();
    Redirector* redirector() const { return redirector_.load(std::memory_order_acquire); }

    // hook::CallHandler
    bool on_enter(CallFrame& frame) override {
        for (size_t i = 0; i < count_; ++i) observers_[i]->enter(frame);
        if (redirector_.load(std::memory_order_relaxed) == nullptr) [[likely]]
            return false;
        return redirect(frame);
    }
    void on_exit(CallFrame& frame) override {
        for (size_t i = 0; i < count_; ++i) observers_[i]->exit(frame);
    }
    // Stages that need a start time record their own (CallFrame::start_ns).
    bool wants_start_time() const override { return false; }

private:
    // The redirector inside a read section of readers_ (the slow path of on_enter).
    bool redirect(CallFrame& frame);

    CallObserver* observers_[kMaxObservers] = {};
    size_t count_ = 0;
    std::atomic<Redirector*> redirector_{nullptr};
    std::mutex redirector_mu_;  // serializes set_redirector and clear_redirector
    ReaderRegistry readers_;
};

}  // namespace liveio::agent
