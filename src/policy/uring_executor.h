// The `uring` policy's executor as the policy runtime's Redirector: a call a program asked
// to redirect (liveio_redirect) is performed by UringRedirect (uring_redirect.h) through the
// calling thread's ring, or runs natively when UringRedirect declines (counted there by
// reason and by the runtime as a fallback of the asking policy).
#pragma once

#include <memory>

#include "policy/runtime.h"
#include "policy/uring_redirect.h"

namespace liveio::policy {

class UringExecutor final : public Redirector {
public:
    static Result<std::unique_ptr<UringExecutor>> create(const UringRedirectOptions& options = {}) {
        auto r = UringRedirect::create(options);
        if (!r) return r.error();
        return std::unique_ptr<UringExecutor>(new UringExecutor(std::move(r).value()));
    }
    bool run(hook::CallFrame& frame) override {
        return redirect_->execute(frame.call, frame.result);
    }
    UringRedirect& redirect() { return *redirect_; }

private:
    explicit UringExecutor(std::unique_ptr<UringRedirect> r) : redirect_(std::move(r)) {}
    std::unique_ptr<UringRedirect> redirect_;
};

}  // namespace liveio::policy
