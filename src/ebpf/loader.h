// Loading BPF ELF objects built with `clang -target bpf` (libbpf conventions) into Programs
// that the verifier and engines accept.
//
// What an object may contain:
//   - programs: functions in executable sections other than .text; the section name is the
//     SEC() name, which selects the context layout (context_for_section below);
//   - subprograms: functions in .text or in the program's own section, reached by bpf-to-bpf
//     calls (call src=1) or by address (lddw of a function, e.g. bpf_loop callbacks); each
//     program gets a private copy of every subprogram it reaches, appended after its own code;
//   - maps: BTF-defined in `.maps` (__uint/__type members), legacy `struct bpf_map_def` in
//     `maps`, and global data (.data*, .rodata*, .bss*) as one-element array maps whose value
//     is the section's contents;
//   - `license`: a NUL-terminated string, required unless OpenOptions::require_license is off.
// An object whose only code is in .text (hand-assembled objects, the bpf_conformance ELF
// writer) has its .text functions as programs.
// `const volatile` globals (.rodata) may be set through map(".rodata") before running: nothing
// freezes them in userspace.
// Maps are created when the object is opened and shared by every program of the object
// (Program::maps holds the ones a program references; imm of its map lddw indexes that list).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "ebpf/map.h"
#include "ebpf/program.h"

namespace liveio::ebpf {

// The context (r1) a program attached at `section` receives, by SEC() name:
//   tracepoint/syscalls/sys_enter_*, tp/syscalls/sys_enter_*,
//   tracepoint/raw_syscalls/sys_enter       64 bytes  struct trace_event_raw_sys_enter
//   tracepoint/syscalls/sys_exit_*, tp/..., tracepoint/raw_syscalls/sys_exit
//                                           24 bytes  struct trace_event_raw_sys_exit
//   raw_tracepoint/sys_enter|sys_exit, raw_tp/...
//                                           16 bytes  u64 args[2]: (struct pt_regs *, id|ret)
//   uprobe*, uretprobe*, kprobe*, kretprobe*, usdt*
//                                          168 bytes  struct pt_regs (x86-64)
//   liveio/io_enter, liveio/io_exit         88 bytes  struct liveio_io_ctx
//   (bpf/include/liveio/io_edge.h) liveio/io_complete                      64 bytes  struct
//   liveio_io_complete_ctx (liveio/policy.h) syscall                                 the size of
//   the struct the program's first argument
//                                           points to (from BTF), writable, as the kernel's
//                                           BPF_PROG_TYPE_SYSCALL context
// All read-only except `syscall`. Any other section gets size 0 (the program may not read its
// context): other tracepoints have per-event layouts, and the kernel rewrites field accesses of
// socket/xdp contexts (e.g. xdp_md.data into a pointer), which userspace does not reproduce.
ContextDescriptor context_for_section(std::string_view section);

// A map of an object with the name it has in the object (variable name for .maps and legacy
// maps, section name for global data).
struct ObjectMap {
    std::string name;
    std::string section;  // ".maps", "maps", ".data", ".rodata", ".bss", ...
    std::shared_ptr<Map> map;
};

struct OpenOptions {
    // The kernel loads objects without a license (as non-GPL); liveio refuses them by default
    // because a missing license section usually means a build mistake. The bpf_conformance
    // ELF writer emits none, hence the switch.
    bool require_license = true;
};

class Object {
public:
    // Opens the object at `path` (read whole) or held in `bytes` (copied).
    static Result<Object> open(const std::string& path, const OpenOptions& options = {});
    static Result<Object> open(std::span<const uint8_t> bytes, const OpenOptions& options = {});

    const std::string& license() const { return license_; }
    const std::vector<std::shared_ptr<const Program>>& programs() const { return programs_; }
    const std::vector<ObjectMap>& maps() const { return maps_; }

    // The program whose function name is `name`, else the only program in section `name`.
    Result<std::shared_ptr<const Program>> program(std::string_view name) const;
    // The map named `name` (see ObjectMap::name), or nullptr.
    std::shared_ptr<Map> map(std::string_view name) const;

private:
    std::string license_;
    std::vector<std::shared_ptr<const Program>> programs_;
    std::vector<ObjectMap> maps_;
    friend class ObjectBuilder;
};

}  // namespace liveio::ebpf
