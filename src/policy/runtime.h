// The policy runtime in the target: the I/O thread, the liveio helpers BPF programs call at
// I/O edges, the completion edge, the per-policy counters and the used/wasted ledger.
//
// A policy occupies a slot while it is on: its name, the programs of its BPF object (so a
// helper knows which policy called it), the object's liveio/io_complete program, its knobs
// and counters. `enable` publishes a slot; `disable` switches it off, waits until nothing it
// queued is still queued or in flight (completion programs included) and counts its ledger
// ranges as wasted: after it returns, the policy's object may be unloaded.
//
// The helpers are plain functions (ebpf::HelperFn carries no context pointer): they reach the
// runtime through Runtime::active(), the one Runtime of the process (a second create() fails
// with EBUSY), the documented global of this subsystem.
//
//   auto rt = policy::Runtime::create({}).value();
//   ebpf::HelperTable helpers = ebpf::HelperTable::standard();
//   policy::Runtime::add_helpers(helpers);                  // before loading the programs
//   ... load the object's programs with `helpers` ...
//   uint8_t slot = rt->enable({"prefetch", programs, completion, services, knobs}).value();
//   ... at every read's exit: rt->observe_read(file_id, offset, bytes) ...
//   rt->disable(slot);                                      // drains, then unload the object
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/result.h"
#include "ebpf/helpers.h"
#include "hook/dispatch.h"
#include "policy/counters.h"
#include "policy/io_worker.h"
#include "policy/ledger.h"

namespace liveio::ebpf {
struct Program;
class Executable;
class Runtime;
}  // namespace liveio::ebpf

namespace liveio::policy {

inline constexpr int kMaxPolicies = 8;
inline constexpr int kMaxKnobs = 16;
inline constexpr int kMaxPolicyPrograms = 16;

// Performs a call a program asked to redirect (liveio_redirect) through io_uring instead of
// natively. The executor is policy::UringRedirect (the `uring` policy); until one is
// installed, liveio_redirect answers -EOPNOTSUPP and counts a fallback.
class Redirector {
public:
    virtual ~Redirector() = default;
    // True with frame.result set when it performed the call (exact native semantics); false:
    // the call runs natively.
    virtual bool run(hook::CallFrame& frame) = 0;
};

// The bytes a hooked read() / pread64() returned, readable by its liveio/io_exit programs
// through liveio_io_load while this scope lives (the host opens it around those programs,
// on the calling thread). `ctx` is the liveio_io_ctx handed to them: the helper only
// answers for that context.
class ReadDataScope {
public:
    ReadDataScope(const void* ctx, const void* data, size_t len);
    ~ReadDataScope();
    ReadDataScope(const ReadDataScope&) = delete;
    ReadDataScope& operator=(const ReadDataScope&) = delete;
};

class Runtime final : public WorkerSink {
public:
    struct Options {
        IoWorker::Options worker;
        size_t ledger_ranges = 8192;
    };
    struct PolicySpec {
        std::string name;
        std::vector<const ebpf::Program*> programs;    // every program of its object
        const ebpf::Executable* completion = nullptr;  // its liveio/io_complete program
        ebpf::Runtime* services = nullptr;             // maps, trace log for the completion edge
        std::vector<uint64_t> knobs;                   // by index (liveio_knob)
    };

    static Result<std::unique_ptr<Runtime>> create(const Options& options);
    // Switches every policy off (draining each), then stops the I/O thread.
    ~Runtime() override;
    Runtime(const Runtime&) = delete;
    Runtime& operator=(const Runtime&) = delete;

    // The process's runtime, or null.
    static Runtime* active() { return active_.load(std::memory_order_acquire); }
    // Registers the liveio policy helpers (IDs of liveio/policy.h) with their verifier
    // prototypes. Fails if an ID is taken.
    static Result<void> add_helpers(ebpf::HelperTable& table);

    Result<uint8_t> enable(PolicySpec spec);
    Result<void> disable(uint8_t slot);
    Result<void> set_knob(uint8_t slot, unsigned index, uint64_t value);
    void set_budget(uint64_t bytes) { worker_->set_budget(bytes); }
    // How the slot's prefetches reach the page cache: read through it (fill, the default) or
    // advised (POSIX_FADV_WILLNEED). See io_worker.h.
    void set_fill(uint8_t slot, bool fill) {
        slots_[slot].fill.store(fill, std::memory_order_relaxed);
    }
    uint64_t budget() const { return worker_->budget(); }
    const Counters& counters(uint8_t slot) const { return slots_[slot].counters; }
    // Bytes the slot's prefetches issued that are neither used nor wasted yet (in flight or
    // resident, unread): issued = used + wasted + pending, exactly, once the slot is idle.
    uint64_t pending_bytes(uint8_t slot) const { return ledger_.pending(slot); }
    // The slot's counters with its pending bytes: what `policy list`, `status` and the final
    // figures of `policy off` show (valid after disable() until the slot is enabled again).
    nlohmann::json counters_json(uint8_t slot) const;
    // {"worker": {...}, "policies": [{"slot", "name", "on", counters...}]}.
    nlohmann::json describe() const;
    IoWorker& worker() { return *worker_; }
    PrefetchLedger& ledger() { return ledger_; }

    // Target threads, after a read of a regular file returned `bytes` > 0 at `offset`.
    void observe_read(uint64_t file_id, uint64_t offset, uint64_t bytes) {
        ledger_.observe(file_id, offset, bytes);
    }
    bool tracks(uint64_t file_id) const { return ledger_.tracks(file_id); }

    // The redirect executor slot (null: none). The Redirector must outlive its installation.
    void set_redirector(Redirector* r) { redirector_.store(r, std::memory_order_release); }
    Redirector* redirector() const { return redirector_.load(std::memory_order_acquire); }
    // At the enter edge, after the programs ran: whether one of them asked to redirect this
    // call (clears the request). `slot` receives the asking policy.
    static bool take_redirect(uint8_t& slot);
    // The call asked for was not redirected after all (the executor declined).
    void count_fallback(uint8_t slot) {
        slots_[slot].counters.add(slots_[slot].counters.fallbacks);
    }

    // WorkerSink (the I/O thread)
    bool admit(const Action& action) override;
    void dropped(const Action& action) override;
    void issued(const Action& action, uint64_t file_id) override;
    void completed(const Action& action, uint64_t file_id, int32_t res, std::span<const char> data,
                   uint64_t latency_ns) override;

    // Helper bodies (public for the helper trampolines in runtime.cpp).
    struct Slot;
    Slot* slot_of(const ebpf::Program* program);
    long queue(Slot& slot, Action::Kind kind, long fd, long offset, uint64_t len, uint64_t cookie);
    long complete_load(const void* ctx, uint64_t offset, void* dst, uint64_t len) const;
    void feedback(const Slot& slot, void* out, uint64_t size) const;

    struct Slot {
        std::atomic<bool> on{false};
        std::atomic<bool> fill{true};
        std::atomic<uint32_t> generation{0};
        // Helper calls of this slot between their `on` check and their push: disable waits
        // for them, so nothing it did not drain is queued after it returns.
        std::atomic<uint32_t> queuing{0};
        uint8_t index = 0;
        std::string name;  // under mu_
        std::atomic<const ebpf::Program*> programs[kMaxPolicyPrograms] = {};
        std::atomic<const ebpf::Executable*> completion{nullptr};
        ebpf::Runtime* services = nullptr;
        std::atomic<uint64_t> knobs[kMaxKnobs] = {};
        Counters counters;
    };

private:
    explicit Runtime(const Options& options);

    static std::atomic<Runtime*> active_;
    PrefetchLedger ledger_;
    Slot slots_[kMaxPolicies];
    std::atomic<Redirector*> redirector_{nullptr};
    // The completion being handed to a program right now (I/O thread only): what
    // liveio_complete_load reads from.
    struct Frame;
    std::atomic<const Frame*> frame_{nullptr};
    mutable std::mutex mu_;  // enable/disable/describe
    std::unique_ptr<IoWorker> worker_;
};

}  // namespace liveio::policy
