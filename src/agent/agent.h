// The in-target runtime: one Agent per process (owned by liveio-agent.so, see
// library_entry.cpp) holds everything the agent does, so unloading the library after a
// detach leaves nothing behind: the control thread is joined, sockets closed, interceptors
// removed, memory freed.
//
// The Agent serves the control protocol (protocol.h) on one thread whose signals are blocked
// (the application's handlers never run there) except the world-stop signal inline patching
// needs. That thread marks itself as liveio code (Dispatcher::ScopedInside), so its own I/O
// never reaches a hook. Requests are routed through a RequestRouter: later features register
// their requests on router() without touching this class.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "agent/bpf_host.h"
#include "agent/call_counters.h"
#include "agent/call_pipeline.h"
#include "agent/policy_host.h"
#include "agent/router.h"
#include "base/high_fd.h"
#include "base/result.h"
#include "hook/interceptor.h"

namespace liveio::agent {

const char* mechanism_name(hook::Mechanism m);
// "got", "inline", "rewrite".
Result<hook::Mechanism> parse_mechanism(const std::string& name);

struct AgentOptions {
    // Abstract socket name (leading NUL included); empty: control_socket_name(getpid()).
    std::string socket_name;
    // Loaded with LD_PRELOAD: the library can never be unloaded, so `detach` removes the
    // interception but keeps the control socket serving, and a later attach just installs.
    bool resident = false;
    // Where the library is loaded, reported by `status` so `liveio detach` can dlclose it.
    std::string library_path;
    uint64_t library_handle = 0;
};

// The agent's handler: its counters, then the BPF host's edges.
using AgentPipeline = CallPipelineOf<CallCounters, BpfHost>;

class Agent {
public:
    static Result<std::unique_ptr<Agent>> start(AgentOptions options);
    // Stops the control thread, then removes every interceptor (waiting until no thread is
    // inside a hook).
    ~Agent();
    Agent(const Agent&) = delete;
    Agent& operator=(const Agent&) = delete;

    RequestRouter& router() { return router_; }

    // {"mechanism": "got"|"inline"|"rewrite", "objects": [...], "functions": [...]}.
    Result<nlohmann::json> install(const nlohmann::json& spec);
    // One mechanism, or every installed one when `mechanism` is empty.
    Result<nlohmann::json> uninstall(std::optional<hook::Mechanism> mechanism);
    nlohmann::json status() const;
    const CallCounters& counters() const { return counters_; }
    // The BPF program host, an observer of the call pipeline (after the counters). Its
    // requests (bpf.*) are registered on router().
    BpfHost& bpf() { return *bpf_; }
    // The handler every installed mechanism calls: the counters and the BPF host observe
    // each call; its redirector slot is where an acceleration policy takes calls over.
    CallPipeline& pipeline() { return *pipeline_; }
    // The policies (policy.* requests), switched off before the BPF host unloads anything.
    PolicyHost& policies() { return *policies_; }

    // True once the control thread has ended (after a `detach` request in a non-resident
    // agent): the library may then be unloaded.
    bool control_stopped() const { return control_stopped_.load(std::memory_order_acquire); }

    // Recorded for `status` (e.g. an install at startup that failed).
    void set_last_error(std::string message);

private:
    explicit Agent(AgentOptions options);
    Result<void> open_socket();
    void register_builtin_requests();
    void serve();
    void stop_control();

    AgentOptions options_;
    const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
    CallCounters counters_;
    RequestRouter router_;
    std::unique_ptr<BpfHost> bpf_;
    std::unique_ptr<AgentPipeline> pipeline_;
    std::unique_ptr<PolicyHost> policies_;  // holds the pipeline's redirector slot while on

    mutable std::mutex mu_;  // guards interceptors_ and last_error_
    std::unique_ptr<hook::Interceptor> interceptors_[3];
    std::string last_error_;

    int listen_fd_ = -1;
    int wake_fd_ = -1;  // eventfd: the destructor wakes the control thread to stop it
    FdIdentity listen_identity_, wake_identity_;
    std::atomic<bool> stop_requested_{false};
    std::atomic<bool> control_stopped_{false};
    // Kernel thread id of the control thread: `detach` reports it so the CLI can wait until
    // that thread has exited before unloading (dlclose with the thread still running, or
    // stopped by the injector halfway out, would leave the destructor's join waiting).
    std::atomic<pid_t> control_tid_{0};
    // Connections refused because their peer was neither the target's uid nor root.
    std::atomic<uint64_t> refused_connections_{0};
    std::thread thread_;
};

}  // namespace liveio::agent
