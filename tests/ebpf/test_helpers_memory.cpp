// probe_read* on good and bad addresses and trace_printk (formats, the log read from another
// process, drops), through real BPF programs on both engines.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "helpers_fixture.h"

namespace liveio::ebpf {
namespace {

using test::HelperTest;
using test::s64;

// A kernel address: never readable from userspace.
const void* const kKernelAddress = reinterpret_cast<const void*>(0xffff888000000000ull);

// Two pages: the first readable and writable, the second PROT_NONE, plus the address of a
// page that was mapped and then unmapped.
class GuardedPages {
public:
    GuardedPages() {
        page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        void* p =
            mmap(nullptr, 3 * page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return;
        base_ = static_cast<char*>(p);
        mprotect(base_ + page_, page_, PROT_NONE);
        munmap(base_ + 2 * page_, page_);
    }
    ~GuardedPages() {
        if (base_) munmap(base_, 2 * page_);
    }
    bool ok() const { return base_ != nullptr; }
    char* readable_end() const { return base_ + page_; }  // first byte of the PROT_NONE page
    char* prot_none() const { return base_ + page_; }
    // Nothing may map the hole meanwhile (a JIT's code did once): create this after loading.
    char* unmapped() const { return base_ + 2 * page_; }
    bool still_unmapped() const {
        return msync(unmapped(), page_, MS_ASYNC) != 0 && errno == ENOMEM;
    }

private:
    size_t page_ = 0;
    char* base_ = nullptr;
};

// ctx[0] = source address; the program reads 16 bytes into a 0xff-filled stack buffer with
// helper `id` and stores r0 in ctx[1], the buffer in ctx[2..3].
std::string probe_program(int32_t id) {
    return fmt::format(R"(
        mov %r6, %r1
        stdw [%r10-8], -1
        stdw [%r10-16], -1
        mov %r1, %r10
        add %r1, -16
        mov %r2, 16
        ldxdw %r3, [%r6]
        call {}
        stxdw [%r6+8], %r0
        ldxdw %r1, [%r10-16]
        stxdw [%r6+16], %r1
        ldxdw %r1, [%r10-8]
        stxdw [%r6+24], %r1
        mov %r0, 0
        exit
    )",
                       id);
}

struct ProbeResult {
    int64_t rc;
    std::string bytes;  // the 16-byte destination after the call
};

class ProbeTest : public HelperTest {
protected:
    ProbeResult probe(const Executable* exe, const void* src) {
        uint64_t ctx[8] = {reinterpret_cast<uint64_t>(src)};
        EXPECT_EQ(run(exe, ctx), 0u);
        return {s64(ctx[1]), std::string(reinterpret_cast<const char*>(&ctx[2]), 16)};
    }
};

TEST_P(ProbeTest, ProbeReadCopiesGoodMemoryAndFaultsCleanlyOnBadAddresses) {
    for (int32_t id : {helper_id::kProbeReadUser, helper_id::kProbeRead}) {
        SCOPED_TRACE(fmt::format("helper {}", id));
        const Executable* exe = load(probe_program(id));
        ASSERT_TRUE(exe);
        GuardedPages pages;
        ASSERT_TRUE(pages.ok());
        const char good[17] = "0123456789abcdef";
        auto r = probe(exe, good);
        EXPECT_EQ(r.rc, 0);
        EXPECT_EQ(r.bytes, std::string(good, 16));

        const std::string zeros(16, '\0');
        for (const void* bad :
             {static_cast<const void*>(nullptr), static_cast<const void*>(pages.prot_none()),
              static_cast<const void*>(pages.unmapped()), kKernelAddress,
              static_cast<const void*>(pages.readable_end() - 8),  // straddles into PROT_NONE
              reinterpret_cast<const void*>(~uint64_t{0} - 4)}) {  // wraps the address space
            SCOPED_TRACE(fmt::format("address {}", bad));
            ASSERT_TRUE(pages.still_unmapped());
            r = probe(exe, bad);
            EXPECT_EQ(r.rc, -EFAULT);
            EXPECT_EQ(r.bytes, zeros) << "the destination is zeroed on a fault";
        }
        std::memcpy(pages.readable_end() - 16, good, 16);  // the last readable bytes read fine
        r = probe(exe, pages.readable_end() - 16);
        EXPECT_EQ(r.rc, 0);
        EXPECT_EQ(r.bytes, std::string(good, 16));
    }
}

TEST_P(ProbeTest, ProbeReadStrHasKernelSemantics) {
    for (int32_t id : {helper_id::kProbeReadUserStr, helper_id::kProbeReadStr}) {
        SCOPED_TRACE(fmt::format("helper {}", id));
        const Executable* exe = load(probe_program(id));
        ASSERT_TRUE(exe);
        GuardedPages pages;
        ASSERT_TRUE(pages.ok());
        auto r = probe(exe, "hello");
        EXPECT_EQ(r.rc, 6) << "length including the NUL";
        EXPECT_EQ(r.bytes.substr(0, 6), std::string("hello\0", 6));
        EXPECT_EQ(r.bytes.substr(6), std::string(10, '\xff'))
            << "bytes after the NUL are left alone";

        r = probe(exe, "");
        EXPECT_EQ(r.rc, 1);
        EXPECT_EQ(r.bytes[0], '\0');

        r = probe(exe, "0123456789abcdefghij");  // longer than the buffer: truncated
        EXPECT_EQ(r.rc, 16);
        EXPECT_EQ(r.bytes, std::string("0123456789abcde\0", 16));

        r = probe(exe, "0123456789abcde");  // exactly fits with its NUL
        EXPECT_EQ(r.rc, 16);
        EXPECT_EQ(r.bytes, std::string("0123456789abcde\0", 16));

        // A string whose NUL is the last readable byte before a PROT_NONE page reads in full.
        std::memcpy(pages.readable_end() - 4, "abc", 4);
        r = probe(exe, pages.readable_end() - 4);
        EXPECT_EQ(r.rc, 4);
        EXPECT_EQ(r.bytes.substr(0, 4), std::string("abc\0", 4));

        // Without a NUL before the protected page: a fault, and the whole destination zeroed.
        std::memcpy(pages.readable_end() - 5, "abcde", 5);
        const std::string zeros(16, '\0');
        for (const void* bad :
             {static_cast<const void*>(pages.readable_end() - 5), static_cast<const void*>(nullptr),
              static_cast<const void*>(pages.prot_none()),
              static_cast<const void*>(pages.unmapped()), kKernelAddress}) {
            SCOPED_TRACE(fmt::format("address {}", bad));
            ASSERT_TRUE(pages.still_unmapped());
            r = probe(exe, bad);
            EXPECT_EQ(r.rc, -EFAULT);
            EXPECT_EQ(r.bytes, zeros);
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Engines, ProbeTest, ::testing::Values(Engine::Interpreter, Engine::Jit),
                         [](const auto& info) { return std::string(engine_name(info.param)); });

// A program calling trace_printk(fmt, sizeof fmt, ctx[0], ctx[1], ctx[2]) and storing r0 in
// ctx[3]; the format lives on the stack.
std::string printk_program(std::string_view format) {
    const int size = static_cast<int>(format.size() / 8 + 1) * 8;
    return "mov %r6, %r1\n" + test::stack_string(format, -size) +
           fmt::format(R"(
        mov %r1, %r10
        add %r1, {}
        mov %r2, {}
        ldxdw %r3, [%r6]
        ldxdw %r4, [%r6+8]
        ldxdw %r5, [%r6+16]
        call 6
        stxdw [%r6+24], %r0
        mov %r0, 0
        exit
    )",
                       -size, format.size() + 1);
}

struct PrintkCase {
    const char* format;
    uint64_t args[3];
    std::string expected;  // empty with rc < 0: rejected
    int64_t rc;
};

class TracePrintkTest : public HelperTest {
protected:
    int64_t printk(std::string_view format, const uint64_t (&args)[3]) {
        const Executable* exe = load(printk_program(format));
        if (!exe) return INT64_MIN;
        uint64_t ctx[8] = {args[0], args[1], args[2]};
        EXPECT_EQ(run(exe, ctx), 0u);
        return s64(ctx[3]);
    }
};

TEST_P(TracePrintkTest, FormatsTheKernelSubsetAndTheLogIsReadFromAnotherProcess) {
    static const char kStr[] = "hey";
    const auto str = reinterpret_cast<uint64_t>(kStr);
    const std::vector<PrintkCase> cases = {
        {"a=%d b=%u c=%x",
         {static_cast<uint64_t>(-5), 0xffffffffu, 255},
         "a=-5 b=4294967295 c=ff",
         0},
        {"%d|%u", {0x1ffffffffull, 0x100000002ull, 0}, "-1|2", 0},  // no l: 32-bit arguments
        {"%lx %llu %ld",
         {0x1234567890ull, ~0ull, static_cast<uint64_t>(-1)},
         "1234567890 18446744073709551615 -1",
         0},
        {"%lld %lli %llx",
         {static_cast<uint64_t>(INT64_MIN), 7, 0xabcdefull},
         "-9223372036854775808 7 abcdef",
         0},
        {"s=%s|%5d|%-3d|", {str, 42, 7}, "s=hey|   42|7  |", 0},
        {"%08x %X", {0xbeef, 0xbeef, 0}, "0000beef BEEF", 0},
        {"%c%c %% done", {'o', 'k', 0}, "ok % done", 0},
        {"p=%p", {0x1000, 0, 0}, "p=0x1000", 0},
        {"[%s]", {0, 0, 0}, "[]", 0},  // unreadable string: empty, as the kernel
        {"no conversions\n", {0, 0, 0}, "no conversions\n", 0},
        {"%d %d %d %d", {1, 2, 3}, "", -EINVAL},  // more conversions than the three arguments
        {"%pI4", {str, 0, 0}, "", -EINVAL},       // pointer extensions are not implemented
        {"%q", {0, 0, 0}, "", -EINVAL},
        {"trailing %", {0, 0, 0}, "", -EINVAL},
        {"%lllx", {0, 0, 0}, "", -EINVAL},
    };
    std::vector<std::string> expected_lines;
    for (const PrintkCase& c : cases) {
        SCOPED_TRACE(c.format);
        const int64_t rc = printk(c.format, c.args);
        if (c.rc < 0) {
            EXPECT_EQ(rc, c.rc);
        } else {
            EXPECT_EQ(rc, static_cast<int64_t>(c.expected.size())) << "returns the length written";
            expected_lines.push_back(c.expected);
        }
    }

    // Another process opens the log through /proc/PID/fd (as the CLI does) and reads it.
    int pipefd[2];
    ASSERT_EQ(pipe(pipefd), 0);
    const std::string path = fmt::format("/proc/{}/fd/{}", getpid(), rt_->trace_log().memfd());
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        close(pipefd[0]);
        int code = 0;
        const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0) _exit(2);
        auto log = TraceLog::open(fd);
        if (!log.ok()) _exit(3);
        std::string out;
        log.value().read([&](const TraceLine& line) {
            if (line.tgid != static_cast<uint32_t>(getppid()) || line.time_ns == 0) code = 4;
            out += fmt::format("{}\x1e", line.text);
        });
        if (write(pipefd[1], out.data(), out.size()) != static_cast<ssize_t>(out.size())) code = 5;
        _exit(code);
    }
    close(pipefd[1]);
    std::string got;
    char buf[4096];
    for (ssize_t n; (n = read(pipefd[0], buf, sizeof(buf))) > 0;)
        got.append(buf, static_cast<size_t>(n));
    close(pipefd[0]);
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "2: open, 3: TraceLog::open, 4: tgid/time, 5: pipe";
    std::string want;
    for (const auto& l : expected_lines) want += l + "\x1e";
    EXPECT_EQ(got, want);
    // The reader consumed the lines: the consumer position is shared through the memfd.
    EXPECT_EQ(rt_->trace_log().read([](const TraceLine&) {}), 0u);
}

TEST_P(TracePrintkTest, LinesCarryTheCallingThreadAndTime) {
    const uint64_t args[3] = {1, 2, 3};
    ASSERT_EQ(printk("x %d", args), 3);
    std::vector<TraceLine> lines;
    std::vector<std::string> texts;
    rt_->trace_log().read([&](const TraceLine& l) {
        lines.push_back(l);
        texts.emplace_back(l.text);
    });
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(texts[0], "x 1");
    EXPECT_EQ(lines[0].tgid, static_cast<uint32_t>(getpid()));
    EXPECT_EQ(lines[0].tid, static_cast<uint32_t>(gettid()));
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    EXPECT_LE(lines[0].time_ns, static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec);
}

TEST_P(TracePrintkTest, UnterminatedFormatAndMissingRuntimeAreErrors) {
    // The size excludes the NUL: the kernel requires the terminator inside fmt_size.
    const Executable* exe = load("mov %r6, %r1\n" + test::stack_string("abcdefg", -8) + R"(
        mov %r1, %r10
        add %r1, -8
        mov %r2, 7
        call 6
        stxdw [%r6], %r0
        mov %r0, 0
        exit
    )");
    ASSERT_TRUE(exe);
    uint64_t ctx[8] = {};
    ASSERT_EQ(run(exe, ctx), 0u);
    EXPECT_EQ(s64(ctx[0]), -EINVAL);

    const Executable* ok = load(printk_program("fine"));
    ASSERT_TRUE(ok);
    uint64_t ctx2[8] = {};
    ASSERT_EQ(ok->run(ctx2, sizeof(ctx2)), 0u);  // no Runtime as services: nowhere to write
    EXPECT_EQ(s64(ctx2[3]), -ENODEV);
    int not_a_runtime[16] = {};
    ASSERT_EQ(ok->run(ctx2, sizeof(ctx2), not_a_runtime), 0u);  // foreign services are not misread
    EXPECT_EQ(s64(ctx2[3]), -ENODEV);
    EXPECT_EQ(rt_->trace_log().read([](const TraceLine&) {}), 0u);
}

TEST_P(TracePrintkTest, AFullLogDropsNewLinesAndCountsThem) {
    Runtime::Options options;
    options.trace_log_bytes = static_cast<uint32_t>(sysconf(_SC_PAGESIZE));
    auto small = Runtime::create(options);
    ASSERT_TRUE(small.ok()) << small.error().message;
    const Executable* exe = load(printk_program("a line of some thirty bytes %d"));
    ASSERT_TRUE(exe);
    int failed = 0, written = 0;
    for (int i = 0; i < 500; ++i) {
        uint64_t ctx[8] = {static_cast<uint64_t>(i)};
        ASSERT_EQ(small.value()->run(*exe, ctx, sizeof(ctx)), 0u);
        if (s64(ctx[3]) == -ENOSPC)
            ++failed;
        else if (s64(ctx[3]) > 0)
            ++written;
    }
    EXPECT_GT(failed, 0);
    EXPECT_EQ(failed + written, 500);
    EXPECT_EQ(small.value()->trace_log().dropped(), static_cast<uint64_t>(failed));
    int read_back = 0;
    small.value()->trace_log().read([&](const TraceLine& l) {
        EXPECT_EQ(l.text, fmt::format("a line of some thirty bytes {}", read_back));
        ++read_back;
    });
    EXPECT_EQ(read_back, written) << "the oldest lines are kept, nothing overwritten";
}

TEST(TraceLog, RejectsBadSizesAndForeignMemfds) {
    EXPECT_FALSE(TraceLog::create(1000).ok());
    EXPECT_FALSE(TraceLog::create(0).ok());
    EXPECT_FALSE(TraceLog::open(-1).ok());
    auto hash = create_map(MapSpec{"h", MapType::Hash, 4, 4, 8, 0});
    ASSERT_TRUE(hash.ok());
    auto wrong = TraceLog::open(hash.value()->memfd());
    ASSERT_FALSE(wrong.ok());
    EXPECT_NE(wrong.error().message.find("ring buffer"), std::string::npos)
        << wrong.error().message;
    Runtime::Options options;
    options.max_programs = 0;
    EXPECT_FALSE(Runtime::create(options).ok());
}

INSTANTIATE_TEST_SUITE_P(Engines, TracePrintkTest,
                         ::testing::Values(Engine::Interpreter, Engine::Jit),
                         [](const auto& info) { return std::string(engine_name(info.param)); });

}  // namespace
}  // namespace liveio::ebpf
