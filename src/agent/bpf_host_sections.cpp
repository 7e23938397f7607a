#include "agent/bpf_host_sections.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <string>

namespace liveio::agent {
namespace {

// Names the kernel gives a syscall's tracepoints where they differ from <asm/unistd_64.h>.
constexpr std::pair<const char*, const char*> kTracepointAliases[] = {
    {"newfstat", "fstat"}, {"newlstat", "lstat"},      {"newstat", "stat"},
    {"newuname", "uname"}, {"sendfile64", "sendfile"}, {"umount", "umount2"},
};

// "tracepoint/" or "tp/" stripped, or empty when neither.
std::string_view strip_tracepoint(std::string_view s) {
    for (std::string_view p : {"tracepoint/", "tp/"})
        if (s.starts_with(p)) return s.substr(p.size());
    return {};
}
std::string_view strip_raw_tracepoint(std::string_view s) {
    for (std::string_view p : {"raw_tracepoint/", "raw_tp/"})
        if (s.starts_with(p)) return s.substr(p.size());
    return {};
}

}  // namespace

long syscall_number(std::string_view name) {
    for (const auto& [alias, canonical] : kTracepointAliases)
        if (name == alias) name = canonical;
    return syscall_table_number(name);
}

std::string AttachPoint::describe() const {
    const char* name = nr >= 0 ? syscall_table_name(nr) : nullptr;
    const std::string sys = name ? name : "syscall_" + std::to_string(nr);
    switch (kind) {
        case AttachKind::SyscallEnter: return "sys_enter:" + sys;
        case AttachKind::SyscallExit: return "sys_exit:" + sys;
        case AttachKind::RawSyscallsEnter: return "raw_syscalls:sys_enter";
        case AttachKind::RawSyscallsExit: return "raw_syscalls:sys_exit";
        case AttachKind::RawTpEnter: return "raw_tracepoint:sys_enter";
        case AttachKind::RawTpExit: return "raw_tracepoint:sys_exit";
        case AttachKind::IoEnter: return "liveio/io_enter";
        case AttachKind::IoExit: return "liveio/io_exit";
        case AttachKind::IoComplete: return "liveio/io_complete";
        case AttachKind::Uprobe:
        case AttachKind::Uretprobe: {
            std::string s = std::string(kind == AttachKind::Uprobe ? "uprobe:" : "uretprobe:") +
                            object + ":" + function;
            if (offset) s += "+" + std::to_string(offset);
            return s;
        }
    }
    return "unknown";
}

bool is_attach_section(std::string_view s) {
    if (std::string_view t = strip_tracepoint(s); !t.empty())
        return t.starts_with("syscalls/") || t.starts_with("raw_syscalls/");
    if (!strip_raw_tracepoint(s).empty()) return true;
    return s.starts_with("liveio/") || s.starts_with("uprobe/") || s.starts_with("uretprobe/");
}

Result<AttachPoint> parse_attach_point(std::string_view section) {
    const std::string quoted = "section '" + std::string(section) + "'";
    AttachPoint p;
    if (std::string_view t = strip_tracepoint(section); !t.empty()) {
        if (t == "raw_syscalls/sys_enter") return AttachPoint{AttachKind::RawSyscallsEnter};
        if (t == "raw_syscalls/sys_exit") return AttachPoint{AttachKind::RawSyscallsExit};
        if (t.starts_with("syscalls/")) {
            t.remove_prefix(9);
            std::string_view name;
            if (t.starts_with("sys_enter_")) {
                p.kind = AttachKind::SyscallEnter;
                name = t.substr(10);
            } else if (t.starts_with("sys_exit_")) {
                p.kind = AttachKind::SyscallExit;
                name = t.substr(9);
            } else {
                return make_error(
                    EINVAL,
                    quoted + ": expected syscalls/sys_enter_NAME or syscalls/sys_exit_NAME");
            }
            p.nr = syscall_number(name);
            if (p.nr < 0)
                return make_error(
                    ENOENT, quoted + ": unknown syscall '" + std::string(name) + "' (x86-64)");
            if (p.nr >= kMaxSyscalls)
                return make_error(ERANGE, quoted + ": syscall number " + std::to_string(p.nr) +
                                              " is above the agent's table");
            return p;
        }
        return make_error(
            EOPNOTSUPP,
            quoted + ": only syscalls/* and raw_syscalls/* tracepoints exist in userspace");
    }
    if (std::string_view t = strip_raw_tracepoint(section); !t.empty()) {
        if (t == "sys_enter") return AttachPoint{AttachKind::RawTpEnter};
        if (t == "sys_exit") return AttachPoint{AttachKind::RawTpExit};
        return make_error(
            EOPNOTSUPP,
            quoted + ": only the sys_enter and sys_exit raw tracepoints exist in userspace");
    }
    if (section == "liveio/io_enter") return AttachPoint{AttachKind::IoEnter};
    if (section == "liveio/io_exit") return AttachPoint{AttachKind::IoExit};
    if (section == "liveio/io_complete") return AttachPoint{AttachKind::IoComplete};
    if (section.starts_with("liveio/"))
        return make_error(EOPNOTSUPP, quoted +
                                          ": liveio attach points are liveio/io_enter, "
                                          "liveio/io_exit and liveio/io_complete");
    for (auto [prefix, kind] : {std::pair{std::string_view("uprobe/"), AttachKind::Uprobe},
                                std::pair{std::string_view("uretprobe/"), AttachKind::Uretprobe}}) {
        if (!section.starts_with(prefix)) continue;
        std::string_view rest = section.substr(prefix.size());
        const size_t colon = rest.rfind(':');
        if (colon == std::string_view::npos || colon == 0 || colon + 1 == rest.size())
            return make_error(
                EINVAL, quoted + ": expected " + std::string(prefix) + "PATH:FUNCTION[+OFFSET]");
        p.kind = kind;
        p.object = std::string(rest.substr(0, colon));
        std::string_view fn = rest.substr(colon + 1);
        if (const size_t plus = fn.find('+'); plus != std::string_view::npos) {
            std::string_view off = fn.substr(plus + 1);
            int base = 10;
            if (off.starts_with("0x")) {
                off.remove_prefix(2);
                base = 16;
            }
            auto [end, ec] = std::from_chars(off.data(), off.data() + off.size(), p.offset, base);
            if (ec != std::errc() || end != off.data() + off.size() || off.empty())
                return make_error(
                    EINVAL, quoted + ": bad offset '" + std::string(fn.substr(plus + 1)) + "'");
            if (kind == AttachKind::Uretprobe && p.offset != 0)
                return make_error(
                    EINVAL, quoted + ": a uretprobe attaches to a function's entry (no offset)");
            fn = fn.substr(0, plus);
        }
        if (fn.empty()) return make_error(EINVAL, quoted + ": no function name");
        p.function = std::string(fn);
        return p;
    }
    return make_error(EOPNOTSUPP,
                      quoted +
                          ": not an attach point of the liveio agent (tracepoint/syscalls/*, "
                          "tracepoint/raw_syscalls/*, raw_tracepoint/sys_enter|sys_exit, "
                          "liveio/io_enter|io_exit, uprobe/*, uretprobe/*)");
}

}  // namespace liveio::agent
