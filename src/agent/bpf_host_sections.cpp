#include "agent/bpf_host_sections.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <string>

namespace liveio::agent {
namespace {

struct SyscallEntry {
    const char* name;
    long nr;
};

// x86-64 syscall numbers: <asm/unistd_64.h> of Debian 12 plus the syscalls added up to Linux
// 6.18 (uprobe, uretprobe, cachestat ... file_setattr), in number order.
constexpr SyscallEntry kSyscalls[] = {
    {"read", 0},
    {"write", 1},
    {"open", 2},
    {"close", 3},
    {"stat", 4},
    {"fstat", 5},
    {"lstat", 6},
    {"poll", 7},
    {"lseek", 8},
    {"mmap", 9},
    {"mprotect", 10},
    {"munmap", 11},
    {"brk", 12},
    {"rt_sigaction", 13},
    {"rt_sigprocmask", 14},
    {"rt_sigreturn", 15},
    {"ioctl", 16},
    {"pread64", 17},
    {"pwrite64", 18},
    {"readv", 19},
    {"writev", 20},
    {"access", 21},
    {"pipe", 22},
    {"select", 23},
    {"sched_yield", 24},
    {"mremap", 25},
    {"msync", 26},
    {"mincore", 27},
    {"madvise", 28},
    {"shmget", 29},
    {"shmat", 30},
    {"shmctl", 31},
    {"dup", 32},
    {"dup2", 33},
    {"pause", 34},
    {"nanosleep", 35},
    {"getitimer", 36},
    {"alarm", 37},
    {"setitimer", 38},
    {"getpid", 39},
    {"sendfile", 40},
    {"socket", 41},
    {"connect", 42},
    {"accept", 43},
    {"sendto", 44},
    {"recvfrom", 45},
    {"sendmsg", 46},
    {"recvmsg", 47},
    {"shutdown", 48},
    {"bind", 49},
    {"listen", 50},
    {"getsockname", 51},
    {"getpeername", 52},
    {"socketpair", 53},
    {"setsockopt", 54},
    {"getsockopt", 55},
    {"clone", 56},
    {"fork", 57},
    {"vfork", 58},
    {"execve", 59},
    {"exit", 60},
    {"wait4", 61},
    {"kill", 62},
    {"uname", 63},
    {"semget", 64},
    {"semop", 65},
    {"semctl", 66},
    {"shmdt", 67},
    {"msgget", 68},
    {"msgsnd", 69},
    {"msgrcv", 70},
    {"msgctl", 71},
    {"fcntl", 72},
    {"flock", 73},
    {"fsync", 74},
    {"fdatasync", 75},
    {"truncate", 76},
    {"ftruncate", 77},
    {"getdents", 78},
    {"getcwd", 79},
    {"chdir", 80},
    {"fchdir", 81},
    {"rename", 82},
    {"mkdir", 83},
    {"rmdir", 84},
    {"creat", 85},
    {"link", 86},
    {"unlink", 87},
    {"symlink", 88},
    {"readlink", 89},
    {"chmod", 90},
    {"fchmod", 91},
    {"chown", 92},
    {"fchown", 93},
    {"lchown", 94},
    {"umask", 95},
    {"gettimeofday", 96},
    {"getrlimit", 97},
    {"getrusage", 98},
    {"sysinfo", 99},
    {"times", 100},
    {"ptrace", 101},
    {"getuid", 102},
    {"syslog", 103},
    {"getgid", 104},
    {"setuid", 105},
    {"setgid", 106},
    {"geteuid", 107},
    {"getegid", 108},
    {"setpgid", 109},
    {"getppid", 110},
    {"getpgrp", 111},
    {"setsid", 112},
    {"setreuid", 113},
    {"setregid", 114},
    {"getgroups", 115},
    {"setgroups", 116},
    {"setresuid", 117},
    {"getresuid", 118},
    {"setresgid", 119},
    {"getresgid", 120},
    {"getpgid", 121},
    {"setfsuid", 122},
    {"setfsgid", 123},
    {"getsid", 124},
    {"capget", 125},
    {"capset", 126},
    {"rt_sigpending", 127},
    {"rt_sigtimedwait", 128},
    {"rt_sigqueueinfo", 129},
    {"rt_sigsuspend", 130},
    {"sigaltstack", 131},
    {"utime", 132},
    {"mknod", 133},
    {"uselib", 134},
    {"personality", 135},
    {"ustat", 136},
    {"statfs", 137},
    {"fstatfs", 138},
    {"sysfs", 139},
    {"getpriority", 140},
    {"setpriority", 141},
    {"sched_setparam", 142},
    {"sched_getparam", 143},
    {"sched_setscheduler", 144},
    {"sched_getscheduler", 145},
    {"sched_get_priority_max", 146},
    {"sched_get_priority_min", 147},
    {"sched_rr_get_interval", 148},
    {"mlock", 149},
    {"munlock", 150},
    {"mlockall", 151},
    {"munlockall", 152},
    {"vhangup", 153},
    {"modify_ldt", 154},
    {"pivot_root", 155},
    {"_sysctl", 156},
    {"prctl", 157},
    {"arch_prctl", 158},
    {"adjtimex", 159},
    {"setrlimit", 160},
    {"chroot", 161},
    {"sync", 162},
    {"acct", 163},
    {"settimeofday", 164},
    {"mount", 165},
    {"umount2", 166},
    {"swapon", 167},
    {"swapoff", 168},
    {"reboot", 169},
    {"sethostname", 170},
    {"setdomainname", 171},
    {"iopl", 172},
    {"ioperm", 173},
    {"create_module", 174},
    {"init_module", 175},
    {"delete_module", 176},
    {"get_kernel_syms", 177},
    {"query_module", 178},
    {"quotactl", 179},
    {"nfsservctl", 180},
    {"getpmsg", 181},
    {"putpmsg", 182},
    {"afs_syscall", 183},
    {"tuxcall", 184},
    {"security", 185},
    {"gettid", 186},
    {"readahead", 187},
    {"setxattr", 188},
    {"lsetxattr", 189},
    {"fsetxattr", 190},
    {"getxattr", 191},
    {"lgetxattr", 192},
    {"fgetxattr", 193},
    {"listxattr", 194},
    {"llistxattr", 195},
    {"flistxattr", 196},
    {"removexattr", 197},
    {"lremovexattr", 198},
    {"fremovexattr", 199},
    {"tkill", 200},
    {"time", 201},
    {"futex", 202},
    {"sched_setaffinity", 203},
    {"sched_getaffinity", 204},
    {"set_thread_area", 205},
    {"io_setup", 206},
    {"io_destroy", 207},
    {"io_getevents", 208},
    {"io_submit", 209},
    {"io_cancel", 210},
    {"get_thread_area", 211},
    {"lookup_dcookie", 212},
    {"epoll_create", 213},
    {"epoll_ctl_old", 214},
    {"epoll_wait_old", 215},
    {"remap_file_pages", 216},
    {"getdents64", 217},
    {"set_tid_address", 218},
    {"restart_syscall", 219},
    {"semtimedop", 220},
    {"fadvise64", 221},
    {"timer_create", 222},
    {"timer_settime", 223},
    {"timer_gettime", 224},
    {"timer_getoverrun", 225},
    {"timer_delete", 226},
    {"clock_settime", 227},
    {"clock_gettime", 228},
    {"clock_getres", 229},
    {"clock_nanosleep", 230},
    {"exit_group", 231},
    {"epoll_wait", 232},
    {"epoll_ctl", 233},
    {"tgkill", 234},
    {"utimes", 235},
    {"vserver", 236},
    {"mbind", 237},
    {"set_mempolicy", 238},
    {"get_mempolicy", 239},
    {"mq_open", 240},
    {"mq_unlink", 241},
    {"mq_timedsend", 242},
    {"mq_timedreceive", 243},
    {"mq_notify", 244},
    {"mq_getsetattr", 245},
    {"kexec_load", 246},
    {"waitid", 247},
    {"add_key", 248},
    {"request_key", 249},
    {"keyctl", 250},
    {"ioprio_set", 251},
    {"ioprio_get", 252},
    {"inotify_init", 253},
    {"inotify_add_watch", 254},
    {"inotify_rm_watch", 255},
    {"migrate_pages", 256},
    {"openat", 257},
    {"mkdirat", 258},
    {"mknodat", 259},
    {"fchownat", 260},
    {"futimesat", 261},
    {"newfstatat", 262},
    {"unlinkat", 263},
    {"renameat", 264},
    {"linkat", 265},
    {"symlinkat", 266},
    {"readlinkat", 267},
    {"fchmodat", 268},
    {"faccessat", 269},
    {"pselect6", 270},
    {"ppoll", 271},
    {"unshare", 272},
    {"set_robust_list", 273},
    {"get_robust_list", 274},
    {"splice", 275},
    {"tee", 276},
    {"sync_file_range", 277},
    {"vmsplice", 278},
    {"move_pages", 279},
    {"utimensat", 280},
    {"epoll_pwait", 281},
    {"signalfd", 282},
    {"timerfd_create", 283},
    {"eventfd", 284},
    {"fallocate", 285},
    {"timerfd_settime", 286},
    {"timerfd_gettime", 287},
    {"accept4", 288},
    {"signalfd4", 289},
    {"eventfd2", 290},
    {"epoll_create1", 291},
    {"dup3", 292},
    {"pipe2", 293},
    {"inotify_init1", 294},
    {"preadv", 295},
    {"pwritev", 296},
    {"rt_tgsigqueueinfo", 297},
    {"perf_event_open", 298},
    {"recvmmsg", 299},
    {"fanotify_init", 300},
    {"fanotify_mark", 301},
    {"prlimit64", 302},
    {"name_to_handle_at", 303},
    {"open_by_handle_at", 304},
    {"clock_adjtime", 305},
    {"syncfs", 306},
    {"sendmmsg", 307},
    {"setns", 308},
    {"getcpu", 309},
    {"process_vm_readv", 310},
    {"process_vm_writev", 311},
    {"kcmp", 312},
    {"finit_module", 313},
    {"sched_setattr", 314},
    {"sched_getattr", 315},
    {"renameat2", 316},
    {"seccomp", 317},
    {"getrandom", 318},
    {"memfd_create", 319},
    {"kexec_file_load", 320},
    {"bpf", 321},
    {"execveat", 322},
    {"userfaultfd", 323},
    {"membarrier", 324},
    {"mlock2", 325},
    {"copy_file_range", 326},
    {"preadv2", 327},
    {"pwritev2", 328},
    {"pkey_mprotect", 329},
    {"pkey_alloc", 330},
    {"pkey_free", 331},
    {"statx", 332},
    {"io_pgetevents", 333},
    {"rseq", 334},
    {"uprobe", 335},
    {"uretprobe", 336},
    {"pidfd_send_signal", 424},
    {"io_uring_setup", 425},
    {"io_uring_enter", 426},
    {"io_uring_register", 427},
    {"open_tree", 428},
    {"move_mount", 429},
    {"fsopen", 430},
    {"fsconfig", 431},
    {"fsmount", 432},
    {"fspick", 433},
    {"pidfd_open", 434},
    {"clone3", 435},
    {"close_range", 436},
    {"openat2", 437},
    {"pidfd_getfd", 438},
    {"faccessat2", 439},
    {"process_madvise", 440},
    {"epoll_pwait2", 441},
    {"mount_setattr", 442},
    {"quotactl_fd", 443},
    {"landlock_create_ruleset", 444},
    {"landlock_add_rule", 445},
    {"landlock_restrict_self", 446},
    {"memfd_secret", 447},
    {"process_mrelease", 448},
    {"futex_waitv", 449},
    {"set_mempolicy_home_node", 450},
    {"cachestat", 451},
    {"fchmodat2", 452},
    {"map_shadow_stack", 453},
    {"futex_wake", 454},
    {"futex_wait", 455},
    {"futex_requeue", 456},
    {"statmount", 457},
    {"listmount", 458},
    {"lsm_get_self_attr", 459},
    {"lsm_set_self_attr", 460},
    {"lsm_list_modules", 461},
    {"mseal", 462},
    {"setxattrat", 463},
    {"getxattrat", 464},
    {"listxattrat", 465},
    {"removexattrat", 466},
    {"open_tree_attr", 467},
    {"file_getattr", 468},
    {"file_setattr", 469},
};

// Names the kernel gives a syscall's tracepoints where they differ from <asm/unistd_64.h>.
constexpr std::pair<const char*, const char*> kTracepointAliases[] = {
    {"newfstat", "fstat"},
    {"newlstat", "lstat"},
    {"newstat", "stat"},
    {"newuname", "uname"},
    {"sendfile64", "sendfile"},
    {"umount", "umount2"},
};

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// "tracepoint/" or "tp/" stripped, or empty when neither.
std::string_view strip_tracepoint(std::string_view s) {
    for (std::string_view p : {"tracepoint/", "tp/"})
        if (starts_with(s, p)) return s.substr(p.size());
    return {};
}
std::string_view strip_raw_tracepoint(std::string_view s) {
    for (std::string_view p : {"raw_tracepoint/", "raw_tp/"})
        if (starts_with(s, p)) return s.substr(p.size());
    return {};
}

}  // namespace

long syscall_number(std::string_view name) {
    for (const auto& [alias, canonical] : kTracepointAliases)
        if (name == alias) name = canonical;
    for (const auto& e : kSyscalls)
        if (name == e.name) return e.nr;
    return -1;
}

const char* syscall_table_name(long nr) {
    // kSyscalls is sorted by number.
    auto it = std::lower_bound(std::begin(kSyscalls), std::end(kSyscalls), nr,
                               [](const SyscallEntry& e, long n) { return e.nr < n; });
    return it != std::end(kSyscalls) && it->nr == nr ? it->name : nullptr;
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
            std::string s = std::string(kind == AttachKind::Uprobe ? "uprobe:" : "uretprobe:") + object + ":" + function;
            if (offset) s += "+" + std::to_string(offset);
            return s;
        }
    }
    return "unknown";
}

bool is_attach_section(std::string_view s) {
    if (std::string_view t = strip_tracepoint(s); !t.empty())
        return starts_with(t, "syscalls/") || starts_with(t, "raw_syscalls/");
    if (!strip_raw_tracepoint(s).empty()) return true;
    return starts_with(s, "liveio/") || starts_with(s, "uprobe/") || starts_with(s, "uretprobe/");
}

Result<AttachPoint> parse_attach_point(std::string_view section) {
    const std::string quoted = "section '" + std::string(section) + "'";
    AttachPoint p;
    if (std::string_view t = strip_tracepoint(section); !t.empty()) {
        if (t == "raw_syscalls/sys_enter") return AttachPoint{AttachKind::RawSyscallsEnter};
        if (t == "raw_syscalls/sys_exit") return AttachPoint{AttachKind::RawSyscallsExit};
        if (starts_with(t, "syscalls/")) {
            t.remove_prefix(9);
            std::string_view name;
            if (starts_with(t, "sys_enter_")) {
                p.kind = AttachKind::SyscallEnter;
                name = t.substr(10);
            } else if (starts_with(t, "sys_exit_")) {
                p.kind = AttachKind::SyscallExit;
                name = t.substr(9);
            } else {
                return make_error(EINVAL, quoted + ": expected syscalls/sys_enter_NAME or syscalls/sys_exit_NAME");
            }
            p.nr = syscall_number(name);
            if (p.nr < 0) return make_error(ENOENT, quoted + ": unknown syscall '" + std::string(name) + "' (x86-64)");
            if (p.nr >= kMaxSyscalls)
                return make_error(ERANGE, quoted + ": syscall number " + std::to_string(p.nr) + " is above the agent's table");
            return p;
        }
        return make_error(EOPNOTSUPP, quoted + ": only syscalls/* and raw_syscalls/* tracepoints exist in userspace");
    }
    if (std::string_view t = strip_raw_tracepoint(section); !t.empty()) {
        if (t == "sys_enter") return AttachPoint{AttachKind::RawTpEnter};
        if (t == "sys_exit") return AttachPoint{AttachKind::RawTpExit};
        return make_error(EOPNOTSUPP, quoted + ": only the sys_enter and sys_exit raw tracepoints exist in userspace");
    }
    if (section == "liveio/io_enter") return AttachPoint{AttachKind::IoEnter};
    if (section == "liveio/io_exit") return AttachPoint{AttachKind::IoExit};
    if (section == "liveio/io_complete") return AttachPoint{AttachKind::IoComplete};
    if (starts_with(section, "liveio/"))
        return make_error(EOPNOTSUPP, quoted + ": liveio attach points are liveio/io_enter, liveio/io_exit and liveio/io_complete");
    for (auto [prefix, kind] : {std::pair{std::string_view("uprobe/"), AttachKind::Uprobe},
                                std::pair{std::string_view("uretprobe/"), AttachKind::Uretprobe}}) {
        if (!starts_with(section, prefix)) continue;
        std::string_view rest = section.substr(prefix.size());
        const size_t colon = rest.rfind(':');
        if (colon == std::string_view::npos || colon == 0 || colon + 1 == rest.size())
            return make_error(EINVAL, quoted + ": expected " + std::string(prefix) + "PATH:FUNCTION[+OFFSET]");
        p.kind = kind;
        p.object = std::string(rest.substr(0, colon));
        std::string_view fn = rest.substr(colon + 1);
        if (const size_t plus = fn.find('+'); plus != std::string_view::npos) {
            std::string_view off = fn.substr(plus + 1);
            int base = 10;
            if (starts_with(off, "0x")) {
                off.remove_prefix(2);
                base = 16;
            }
            auto [end, ec] = std::from_chars(off.data(), off.data() + off.size(), p.offset, base);
            if (ec != std::errc() || end != off.data() + off.size() || off.empty())
                return make_error(EINVAL, quoted + ": bad offset '" + std::string(fn.substr(plus + 1)) + "'");
            if (kind == AttachKind::Uretprobe && p.offset != 0)
                return make_error(EINVAL, quoted + ": a uretprobe attaches to a function's entry (no offset)");
            fn = fn.substr(0, plus);
        }
        if (fn.empty()) return make_error(EINVAL, quoted + ": no function name");
        p.function = std::string(fn);
        return p;
    }
    return make_error(EOPNOTSUPP, quoted + ": not an attach point of the liveio agent (tracepoint/syscalls/*, "
                                           "tracepoint/raw_syscalls/*, raw_tracepoint/sys_enter|sys_exit, "
                                           "liveio/io_enter|io_exit, uprobe/*, uretprobe/*)");
}

}  // namespace liveio::agent
