// Shared pieces of the uring redirect tests: the executor under test, a way to make the same
// call natively and through it, and temporary files.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "base/raw_syscall.h"
#include "policy/uring_redirect.h"
#include "temp_files.h"
#include "uring/engine.h"

namespace liveio::policy::test {

// Empty when io_uring works here; otherwise why not (tests skip with it).
inline std::string uring_unavailable() {
    auto engine = uring::Engine::create({});
    if (!engine.ok()) return engine.error().message;
    if ((*engine)->backend() != uring::BackendKind::Uring) return (*engine)->why_fallback();
    return {};
}

using liveio::test_data::pattern;
using liveio::test_data::TempDir;

class RedirectTest : public testing::Test {
public:
    void SetUp() override {
        std::string why = uring_unavailable();
        if (!why.empty()) GTEST_SKIP() << "io_uring unusable here: " << why;
        auto created = UringRedirect::create(options_);
        ASSERT_TRUE(created.ok()) << created.error().message;
        redirect = std::move(*created);
    }

    // The call through the executor (or natively where it declines), kernel convention.
    long via(long nr, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0,
             long a5 = 0) {
        hook::SyscallCall call{nr, {a0, a1, a2, a3, a4, a5}};
        hook::SyscallResult result = 0;
        if (redirect->execute(call, result)) return result;
        return raw_syscall(nr, a0, a1, a2, a3, a4, a5);
    }
    // The same call straight to the kernel.
    static long native(long nr, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0,
                       long a5 = 0) {
        return raw_syscall(nr, a0, a1, a2, a3, a4, a5);
    }
    uint64_t redirected() const { return redirect->stats().redirected; }
    uint64_t fallbacks(FallbackReason r) const {
        return redirect->stats().by_reason[static_cast<int>(r)];
    }

    // A file holding `content`, opened with `flags`.
    int make_file(const std::vector<char>& content, int flags = O_RDWR) {
        int fd = liveio::test_data::create_file(dir.path + "/f" + std::to_string(files_++), content,
                                                flags);
        fds_.push_back(fd);
        return fd;
    }
    int keep(int fd) {
        fds_.push_back(fd);
        return fd;
    }

    void TearDown() override {
        redirect.reset();
        for (int fd : fds_) ::close(fd);
    }

    UringRedirectOptions options_;
    TempDir dir{"liveio-redirect-test"};
    std::unique_ptr<UringRedirect> redirect;

private:
    int files_ = 0;
    std::vector<int> fds_;
};

inline long L(const void* p) { return reinterpret_cast<long>(p); }

}  // namespace liveio::policy::test
