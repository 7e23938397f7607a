// GOT/PLT interception against real shared libraries doing real I/O.
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hook/dispatcher.h"
#include "hook/interceptor.h"
#include "hook/recording_handler.h"
#include "hook/stress.h"

extern "C" {
ssize_t testio_read(int, void*, size_t);
ssize_t testio_write(int, const void*, size_t);
ssize_t testio_pread(int, void*, size_t, off_t);
ssize_t testio_pwrite(int, const void*, size_t, off_t);
ssize_t testio_send(int, const void*, size_t);
ssize_t testio_recv(int, void*, size_t);
ssize_t testio_readv(int, const iovec*, int);
int testio_close(int);
int testio_open_fortified(const char*, int);
int testio_accept(int);
int testio_connect(int, const sockaddr*, socklen_t);
using read_fn = ssize_t (*)(int, void*, size_t);
read_fn testio_read_pointer();
ssize_t lazyio_read(int, void*, size_t);
ssize_t lazyio_write(int, const void*, size_t);
}

namespace liveio::hook {
namespace {

InterceptOptions got_options(std::vector<std::string> objects = {"libhook_testio_now.so"}) {
    InterceptOptions o;
    o.mechanism = Mechanism::Got;
    o.objects = std::move(objects);
    return o;
}

std::unique_ptr<Interceptor> must_install(const InterceptOptions& o, CallHandler* h) {
    auto r = Interceptor::install(o, h);
    EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
    return r.ok() ? std::move(r).value() : nullptr;
}

struct Pipe {
    int fds[2];
    Pipe() { EXPECT_EQ(pipe(fds), 0); }
    ~Pipe() {
        close(fds[0]);
        close(fds[1]);
    }
};

// A byte copy of an object's segments that hold GOT slots: the RELRO range and every writable
// PT_LOAD, so "uninstall restores memory exactly" is checked on the bytes themselves.
std::vector<std::pair<uintptr_t, std::string>> got_memory(const char* object_suffix) {
    struct Ctx {
        const char* suffix;
        std::vector<std::pair<uintptr_t, std::string>> out;
    } ctx{object_suffix, {}};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* p) {
            auto* c = static_cast<Ctx*>(p);
            std::string name = info->dlpi_name ? info->dlpi_name : "";
            if (!name.ends_with(c->suffix)) return 0;
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const auto& ph = info->dlpi_phdr[i];
                if (ph.p_type == PT_GNU_RELRO || (ph.p_type == PT_LOAD && (ph.p_flags & PF_W))) {
                    auto start = info->dlpi_addr + ph.p_vaddr;
                    c->out.push_back(
                        {start, std::string(reinterpret_cast<const char*>(start), ph.p_memsz)});
                }
            }
            return 0;
        },
        &ctx);
    return ctx.out;
}

TEST(GotHook, SeesFileIoWithArgumentsAndResults) {
    char path[] = "/tmp/liveio-got-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    unlink(path);
    RecordingHandler h;
    auto icpt = must_install(got_options(), &h);
    ASSERT_TRUE(icpt);

    const char data[] = "hello through the GOT";
    ASSERT_EQ(testio_pwrite(fd, data, sizeof data, 100), static_cast<ssize_t>(sizeof data));
    char back[sizeof data] = {};
    ASSERT_EQ(testio_pread(fd, back, sizeof back, 100), static_cast<ssize_t>(sizeof data));
    EXPECT_STREQ(back, data);

    auto seen = h.take();
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[0].nr, SYS_pwrite64);
    EXPECT_EQ(seen[0].args[0], fd);
    EXPECT_EQ(seen[0].args[1], reinterpret_cast<long>(data));
    EXPECT_EQ(seen[0].args[2], static_cast<long>(sizeof data));
    EXPECT_EQ(seen[0].args[3], 100);
    EXPECT_EQ(seen[0].result, static_cast<long>(sizeof data));
    EXPECT_EQ(seen[1].nr, SYS_pread64);
    EXPECT_EQ(seen[1].args[1], reinterpret_cast<long>(back));
    EXPECT_EQ(seen[1].result, static_cast<long>(sizeof data));
    EXPECT_EQ(icpt->calls_dispatched() >= 2, true);
    ASSERT_TRUE(icpt->uninstall().ok());

    // After uninstall the same calls are no longer seen.
    ASSERT_EQ(testio_pread(fd, back, sizeof back, 100), static_cast<ssize_t>(sizeof data));
    EXPECT_TRUE(h.take().empty());
    close(fd);
}

TEST(GotHook, SeesSocketIo) {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    RecordingHandler h;
    auto icpt = must_install(got_options(), &h);
    ASSERT_TRUE(icpt);
    ASSERT_EQ(testio_send(sv[0], "ping", 4), 4);
    char buf[8] = {};
    ASSERT_EQ(testio_recv(sv[1], buf, sizeof buf), 4);
    EXPECT_STREQ(buf, "ping");
    char a[2], b[2];
    iovec iov[2] = {{a, 2}, {b, 2}};
    ASSERT_EQ(testio_send(sv[0], "abcd", 4), 4);
    ASSERT_EQ(testio_readv(sv[1], iov, 2), 4);
    EXPECT_EQ(std::string(a, 2) + std::string(b, 2), "abcd");
    auto seen = h.take();
    ASSERT_EQ(seen.size(), 4u);
    EXPECT_EQ(seen[0].nr, SYS_sendto);
    EXPECT_EQ(seen[0].args[0], sv[0]);
    EXPECT_EQ(seen[0].args[4], 0);  // send() is sendto() without an address
    EXPECT_EQ(seen[1].nr, SYS_recvfrom);
    EXPECT_EQ(seen[1].args[0], sv[1]);
    EXPECT_EQ(seen[1].result, 4);
    EXPECT_EQ(seen[3].nr, SYS_readv);
    EXPECT_EQ(seen[3].args[2], 2);
    icpt.reset();
    close(sv[0]);
    close(sv[1]);
}

// ClickHouse opens column files through __open_2 and gets shard connections from
// accept/connect (docs/clickhouse-io.md): the default set must see all three.
TEST(GotHook, SeesFortifiedOpenAcceptAndConnect) {
    char path[] = "/tmp/liveio-got-open-XXXXXX";
    const int tmp = mkstemp(path);
    ASSERT_GE(tmp, 0);
    close(tmp);
    const int listener = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(listener, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(listen(listener, 1), 0);
    ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    const int client = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(client, 0);

    RecordingHandler h;
    auto icpt = must_install(got_options(), &h);
    ASSERT_TRUE(icpt);
    const int fd = testio_open_fortified(path, O_RDONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(testio_connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    const int accepted = testio_accept(listener);
    ASSERT_GE(accepted, 0);
    EXPECT_EQ(testio_open_fortified("/nonexistent/liveio", O_RDONLY), -1);
    EXPECT_EQ(errno, ENOENT);
    icpt.reset();

    auto seen = h.take();
    ASSERT_EQ(seen.size(), 4u);
    EXPECT_EQ(seen[0].nr, SYS_open);
    EXPECT_STREQ(reinterpret_cast<const char*>(seen[0].args[0]), path);
    EXPECT_EQ(seen[0].result, fd);
    EXPECT_EQ(seen[1].nr, SYS_connect);
    EXPECT_EQ(seen[1].args[0], client);
    EXPECT_EQ(seen[1].result, 0);
    EXPECT_EQ(seen[2].nr, SYS_accept);
    EXPECT_EQ(seen[2].result, accepted);
    EXPECT_EQ(seen[3].nr, SYS_open);
    EXPECT_EQ(seen[3].result, -ENOENT);
    for (int f : {fd, accepted, client, listener}) close(f);
    unlink(path);
}

TEST(GotHook, ErrnoPreservedExactly) {
    RecordingHandler h;
    auto icpt = must_install(got_options(), &h);
    ASSERT_TRUE(icpt);
    char c;
    errno = 0;
    EXPECT_EQ(testio_read(-1, &c, 1), -1);
    EXPECT_EQ(errno, EBADF);
    // A successful call leaves the caller's errno alone, as libc does.
    Pipe p;
    errno = 12345;
    EXPECT_EQ(testio_write(p.fds[1], "x", 1), 1);
    EXPECT_EQ(errno, 12345);
    auto seen = h.take();
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[0].result, -EBADF);
    EXPECT_EQ(seen[1].result, 1);
}

TEST(GotHook, HandlerTakesCallOver) {
    Pipe p;
    RecordingHandler h;
    h.take_nr = SYS_read;
    h.take_result = 3;
    h.fill = 'z';
    auto icpt = must_install(got_options(), &h);
    ASSERT_TRUE(icpt);
    char buf[4] = {};
    // The pipe is empty: only a taken-over read can return without blocking.
    EXPECT_EQ(testio_read(p.fds[0], buf, 3), 3);
    EXPECT_STREQ(buf, "zzz");
    h.take_result = -EIO;
    errno = 0;
    EXPECT_EQ(testio_read(p.fds[0], buf, 3), -1);
    EXPECT_EQ(errno, EIO);
    auto seen = h.take();
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[1].result, -EIO);
}

TEST(GotHook, HandlerIoIsNotIntercepted) {
    Pipe p;
    RecordingHandler h;
    // The handler itself calls a hooked function: it must go straight through, not recurse.
    h.during_enter = [&](const SyscallCall&) { EXPECT_EQ(testio_write(p.fds[1], "h", 1), 1); };
    auto icpt = must_install(got_options(), &h);
    ASSERT_TRUE(icpt);
    ASSERT_EQ(testio_write(p.fds[1], "a", 1), 1);
    char buf[2];
    ASSERT_EQ(read(p.fds[0], buf, 2), 2);
    EXPECT_EQ(h.take().size(), 1u);
}

TEST(GotHook, FunctionPointerSlotsArePatchedAndRestored) {
    const read_fn before = testio_read_pointer();
    EXPECT_EQ(reinterpret_cast<void*>(before), dlsym(RTLD_DEFAULT, "read"));
    RecordingHandler h;
    auto icpt = must_install(got_options(), &h);
    ASSERT_TRUE(icpt);
    read_fn during = testio_read_pointer();
    EXPECT_NE(during, before);
    Pipe p;
    ASSERT_EQ(write(p.fds[1], "q", 1), 1);
    char c = 0;
    EXPECT_EQ(during(p.fds[0], &c, 1), 1);
    EXPECT_EQ(c, 'q');
    EXPECT_EQ(h.take().size(), 1u);
    ASSERT_TRUE(icpt->uninstall().ok());
    EXPECT_EQ(testio_read_pointer(), before);
}

TEST(GotHook, UninstallRestoresMemoryExactlyAndReinstallWorks) {
    for (const char* object : {"libhook_testio_now.so", "libhook_testio_lazy.so"}) {
        SCOPED_TRACE(object);
        const auto before = got_memory(object);
        ASSERT_FALSE(before.empty());
        for (int round = 0; round < 3; ++round) {
            RecordingHandler h;
            auto icpt = must_install(got_options({object}), &h);
            ASSERT_TRUE(icpt);
            EXPECT_NE(got_memory(object), before);
            Pipe p;
            if (std::string(object).find("lazy") != std::string::npos) {
                ASSERT_EQ(lazyio_write(p.fds[1], "l", 1), 1);
            } else {
                ASSERT_EQ(testio_write(p.fds[1], "n", 1), 1);
            }
            EXPECT_EQ(h.take().size(), 1u);
            ASSERT_TRUE(icpt->uninstall().ok());
            EXPECT_EQ(got_memory(object), before) << "round " << round;
        }
    }
    // Lazy binding still works after restore (the slot holds the PLT stub again).
    Pipe p;
    ASSERT_EQ(lazyio_write(p.fds[1], "z", 1), 1);
    char c;
    ASSERT_EQ(lazyio_read(p.fds[0], &c, 1), 1);
    EXPECT_EQ(c, 'z');
}

TEST(GotHook, DefaultObjectsSkipLiveioItselfAndLibc) {
    RecordingHandler h;
    InterceptOptions o;  // no objects named: every loaded object but liveio's own, libc, ld.so
    auto icpt = must_install(o, &h);
    ASSERT_TRUE(icpt);
    Pipe p;
    ASSERT_EQ(testio_write(p.fds[1], "d", 1), 1);  // a patched library
    ASSERT_EQ(write(p.fds[1], "o", 1), 1);         // this binary: liveio's own, not patched
    auto seen = h.take();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].nr, SYS_write);
}

TEST(GotHook, RejectsBadRequests) {
    RecordingHandler h;
    auto none = Interceptor::install(got_options({"libdoes-not-exist.so"}), &h);
    ASSERT_FALSE(none.ok());
    EXPECT_EQ(none.error().code, ENOENT);
    InterceptOptions bad_fn = got_options();
    bad_fn.functions = {"not_a_libc_function"};
    auto bad = Interceptor::install(bad_fn, &h);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error().code, EINVAL);
    EXPECT_FALSE(Interceptor::install(got_options(), nullptr).ok());
    auto first = must_install(got_options(), &h);
    ASSERT_TRUE(first);
    auto second = Interceptor::install(got_options(), &h);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.error().code, EBUSY);
}

// Threads do verified file I/O through the patched library while the main thread installs
// and uninstalls 200 times; the handler takes reads over (performing them itself).
TEST(GotHook, StressInstallUninstallUnderConcurrentIo) {
    PreadTakeover h;
    const uint64_t wrong =
        wrong_bytes_under_cycles(testio_pwrite, testio_pread, 200, [&](auto& wait) {
            auto icpt = must_install(got_options(), &h);
            ASSERT_TRUE(icpt);
            wait();
            ASSERT_TRUE(icpt->uninstall().ok());
        });
    EXPECT_EQ(wrong, 0u);
    EXPECT_GT(h.taken.load(), 0u);
    EXPECT_GT(h.seen.load(), h.taken.load());
}

}  // namespace
}  // namespace liveio::hook
