// The agent's policies: `policy.list`, `policy.on`, `policy.off`, `policy.set` on the control
// protocol. Switching a policy on loads its BPF object into the BpfHost (programs at the I/O
// edges, its completion program held for the runtime), then publishes it in a slot of the
// policy runtime (src/policy), which starts with the first policy; `off` drains the slot and
// unloads the object; the destructor (detach) switches everything off before the BPF host
// unloads what is left.
//
// Thread safety: requests run on the control thread; methods serialize on a mutex.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/bpf_host.h"
#include "agent/call_pipeline.h"
#include "agent/router.h"
#include "base/result.h"
#include "policy/catalog.h"
#include "policy/runtime.h"
#include "policy/uring_executor.h"

namespace liveio::agent {

class PolicyHost {
public:
    PolicyHost(BpfHost& bpf, CallPipeline& pipeline)
        : bpf_(bpf), pipeline_(pipeline), redirector_(*this) {}
    ~PolicyHost();
    PolicyHost(const PolicyHost&) = delete;
    PolicyHost& operator=(const PolicyHost&) = delete;

    // `object_path`: the policy's .bpf.o, absolute (the CLI resolves it); `settings`:
    // "key=value" knobs applied before the programs run.
    Result<nlohmann::json> on(const std::string& name, const std::string& object_path,
                              const std::vector<std::string>& settings);
    Result<nlohmann::json> off(const std::string& name);
    Result<nlohmann::json> set(const std::string& name, const std::string& setting);
    // {"policies": [{name, on, object, knobs, counters...}], "available": [...], "worker": {...}}
    nlohmann::json list() const;
    // Every policy off. EBUSY (the rest stays on) while the target has not reaped Linux AIO
    // events `uring` translated: detaching then would leave its io_getevents waiting forever.
    // `force` switches everything off regardless (the host is going away).
    Result<void> off_all(bool force = false);
    // The executor of redirected calls (policy::UringRedirect), null for none. The pipeline's
    // redirector slot is taken only while a runtime exists and an executor is set: without
    // one, liveio_redirect answers -EOPNOTSUPP and calls pay nothing for the slot.
    Result<void> set_executor(policy::Redirector* executor);

    Result<void> register_requests(RequestRouter& router);

private:
    struct Active {
        const policy::PolicyDef* def = nullptr;
        uint32_t object = 0;
        uint8_t slot = 0;
        std::map<std::string, uint64_t> knobs;
    };
    // `final` (if given) receives the policy's counters after the drain: every byte it issued
    // is then used or wasted (pending 0).
    Result<void> off_locked(const std::string& name, bool force = false,
                            nlohmann::json* final = nullptr);
    Result<nlohmann::json> on_locked_or_undo(const std::string& name,
                                             const std::string& object_path,
                                             const std::vector<std::string>& settings);
    Result<void> start_runtime();  // mu_ held
    Result<void> set_executor_locked(policy::Redirector* executor);
    void stop_runtime();  // mu_ held

    // The pipeline's redirector while a policy runtime exists: performs the calls a program
    // asked to redirect (liveio_redirect at io_enter) with the runtime's executor.
    class PolicyRedirector final : public Redirector {
    public:
        explicit PolicyRedirector(PolicyHost& host) : host_(host) {}
        bool redirect(CallFrame& frame) override;

    private:
        PolicyHost& host_;
    };

    BpfHost& bpf_;
    CallPipeline& pipeline_;
    PolicyRedirector redirector_;
    std::atomic<policy::Runtime*> live_{nullptr};  // runtime_, for the redirector
    policy::Redirector* executor_ = nullptr;
    // The `uring` policy's executor, while that policy is on.
    std::unique_ptr<policy::UringExecutor> uring_;
    mutable std::mutex mu_;
    // What the target's part readers opened: kept while the runtime stops and starts again.
    policy::PartHistory part_history_;
    std::unique_ptr<policy::Runtime> runtime_;
    std::map<std::string, Active> active_;
};

}  // namespace liveio::agent
