// The fallback is chosen by itself when io_uring is unusable. A forked child installs a seccomp
// filter that fails io_uring_setup with EPERM (what the io_uring_disabled sysctl and container
// seccomp profiles do), then creates an Engine and uses it.
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <cstddef>
#include <cstring>

#include "fixture.h"

namespace liveio::uring::test {
namespace {

// Child exit codes, so the parent can say what went wrong.
enum ChildStatus {
    kOk = 0,
    kNoSeccomp = 10,
    kCreateFailed = 11,
    kNotFallback = 12,
    kIoWrong = 13,
    kNoReason = 14
};

bool deny_io_uring_setup() {
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
    return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
           ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0;
}

int child_body() {
    ::unsetenv("LIVEIO_URING_FALLBACK");  // this test is about the automatic choice
    if (!deny_io_uring_setup()) return kNoSeccomp;
    auto created = Engine::create({});
    if (!created.ok()) return kCreateFailed;
    Engine& e = **created;
    if (e.backend() != BackendKind::Fallback) return kNotFallback;
    if (e.why_fallback().find("io_uring_setup") == std::string::npos) return kNoReason;
    int p[2];
    if (::pipe(p) != 0) return kIoWrong;
    if (e.run(Op::write(p[1], "seccomp", 7)) != 7) return kIoWrong;
    char buf[8] = {};
    if (e.run(Op::read(p[0], buf, 7)) != 7 || std::memcmp(buf, "seccomp", 7) != 0) return kIoWrong;
    return kOk;
}

TEST(AutoFallback, SeccompDeniedIoUringSelectsFallback) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) ::_exit(child_body());
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "child died, status " << status;
    if (WEXITSTATUS(status) == kNoSeccomp) GTEST_SKIP() << "cannot install a seccomp filter here";
    EXPECT_EQ(WEXITSTATUS(status), kOk)
        << "child status " << WEXITSTATUS(status)
        << " (11 create failed, 12 not fallback, 13 I/O wrong, 14 no reason)";
}

}  // namespace
}  // namespace liveio::uring::test
