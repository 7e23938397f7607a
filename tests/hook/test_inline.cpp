// Inline hooks: relocation of tricky prologues, refusals with reasons, and Mechanism::Inline
// on libc's own I/O entry points with real I/O.
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hook/dispatcher.h"
#include "hook/got_hooks.h"
#include "hook/inline_hook.h"
#include "hook/interceptor.h"
#include "hook/recording_handler.h"
#include "hook/stress.h"

extern "C" {
int tricky_rip_load(int);
int tricky_short(int);
int tricky_jump_back(int);
int tricky_call_prologue(int);
int tricky_jcc_prologue(int);
}

namespace liveio::hook {
namespace {

using IntFn = int (*)(int);
IntFn g_original = nullptr;
int plus_thousand(int x) { return g_original(x) + 1000; }

std::string bytes_at(void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

// Hooks `fn`, checks original and hooked results, then that removal restores every byte.
void hook_and_check(IntFn fn, int arg, int expected) {
    const std::string before = bytes_at(reinterpret_cast<void*>(fn), 32);
    ASSERT_EQ(fn(arg), expected);
    for (int round = 0; round < 3; ++round) {
        auto hooks = InlineHooks::install(
            {{reinterpret_cast<void*>(fn), reinterpret_cast<void*>(&plus_thousand)}});
        ASSERT_TRUE(hooks.ok()) << hooks.error().message;
        g_original = reinterpret_cast<IntFn>((*hooks)->original(0));
        EXPECT_NE(bytes_at(reinterpret_cast<void*>(fn), 32), before);
        EXPECT_EQ(fn(arg), expected + 1000);
        EXPECT_EQ(g_original(arg), expected);
        ASSERT_TRUE((*hooks)->remove().ok());
        EXPECT_EQ(bytes_at(reinterpret_cast<void*>(fn), 32), before);
        EXPECT_EQ(fn(arg), expected);
    }
}

TEST(InlineHook, RelocatesRipRelativeLoad) { hook_and_check(tricky_rip_load, 2, 42); }
TEST(InlineHook, RelocatesCallInPrologue) { hook_and_check(tricky_call_prologue, 5, 12); }
TEST(InlineHook, RelocatesConditionalJumpInPrologue) {
    hook_and_check(tricky_jcc_prologue, 0, 2);
    hook_and_check(tricky_jcc_prologue, 9, 1);
}

TEST(InlineHook, RefusesTooShortFunction) {
    auto r = can_inline_hook(reinterpret_cast<void*>(&tricky_short));
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("too short"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("tricky_short"), std::string::npos) << r.error().message;
    const std::string before = bytes_at(reinterpret_cast<void*>(&tricky_short), 16);
    auto hooks = InlineHooks::install(
        {{reinterpret_cast<void*>(&tricky_short), reinterpret_cast<void*>(&plus_thousand)}});
    EXPECT_FALSE(hooks.ok());
    EXPECT_EQ(bytes_at(reinterpret_cast<void*>(&tricky_short), 16), before);
    EXPECT_EQ(tricky_short(3), 3);
}

TEST(InlineHook, RefusesBranchIntoPatchedRange) {
    auto r = can_inline_hook(reinterpret_cast<void*>(&tricky_jump_back));
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("targets +2"), std::string::npos) << r.error().message;
    EXPECT_EQ(tricky_jump_back(5), 5);
}

// Mechanism::Inline over libc: calls from this very binary are seen.
InterceptOptions inline_options(std::vector<std::string> functions = {}) {
    InterceptOptions o;
    o.mechanism = Mechanism::Inline;
    o.functions = std::move(functions);
    return o;
}

std::vector<Seen> for_fd(std::vector<Seen> all, int fd) {
    std::vector<Seen> out;
    for (auto& s : all)
        if (s.args[0] == fd) out.push_back(s);
    return out;
}

TEST(InlineInterceptor, SeesLibcIoErrnoAndTakeover) {
    char path[] = "/tmp/liveio-inline-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    unlink(path);
    void* pread_fn = libc_function("pread64");  // what is patched, interposed or not
    const std::string before = bytes_at(pread_fn, 32);
    RecordingHandler h;
    auto icpt = Interceptor::install(inline_options({"pread64", "pwrite64", "read"}), &h);
    ASSERT_TRUE(icpt.ok()) << icpt.error().message;
    EXPECT_NE(bytes_at(pread_fn, 32), before);

    ASSERT_EQ(pwrite(fd, "inline!", 7, 3), 7);
    char buf[8] = {};
    ASSERT_EQ(pread(fd, buf, 7, 3), 7);
    EXPECT_STREQ(buf, "inline!");
    auto seen = for_fd(h.take(), fd);
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[0].nr, SYS_pwrite64);
    EXPECT_EQ(seen[0].args[3], 3);
    EXPECT_EQ(seen[0].result, 7);
    EXPECT_EQ(seen[1].nr, SYS_pread64);
    EXPECT_EQ(seen[1].args[1], reinterpret_cast<long>(buf));

    errno = 0;
    EXPECT_EQ(read(-1, buf, 1), -1);
    EXPECT_EQ(errno, EBADF);
    seen = for_fd(h.take(), -1);
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].result, -EBADF);

    h.take_nr = SYS_read;
    h.take_result = 2;
    h.fill = 'k';
    EXPECT_EQ(read(fd, buf, 2), 2);  // taken over: no file read happens
    EXPECT_EQ(buf[0], 'k');
    h.take_nr = -1;
    seen = for_fd(h.take(), fd);
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].result, 2);

    ASSERT_TRUE((*icpt)->uninstall().ok());
    EXPECT_EQ(bytes_at(pread_fn, 32), before);
    // Installing again works.
    auto again = Interceptor::install(inline_options({"pread64"}), &h);
    ASSERT_TRUE(again.ok()) << again.error().message;
    ASSERT_EQ(pread(fd, buf, 7, 3), 7);
    EXPECT_EQ(for_fd(h.take(), fd).size(), 1u);
    again->reset();
    EXPECT_EQ(bytes_at(pread_fn, 32), before);
    close(fd);
}

TEST(InlineInterceptor, DefaultSetInstallsAndRestores) {
    RecordingHandler h;
    std::vector<std::pair<void*, std::string>> before;
    for (auto* name : {"read", "write", "pread64", "close", "recvfrom", "sendto"}) {
        void* fn = libc_function(name);
        before.push_back({fn, bytes_at(fn, 32)});
    }
    auto icpt = Interceptor::install(inline_options(), &h);
    ASSERT_TRUE(icpt.ok()) << icpt.error().message;
    int p[2];
    ASSERT_EQ(pipe(p), 0);
    ASSERT_EQ(write(p[1], "x", 1), 1);
    char c;
    ASSERT_EQ(read(p[0], &c, 1), 1);
    EXPECT_EQ(for_fd(h.take(), p[0]).size(), 1u);
    icpt->reset();
    for (auto& [fn, bytes] : before) EXPECT_EQ(bytes_at(fn, 32), bytes);
    close(p[0]);
    close(p[1]);
}

// glibc's __open_2 (what _FORTIFY_SOURCE open calls) ends in a jump to open: with both hooked
// inline, the tail-called open is entered with liveio_libc_return as its return address. It
// must stay the one observed __open_2 call (keeping it again lost the application's return
// address, and the return trapped: ClickHouse died with SIGILL in liveio_libc_exit).
TEST(InlineInterceptor, HookedOriginalTailCallingHookedFunctionReturnsOnce) {
    using Open2 = int (*)(const char*, int);
    auto open_2 = reinterpret_cast<Open2>(libc_function("__open_2"));
    if (open_2 == nullptr) GTEST_SKIP() << "this libc has no __open_2";
    char path[] = "/tmp/liveio-inline-tail-XXXXXX";
    int wfd = mkstemp(path);
    ASSERT_GE(wfd, 0);
    ASSERT_EQ(write(wfd, "tail", 4), 4);
    close(wfd);
    RecordingHandler h;
    auto icpt = Interceptor::install(inline_options({"__open_2", "open", "open64", "read"}), &h);
    ASSERT_TRUE(icpt.ok()) << icpt.error().message;
    for (int round = 0; round < 3; ++round) {
        const int fd = open_2(path, O_RDONLY);
        ASSERT_GE(fd, 0) << strerror(errno);
        int opens = 0;
        for (const Seen& s : h.take())
            if (s.result == fd && s.args[0] == reinterpret_cast<long>(path)) ++opens;
        EXPECT_EQ(opens, 1);
        char buf[4] = {};
        ASSERT_EQ(read(fd, buf, 4), 4);
        EXPECT_EQ(std::string(buf, 4), "tail");
        EXPECT_EQ(for_fd(h.take(), fd).size(), 1u);
        close(fd);
    }
    errno = 0;
    EXPECT_EQ(open_2("/nonexistent/liveio", O_RDONLY), -1);
    EXPECT_EQ(errno, ENOENT);
    ASSERT_TRUE((*icpt)->uninstall().ok());
    unlink(path);
}

// Threads do verified libc pread/pwrite while the inline hooks are installed and removed
// 200 times (each a world stop that may park a thread inside the patched bytes).
TEST(InlineInterceptor, StressInstallUninstallUnderConcurrentIo) {
    PreadTakeover h;
    const uint64_t wrong = wrong_bytes_under_cycles(::pwrite, ::pread, 200, [&](auto& wait) {
        auto icpt = Interceptor::install(inline_options({"pread64", "pwrite64"}), &h);
        ASSERT_TRUE(icpt.ok()) << icpt.error().message;
        wait();
        ASSERT_TRUE((*icpt)->uninstall().ok());
    });
    EXPECT_EQ(wrong, 0u);
    EXPECT_GT(h.taken.load(), 0u);
}

}  // namespace
}  // namespace liveio::hook
