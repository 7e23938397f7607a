#include "agent/call_pipeline.h"

#include <cerrno>

namespace liveio::agent {
namespace {

// The calling thread's read-section slot of a pipeline's registry. Initial-exec and plain
// data: the agent is dlopen'ed, and this is reached from hooked calls (bpf_host.cpp explains).
struct PipelineThread {
    AgentReadSections::ThreadCache sections;
};
__attribute__((tls_model("initial-exec"))) thread_local PipelineThread t_pipeline;

}  // namespace

Result<void> CallPipeline::set_redirector(Redirector* redirector) {
    if (redirector == nullptr) return make_error(EINVAL, "set_redirector needs a redirector");
    std::lock_guard lock(redirector_mu_);
    Redirector* expected = nullptr;
    if (!redirector_.compare_exchange_strong(expected, redirector, std::memory_order_seq_cst))
        return make_error(EBUSY, "the call pipeline already has a redirector");
    return {};
}

void CallPipeline::clear_redirector() {
    std::lock_guard lock(redirector_mu_);
    if (redirector_.load(std::memory_order_relaxed) == nullptr) return;
    redirector_.store(nullptr, std::memory_order_seq_cst);
    // A thread that read the old pointer inside its section is waited for; one entering
    // from now on reads null.
    readers_.synchronize();
}

__attribute__((noinline)) bool CallPipeline::redirect(CallFrame& frame) {
    PipelineThread& t = t_pipeline;
    AgentReadSections::Section section(readers_, t.sections);
    Redirector* r = redirector_.load(std::memory_order_acquire);
    if (r == nullptr || !r->redirect(frame)) return false;
    frame.word |= kRedirected;
    return true;
}

}  // namespace liveio::agent
