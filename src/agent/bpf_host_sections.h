// Where a BPF program of an object runs in the target, from its SEC() name (libbpf's
// conventions), and the x86-64 syscall numbering the kernel's syscall tracepoints use.
//
//   tracepoint/syscalls/sys_enter_NAME, sys_exit_NAME   (also tp/...)   one syscall
//   tracepoint/raw_syscalls/sys_enter, sys_exit         (also tp/...)   every syscall
//   raw_tracepoint/sys_enter, sys_exit                  (also raw_tp/...) every syscall
//   liveio/io_enter, liveio/io_exit                                     the I/O syscalls
//   liveio/io_complete       a policy's completion edge (run by src/policy, never attached)
//   uprobe/PATH:FUNCTION[+OFFSET], uretprobe/PATH:FUNCTION              a function
//
// NAME is a syscall name as <asm/unistd_64.h> spells it (pread64) or as the kernel names its
// tracepoint (newfstat, sendfile64).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/result.h"
#include "base/syscall_table.h"

namespace liveio::agent {

// Syscall numbers below this bound have per-syscall attachment lists (x86-64 has ~470).
inline constexpr long kMaxSyscalls = 512;

// The x86-64 number of syscall `name` (tracepoint spellings such as "newstat" included), or
// -1 when unknown. Names of numbers: syscall_table_name (base/syscall_table.h).
long syscall_number(std::string_view name);

enum class AttachKind {
    SyscallEnter,      // tracepoint/syscalls/sys_enter_NAME
    SyscallExit,       // tracepoint/syscalls/sys_exit_NAME
    RawSyscallsEnter,  // tracepoint/raw_syscalls/sys_enter
    RawSyscallsExit,   // tracepoint/raw_syscalls/sys_exit
    RawTpEnter,        // raw_tracepoint/sys_enter
    RawTpExit,         // raw_tracepoint/sys_exit
    IoEnter,           // liveio/io_enter
    IoExit,            // liveio/io_exit
    IoComplete,        // liveio/io_complete: run by the policy runtime when a read completes
    Uprobe,            // uprobe/PATH:FUNCTION
    Uretprobe,         // uretprobe/PATH:FUNCTION
};

struct AttachPoint {
    AttachKind kind = AttachKind::IoExit;
    long nr = -1;          // SyscallEnter/SyscallExit: the syscall
    std::string object;    // uprobes: the object's path as written (libc.so.6, /abs/path, ...)
    std::string function;  // uprobes: the symbol
    uint64_t offset = 0;   // uprobes: bytes past the symbol
    // Human text for `bpf.load`/`bpf.list`: "sys_exit:pread64", "liveio/io_exit",
    // "uprobe:libc.so.6:read", ...
    std::string describe() const;
};

// Whether `section` names an attach point this agent knows (without validating the rest).
bool is_attach_section(std::string_view section);
// Parses a section; errors name the section and what is wrong (unknown syscall, missing
// function, unsupported kind).
Result<AttachPoint> parse_attach_point(std::string_view section);

// The address a uprobe/uretprobe attach point names in this process: the loaded object
// matching `object` (exact or real path, or file name without a slash), `function` from its
// dynamic symbols or, for local functions, its .symtab; plus `offset`.
Result<void*> resolve_uprobe_target(const AttachPoint& point);

}  // namespace liveio::agent
