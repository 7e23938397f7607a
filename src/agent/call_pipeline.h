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
// Observers are fixed when the pipeline is built: their types are CallPipelineOf's template
// arguments, so they are called directly, not through a virtual call each. The
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
#include <mutex>
#include <tuple>
#include <type_traits>

#include "base/read_sections.h"
#include "base/result.h"
#include "hook/dispatch.h"

namespace liveio::agent {

using hook::CallFrame;

// Read sections of the agent's lock-free readers on the hooked path (the redirector slot,
// the BPF host's attachment lists): a writer frees what it unpublished after synchronize().
using AgentReadSections = ReadSections<512>;

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

// The redirector slot and the hook::CallHandler face of a pipeline; CallPipelineOf adds the
// observers. Code that plugs a redirector in (policies) holds a CallPipeline&.
class CallPipeline : public hook::CallHandler {
public:
    // Set in frame.word when the redirector performed the call; the other bits of word
    // belong to the redirector.
    static constexpr uint64_t kRedirected = uint64_t{1} << 63;

    CallPipeline() = default;
    CallPipeline(const CallPipeline&) = delete;
    CallPipeline& operator=(const CallPipeline&) = delete;

    // Fills the redirector slot. EBUSY when it is taken, EINVAL for null.
    Result<void> set_redirector(Redirector* redirector);
    // Empties the slot and returns once no thread runs the redirector's redirect().
    void clear_redirector();
    Redirector* redirector() const { return redirector_.load(std::memory_order_acquire); }

    // Stages that need a start time record their own (CallFrame::start_ns).
    bool wants_start_time() const override { return false; }

protected:
    // The redirector's turn at the enter edge: one load and a branch while the slot is empty.
    bool redirect_if_set(CallFrame& frame) {
        if (redirector_.load(std::memory_order_relaxed) == nullptr) [[likely]]
            return false;
        return redirect(frame);
    }

private:
    // The redirector inside a read section of readers_ (the slow path of redirect_if_set).
    bool redirect(CallFrame& frame);

    std::atomic<Redirector*> redirector_{nullptr};
    std::mutex redirector_mu_;  // serializes set_redirector and clear_redirector
    AgentReadSections readers_{AgentReadSections::Transient{}};
};

// A pipeline whose observers' types are part of its own: the dispatcher makes one virtual
// call per edge (into on_enter/on_exit) and the observers are called directly (inlined where
// their edges are defined inline, as the BPF host's are). Observers run in the order of the
// template arguments at both edges and must outlive the pipeline.
template <typename... Observers>
class CallPipelineOf final : public CallPipeline {
    static_assert((std::is_base_of_v<CallObserver, Observers> && ...),
                  "pipeline observers implement CallObserver");

public:
    explicit CallPipelineOf(Observers&... observers) : observers_(&observers...) {}

    // hook::CallHandler
    bool on_enter(CallFrame& frame) override {
        std::apply([&](Observers*... o) { (o->enter(frame), ...); }, observers_);
        return redirect_if_set(frame);
    }
    void on_exit(CallFrame& frame) override {
        std::apply([&](Observers*... o) { (o->exit(frame), ...); }, observers_);
    }

private:
    std::tuple<Observers*...> observers_;
};

}  // namespace liveio::agent
