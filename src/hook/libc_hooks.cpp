// Wrappers for libc I/O functions. Each one describes its call to the dispatcher as the
// syscall libc would make and, when the handler does not take it over, calls the ORIGINAL
// libc function so libc's own behavior (cancellation points, errno, fallbacks) is unchanged.
//
// The wrappers are instantiated once per mechanism (GOT, inline): the mechanism decides which
// dispatcher slot they report to and where their original pointers live (for GOT the libc
// function itself; for inline hooks the relocated-prologue trampoline).
//
// Why assembly: a passed-through call may sleep in the original function for as long as the
// application likes (recv on an idle keep-alive connection), and detach must neither wait for
// it nor unload code it will return into. Each wrapper is a two-instruction stub into one
// common routine that asks liveio_libc_enter (C++) what to do, restores the argument registers
// and then calls the original with the application's return address popped (kept in the
// thread's PendingCall): the original runs on exactly the stack, and with exactly the
// registers, the application's direct call would have given it. Its return lands in
// liveio_libc_return, which hands the result to liveio_libc_exit (on_exit) and jumps back to
// the application. Detach redirects a call still in the original by storing the application's
// return address over liveio_libc_return in that stack slot (drain_libc_hooks): the call then
// returns to the application directly, with its result and errno, and only on_exit is lost.
// Calls not observed (liveio's own, no handler) jump to the original without a return path.
#include <dlfcn.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fcntl.h>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>

#include "hook/dispatcher.h"
#include "hook/got_hooks.h"

// X(name, id, nr, arg kinds, returns int): arg kinds per register, L 64-bit, I int, U unsigned
// int, Z not passed (0). `syscall` takes its number in the first register (nr = -1).
#define LIVEIO_LIBC_FUNCTIONS(X)                    \
    X(read, 0, SYS_read, "ILL", false)              \
    X(write, 1, SYS_write, "ILL", false)            \
    X(pread, 2, SYS_pread64, "ILLL", false)         \
    X(pread64, 3, SYS_pread64, "ILLL", false)       \
    X(pwrite, 4, SYS_pwrite64, "ILLL", false)       \
    X(pwrite64, 5, SYS_pwrite64, "ILLL", false)     \
    X(lseek, 6, SYS_lseek, "ILI", false)            \
    X(lseek64, 7, SYS_lseek, "ILI", false)          \
    X(open, 8, SYS_open, "LIU", true)               \
    X(open64, 9, SYS_open, "LIU", true)             \
    X(openat, 10, SYS_openat, "ILIU", true)         \
    X(close, 11, SYS_close, "I", true)              \
    X(fsync, 12, SYS_fsync, "I", true)              \
    X(ftruncate, 13, SYS_ftruncate, "IL", true)     \
    X(readv, 14, SYS_readv, "ILI", false)           \
    X(writev, 15, SYS_writev, "ILI", false)         \
    X(preadv, 16, SYS_preadv, "ILILZ", false)       \
    X(pwritev, 17, SYS_pwritev, "ILILZ", false)     \
    X(send, 18, SYS_sendto, "ILLIZZ", false)        \
    X(recv, 19, SYS_recvfrom, "ILLIZZ", false)      \
    X(sendto, 20, SYS_sendto, "ILLILU", false)      \
    X(recvfrom, 21, SYS_recvfrom, "ILLILL", false)  \
    X(sendmsg, 22, SYS_sendmsg, "ILI", false)       \
    X(recvmsg, 23, SYS_recvmsg, "ILI", false)       \
    X(epoll_wait, 24, SYS_epoll_wait, "ILII", true) \
    X(syscall, 25, -1, "LLLLLL", false)             \
    X(__open_2, 26, SYS_open, "LIZ", true)          \
    X(__open64_2, 27, SYS_open, "LIZ", true)        \
    X(accept, 28, SYS_accept, "ILL", true)          \
    X(accept4, 29, SYS_accept4, "ILLI", true)       \
    X(connect, 30, SYS_connect, "ILU", true)

#define LIVEIO_STR2(x) #x
#define LIVEIO_STR(x) LIVEIO_STR2(x)

// One stub per function and mechanism: r11 = mechanism * 64 + function id.
#define LIVEIO_THUNK_ASM(mech, mnum, name, id) \
    ".globl liveio_libc_" #mech "_" #name      \
    "\n"                                       \
    ".hidden liveio_libc_" #mech "_" #name     \
    "\n"                                       \
    ".type liveio_libc_" #mech "_" #name       \
    ", @function\n"                            \
    "liveio_libc_" #mech "_" #name             \
    ":\n"                                      \
    "    mov $(" #mnum " * 64 + " #id          \
    "), %r11d\n"                               \
    "    jmp liveio_libc_common\n"
#define LIVEIO_GOT_THUNK(name, id, nr, kinds, ret32) LIVEIO_THUNK_ASM(got, 0, name, id)
#define LIVEIO_INLINE_THUNK(name, id, nr, kinds, ret32) LIVEIO_THUNK_ASM(inline, 1, name, id)

static_assert(static_cast<int>(liveio::hook::Mechanism::Got) == 0 &&
              static_cast<int>(liveio::hook::Mechanism::Inline) == 1);

// Frame built by liveio_libc_common (struct ThunkFrame): key, the six argument registers, then
// the application's return address (the stack pointer at the wrapper's entry) and, above it,
// the seventh argument of syscall(2).
asm(R"(
    .pushsection liveio_libc_hook, "ax", @progbits
    .p2align 4
    .globl liveio_libc_common
    .hidden liveio_libc_common
    .type liveio_libc_common, @function
liveio_libc_common:
    push %r9
    push %r8
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r11
    mov %rsp, %rdi
    call liveio_libc_enter
    mov %rdx, %r11
    mov 8(%rsp), %rdi
    mov 16(%rsp), %rsi
    mov 24(%rsp), %rdx
    mov 32(%rsp), %rcx
    mov 40(%rsp), %r8
    mov 48(%rsp), %r9
    lea 56(%rsp), %rsp
    cmp $1, %eax
    je 1f
    jb 2f
    /* Not observed: the original returns to the application itself. al = 0 vector
       registers, for variadic originals. */
    xor %eax, %eax
    jmp *%r11
2:  /* Taken over by the handler: r11 is the result (errno already set). */
    mov %r11, %rax
    ret
1:  /* Observed: the application's return address is kept in its PendingCall; the original's
       return address takes its place on the stack. liveio_libc_calling counts the thread's
       calls in an original, changed right at the call and right at the return. */
    lea 8(%rsp), %rsp
    mov liveio_libc_calling@gottpoff(%rip), %rax
    addq $1, %fs:(%rax)
    xor %eax, %eax
    call *%r11
    .globl liveio_libc_return
    .hidden liveio_libc_return
liveio_libc_return:
    mov liveio_libc_calling@gottpoff(%rip), %r11
    subq $1, %fs:(%r11)
    push %rax
    sub $8, %rsp
    mov %rax, %rdi
    lea 16(%rsp), %rsi
    call liveio_libc_exit
    mov %rax, %r11
    add $8, %rsp
    pop %rax
    jmp *%r11
    .size liveio_libc_common, . - liveio_libc_common
)" LIVEIO_LIBC_FUNCTIONS(LIVEIO_GOT_THUNK) LIVEIO_LIBC_FUNCTIONS(LIVEIO_INLINE_THUNK) R"(
    .popsection
)");

// The calling thread's observed calls now in an original function (between the increment
// before the call and the decrement after its return, in liveio_libc_common). Equal to the
// thread's kept PendingCalls except while one is being kept or let go: then the kept calls do
// not describe the stack and the thread is not moved. Initial-exec: the assembly reaches it
// with two moves.
extern "C" __attribute__((visibility("hidden"),
                          tls_model("initial-exec"))) __thread uint64_t liveio_libc_calling;
__thread uint64_t liveio_libc_calling = 0;

extern "C" {
void liveio_libc_return();
#define LIVEIO_DECLARE_THUNKS(name, id, nr, kinds, ret32) \
    void liveio_libc_got_##name();                        \
    void liveio_libc_inline_##name();
LIVEIO_LIBC_FUNCTIONS(LIVEIO_DECLARE_THUNKS)
extern __attribute__((visibility("hidden"))) const uint8_t __start_liveio_libc_hook[];
extern __attribute__((visibility("hidden"))) const uint8_t __stop_liveio_libc_hook[];
}

namespace liveio::hook {
namespace {

constexpr int kFunctions = 31;
constexpr int kMechanisms = 2;

struct FunctionInfo {
    long nr;
    const char* kinds;
    bool returns_int;
};

constexpr FunctionInfo kInfo[kFunctions] = {
#define LIVEIO_INFO(name, id, nr, kinds, ret32) {nr, kinds, ret32},
    LIVEIO_LIBC_FUNCTIONS(LIVEIO_INFO)
#undef LIVEIO_INFO
};

// Where each wrapper finds its original function: for GOT the libc function; for inline hooks
// the trampoline while hooked, the libc function again after removal.
void* g_originals[kMechanisms][kFunctions] = {};

struct ThunkFrame {
    uint64_t key;
    uint64_t regs[6];
    uint64_t app_return;  // at the stack pointer the wrapper was entered with
    uint64_t stack_arg;   // syscall(2)'s seventh argument
};
static_assert(offsetof(ThunkFrame, app_return) == 56);

struct Action {
    uint64_t kind;  // 0 taken (value = result), 1 observed, 2 not observed (value = original)
    uint64_t value;
};

// A passed-through call in the original function, kept for its return.
struct PendingCall {
    uintptr_t slot;        // stack address holding liveio_libc_return
    uintptr_t app_return;  // what the application's call pushed there
    CallFrame frame;       // as on_enter left it
    uint32_t epoch;
    uint8_t mechanism;
    uint8_t function;
};
constexpr int kMaxPending = 8;  // nested observed calls (signal handlers calling hooked functions)

// Per thread, at the thread's dispatcher record index; written only by the thread itself
// (its fixup included), read by drain_libc_hooks.
struct alignas(64) ThreadCalls {
    std::atomic<pid_t> owner{0};
    std::atomic<int> depth{0};
    PendingCall calls[kMaxPending];
};
ThreadCalls g_threads[Dispatcher::kThreadRecords];

thread_local pid_t t_tid = 0;

ThreadCalls* own_calls() {
    const size_t i = Dispatcher::thread_index();
    if (i >= Dispatcher::kThreadRecords) return nullptr;
    if (t_tid == 0) t_tid = static_cast<pid_t>(raw_syscall(SYS_gettid));
    ThreadCalls& t = g_threads[i];
    if (t.owner.load(std::memory_order_relaxed) != t_tid) {  // record reused from an exited thread
        t.depth.store(0, std::memory_order_relaxed);
        t.owner.store(t_tid, std::memory_order_relaxed);
    }
    return &t;
}

long arg_value(char kind, uint64_t reg) {
    switch (kind) {
        case 'I': return static_cast<long>(static_cast<int32_t>(reg));
        case 'U': return static_cast<long>(static_cast<uint32_t>(reg));
        case 'L': return static_cast<long>(reg);
        default: return 0;
    }
}

SyscallCall describe(int id, const ThunkFrame* f) {
    const FunctionInfo& info = kInfo[id];
    SyscallCall call{info.nr, {}};
    if (info.nr < 0) {  // syscall(nr, a, b, c, d, e, f)
        call.nr = static_cast<long>(f->regs[0]);
        for (int i = 0; i < 5; ++i) call.args[i] = static_cast<long>(f->regs[i + 1]);
        call.args[5] = static_cast<long>(f->stack_arg);
        return call;
    }
    for (int i = 0; info.kinds[i] != '\0'; ++i) call.args[i] = arg_value(info.kinds[i], f->regs[i]);
    return call;
}

}  // namespace
}  // namespace liveio::hook

using liveio::hook::Action;
using liveio::hook::CallFrame;
using liveio::hook::Dispatcher;
using liveio::hook::Mechanism;
using liveio::hook::PendingCall;
using liveio::hook::SyscallCall;
using liveio::hook::SyscallResult;
using liveio::hook::ThreadCalls;
using liveio::hook::ThunkFrame;

// In the wrappers' section: drain_libc_hooks treats a thread whose instruction pointer lies
// there as on its way into or out of an original function (flatten keeps the dispatcher's
// code here too).
extern "C" __attribute__((visibility("hidden"), used, flatten, section("liveio_libc_hook"))) Action
liveio_libc_enter(ThunkFrame* f) {
    const auto mechanism = static_cast<Mechanism>(f->key / 64);
    const int id = static_cast<int>(f->key % 64);
    void* original = __atomic_load_n(&liveio::hook::g_originals[f->key / 64][id], __ATOMIC_ACQUIRE);
    // A hooked original tail-calling another hooked function (glibc's __open_2 jumps to open):
    // the application's call is already kept at this slot and its return already goes through
    // liveio_libc_return, so this one is the same call, not observed a second time. Keeping it
    // would overwrite the kept application return address with liveio_libc_return itself.
    if (f->app_return == reinterpret_cast<uint64_t>(&liveio_libc_return))
        return {2, reinterpret_cast<uint64_t>(original)};
    Dispatcher& d = Dispatcher::instance();
    uint64_t start = 0;
    liveio::hook::CallHandler* handler = d.begin_handler_call(mechanism, &start);
    if (handler == nullptr) return {2, reinterpret_cast<uint64_t>(original)};
    ThreadCalls* t = liveio::hook::own_calls();
    const int depth =
        t != nullptr ? t->depth.load(std::memory_order_relaxed) : liveio::hook::kMaxPending;
    if (depth == liveio::hook::kMaxPending) {  // no room to keep the call: not observed
        d.end_handler_call(mechanism);
        return {2, reinterpret_cast<uint64_t>(original)};
    }
    liveio::hook::CallFrame frame{liveio::hook::describe(id, f), 0, start, 0};
    const int caller_errno = errno;
    if (handler->on_enter(frame)) {
        handler->on_exit(frame);
        d.end_handler_call(mechanism);
        const SyscallResult result = frame.result;
        errno = result < 0 ? static_cast<int>(-result) : caller_errno;
        return {0, static_cast<uint64_t>(result < 0 ? -1 : result)};
    }
    const auto slot = reinterpret_cast<uintptr_t>(&f->app_return);
    // A call kept at this very slot was abandoned (longjmp out of its original): forget it and
    // everything after it.
    int top = depth;
    for (int i = 0; i < depth; ++i)
        if (t->calls[i].slot == slot) top = i;
    liveio_libc_calling -= static_cast<uint64_t>(depth - top);  // they never return
    t->calls[top] = {slot,
                     f->app_return,
                     frame,
                     d.epoch(mechanism),
                     static_cast<uint8_t>(mechanism),
                     static_cast<uint8_t>(id)};
    t->depth.store(top + 1, std::memory_order_relaxed);
    d.end_handler_call(mechanism);  // publishes the kept call (release)
    errno = caller_errno;
    return {1, reinterpret_cast<uint64_t>(original)};
}

extern "C" __attribute__((visibility("hidden"), used, flatten, section("liveio_libc_hook")))
uintptr_t
liveio_libc_exit(long ret, uintptr_t stack_after_return) {
    const int ret_errno = errno;
    ThreadCalls* t = liveio::hook::own_calls();
    const uintptr_t slot = stack_after_return - 8;
    int i = t->depth.load(std::memory_order_relaxed) - 1;
    while (i >= 0 && t->calls[i].slot != slot) --i;
    if (i < 0) __builtin_trap();  // only calls kept by liveio_libc_enter return here
    const PendingCall c = t->calls[i];
    // Calls kept after this one never returned (longjmp out of their original).
    liveio_libc_calling -= static_cast<uint64_t>(t->depth.load(std::memory_order_relaxed) - 1 - i);
    t->depth.store(i, std::memory_order_relaxed);
    const auto mechanism = static_cast<Mechanism>(c.mechanism);
    Dispatcher& d = Dispatcher::instance();
    if (liveio::hook::CallHandler* h = d.begin_handler_call(mechanism, nullptr)) {
        if (d.epoch(mechanism) == c.epoch) {
            // int-returning functions leave the upper half of rax undefined.
            const long value =
                liveio::hook::kInfo[c.function].returns_int ? static_cast<int32_t>(ret) : ret;
            liveio::hook::CallFrame frame = c.frame;
            frame.result = value == -1 ? -ret_errno : value;
            h->on_exit(frame);
        }
        d.end_handler_call(mechanism);
    }
    errno = ret_errno;
    return c.app_return;
}

namespace liveio::hook {
namespace {

bool in_wrappers(uintptr_t pc) {
    return pc >= reinterpret_cast<uintptr_t>(__start_liveio_libc_hook) &&
           pc < reinterpret_cast<uintptr_t>(__stop_liveio_libc_hook);
}

// One drain round's shared state with the parked threads' fixups (one world stop at a time).
struct DrainRound {
    Mechanism mechanism;
    ContextFixup extra;
    const void* extra_context;
    std::atomic<unsigned> moved{0};
    std::atomic<unsigned> busy{0};  // threads in the wrappers' code: not movable this round
};

// In a parked thread: its kept calls of the mechanism return to the application directly.
void move_out_of_originals(void* raw, ucontext_t* uc) {
    auto* round = static_cast<DrainRound*>(raw);
    if (round->extra != nullptr) round->extra(const_cast<void*>(round->extra_context), uc);
    // Between liveio_libc_enter and the call, or between the return and liveio_libc_exit: the
    // kept calls do not describe the stack yet (or any more), and the thread may hold an
    // original's address in a register. It leaves by itself.
    if (in_wrappers(static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]))) {
        round->busy.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    const size_t index = Dispatcher::thread_index();
    if (index >= Dispatcher::kThreadRecords) return;
    ThreadCalls& t = g_threads[index];
    const int depth = t.depth.load(std::memory_order_relaxed);
    if (depth == 0 ||
        t.owner.load(std::memory_order_relaxed) != static_cast<pid_t>(raw_syscall(SYS_gettid)))
        return;
    // A call being kept or let go (the thread may be in libc's errno or TLS code meanwhile).
    if (liveio_libc_calling != static_cast<uint64_t>(depth)) {
        round->busy.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    int kept = 0;
    for (int i = 0; i < depth; ++i) {
        PendingCall& c = t.calls[i];
        if (c.mechanism != static_cast<uint8_t>(round->mechanism)) {
            t.calls[kept++] = c;
            continue;
        }
        auto* slot = reinterpret_cast<uintptr_t*>(c.slot);
        // A slot not holding our return address any more belongs to a call abandoned by a
        // longjmp: nothing to redirect.
        if (*slot == reinterpret_cast<uintptr_t>(&liveio_libc_return)) {
            *slot = c.app_return;
            round->moved.fetch_add(1, std::memory_order_relaxed);
        }
    }
    liveio_libc_calling -= static_cast<uint64_t>(depth - kept);  // they return to the application
    t.depth.store(kept, std::memory_order_relaxed);
}

unsigned kept_calls(Mechanism mechanism) {
    unsigned n = 0;
    for (ThreadCalls& t : g_threads) {
        if (t.owner.load(std::memory_order_acquire) == 0) continue;
        const int depth = t.depth.load(std::memory_order_acquire);
        for (int i = 0; i < depth && i < kMaxPending; ++i)
            n += t.calls[i].mechanism == static_cast<uint8_t>(mechanism);
    }
    return n;
}

template <Mechanism M>
std::vector<LibcHook> table() {
    constexpr int m = static_cast<int>(M);
    std::vector<LibcHook> out;
#define LIVEIO_ENTRY(name, id, nr, kinds, ret32)                                              \
    out.push_back({#name,                                                                     \
                   reinterpret_cast<void*>(M == Mechanism::Got ? &liveio_libc_got_##name      \
                                                               : &liveio_libc_inline_##name), \
                   &g_originals[m][id]});
    LIVEIO_LIBC_FUNCTIONS(LIVEIO_ENTRY)
#undef LIVEIO_ENTRY
    return out;
}

}  // namespace

void* libc_function(const char* name) {
    // RTLD_NOLOAD: the handle of the libc already mapped; never loads a second one.
    static void* const libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    return libc != nullptr ? dlsym(libc, name) : nullptr;
}

const std::vector<LibcHook>& libc_hooks(Mechanism mechanism) {
    static const std::vector<LibcHook> got = table<Mechanism::Got>();
    static const std::vector<LibcHook> inl = table<Mechanism::Inline>();
    return mechanism == Mechanism::Inline ? inl : got;
}

const std::vector<std::string_view>& default_hooked_functions() {
    static const std::vector<std::string_view> names = {
        "read", "write", "pread", "pread64", "pwrite", "pwrite64", "lseek", "lseek64", "open",
        "open64", "__open_2", "__open64_2", "openat", "close", "fsync", "ftruncate", "readv",
        "writev", "preadv", "pwritev", "send", "recv", "sendto", "recvfrom", "accept", "accept4",
        "connect", "sendmsg", "recvmsg", "epoll_wait",
        // libc syscall(): how ClickHouse reaches the Linux AIO calls (io_submit, io_getevents).
        "syscall"};
    return names;
}

Result<UninstallReport> drain_libc_hooks(Mechanism mechanism, ContextFixup extra,
                                         const void* extra_context) {
    using Clock = std::chrono::steady_clock;
    UninstallReport report;
    Dispatcher& d = Dispatcher::instance();
    const auto started = Clock::now();
    d.clear_handler(mechanism);
    // Threads in handler code (on_enter/on_exit) finish by themselves; no thread waits in an
    // original function while marked inside.
    while (d.in_flight(mechanism) != 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    report.waited_ms = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
    // Now no new call is kept: every thread entering sees no handler. Rounds move the kept
    // ones out; a round where some thread is in the wrappers' code is followed by another.
    constexpr int kRounds = 200;
    for (int r = 0; r < kRounds; ++r) {
        const bool must_stop = kept_calls(mechanism) != 0 || extra != nullptr;
        if (!must_stop) return report;
        auto stopped = WorldStop::stop();
        if (!stopped) return stopped.error();
        ++report.world_stops;
        DrainRound round{mechanism, extra, extra_context};
        (*stopped)->resume(move_out_of_originals, &round);
        report.moved_out += round.moved.load();
        if (round.busy.load() == 0 && kept_calls(mechanism) == 0) return report;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return make_error(EBUSY, std::to_string(kept_calls(mechanism)) +
                                 " call(s) still on their way through the hooks after " +
                                 std::to_string(kRounds) + " world stops");
}

}  // namespace liveio::hook
