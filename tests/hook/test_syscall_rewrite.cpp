// Syscall-instruction rewriting (zpoline style). Every test that installs the rewriter does so
// in a forked child, so the test process itself never has its libc rewritten; the child
// reports the first failed check through a pipe.
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <Zydis/Formatter.h>
#include <Zydis/Zydis.h>
#include <gtest/gtest.h>

#include "agent/mmap_min_addr.h"
#include "hook/dispatcher.h"
#include "hook/interceptor.h"
#include "hook/recording_handler.h"
#include "hook/syscall_rewrite.h"
#include "hook/syscall_rewrite_runtime.h"

extern char** environ;

#define LIVEIO_TEST_STR2(x) #x
#define LIVEIO_TEST_STR(x) LIVEIO_TEST_STR2(x)

namespace liveio::hook {
namespace {

constexpr const char* kMinAddrPath = "/proc/sys/vm/mmap_min_addr";

long read_min_addr() {
    std::ifstream in(kMinAddrPath);
    long v = -1;
    in >> v;
    return v;
}

using MinAddrZero = agent::testing::MmapMinAddrZero;  // shared with tests/agent (lock files)

#define NEED_MIN_ADDR_ZERO()   \
    MinAddrZero min_addr_zero; \
    if (!min_addr_zero.ok()) GTEST_SKIP() << min_addr_zero.reason();

#define NEED_LIBURING_NOT_LOADED()                                  \
    if (dlopen("liburing.so.2", RTLD_NOW | RTLD_NOLOAD) != nullptr) \
        GTEST_SKIP() << "liburing is already loaded in the test process";

struct CheckFailed {
    std::string message;
};

void check(bool condition, const std::string& what) {
    if (!condition) throw CheckFailed{what};
}

// Runs `body` in a forked child; returns "" on success or the failed check's message. A child
// still running after kChildLimitSeconds (a deadlock in the hooked child) is killed and reported,
// so a hang fails the test instead of stalling the suite.
constexpr int kChildLimitSeconds = 240;

std::string in_child(const std::function<void()>& body) {
    int p[2];
    if (pipe(p) != 0) return "pipe failed";
    const pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        std::string failure;
        try {
            body();
        } catch (const CheckFailed& f) {
            failure = f.message.empty() ? "check failed" : f.message;
        }
        if (!failure.empty()) (void)!write(p[1], failure.data(), failure.size());
        _exit(failure.empty() ? 0 : 1);
    }
    close(p[1]);
    std::string message;
    char buf[512];
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(kChildLimitSeconds);
    bool timed_out = false;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        pollfd pfd{p[0], POLLIN, 0};
        const int ready = left.count() > 0 ? poll(&pfd, 1, static_cast<int>(left.count())) : 0;
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) {
            timed_out = true;
            break;
        }
        const ssize_t n = read(p[0], buf, sizeof buf);
        if (n <= 0) break;
        message.append(buf, static_cast<size_t>(n));
    }
    close(p[0]);
    if (timed_out) kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    if (timed_out)
        return "child still running after " + std::to_string(kChildLimitSeconds) +
               " s (killed): " + message;
    if (WIFSIGNALED(status))
        return "child killed by signal " + std::to_string(WTERMSIG(status)) + " " + message;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return message.empty() ? "child exited with " + std::to_string(WEXITSTATUS(status))
                               : message;
    return "";
}

std::unique_ptr<SyscallRewriter> install_or_throw(CallHandler* handler) {
    auto r = SyscallRewriter::install(handler);
    check(r.ok(), r.ok() ? "" : "install: " + r.error().message);
    check(!(*r)->sites().empty(), "no syscall instruction found");
    return std::move(r).value();
}

size_t count_nr(const std::vector<Seen>& seen, long nr) {
    size_t n = 0;
    for (const Seen& s : seen) n += s.nr == nr;
    return n;
}

bool page_zero_mapped() { return msync(nullptr, 4096, MS_ASYNC) == 0; }

// /proc/self/maps without the lines that change with the allocator ([heap] and anonymous
// read-write memory).
std::string maps_without_heap() {
    std::ifstream in("/proc/self/maps");
    std::string out;
    for (std::string line; std::getline(in, line);) {
        if (line.find("[heap]") != std::string::npos) continue;
        if (line.find(" rw-p ") != std::string::npos && line.find('/') == std::string::npos &&
            line.find('[') == std::string::npos)
            continue;
        if (line.find(" ---p ") != std::string::npos && line.find('/') == std::string::npos)
            continue;
        out += line + "\n";
    }
    return out;
}

// Whether page 0 holds the trampoline in `mode`, for any entry address (read through
// /proc/self/mem: the page is execute-only).
bool page_zero_holds(TrampolineMode mode) {
    const auto want = trampoline_code(0, mode);
    const auto other_entry = trampoline_code(~uint64_t{0}, mode);
    std::vector<uint8_t> got(want.size());
    const int mem = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
    const bool read =
        mem >= 0 && pread(mem, got.data(), got.size(), 0) == static_cast<ssize_t>(got.size());
    if (mem >= 0) close(mem);
    if (!read) return false;
    for (size_t i = 0; i < want.size(); ++i)
        if (want[i] == other_entry[i] && got[i] != want[i]) return false;
    return true;
}

// --- disassembly ---------------------------------------------------------------------------

TEST(SyscallRewriteScan, FindsOnlyRealSyscallInstructions) {
    const std::vector<uint8_t> code = {
        0xb8, 0x0f, 0x05, 0x00, 0x00,              // mov $0x50f, %eax: 0f 05 inside an immediate
        0x0f, 0x05,                                // syscall           (offset 5)
        0x48, 0x8d, 0x05, 0x0f, 0x05, 0x00, 0x00,  // lea 0x50f(%rip), %rax
        0x0f, 0x34,                                // sysenter          (offset 14)
        0x90,                                      // nop
        0x0f, 0x05,                                // syscall           (offset 17)
    };
    const auto found = find_syscall_instructions(code.data(), code.size(), 0x1000);
    EXPECT_EQ(found, (std::vector<uintptr_t>{0x1005, 0x100e, 0x1011}));
}

TEST(SyscallRewriteScan, ResynchronisesAtFunctionStarts) {
    // Data before a function: `b8` swallows the function's first four bytes in a linear sweep,
    // hiding its syscall; the known function start at offset 1 puts the decoder back.
    const std::vector<uint8_t> code = {0xb8, 0x0f, 0x05, 0xc3, 0x90, 0x90, 0x90};
    EXPECT_TRUE(find_syscall_instructions(code.data(), code.size(), 0x2000).empty());
    const auto found = find_syscall_instructions(code.data(), code.size(), 0x2000, {0x2001});
    EXPECT_EQ(found, (std::vector<uintptr_t>{0x2001}));
}

TEST(SyscallRewriteScan, SkipsUndecodableBytes) {
    const std::vector<uint8_t> code = {0x06, 0x0f, 0x05, 0xc3};  // 06: invalid in 64-bit mode
    EXPECT_EQ(find_syscall_instructions(code.data(), code.size(), 0x3000),
              (std::vector<uintptr_t>{0x3001}));
}

// Follows the sled from `start` through relative jumps (each a 64-bit one); returns the
// offset of the first other instruction, or SIZE_MAX with `why` set.
size_t follow_sled(const std::vector<uint8_t>& code, size_t start, size_t& steps,
                   std::string& why) {
    ZydisDecoder d;
    ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    size_t pc = start;
    for (steps = 0; steps < 12; ++steps) {
        ZydisDecodedInstruction insn;
        ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
        if (pc >= code.size() || !ZYAN_SUCCESS(ZydisDecoderDecodeFull(
                                     &d, code.data() + pc, code.size() - pc, &insn, ops))) {
            why = "undecodable at " + std::to_string(pc);
            return SIZE_MAX;
        }
        if (insn.mnemonic != ZYDIS_MNEMONIC_JMP || ops[0].type != ZYDIS_OPERAND_TYPE_IMMEDIATE)
            return pc;
        if (insn.operand_width != 64) {
            why = "a 16-bit jump would truncate rip, at " + std::to_string(pc);
            return SIZE_MAX;
        }
        pc = pc + insn.length + static_cast<size_t>(ops[0].imm.value.s);
    }
    why = "too many jumps";
    return SIZE_MAX;
}

// The instructions from `pc` on, as text.
std::vector<std::string> disassemble(const std::vector<uint8_t>& code, size_t pc, size_t count) {
    ZydisDecoder d;
    ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    ZydisFormatter f;
    ZydisFormatterInit(&f, ZYDIS_FORMATTER_STYLE_ATT);
    std::vector<std::string> out;
    for (; out.size() < count && pc < code.size();) {
        ZydisDecodedInstruction insn;
        ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
        if (!ZYAN_SUCCESS(
                ZydisDecoderDecodeFull(&d, code.data() + pc, code.size() - pc, &insn, ops)))
            break;
        char text[96];
        ZydisFormatterFormatInstruction(&f, &insn, ops, insn.operand_count_visible, text,
                                        sizeof text, pc, nullptr);
        out.emplace_back(text);
        pc += insn.length;
    }
    return out;
}

// Every syscall number in the sled reaches `movabs $entry, %r11; jmp *%r11` through a few
// short jumps and nothing else.
TEST(SyscallRewriteTrampoline, EveryEntryReachesTheEntryJumpQuickly) {
    const uint64_t entry = 0x7f0012345678;
    const auto code = trampoline_code(entry);
    size_t worst = 0;
    for (size_t start = 0; start < kTrampolineEntries; ++start) {
        size_t steps = 0;
        std::string why;
        const size_t at = follow_sled(code, start, steps, why);
        ASSERT_NE(at, SIZE_MAX) << "entry " << start << ": " << why;
        const auto tail = disassemble(code, at, 2);
        ASSERT_EQ(tail, (std::vector<std::string>{"mov $0x7F0012345678, %r11", "jmp %r11"}))
            << "entry " << start;
        worst = std::max(worst, steps);
    }
    EXPECT_LE(worst, 10u);
}

// Retired, every entry reaches the tail that checks for a restored instruction before the
// return address and jumps there, flags and stack as they were.
TEST(SyscallRewriteTrampoline, RetiredEveryEntryReturnsToTheRestoredInstruction) {
    const auto code = trampoline_code(0x7f0012345678, TrampolineMode::Retired);
    const auto active = trampoline_code(0x7f0012345678, TrampolineMode::Active);
    ASSERT_EQ(code.size(), active.size());
    size_t differing = 0;
    for (size_t i = 0; i < code.size(); ++i) differing += code[i] != active[i];
    EXPECT_LE(differing, 5u) << "the modes differ only in the landing jumps' displacements";
    const std::vector<std::string> want = {
        "pop %r11", "pushfq", "cmpw $0x50F, -0x02(%r11)", "jz 0x",    "cmpw $0x340F, -0x02(%r11)",
        "jnz 0x",   "popfq",  "lea -0x02(%r11), %r11",    "jmp %r11", "ud2"};
    for (size_t start = 0; start < kTrampolineEntries; ++start) {
        size_t steps = 0;
        std::string why;
        const size_t at = follow_sled(code, start, steps, why);
        ASSERT_NE(at, SIZE_MAX) << "entry " << start << ": " << why;
        ASSERT_LE(steps, 10u);
        const auto tail = disassemble(code, at, want.size());
        ASSERT_EQ(tail.size(), want.size());
        for (size_t i = 0; i < want.size(); ++i)
            ASSERT_EQ(tail[i].substr(0, want[i].size()), want[i])
                << "entry " << start << " instruction " << i;
    }
}

// --- configuration -------------------------------------------------------------------------

// Other tests may need the machine-wide setting at 0 at the same moment, so it is not raised:
// when it is 0, a child in a private mount namespace sees a file saying 65536 in its place.
TEST(SyscallRewrite, ClearErrorWhenMmapMinAddrIsNotZero) {
    if (read_min_addr() == 0 && geteuid() != 0)
        GTEST_SKIP() << "vm.mmap_min_addr is 0 and only root can show the test another value";
    EXPECT_EQ(in_child([] {
                  if (read_min_addr() == 0) {
                      char path[] = "/tmp/liveio-min-addr-XXXXXX";
                      const int fd = mkstemp(path);
                      check(fd >= 0 && write(fd, "65536\n", 6) == 6, "temporary file");
                      close(fd);
                      const bool hidden =
                          unshare(CLONE_NEWNS) == 0 &&
                          mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0 &&
                          mount(path, kMinAddrPath, nullptr, MS_BIND, nullptr) == 0;
                      unlink(path);
                      check(hidden, std::string("cannot bind a file over ") + kMinAddrPath + ": " +
                                        strerror(errno));
                      check(read_min_addr() == 65536, "the child sees 65536");
                  }
                  RecordingHandler h;
                  auto r = SyscallRewriter::install(&h);
                  check(!r.ok() && r.error().code == EPERM, "install refused with EPERM");
                  check(r.error().message.find("vm.mmap_min_addr") != std::string::npos,
                        r.error().message);
                  auto i = Interceptor::install({Mechanism::SyscallRewrite, {}, {}}, &h);
                  check(!i.ok() && i.error().message.find("vm.mmap_min_addr") != std::string::npos,
                        "the interceptor names the sysctl");
                  // Nothing was left behind: page 0 is not mapped.
                  check(msync(nullptr, 4096, MS_ASYNC) != 0 && errno == ENOMEM,
                        "page 0 left mapped");
              }),
              "");
}

// --- behaviour -----------------------------------------------------------------------------

// The trampoline is copied to address 0 from wherever the heap put it. glibc's memcpy used
// to copy backwards (and run below address 0) for one source alignment in 16; the first
// install then crashed depending on the heap layout. Every 16-byte alignment in a page,
// checked through /proc/self/mem (page 0 is execute-only).
TEST(SyscallRewrite, PageZeroGetsTheCodeFromAnySourceAlignment) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(
        in_child([] {
            const auto code = trampoline_code(0x7f0012345678);
            std::vector<uint8_t> buffer(3 * 4096);
            auto* page = reinterpret_cast<uint8_t*>(
                (reinterpret_cast<uintptr_t>(buffer.data()) + 4095) & ~uintptr_t{4095});
            const int mem = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
            check(mem >= 0, "open /proc/self/mem");
            for (size_t offset = 0; offset < 4096; offset += 16) {
                memcpy(page + offset, code.data(), code.size());
                auto r = map_page_zero(page + offset, code.size());
                check(r.ok(),
                      r.ok() ? "" : "offset " + std::to_string(offset) + ": " + r.error().message);
                std::vector<uint8_t> back(code.size());
                check(pread(mem, back.data(), back.size(), 0) == static_cast<ssize_t>(back.size()),
                      "read page 0 back");
                check(back == code,
                      "page 0 holds the code (source offset " + std::to_string(offset) + ")");
                check(munmap(nullptr, 4096) == 0, "unmap page 0");
            }
            auto again = map_page_zero(code.data(), code.size());
            check(again.ok(), "map again");
            auto twice = map_page_zero(code.data(), code.size());
            check(!twice.ok() && twice.error().code == EEXIST, "page 0 already mapped is refused");
            check(!map_page_zero(code.data(), 4097).ok(), "more than a page is refused");
            close(mem);
        }),
        "");
}

TEST(SyscallRewrite, EverySyscallOfAWorkloadReachesTheDispatcher) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(
        in_child([] {
            RecordingHandler h;
            int p[2];
            check(pipe(p) == 0, "pipe");
            const pid_t pid = getpid();
            auto rw = install_or_throw(&h);
            for (const auto& s : rw->sites())
                check(memcmp(reinterpret_cast<void*>(s.address), "\xff\xd0", 2) == 0,
                      "site not rewritten");
            constexpr int kN = 100;
            char byte = 'a';
            for (int i = 0; i < kN; ++i) {
                check(getpid() == pid, "getpid result");
                byte = static_cast<char>('a' + i % 26);
                check(write(p[1], &byte, 1) == 1, "write result");
                char in = 0;
                check(read(p[0], &in, 1) == 1 && in == byte, "read returned the written byte");
            }
            auto seen = h.take();
            check(rw->uninstall().ok(), "uninstall");
            for (const auto& s : rw->sites())
                check(memcmp(reinterpret_cast<void*>(s.address), s.original, 2) == 0,
                      "byte not restored");
            check(count_nr(seen, SYS_getpid) == kN,
                  "getpid count " + std::to_string(count_nr(seen, SYS_getpid)));
            check(count_nr(seen, SYS_write) == kN,
                  "write count " + std::to_string(count_nr(seen, SYS_write)));
            check(count_nr(seen, SYS_read) == kN,
                  "read count " + std::to_string(count_nr(seen, SYS_read)));
            for (const Seen& s : seen) {
                if (s.nr == SYS_getpid) check(s.result == pid, "getpid result seen by handler");
                if (s.nr == SYS_write)
                    check(s.args[0] == p[1] && s.args[2] == 1 && s.result == 1, "write args");
            }
            // After uninstall nothing reaches the handler any more.
            for (int i = 0; i < 10; ++i) (void)getpid();
            check(count_nr(h.take(), SYS_getpid) == 0, "calls after uninstall");
            check(!page_zero_mapped(), "page 0 unmapped after uninstall");
            check(rw->last_uninstall().kept.empty(), "nothing kept: " + rw->last_uninstall().kept);
        }),
        "");
}

// Reads the null address, whose fault the caller tests: UBSan's null check is off here alone.
__attribute__((no_sanitize("null"))) int read_null() {
    const volatile char* null = nullptr;
    return *null;
}

// After uninstall nothing of the mechanism is mapped: page 0 and the stubs are gone, the
// rewritten text pages are the file's again (the mappings merged back), and a NULL read faults.
TEST(SyscallRewrite, UninstallLeavesTheMapsAsTheyWereAndNullReadsFault) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  const std::string before = maps_without_heap();
                  for (int cycle = 0; cycle < 3; ++cycle) {
                      auto rw = install_or_throw(&h);
                      check(page_zero_mapped(), "page 0 mapped while installed");
                      check(maps_without_heap().find("wx") == std::string::npos,
                            "a writable+executable mapping");
                      check(rw->uninstall().ok(), "uninstall");
                      check(!page_zero_mapped(), "page 0 unmapped");
                  }
                  const std::string after = maps_without_heap();
                  check(after == before, "maps before:\n" + before + "\nafter:\n" + after);
                  // A NULL read faults again (SIGSEGV in a child of this process).
                  const pid_t reader = fork();
                  if (reader == 0) {
                      signal(SIGSEGV, SIG_DFL);
                      _exit(read_null() == 0 ? 3 : 4);
                  }
                  int status = 0;
                  check(waitpid(reader, &status, 0) == reader, "waitpid");
                  check(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV,
                        "a NULL read did not fault (status " + std::to_string(status) + ")");
              }),
              "");
}

// A handler that wipes every register the ABI lets C++ clobber.
class ClobberingHandler : public CallHandler {
public:
    std::atomic<int> calls{0};
    bool on_enter(CallFrame&) override {
        asm volatile(
            "pxor %%xmm0, %%xmm0\n pxor %%xmm1, %%xmm1\n pxor %%xmm2, %%xmm2\n pxor %%xmm3, "
            "%%xmm3\n"
            "pxor %%xmm4, %%xmm4\n pxor %%xmm5, %%xmm5\n pxor %%xmm6, %%xmm6\n pxor %%xmm7, "
            "%%xmm7\n"
            "pxor %%xmm8, %%xmm8\n pxor %%xmm9, %%xmm9\n pxor %%xmm10, %%xmm10\n pxor %%xmm11, "
            "%%xmm11\n"
            "pxor %%xmm12, %%xmm12\n pxor %%xmm13, %%xmm13\n pxor %%xmm14, %%xmm14\n pxor %%xmm15, "
            "%%xmm15\n"
            "xor %%edi, %%edi\n xor %%esi, %%esi\n xor %%edx, %%edx\n xor %%r8d, %%r8d\n"
            "xor %%r9d, %%r9d\n xor %%r10d, %%r10d\n" ::
                : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                  "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "rdi", "rsi", "rdx", "r8",
                  "r9", "r10");
        calls.fetch_add(1);
        return false;
    }
    void on_exit(CallFrame&) override {}
};

// libc's syscall() moves its arguments into the kernel's registers and executes a (rewritten)
// `syscall`; whatever the hook does, on return the argument registers and xmm0-15 must hold
// what the kernel would have left: the arguments and the caller's vector values.
TEST(SyscallRewrite, RegistersSurviveTheHook) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  ClobberingHandler h;
                  auto rw = install_or_throw(&h);
                  alignas(16) uint64_t xin[32], xout[32] = {};
                  for (int i = 0; i < 32; ++i) xin[i] = 0x0123456789abcdefull * (i + 1);
                  uint64_t gp[7] = {};  // rax rdi rsi rdx r10 r8 r9 after the call
                  auto fn = reinterpret_cast<void*>(&::syscall);
                  asm volatile(
                      "movdqa 0(%[xin]), %%xmm0\n movdqa 16(%[xin]), %%xmm1\n movdqa 32(%[xin]), %%xmm2\n"
                      "movdqa 48(%[xin]), %%xmm3\n movdqa 64(%[xin]), %%xmm4\n movdqa 80(%[xin]), %%xmm5\n"
                      "movdqa 96(%[xin]), %%xmm6\n movdqa 112(%[xin]), %%xmm7\n movdqa 128(%[xin]), %%xmm8\n"
                      "movdqa 144(%[xin]), %%xmm9\n movdqa 160(%[xin]), %%xmm10\n movdqa 176(%[xin]), %%xmm11\n"
                      "movdqa 192(%[xin]), %%xmm12\n movdqa 208(%[xin]), %%xmm13\n movdqa 224(%[xin]), %%xmm14\n"
                      "movdqa 240(%[xin]), %%xmm15\n"
                      "mov %%rsp, %%rbx\n and $-16, %%rsp\n sub $256, %%rsp\n"
                      "movq $0x6666, (%%rsp)\n"  // syscall()'s 7th argument: the kernel's a5 (r9)
                      "mov $" LIVEIO_TEST_STR(SYS_getppid) ", %%edi\n"
                      "mov $0x1111, %%esi\n mov $0x2222, %%edx\n mov $0x3333, %%ecx\n"
                      "mov $0x4444, %%r8d\n mov $0x5555, %%r9d\n"
                      "call *%[fn]\n"
                      "mov %%rbx, %%rsp\n"
                      "mov %%rax, 0(%[gp])\n mov %%rdi, 8(%[gp])\n mov %%rsi, 16(%[gp])\n"
                      "mov %%rdx, 24(%[gp])\n mov %%r10, 32(%[gp])\n mov %%r8, 40(%[gp])\n mov %%r9, 48(%[gp])\n"
                      "movdqa %%xmm0, 0(%[xout])\n movdqa %%xmm1, 16(%[xout])\n movdqa %%xmm2, 32(%[xout])\n"
                      "movdqa %%xmm3, 48(%[xout])\n movdqa %%xmm4, 64(%[xout])\n movdqa %%xmm5, 80(%[xout])\n"
                      "movdqa %%xmm6, 96(%[xout])\n movdqa %%xmm7, 112(%[xout])\n movdqa %%xmm8, 128(%[xout])\n"
                      "movdqa %%xmm9, 144(%[xout])\n movdqa %%xmm10, 160(%[xout])\n movdqa %%xmm11, 176(%[xout])\n"
                      "movdqa %%xmm12, 192(%[xout])\n movdqa %%xmm13, 208(%[xout])\n movdqa %%xmm14, 224(%[xout])\n"
                      "movdqa %%xmm15, 240(%[xout])\n"
                      :
                      : [xin] "r"(xin), [xout] "r"(xout), [gp] "r"(gp), [fn] "r"(fn)
                      : "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "xmm0", "xmm1",
                        "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
                        "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
                  const int calls = h.calls.load();
                  check(rw->uninstall().ok(), "uninstall");
                  check(calls == 1, "the handler saw the call: " + std::to_string(calls));
                  check(static_cast<pid_t>(gp[0]) == getppid(), "rax = getppid()");
                  const uint64_t want[6] = {0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666};
                  for (int i = 0; i < 6; ++i)
                      check(gp[i + 1] == want[i],
                            "argument register " + std::to_string(i) + " changed");
                  for (int i = 0; i < 32; ++i)
                      check(xout[i] == xin[i], "xmm" + std::to_string(i / 2) + " changed");
              }),
              "");
}

TEST(SyscallRewrite, ErrnoIsPreserved) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  h.take_nr = SYS_openat;
                  h.take_result = -ENOTDIR;
                  auto rw = install_or_throw(&h);
                  char c;
                  errno = 0;
                  check(read(-1, &c, 1) == -1 && errno == EBADF, "EBADF from the kernel");
                  errno = 12345;
                  check(getpid() > 0 && errno == 12345, "errno untouched by a successful call");
                  errno = 0;
                  check(open("/", O_RDONLY) == -1 && errno == ENOTDIR,
                        "handler's -ENOTDIR as errno");
                  check(close(-5) == -1 && errno == EBADF, "EBADF from close");
                  check(rw->uninstall().ok(), "uninstall");
              }),
              "");
}

TEST(SyscallRewrite, HandlerTakesOverACall) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  h.take_nr = SYS_read;
                  h.take_result = 7;
                  h.fill = 'x';
                  int p[2];
                  check(pipe(p) == 0, "pipe");
                  auto rw = install_or_throw(&h);
                  char buf[16] = {};
                  // An empty pipe: only the handler can complete this read.
                  check(read(p[0], buf, sizeof buf) == 7, "read taken over");
                  check(std::string(buf) == "xxxxxxx", "handler's bytes");
                  check(rw->uninstall().ok(), "uninstall");
                  check(write(p[1], "k", 1) == 1 && read(p[0], buf, 1) == 1 && buf[0] == 'k',
                        "real read after uninstall");
              }),
              "");
}

TEST(SyscallRewrite, ThreadsCreatedWhileHookedDoVerifiedIo) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  auto rw = install_or_throw(&h);
                  char path[] = "/tmp/liveio-rewrite-XXXXXX";
                  const int fd = mkstemp(path);
                  check(fd >= 0, "mkstemp");
                  unlink(path);
                  std::atomic<int> wrong{0};
                  std::vector<std::thread> threads;
                  for (int t = 0; t < 8; ++t) {
                      threads.emplace_back([&, t] {
                          // Each thread also creates (and joins) a thread of its own.
                          std::thread inner([&] { (void)getpid(); });
                          inner.join();
                          std::vector<unsigned char> out(256), in(256);
                          for (int i = 0; i < 200; ++i) {
                              for (size_t k = 0; k < out.size(); ++k)
                                  out[k] = static_cast<unsigned char>(t * 7 + i + k);
                              const off_t off = t * 256;
                              if (pwrite(fd, out.data(), out.size(), off) != 256 ||
                                  pread(fd, in.data(), in.size(), off) != 256 || in != out)
                                  wrong.fetch_add(1);
                          }
                      });
                  }
                  for (auto& t : threads) t.join();
                  close(fd);
                  const auto seen = h.take();
                  check(rw->uninstall().ok(), "uninstall");
                  check(wrong.load() == 0, "wrong bytes: " + std::to_string(wrong.load()));
                  check(count_nr(seen, SYS_pwrite64) == 8 * 200,
                        "pwrite count " + std::to_string(count_nr(seen, SYS_pwrite64)));
                  check(count_nr(seen, SYS_pread64) == 8 * 200, "pread count");
                  check(count_nr(seen, SYS_getpid) == 8, "getpid from inner threads");
              }),
              "");
}

TEST(SyscallRewrite, ForkVforkAndSpawnChildrenWork) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  auto rw = install_or_throw(&h);
                  int status = 0;
                  // fork: the child inherits the rewritten code and the trampoline.
                  const pid_t f = fork();
                  if (f == 0)
                      _exit(getpid() > 0 && write(-1, "", 0) == -1 && errno == EBADF ? 42 : 1);
                  check(f > 0 && waitpid(f, &status, 0) == f && WIFEXITED(status) &&
                            WEXITSTATUS(status) == 42,
                        "fork child");
                  // vfork + exec: the child runs on the parent's stack until exec.
                  for (int i = 0; i < 20; ++i) {
                      const pid_t v = vfork();
                      if (v == 0) {
                          execl("/bin/sh", "sh", "-c", "exit 7", static_cast<char*>(nullptr));
                          _exit(127);
                      }
                      check(v > 0 && waitpid(v, &status, 0) == v && WIFEXITED(status) &&
                                WEXITSTATUS(status) == 7,
                            "vfork+exec child");
                  }
                  // vfork + _exit.
                  const pid_t v = vfork();
                  if (v == 0) _exit(9);
                  check(v > 0 && waitpid(v, &status, 0) == v && WEXITSTATUS(status) == 9,
                        "vfork+_exit child");
                  // posix_spawn: clone(CLONE_VM | CLONE_VFORK) onto a separate stack.
                  pid_t s = 0;
                  const char* argv[] = {"sh", "-c", "exit 5", nullptr};
                  check(posix_spawn(&s, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv),
                                    environ) == 0,
                        "posix_spawn");
                  check(waitpid(s, &status, 0) == s && WEXITSTATUS(status) == 5, "spawned child");
                  const auto seen = h.take();
                  check(rw->uninstall().ok(), "uninstall");
                  check(count_nr(seen, SYS_wait4) >= 23, "wait4 seen");
              }),
              "");
}

std::atomic<int> g_handled{0};
int g_signal_pipe = -1;

void syscall_making_handler(int) {
    const int saved = errno;
    (void)getppid();
    const char c = 's';
    (void)!write(g_signal_pipe, &c, 1);
    g_handled.fetch_add(1);
    errno = saved;
}

TEST(SyscallRewrite, SignalsWithRestartAndHandlersThatMakeSyscalls) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  int data[2], sig[2];
                  check(pipe(data) == 0 && pipe(sig) == 0, "pipes");
                  g_signal_pipe = sig[1];
                  struct sigaction sa {};
                  sa.sa_handler = syscall_making_handler;
                  sa.sa_flags = SA_RESTART;
                  sigaction(SIGUSR1, &sa, nullptr);
                  auto rw = install_or_throw(&h);
                  // raise: the handler runs and returns through rt_sigreturn (rewritten in libc).
                  for (int i = 0; i < 50; ++i) raise(SIGUSR1);
                  check(g_handled.load() == 50, "handled raised signals");
                  // Blocking reads interrupted by signals restart and still get every byte.
                  const pthread_t reader = pthread_self();
                  constexpr int kBytes = 200;
                  std::thread writer([&] {
                      for (int i = 0; i < kBytes; ++i) {
                          // One signal at a time: a second pending SIGUSR1 would merge with it.
                          const int before = g_handled.load();
                          pthread_kill(reader, SIGUSR1);
                          while (g_handled.load() == before) std::this_thread::yield();
                          const char b = static_cast<char>(i);
                          (void)!write(data[1], &b, 1);
                      }
                  });
                  int bad = 0;
                  for (int i = 0; i < kBytes; ++i) {
                      char b;
                      if (read(data[0], &b, 1) != 1 || b != static_cast<char>(i)) ++bad;
                  }
                  writer.join();
                  // Signals arriving in application code (no syscall in progress): the
                  // handler's own syscalls are hooked like any other.
                  constexpr int kOutside = 20;
                  std::atomic<bool> ready{false};
                  std::thread signaller([&] {
                      for (int i = 0; i < kOutside; ++i) {
                          while (!ready.exchange(false)) std::this_thread::yield();
                          pthread_kill(reader, SIGUSR1);
                      }
                  });
                  for (int i = 0; i < kOutside; ++i) {
                      const int before = g_handled.load();
                      ready = true;
                      while (g_handled.load() == before) {
                      }
                  }
                  signaller.join();
                  const auto seen = h.take();
                  check(rw->uninstall().ok(), "uninstall");
                  const int handled = g_handled.load();
                  check(bad == 0, "bytes read wrongly: " + std::to_string(bad));
                  check(handled == 50 + kBytes + kOutside, "handled " + std::to_string(handled));
                  // Every handler ran its syscalls: one byte each in the signal pipe.
                  char drain[512];
                  check(read(sig[0], drain, sizeof drain) == handled, "bytes written by handlers");
                  // Handlers interrupting a hooked call (raise, a blocked read) run while the
                  // dispatcher marks the thread as inside liveio: their calls go straight to
                  // the kernel. Those interrupting application code are dispatched.
                  const size_t getppid_seen = count_nr(seen, SYS_getppid);
                  check(getppid_seen >= kOutside && getppid_seen <= static_cast<size_t>(handled),
                        "getppid from handlers " + std::to_string(getppid_seen));
                  check(count_nr(seen, SYS_rt_sigreturn) == 0, "rt_sigreturn bypasses the handler");
              }),
              "");
}

// A thread that a signal interrupts inside the sled keeps a page-0 address in its signal frame
// while the handler runs; the world stop only sees the handler. Single-stepping (TF) stops a
// thread exactly there: its SIGTRAP handler holds it while the rewriter is uninstalled (and,
// in the second round, installed again), then returns into page 0. The call must complete:
// through the retired sled to the restored instruction, or through the entry again.
std::atomic<int> g_held{0};  // 1: a thread is held in the sled; 2: let it go; 3: never got there

void hold_in_sled(int, siginfo_t*, void* raw) {
    static thread_local int steps = 0;
    auto& regs = static_cast<ucontext_t*>(raw)->uc_mcontext.gregs;
    constexpr greg_t kTrapFlag = 0x100;
    const bool in_sled = static_cast<uint64_t>(regs[REG_RIP]) < 4096;
    if (!in_sled && ++steps < 200000) return;  // keep stepping
    regs[REG_EFL] &= ~kTrapFlag;
    steps = 0;
    if (!in_sled) {
        g_held = 3;
        return;
    }
    g_held = 1;
    while (g_held.load() != 2)
        __builtin_ia32_pause();  // no syscalls: the world stop still parks it here
}

TEST(SyscallRewrite, ThreadInterruptedInsideTheSledSurvivesUninstall) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  struct sigaction sa {};
                  sa.sa_sigaction = hold_in_sled;
                  sa.sa_flags = SA_SIGINFO;
                  sigemptyset(&sa.sa_mask);
                  check(sigaction(SIGTRAP, &sa, nullptr) == 0, "sigaction SIGTRAP");
                  const pid_t parent = getppid();
                  for (const bool reinstall : {false, true}) {
                      RecordingHandler h;
                      auto rw = install_or_throw(&h);
                      g_held = 0;
                      pid_t seen = 0;
                      std::thread stepper([&] {
                          asm volatile("pushfq\n orq $0x100, (%%rsp)\n popfq" ::: "memory", "cc");
                          seen = getppid();
                      });
                      while (g_held.load() == 0) std::this_thread::yield();
                      if (g_held.load() == 3) {
                          stepper.join();
                          check(false, "single-stepping never reached the sled");
                      }
                      check(rw->uninstall().ok(), "uninstall while a thread is held in the sled");
                      // Its signal frame returns into page 0: the one case page 0 is kept, retired.
                      check(page_zero_holds(TrampolineMode::Retired), "page 0 retired");
                      check(rw->last_uninstall().kept.find("page 0") != std::string::npos,
                            "the report names page 0 as kept: '" + rw->last_uninstall().kept + "'");
                      std::unique_ptr<SyscallRewriter> again;
                      if (reinstall) again = install_or_throw(&h);
                      (void)h.take();
                      g_held = 2;
                      stepper.join();
                      check(seen == parent, "the held getppid returned " + std::to_string(seen));
                      const size_t dispatched = count_nr(h.take(), SYS_getppid);
                      if (reinstall) {
                          check(dispatched == 1,
                                "back in an active sled, the held call is dispatched");
                          check(again->uninstall().ok(), "second uninstall");
                      } else {
                          check(dispatched == 0, "the retired sled bypasses liveio");
                      }
                  }
              }),
              "");
}

// Page 0 mapped by someone else is refused by name; one left by another copy of liveio (which
// retired it and was unloaded: another entry address) is taken over.
TEST(SyscallRewrite, PageZeroOfSomeoneElseIsRefusedOursIsReused) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  void* foreign = mmap(nullptr, 4096, PROT_READ,
                                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
                  check(foreign == nullptr, "map a foreign page 0");
                  auto refused = SyscallRewriter::install(&h);
                  check(!refused.ok() && refused.error().code == EEXIST &&
                            refused.error().message.find("page 0") != std::string::npos,
                        "a foreign page 0 is refused by name");
                  check(munmap(nullptr, 4096) == 0, "unmap");
                  const auto left = trampoline_code(0x7f00deadbe00, TrampolineMode::Retired);
                  check(map_page_zero(left.data(), left.size()).ok(), "map a retired trampoline");
                  auto rw = install_or_throw(&h);
                  check(page_zero_holds(TrampolineMode::Active), "page 0 active");
                  for (int i = 0; i < 3; ++i) (void)getppid();
                  check(rw->uninstall().ok(), "uninstall");
                  check(count_nr(h.take(), SYS_getppid) == 3,
                        "calls dispatched through the reused page");
                  check(!page_zero_mapped(), "page 0 unmapped after uninstall");
              }),
              "");
}

// clone and clone3 made through libc's syscall() (its own rewritten instruction): the child
// returns from the kernel on the same stack but must not depend on what the hook pushed.
TEST(SyscallRewrite, RawCloneAndClone3Work) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  auto rw = install_or_throw(&h);
                  int status = 0;
                  for (int i = 0; i < 10; ++i) {
                      const long c = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
                      if (c == 0) _exit(getppid() > 0 ? 33 : 1);
                      check(c > 0 && waitpid(static_cast<pid_t>(c), &status, 0) == c &&
                                WIFEXITED(status) && WEXITSTATUS(status) == 33,
                            "clone child");
                      struct {
                          uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack,
                              stack_size, tls;
                      } args{};
                      args.exit_signal = SIGCHLD;
                      const long c3 = syscall(SYS_clone3, &args, sizeof args);
                      if (c3 == 0) _exit(getppid() > 0 ? 34 : 1);
                      check(c3 > 0 && waitpid(static_cast<pid_t>(c3), &status, 0) == c3 &&
                                WIFEXITED(status) && WEXITSTATUS(status) == 34,
                            "clone3 child: " + std::to_string(c3));
                  }
                  check(rw->uninstall().ok(), "uninstall");
                  const auto seen = h.take();
                  check(count_nr(seen, SYS_clone) == 0 && count_nr(seen, SYS_clone3) == 0,
                        "clone and clone3 bypass the handler");
                  check(count_nr(seen, SYS_wait4) >= 20, "the parent's calls are dispatched");
              }),
              "");
}

// Verifying workers run while the rewriter is installed and removed 100 times.
TEST(SyscallRewrite, HundredInstallUninstallCyclesUnderVerifiedIo) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  char path[] = "/tmp/liveio-rewrite-XXXXXX";
                  const int fd = mkstemp(path);
                  check(fd >= 0, "mkstemp");
                  unlink(path);
                  std::atomic<bool> stop{false};
                  std::atomic<uint64_t> wrong{0}, ops{0};
                  std::vector<std::thread> workers;
                  for (int t = 0; t < 4; ++t)
                      workers.emplace_back([&, t] {
                          std::vector<unsigned char> out(512), in(512);
                          for (uint32_t i = 0; !stop.load(); ++i) {
                              for (size_t k = 0; k < out.size(); ++k)
                                  out[k] = static_cast<unsigned char>(t * 31 + i + k);
                              if (pwrite(fd, out.data(), 512, t * 512) != 512 ||
                                  pread(fd, in.data(), 512, t * 512) != 512 || in != out)
                                  wrong.fetch_add(1);
                              ops.fetch_add(1);
                          }
                      });
                  std::string failure;
                  uint64_t dispatched = 0;
                  for (int c = 0; c < 100 && failure.empty(); ++c) {
                      auto rw = SyscallRewriter::install(&h);
                      if (!rw) {
                          failure = "install " + std::to_string(c) + ": " + rw.error().message;
                          break;
                      }
                      const uint64_t target = ops.load() + 4;
                      while (ops.load() < target) std::this_thread::yield();
                      if (auto u = (*rw)->uninstall(); !u)
                          failure = "uninstall: " + u.error().message;
                      dispatched += h.take().size();
                  }
                  stop = true;
                  for (auto& w : workers) w.join();
                  close(fd);
                  check(failure.empty(), failure);
                  check(wrong.load() == 0, "wrong results: " + std::to_string(wrong.load()));
                  check(dispatched >= 100 * 4, "calls dispatched " + std::to_string(dispatched));
              }),
              "");
}

TEST(SyscallRewrite, RewritesOnlyTheNamedObjects) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  auto unknown = SyscallRewriter::install(&h, {"libnot-loaded.so"});
                  check(!unknown.ok() && unknown.error().code == ENOENT &&
                            unknown.error().message.find("libnot-loaded.so") != std::string::npos,
                        "unknown object refused by name");
                  // The test binary links liveio: its own raw syscalls must stay raw.
                  auto own = SyscallRewriter::install(&h, {kMainProgram});
                  check(!own.ok() && own.error().code == EINVAL, "liveio's own object refused");
                  auto rw = SyscallRewriter::install(&h, {"libc.so.6"});
                  check(rw.ok(), rw.ok() ? "" : rw.error().message);
                  check(!(*rw)->sites().empty(), "libc has syscall instructions");
                  for (const auto& s : (*rw)->sites())
                      check(s.object.ends_with("libc.so.6"), "site outside libc: " + s.object);
                  for (int i = 0; i < 5; ++i) (void)getppid();
                  check((*rw)->uninstall().ok(), "uninstall");
                  check(count_nr(h.take(), SYS_getppid) == 5, "getppid through libc");
              }),
              "");
}

// liburing makes its syscalls with its own `syscall` instructions (not through libc), so
// they are seen only once the library itself is rewritten.
TEST(SyscallRewrite, ObjectsLoadedLaterAreRewrittenOnRequest) {
    NEED_MIN_ADDR_ZERO();
    NEED_LIBURING_NOT_LOADED();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  auto rw = install_or_throw(&h);
                  const size_t before = rw->sites().size();
                  void* lib = dlopen("liburing.so.2", RTLD_NOW);
                  // dlerror() is NULL after a successful dlopen: read it only on failure.
                  if (lib == nullptr)
                      check(false, std::string("dlopen liburing.so.2: ") + dlerror());
                  // int io_uring_queue_init(unsigned entries, struct io_uring*, unsigned flags)
                  using InitFn = int (*)(unsigned, void*, unsigned);
                  using ExitFn = void (*)(void*);
                  auto init = reinterpret_cast<InitFn>(dlsym(lib, "io_uring_queue_init"));
                  auto exit_ring = reinterpret_cast<ExitFn>(dlsym(lib, "io_uring_queue_exit"));
                  check(init != nullptr && exit_ring != nullptr, "liburing symbols");
                  alignas(64) static unsigned char ring[4096];
                  auto setup_calls = [&] {
                      const int r = init(4, ring, 0);
                      if (r == 0) exit_ring(ring);
                      return count_nr(h.take(), SYS_io_uring_setup);
                  };
                  check(setup_calls() == 0, "liburing's own syscall seen before rewriting it");
                  auto added = rw->rewrite_new_objects();
                  check(added.ok(), added.ok() ? "" : added.error().message);
                  check(*added > 0 && rw->sites().size() == before + *added,
                        "sites added for liburing");
                  check(setup_calls() == 1, "io_uring_setup seen after rewriting liburing");
                  auto again = rw->rewrite_new_objects();
                  check(again.ok() && *again == 0, "nothing new the second time");
                  check(rw->uninstall().ok(), "uninstall");
                  for (const auto& s : rw->sites())
                      check(memcmp(reinterpret_cast<void*>(s.address), s.original, 2) == 0,
                            "byte not restored");
                  check(setup_calls() == 0, "nothing seen after uninstall");
              }),
              "");
}

TEST(SyscallRewrite, ObjectsUnloadedWhileRewrittenAreSkippedAtUninstall) {
    NEED_MIN_ADDR_ZERO();
    NEED_LIBURING_NOT_LOADED();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  auto rw = install_or_throw(&h);
                  void* lib = dlopen("liburing.so.2", RTLD_NOW);
                  check(lib != nullptr, "dlopen liburing.so.2");
                  auto added = rw->rewrite_new_objects();
                  check(added.ok() && *added > 0, "liburing rewritten");
                  check(dlclose(lib) == 0, "dlclose");
                  check(dlopen("liburing.so.2", RTLD_NOW | RTLD_NOLOAD) == nullptr,
                        "liburing unloaded");
                  auto u = rw->uninstall();
                  check(u.ok(), u.ok() ? "" : u.error().message);
                  for (int i = 0; i < 3; ++i) (void)getppid();
                  check(count_nr(h.take(), SYS_getppid) == 0, "nothing seen after uninstall");
              }),
              "");
}

// A thread blocked in a hooked read keeps uninstall waiting (after the bytes are restored)
// until its call returns; then everything completes normally.
// A call still running handler code (not sleeping in the kernel) is waited for: uninstall
// returns only after the handler finished it.
TEST(SyscallRewrite, UninstallWaitsForACallInsideTheHandler) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  int p[2];
                  check(pipe(p) == 0, "pipe");
                  std::atomic<bool> in_handler{false}, release{false};
                  // Only the reader's read: every other call of the process (the thread's
                  // creation, the yields below) passes through the handler too.
                  h.during_enter = [&](const SyscallCall& c) {
                      if (c.nr != SYS_read || static_cast<int>(c.args[0]) != p[0]) return;
                      in_handler = true;
                      while (!release.load()) std::this_thread::yield();
                  };
                  auto rw = install_or_throw(&h);
                  check(::write(p[1], "z", 1) == 1, "write");
                  char got = 0;
                  ssize_t n = -1;
                  std::thread reader([&] { n = read(p[0], &got, 1); });
                  while (!in_handler.load()) std::this_thread::yield();
                  std::atomic<bool> done{false};
                  Result<void> result;
                  std::thread uninstaller([&] {
                      result = rw->uninstall();
                      done = true;
                  });
                  const auto& first = rw->sites().front();
                  while (memcmp(reinterpret_cast<void*>(first.address), first.original, 2) != 0)
                      std::this_thread::yield();
                  std::this_thread::sleep_for(std::chrono::milliseconds(200));
                  check(!done.load(),
                        "uninstall returned while a call was still inside the handler");
                  release = true;
                  reader.join();
                  uninstaller.join();
                  check(result.ok(), result.ok() ? "" : result.error().message);
                  check(n == 1 && got == 'z', "the read completed with the byte");
                  check(count_nr(h.take(), SYS_read) == 1, "the read reached on_exit");
              }),
              "");
}

// Threads sleeping in the kernel in a call the dispatch made for them (an idle thread's read
// or futex wait) are moved back to their own syscall instruction rather than waited for:
// uninstall returns while they still sleep, no thread is left in liveio's code, and the calls
// complete later from the application's code with the right results.
TEST(SyscallRewrite, UninstallMovesCallsSleepingInTheKernelOutOfLiveio) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  int p[2];
                  check(pipe(p) == 0, "pipe");
                  std::atomic<pid_t> reader_tid{0};
                  h.during_enter = [&](const SyscallCall& c) {
                      if (c.nr == SYS_read && static_cast<int>(c.args[0]) == p[0])
                          reader_tid = static_cast<pid_t>(raw_syscall(SYS_gettid));
                  };
                  auto rw = install_or_throw(&h);
                  char got = 0;
                  ssize_t n = -1;
                  std::thread reader([&] { n = read(p[0], &got, 1); });
                  // A futex wait (made through glibc's condition variable) sleeps too.
                  std::mutex m;
                  std::condition_variable cv;
                  bool go = false, woke = false;
                  std::thread waiter([&] {
                      std::unique_lock lock(m);
                      cv.wait(lock, [&] { return go; });
                      woke = true;
                  });
                  auto sleeping = [](pid_t tid, long nr) {
                      std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/syscall");
                      long seen = -1;
                      return (in >> seen) && seen == nr;
                  };
                  while (reader_tid.load() == 0 || !sleeping(reader_tid.load(), SYS_read))
                      std::this_thread::sleep_for(std::chrono::milliseconds(1));
                  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the waiter too
                  const auto started = std::chrono::steady_clock::now();
                  auto result = rw->uninstall();
                  check(result.ok(), result.ok() ? "" : result.error().message);
                  const double ms = std::chrono::duration<double, std::milli>(
                                        std::chrono::steady_clock::now() - started)
                                        .count();
                  check(ms < 5000,
                        "uninstall waited for the sleeping calls (" + std::to_string(ms) + " ms)");
                  // Nobody sleeps in liveio's dispatch code any more.
                  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
                      std::ifstream in(task.path() / "syscall");
                      std::vector<std::string> f;
                      for (std::string x; in >> x;) f.push_back(x);
                      if (f.size() < 3) continue;
                      const uintptr_t pc = std::strtoull(f.back().c_str(), nullptr, 16);
                      check(pc < reinterpret_cast<uintptr_t>(__start_liveio_rw_dispatch) ||
                                pc >= reinterpret_cast<uintptr_t>(__stop_liveio_rw_dispatch),
                            "thread " + task.path().filename().string() +
                                " still sleeps in the dispatch code");
                  }
                  check(sleeping(reader_tid.load(), SYS_read),
                        "the reader sleeps in read again, from its own code");
                  check(::write(p[1], "z", 1) == 1, "write");
                  reader.join();
                  check(n == 1 && got == 'z', "the moved read completed with the byte");
                  {
                      std::lock_guard lock(m);
                      go = true;
                  }
                  cv.notify_one();
                  waiter.join();
                  check(woke, "the moved futex wait woke up");
                  size_t pipe_reads = 0;
                  for (const Seen& seen : h.take())
                      pipe_reads += seen.nr == SYS_read && static_cast<int>(seen.args[0]) == p[0];
                  check(pipe_reads == 0, "a moved call never reaches on_exit");
              }),
              "");
}

TEST(SyscallRewrite, InterceptorInterfaceAndSecondInstallIsRefused) {
    NEED_MIN_ADDR_ZERO();
    EXPECT_EQ(in_child([] {
                  RecordingHandler h;
                  auto i = Interceptor::install({Mechanism::SyscallRewrite, {}, {}}, &h);
                  check(i.ok(), i.ok() ? "" : i.error().message);
                  check((*i)->mechanism() == Mechanism::SyscallRewrite, "mechanism");
                  const uint64_t before = (*i)->calls_dispatched();
                  for (int k = 0; k < 10; ++k) (void)getppid();
                  check((*i)->calls_dispatched() >= before + 10, "calls_dispatched");
                  RecordingHandler other;
                  auto second = SyscallRewriter::install(&other);
                  check(!second.ok(), "second install refused");
                  check(second.error().code == EEXIST || second.error().code == EBUSY,
                        second.error().message);
                  check((*i)->uninstall().ok(), "uninstall");
                  check((*i)->uninstall().ok(), "second uninstall is a no-op");
              }),
              "");
}

}  // namespace
}  // namespace liveio::hook
