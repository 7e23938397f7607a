// Mechanism::SyscallRewrite: zpoline-style rewriting of every `syscall`/`sysenter` instruction.
//
// Each 2-byte `syscall` (0f 05) or `sysenter` (0f 34) found by disassembling the executable
// segments of every loaded object becomes `call *%rax` (ff d0). rax holds the syscall number,
// so the call lands in a nop sled mapped at virtual address 0 (hence vm.mmap_min_addr must be
// 0); the sled ends in a jump to liveio's assembly entry, which saves the registers the C++
// side may clobber, hands (nr, args) to Dispatcher::call_raw(Mechanism::SyscallRewrite) and
// returns the result in rax, exactly like the kernel.
//
// Not rewritten: the vDSO (it has no syscall instructions we may touch and is shared with the
// kernel), liveio's own object (identified by address range: its raw syscalls must stay raw),
// and code that is not part of a loaded object (JIT code). Objects dlopen'ed after install
// are rewritten only when SyscallRewriter::rewrite_new_objects() is called (liveio does not
// hook dlopen itself); until then their syscalls reach the kernel directly.
//
// Special syscalls, handled in the assembly entry without consulting the handler:
// - rt_sigreturn needs the signal frame at rsp: the pushed return address is dropped and the
//   call is made from the entry.
// - clone, clone3 and vfork may return on another stack (thread stacks) or on a stack the
//   child will overwrite (vfork): the return address pushed by `call` cannot be trusted
//   afterwards. They jump (registers untouched, rsp restored) to a per-site stub
//   `syscall; jmp site+2` that lives for the rest of the process, so parent and child both
//   continue at the instruction after the original one without touching the stack.
// - execve and execveat do not return when they succeed; made from a vfork child (which shares
//   the parent's memory) through the dispatcher they would leave its in-flight count raised
//   forever. They go through the per-site stubs too (they return on failure).
// - exit and exit_group never return: made directly, so no in-flight count is left behind.
//
// Limitations (inherent to 2-byte rewriting, as in zpoline): the `call` writes the return
// address at rsp-8, inside the red zone of the code that issued the syscall; a syscall number
// outside [0, 512) jumps past the sled and faults; without protection keys the exec-only page 0
// is readable while installed, so a null-pointer read returns sled bytes instead of faulting
// (uninstall unmaps page 0 again, see release_rewrite_memory). The entry saves
// the general registers and xmm0-15; the upper halves of ymm/zmm registers and x87 state are
// not preserved across a hooked syscall if the handler uses them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/result.h"
#include "hook/dispatch.h"
#include "hook/interceptor.h"

namespace liveio::hook {

// Fails with EPERM and a message naming the sysctl unless /proc/sys/vm/mmap_min_addr is 0.
Result<void> check_mmap_min_addr();

// The syscall-class instructions in `size` bytes of code that runs at `runtime_address`, by
// linear-sweep disassembly that resynchronises after undecodable bytes and at every address
// in `function_starts` (sorted; function entry points known from symbols). Returns the
// runtime addresses of the instructions.
std::vector<uintptr_t> find_syscall_instructions(
    const uint8_t* code, size_t size, uintptr_t runtime_address,
    const std::vector<uintptr_t>& function_starts = {});

// Syscall numbers that land in the trampoline's sled; larger ones are not supported.
inline constexpr size_t kTrampolineEntries = 512;

// What the sled at address 0 leads to: liveio's entry while installed; after uninstall, back
// to the restored instruction (see SyscallRewriter::uninstall).
enum class TrampolineMode { Active, Retired };

// The code mapped at address 0: any entry below kTrampolineEntries reaches a jump to `entry`
// (Active) or the retired tail (exposed for tests, which follow every entry with a
// disassembler).
std::vector<uint8_t> trampoline_code(uint64_t entry, TrampolineMode mode = TrampolineMode::Active);

// Maps `size` bytes of `code` (at most a page) execute-only at address 0, failing with EEXIST
// when page 0 is already mapped. The copy never depends on where `code` lies (exposed for
// tests, which place it at every alignment and unmap it again).
Result<void> map_page_zero(const uint8_t* code, size_t size);

struct RewrittenSite {
    uintptr_t address;
    uint8_t original[2];
    std::string object;  // path of the loaded object, or "[main]"
};

class SyscallRewriter {
public:
    // Maps the trampoline at address 0, attaches `handler` to the dispatcher and rewrites the
    // syscall instructions of every loaded object, or only of `objects` (path suffixes or
    // kMainProgram, as InterceptOptions::objects), while all other threads are stopped.
    static Result<std::unique_ptr<SyscallRewriter>> install(
        CallHandler* handler, const std::vector<std::string>& objects = {});
    ~SyscallRewriter();
    SyscallRewriter(const SyscallRewriter&) = delete;
    SyscallRewriter& operator=(const SyscallRewriter&) = delete;

    // Restores every rewritten byte (giving the pages back to their files) and retires the
    // trampoline (threads stopped), then detaches the handler once no thread is inside it,
    // moving threads that sleep in calls made for them out. Finally page 0 and the stubs are
    // unmapped (release_rewrite_memory). Page 0 stays mapped, retired, only while a thread that
    // a signal interrupted inside the sled may return there when its handler ends; the retired
    // sled sends it to the restored instruction without touching liveio's code (which may be
    // unloaded by then). The next install, by this or another copy of liveio, reuses it.
    Result<void> uninstall();
    // Rewrites objects loaded (dlopen) since install, or since the last call; returns how many
    // sites were added. Objects loaded later are otherwise not rewritten: their syscalls reach
    // the kernel directly. (Objects unloaded meanwhile are simply skipped by uninstall.)
    Result<size_t> rewrite_new_objects();
    bool installed() const { return installed_; }
    const UninstallReport& last_uninstall() const { return report_; }
    const std::vector<RewrittenSite>& sites() const { return sites_; }

    struct Segment;  // an executable segment of a loaded object (syscall_rewrite.cpp)

private:
    struct Batch;
    SyscallRewriter() = default;
    Result<Batch> prepare(const std::vector<Segment>& segments);
    Result<void> apply(Batch& batch);

    std::vector<std::string> objects_;                    // the install's object filter
    std::vector<std::pair<uintptr_t, size_t>> segments_;  // executable segments scanned
    std::vector<RewrittenSite> sites_;
    UninstallReport report_;
    bool installed_ = false;
};

// After uninstall: unmaps page 0 and the stubs once a world stop proves no thread can reach
// them (syscall_rewrite_release.cpp); page 0 is kept, retired, only when a signal frame still
// returns into it (named in report.kept).
Result<void> release_rewrite_memory(UninstallReport& report);

// Interceptor::install(Mechanism::SyscallRewrite).
Result<std::unique_ptr<Interceptor>> install_syscall_rewrite(const InterceptOptions& options,
                                                             CallHandler* handler);

}  // namespace liveio::hook
