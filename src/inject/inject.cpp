// ptrace injection: see inject.h for the protocol. This file holds the target model (maps,
// libc symbols read from disk), the safe-point check and the remote call; the all-threads stop
// and the waits on the target's threads are in stopped_process.cpp.
#include "inject/inject.h"
#include "inject/kill_point.h"
#include "inject/return_frame.h"
#include "inject/stopped_process.h"

#include <dirent.h>
#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include "base/errno_error.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <sstream>
#include <thread>
#include <vector>

namespace liveio::inject {
namespace {

// glibc's RTLD_NOW; spelled out so this file does not depend on <dlfcn.h> of the tracer.
constexpr long kRtldNow = 0x2;
constexpr uint64_t kRedZone = 128;
constexpr uint64_t kEflagsDirection = 1u << 10;

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

std::optional<std::string> read_text(const std::string& path) {
    std::ifstream in(path);
    if (!in) return std::nullopt;
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// ---------------------------------------------------------------------------------------------
// The target as seen through /proc.

struct Mapping {
    uint64_t start = 0, end = 0, offset = 0, inode = 0;
    bool exec = false;
    std::string path;
};

Result<std::vector<Mapping>> read_maps(pid_t pid) {
    std::string file = fmt::format("/proc/{}/maps", pid);
    // Opening maps is subject to a ptrace access check: tell "not permitted" from "gone".
    int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == EACCES || errno == EPERM) return seize_error(pid, EPERM);
        return make_error(ESRCH, fmt::format("process {} does not exist", pid));
    }
    close(fd);
    std::ifstream in(file);
    std::vector<Mapping> maps;
    std::string line;
    while (std::getline(in, line)) {
        Mapping m;
        char perms[8] = {};
        unsigned long long start, end, offset, inode;
        int path_pos = 0;
        if (sscanf(line.c_str(), "%llx-%llx %7s %llx %*s %llu %n", &start, &end, perms, &offset,
                   &inode, &path_pos) < 5)
            continue;
        m.start = start, m.end = end, m.offset = offset, m.inode = inode;
        m.exec = perms[2] == 'x';
        if (path_pos > 0 && path_pos <= static_cast<int>(line.size()))
            m.path = line.substr(path_pos);
        maps.push_back(std::move(m));
    }
    if (maps.empty())
        return make_error(ESRCH,
                          fmt::format("process {} has no mappings (exited or a zombie)", pid));
    return maps;
}

std::string basename_of(const std::string& path) {
    auto slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool is_libc(const std::string& path) {
    auto base = basename_of(path);
    return base == "libc.so.6" || (base.rfind("libc-", 0) == 0 && base.size() > 3 &&
                                   base.substr(base.size() - 3) == ".so");
}

bool is_dynamic_loader(const std::string& path) {
    auto base = basename_of(path);
    return base.rfind("ld-linux", 0) == 0 || base.rfind("ld-2.", 0) == 0 || base == "ld.so";
}

// A malloc that replaces libc's (ClickHouse links jemalloc): dlopen allocates through it, so
// a thread stopped anywhere inside it may hold the lock the call would need.
bool is_replacement_allocator(const std::string& path) {
    auto base = basename_of(path);
    for (const char* name :
         {"libjemalloc.so", "libtcmalloc.so", "libtcmalloc_minimal.so", "libmimalloc.so"})
        if (base.rfind(name, 0) == 0) return true;
    return false;
}

// Effective identity of the target, for "can it read the library" checks.
struct Credentials {
    uid_t fsuid = 0;
    gid_t fsgid = 0;
    std::vector<gid_t> groups;
};

Result<Credentials> read_credentials(pid_t pid) {
    auto status = read_text(fmt::format("/proc/{}/status", pid));
    if (!status) return make_error(ESRCH, fmt::format("process {} does not exist", pid));
    Credentials c;
    std::istringstream in(*status);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string key;
        fields >> key;
        if (key == "Uid:" || key == "Gid:") {
            unsigned long real, eff, saved, fs;
            fields >> real >> eff >> saved >> fs;
            (key == "Uid:" ? c.fsuid : c.fsgid) = static_cast<uid_t>(fs);
        } else if (key == "Groups:") {
            unsigned long g;
            while (fields >> g) c.groups.push_back(static_cast<gid_t>(g));
        }
    }
    return c;
}

// Mode-bit check as the kernel does it (ACLs are not consulted). `bits` is S_IRUSR (read a
// file) or S_IXUSR (search a directory); root may do both regardless of the mode.
bool permits(const struct stat& st, const Credentials& who, mode_t bits) {
    if (who.fsuid == 0) return true;
    if (st.st_uid == who.fsuid) return st.st_mode & bits;
    bool in_group = st.st_gid == who.fsgid ||
                    std::find(who.groups.begin(), who.groups.end(), st.st_gid) != who.groups.end();
    if (in_group) return st.st_mode & (bits >> 3);
    return st.st_mode & (bits >> 6);
}

// The library must exist in the target's mount namespace, be a regular file the target may
// read, and every directory on the way must be searchable by it.
Result<void> check_library_readable(pid_t pid, const std::string& path, const Credentials& who) {
    std::string root = fmt::format("/proc/{}/root", pid);
    struct stat st;
    if (stat((root + path).c_str(), &st) != 0) {
        // /proc/PID/root needs ptrace access; fall back to our own view of the file system.
        if (errno == EACCES || errno == EPERM) root.clear();
        if (stat((root + path).c_str(), &st) != 0) {
            // We cannot see it ourselves (e.g. an unprivileged injector): dlopen will tell.
            if (errno == EACCES) return {};
            return errno_error(errno, fmt::format("library {}", path));
        }
    }
    if (!S_ISREG(st.st_mode))
        return make_error(EINVAL, fmt::format("library {} is not a regular file", path));
    if (!permits(st, who, S_IRUSR))
        return make_error(
            EACCES,
            fmt::format(
                "library {} is not readable by process {} (fsuid {}, file owner {}, mode {:o})",
                path, pid, who.fsuid, st.st_uid, st.st_mode & 07777));
    for (size_t slash = path.find('/', 1); slash != std::string::npos;
         slash = path.find('/', slash + 1)) {
        std::string dir = path.substr(0, slash);
        struct stat ds;
        if (stat((root + dir).c_str(), &ds) == 0 && !permits(ds, who, S_IXUSR))
            return make_error(
                EACCES,
                fmt::format("library {}: directory {} is not searchable by process {} (fsuid {})",
                            path, dir, pid, who.fsuid));
    }
    return {};
}

Result<void> check_x86_64(pid_t pid) {
    std::string exe = fmt::format("/proc/{}/exe", pid);
    int fd = open(exe.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            if (access(fmt::format("/proc/{}", pid).c_str(), F_OK) != 0)
                return make_error(ESRCH, fmt::format("process {} does not exist", pid));
            return make_error(
                ESRCH,
                fmt::format("process {} has no executable (a kernel thread or a zombie)", pid));
        }
        // Unreadable executable (EACCES): PTRACE_SEIZE will report the permission problem.
        return {};
    }
    Elf64_Ehdr eh;
    ssize_t n = pread(fd, &eh, sizeof eh, 0);
    close(fd);
    if (n < static_cast<ssize_t>(EI_NIDENT + 4) || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
        return make_error(ENOEXEC, fmt::format("process {}: executable is not an ELF file", pid));
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64)
        return make_error(
            ENOEXEC, fmt::format("process {} is not an x86-64 process (ELF class {}, machine {})",
                                 pid, eh.e_ident[EI_CLASS], eh.e_machine));
    return {};
}

// ---------------------------------------------------------------------------------------------
// libc's dynamic symbols, read from the file on disk that the target has mapped.

struct FunctionRange {
    uint64_t start, end;  // file virtual addresses
    std::string name;
};

class LibcImage {
public:
    static Result<LibcImage> load(const std::string& file, uint64_t expected_inode) {
        int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return errno_error(errno, fmt::format("opening the target's libc {}", file));
        struct stat st;
        if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) < sizeof(Elf64_Ehdr)) {
            close(fd);
            return make_error(ENOEXEC, fmt::format("{}: not an ELF file", file));
        }
        if (expected_inode != 0 && st.st_ino != expected_inode) {
            close(fd);
            return make_error(
                ESTALE,
                fmt::format(
                    "{} on disk is not the file the target mapped (replaced since it started?)",
                    file));
        }
        void* p = mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (p == MAP_FAILED) return errno_error(errno, fmt::format("mapping {}", file));
        LibcImage image;
        auto parsed = image.parse(static_cast<const uint8_t*>(p), st.st_size, file);
        munmap(p, st.st_size);
        if (!parsed) return parsed.error();
        return image;
    }

    // File virtual address of a defined function, preferring the default symbol version.
    std::optional<uint64_t> find(const std::string& name) const {
        auto it = symbols_.find(name);
        if (it == symbols_.end()) return std::nullopt;
        return it->second;
    }
    // The exported function containing file virtual address `vaddr`, if any.
    const FunctionRange* function_at(uint64_t vaddr) const {
        auto it = std::upper_bound(ranges_.begin(), ranges_.end(), vaddr,
                                   [](uint64_t v, const FunctionRange& r) { return v < r.start; });
        if (it == ranges_.begin()) return nullptr;
        --it;
        return vaddr < it->end ? &*it : nullptr;
    }
    uint64_t first_load_vaddr() const { return first_load_vaddr_; }
    // __restore_rt and a result-store gadget (file virtual addresses), if libc has both.
    const std::optional<ReturnGadgets>& return_gadgets() const { return gadgets_; }

private:
    Result<void> parse(const uint8_t* data, size_t size, const std::string& file) {
        auto bad = [&](const char* why) {
            return make_error(ENOEXEC, fmt::format("{}: {}", file, why));
        };
        const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(data);
        if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64)
            return bad("not a 64-bit ELF file");
        if (eh->e_phoff + uint64_t(eh->e_phnum) * sizeof(Elf64_Phdr) > size)
            return bad("program headers out of bounds");
        if (eh->e_shoff + uint64_t(eh->e_shnum) * sizeof(Elf64_Shdr) > size || eh->e_shnum == 0)
            return bad("no section headers (cannot find the dynamic symbol table)");
        const auto* ph = reinterpret_cast<const Elf64_Phdr*>(data + eh->e_phoff);
        bool have_load = false;
        for (int i = 0; i < eh->e_phnum; ++i)
            if (ph[i].p_type == PT_LOAD && !have_load)
                first_load_vaddr_ = ph[i].p_vaddr & ~uint64_t(0xfff), have_load = true;
        if (!have_load) return bad("no PT_LOAD segment");
        for (int i = 0; i < eh->e_phnum && !gadgets_; ++i)
            if (ph[i].p_type == PT_LOAD && (ph[i].p_flags & PF_X) &&
                ph[i].p_offset + ph[i].p_filesz <= size)
                gadgets_ =
                    find_return_gadgets({data + ph[i].p_offset, ph[i].p_filesz}, ph[i].p_vaddr);
        const auto* sh = reinterpret_cast<const Elf64_Shdr*>(data + eh->e_shoff);
        const Elf64_Shdr *dynsym = nullptr, *versym = nullptr;
        for (int i = 0; i < eh->e_shnum; ++i) {
            if (sh[i].sh_type == SHT_DYNSYM) dynsym = &sh[i];
            if (sh[i].sh_type == SHT_GNU_versym) versym = &sh[i];
        }
        if (!dynsym || dynsym->sh_link >= eh->e_shnum) return bad("no dynamic symbol table");
        const Elf64_Shdr* strtab = &sh[dynsym->sh_link];
        if (dynsym->sh_offset + dynsym->sh_size > size ||
            strtab->sh_offset + strtab->sh_size > size)
            return bad("symbol table out of bounds");
        size_t count = dynsym->sh_size / sizeof(Elf64_Sym);
        if (versym && (versym->sh_offset + count * sizeof(Elf64_Half) > size)) versym = nullptr;
        const auto* syms = reinterpret_cast<const Elf64_Sym*>(data + dynsym->sh_offset);
        const char* strings = reinterpret_cast<const char*>(data + strtab->sh_offset);
        std::set<std::string> default_seen;
        for (size_t i = 1; i < count; ++i) {
            const Elf64_Sym& s = syms[i];
            if (ELF64_ST_TYPE(s.st_info) != STT_FUNC && ELF64_ST_TYPE(s.st_info) != STT_GNU_IFUNC)
                continue;
            if (s.st_shndx == SHN_UNDEF || s.st_name >= strtab->sh_size) continue;
            std::string name(strings + s.st_name,
                             strnlen(strings + s.st_name, strtab->sh_size - s.st_name));
            if (s.st_size > 0) ranges_.push_back({s.st_value, s.st_value + s.st_size, name});
            if (ELF64_ST_TYPE(s.st_info) != STT_FUNC)
                continue;  // IFUNC resolvers are not the function
            bool hidden =
                versym &&
                (reinterpret_cast<const Elf64_Half*>(data + versym->sh_offset)[i] & 0x8000);
            if (!hidden)
                default_seen.insert(name), symbols_[name] = s.st_value;
            else if (!default_seen.count(name))
                symbols_.emplace(name, s.st_value);
        }
        std::sort(ranges_.begin(), ranges_.end(),
                  [](const FunctionRange& a, const FunctionRange& b) { return a.start < b.start; });
        return {};
    }

    std::map<std::string, uint64_t> symbols_;
    std::vector<FunctionRange> ranges_;
    uint64_t first_load_vaddr_ = 0;
    std::optional<ReturnGadgets> gadgets_;
};

// Functions that hold the allocator's or the loader's locks while they run: a thread stopped
// inside one of them would make the injected dlopen deadlock.
bool holds_loader_or_allocator_locks(const std::string& name) {
    static constexpr std::array kNames = {"malloc",
                                          "free",
                                          "calloc",
                                          "realloc",
                                          "reallocarray",
                                          "memalign",
                                          "posix_memalign",
                                          "aligned_alloc",
                                          "valloc",
                                          "pvalloc",
                                          "cfree",
                                          "malloc_trim",
                                          "malloc_usable_size",
                                          "mallopt",
                                          "mallinfo",
                                          "mallinfo2",
                                          "malloc_stats",
                                          "malloc_info",
                                          "__libc_malloc",
                                          "__libc_free",
                                          "__libc_calloc",
                                          "__libc_realloc",
                                          "__libc_memalign",
                                          "__libc_valloc",
                                          "__libc_pvalloc",
                                          "fork",
                                          "__libc_fork",
                                          "_Fork",
                                          "dlopen",
                                          "dlmopen",
                                          "dlclose",
                                          "dlsym",
                                          "dlvsym",
                                          "dladdr",
                                          "dladdr1",
                                          "dlinfo",
                                          "dlerror",
                                          "dl_iterate_phdr",
                                          "__libc_dlopen_mode",
                                          "__libc_dlsym",
                                          "__libc_dlclose"};
    return std::find(kNames.begin(), kNames.end(), name) != kNames.end();
}

struct TargetModel {
    uint64_t libc_bias = 0;  // runtime address = file vaddr + bias
    uint64_t libc_exec_start = 0, libc_exec_end = 0;
    std::vector<std::pair<uint64_t, uint64_t>> loader_ranges;
    std::vector<std::pair<uint64_t, uint64_t>> allocator_ranges;  // a malloc replacing libc's
    // Code no thread may be executing for the stop to be safe (a library about to be unloaded).
    std::vector<std::pair<uint64_t, uint64_t>> keep_out_ranges;
    std::string keep_out_what;
    LibcImage libc;
    uint64_t dlopen = 0, dlclose = 0, dlsym = 0, dlerror = 0;
    // Runtime addresses of the tracer-less return path (return_frame.h); nullopt: calls
    // return to a non-canonical address the tracer must catch.
    std::optional<ReturnGadgets> gadgets;
};

Result<TargetModel> model_target(pid_t pid) {
    auto maps = read_maps(pid);
    if (!maps) return maps.error();
    TargetModel t;
    const Mapping* libc_first = nullptr;
    for (const auto& m : *maps) {
        if (is_libc(m.path)) {
            if (!libc_first || m.start < libc_first->start) libc_first = &m;
            if (m.exec) t.libc_exec_start = m.start, t.libc_exec_end = m.end;
        }
        if (is_dynamic_loader(m.path) && m.exec) t.loader_ranges.emplace_back(m.start, m.end);
        if (is_replacement_allocator(m.path) && m.exec)
            t.allocator_ranges.emplace_back(m.start, m.end);
    }
    if (!libc_first)
        return make_error(
            ENOENT,
            fmt::format(
                "process {} has no libc.so.6 mapped (statically linked?): no dlopen to call", pid));
    std::string path = libc_first->path;
    if (path.size() > 10 && path.substr(path.size() - 10) == " (deleted)")
        return make_error(ESTALE,
                          fmt::format("process {}: its libc {} was deleted from disk", pid, path));
    std::string in_ns = fmt::format("/proc/{}/root{}", pid, path);
    auto libc = LibcImage::load(access(in_ns.c_str(), R_OK) == 0 ? in_ns : path, libc_first->inode);
    if (!libc) return libc.error();
    t.libc = std::move(*libc);
    t.libc_bias = libc_first->start - libc_first->offset - t.libc.first_load_vaddr();
    auto resolve = [&](const char* name, uint64_t& out) -> Result<void> {
        auto v = t.libc.find(name);
        if (!v)
            return make_error(
                ENOENT, fmt::format("process {}: {} does not export {} (glibc older than 2.34?)",
                                    pid, path, name));
        out = *v + t.libc_bias;
        return {};
    };
    for (auto [name, slot] : {std::pair{"dlopen", &t.dlopen},
                              {"dlclose", &t.dlclose},
                              {"dlsym", &t.dlsym},
                              {"dlerror", &t.dlerror}})
        if (auto r = resolve(name, *slot); !r) return r.error();
    if (auto g = t.libc.return_gadgets()) {
        t.gadgets = *g;
        t.gadgets->restore_rt += t.libc_bias;
        t.gadgets->store += t.libc_bias;
    }
    return t;
}

// ---------------------------------------------------------------------------------------------
// Safe point and remote call.

bool in_ranges(const std::vector<std::pair<uint64_t, uint64_t>>& ranges, uint64_t ip) {
    return std::any_of(ranges.begin(), ranges.end(),
                       [&](auto& r) { return ip >= r.first && ip < r.second; });
}

// nullptr and a reason when the stop is unsafe; otherwise the thread to run the call on.
Tracee* pick_call_thread(StoppedProcess& stopped, const TargetModel& model, std::string& reason) {
    Tracee* choice = nullptr;
    for (auto& t : stopped.threads()) {
        uint64_t ip = t.regs.rip;
        if (in_ranges(model.keep_out_ranges, ip)) {
            reason =
                fmt::format("thread {} is executing {} (ip {:#x})", t.tid, model.keep_out_what, ip);
            return nullptr;
        }
        if (in_ranges(model.loader_ranges, ip)) {
            reason = fmt::format("thread {} is inside the dynamic loader (ip {:#x})", t.tid, ip);
            return nullptr;
        }
        if (in_ranges(model.allocator_ranges, ip)) {
            reason = fmt::format("thread {} is inside the process's malloc library (ip {:#x})",
                                 t.tid, ip);
            return nullptr;
        }
        bool in_libc = ip >= model.libc_exec_start && ip < model.libc_exec_end;
        const FunctionRange* fn = in_libc ? model.libc.function_at(ip - model.libc_bias) : nullptr;
        if (fn && holds_loader_or_allocator_locks(fn->name)) {
            reason = fmt::format("thread {} is inside {} (ip {:#x})", t.tid, fn->name, ip);
            return nullptr;
        }
        // A thread in libc code that is not an exported function (allocator internals, lock
        // waits) may hold libc locks itself: it must not be the one calling dlopen.
        bool eligible = t.pending_signal == 0 && (!in_libc || fn);
        if (eligible && (!choice || t.tid == stopped.pid())) choice = &t;
    }
    if (!choice) reason = "every thread is inside libc internals or has a signal pending";
    return choice;
}

Result<void> copy_to(pid_t tid, uint64_t addr, const void* data, size_t len) {
    iovec local{const_cast<void*>(data), len}, remote{reinterpret_cast<void*>(addr), len};
    ssize_t n = process_vm_writev(tid, &local, 1, &remote, 1, 0);
    if (n != static_cast<ssize_t>(len))
        return errno_error(n < 0 ? errno : EFAULT,
                           fmt::format("writing {} bytes at {:#x} in thread {}", len, addr, tid));
    return {};
}

Result<void> copy_from(pid_t tid, uint64_t addr, void* data, size_t len) {
    iovec local{data, len}, remote{reinterpret_cast<void*>(addr), len};
    ssize_t n = process_vm_readv(tid, &local, 1, &remote, 1, 0);
    if (n != static_cast<ssize_t>(len))
        return errno_error(n < 0 ? errno : EFAULT,
                           fmt::format("reading {} bytes at {:#x} in thread {}", len, addr, tid));
    return {};
}

// A NUL-terminated string of the target, read page by page (it may end just before an
// unmapped page).
std::string read_remote_string(pid_t tid, uint64_t addr, size_t max = 4096) {
    std::string out;
    while (out.size() < max) {
        char chunk[256];
        size_t to_page_end = 4096 - (addr & 4095);
        size_t n = std::min(sizeof chunk, to_page_end);
        if (!copy_from(tid, addr, chunk, n)) break;
        size_t len = strnlen(chunk, n);
        out.append(chunk, len);
        if (len < n) break;
        addr += n;
    }
    return out;
}

// Runs function calls on one stopped thread. With the target's libc offering the pieces of
// the tracer-less return (return_frame.h), each call returns through a kernel signal frame that
// restores the thread by itself; the tracer catches the frame's rt_sigreturn, takes the
// result and restores the thread exactly (skipping the rt_sigreturn), at every moment leaving
// the thread something correct to run if the tracer dies. Without them a call returns to a
// non-canonical address whose fault the tracer catches (a dead tracer then kills the target).
// A call that faults is undone by restoring the saved registers, extended state and stack.
class RemoteCaller {
public:
    RemoteCaller(StoppedProcess& stopped, const Tracee& thread, const TargetModel& model,
                 const InjectOptions& options, InjectStats* stats)
        : stopped_(stopped),
          thread_(thread),
          gadgets_(model.gadgets),
          options_(options),
          stats_(stats) {}

    Result<void> save() {
        xstate_.resize(64 * 1024);
        iovec iov{xstate_.data(), xstate_.size()};
        if (ptrace(PTRACE_GETREGSET, thread_.tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) ==
            0) {
            xstate_.resize(iov.iov_len);
            have_xstate_ = true;
        } else if (ptrace(PTRACE_GETFPREGS, thread_.tid, nullptr, &fpregs_) != 0) {
            return errno_error(errno, fmt::format("saving FP registers of thread {}", thread_.tid));
        }
        if (ptrace(PTRACE_GETSIGMASK, thread_.tid, sizeof sigmask_, &sigmask_) != 0)
            return errno_error(errno,
                               fmt::format("reading the signal mask of thread {}", thread_.tid));
        // Syscall stops come as SIGTRAP|0x80, told apart from a real SIGTRAP.
        if (ptrace(PTRACE_SETOPTIONS, thread_.tid, nullptr,
                   reinterpret_cast<void*>(long{PTRACE_O_TRACESYSGOOD})) != 0)
            return errno_error(errno,
                               fmt::format("setting ptrace options of thread {}", thread_.tid));
        return {};
    }

    // Undoes a call that faulted (the thread stopped on the fault's signal): registers,
    // extended state and the stack bytes the call used. Calls that returned restored the
    // thread themselves; an abandoned call is left to return through its frame.
    Result<void> restore() {
        if (state_ != State::faulted) return {};
        state_ = State::idle;
        Result<void> result = restore_stack();
        if (ptrace(PTRACE_SETREGS, thread_.tid, nullptr, &thread_.regs) != 0)
            result =
                errno_error(errno, fmt::format("restoring registers of thread {}", thread_.tid));
        if (auto r = restore_extended_state(); !r) result = r;
        return result;
    }

    ~RemoteCaller() { (void)restore(); }

    // Calls `function(args...)`; `data` (e.g. a string) is copied below the red zone first and
    // its address replaces every argument equal to kDataArg.
    static constexpr uint64_t kDataArg = ~uint64_t(0) - 0x1d47a;
    static constexpr uint64_t kReturnAddress = 0xdead'beef'1ee7'0000ull;  // non-canonical
    Result<uint64_t> call(uint64_t function, std::initializer_list<uint64_t> args,
                          const std::string& data = {}) {
        if (args.size() > 6) return make_error(E2BIG, "at most six arguments can be passed");
        if (state_ != State::idle)
            return make_error(EBUSY, "an earlier call on this thread did not finish");
        user_regs_struct regs = thread_.regs;
        if (gadgets_) {
            std::span<const uint8_t> fp =
                have_xstate_ ? std::span<const uint8_t>(xstate_)
                             : std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&fpregs_),
                                                        sizeof fpregs_);
            frame_ = build_call_frame(thread_.regs, fp, have_xstate_, sigmask_, *gadgets_, data);
            set_store_base(regs, gadgets_->base, frame_.result_slot);
        } else {
            frame_ = CallFrame{};
            frame_.end = thread_.regs.rsp - kRedZone;
            frame_.data_addr = (frame_.end - data.size() - 1) & ~uint64_t(15);
            frame_.entry_sp = frame_.data_addr - 8;  // rsp = 8 (mod 16) at function entry
            frame_.bytes.assign(frame_.end - frame_.entry_sp, 0);
            memcpy(frame_.bytes.data(), &kReturnAddress, sizeof kReturnAddress);
            memcpy(frame_.bytes.data() + 8, data.data(), data.size());
        }
        stack_backup_addr_ = frame_.entry_sp;
        stack_backup_.resize(frame_.bytes.size());
        if (auto r =
                copy_from(thread_.tid, frame_.entry_sp, stack_backup_.data(), stack_backup_.size());
            !r) {
            stack_backup_.clear();
            return r.error();
        }
        if (auto r =
                copy_to(thread_.tid, frame_.entry_sp, frame_.bytes.data(), frame_.bytes.size());
            !r)
            return r.error();

        unsigned long long* slots[] = {&regs.rdi, &regs.rsi, &regs.rdx,
                                       &regs.rcx, &regs.r8,  &regs.r9};
        size_t i = 0;
        for (uint64_t a : args) *slots[i++] = a == kDataArg ? frame_.data_addr : a;
        regs.rip = function;
        regs.rsp = frame_.entry_sp;
        regs.rax = 0;
        // Not in a system call any more: the kernel must not "restart" one when we resume.
        regs.orig_rax = ~uint64_t(0);
        regs.eflags &= ~kEflagsDirection;
        if (ptrace(PTRACE_SETREGS, thread_.tid, nullptr, &regs) != 0)
            return errno_error(errno, fmt::format("setting registers of thread {}", thread_.tid));
        state_ = State::running;
        stopped_.set_phase("during the injected call");
        auto start = Clock::now();
        auto r = run_until_return(start);
        if (r) stopped_.set_phase("while it was stopped");
        if (stats_) stats_->call_ms += ms_between(start, Clock::now());
        return r;
    }

private:
    enum class State { idle, running, faulted, abandoned };

    Result<void> restore_stack() {
        if (stack_backup_.empty()) return {};
        auto r =
            copy_to(thread_.tid, stack_backup_addr_, stack_backup_.data(), stack_backup_.size());
        stack_backup_.clear();
        return r;
    }

    Result<void> restore_extended_state() {
        if (have_xstate_) {
            iovec iov{xstate_.data(), xstate_.size()};
            if (ptrace(PTRACE_SETREGSET, thread_.tid, reinterpret_cast<void*>(NT_X86_XSTATE),
                       &iov) != 0)
                return errno_error(
                    errno, fmt::format("restoring extended registers of thread {}", thread_.tid));
        } else if (ptrace(PTRACE_SETFPREGS, thread_.tid, nullptr, &fpregs_) != 0) {
            return errno_error(errno,
                               fmt::format("restoring FP registers of thread {}", thread_.tid));
        }
        return {};
    }

    // The thread sits at the syscall-entry stop of the frame's rt_sigreturn: the result is in
    // its slot. The extended state goes back first, then one PTRACE_SETREGS both skips the
    // rt_sigreturn (orig_rax -1) and puts the registers back with the interrupted system call
    // set to restart (its restart block intact, unlike after a real rt_sigreturn); only then
    // are the frame's stack bytes restored. A tracer dying between any two steps leaves a
    // thread that still resumes correctly.
    Result<uint64_t> finish_returned_call(pid_t tid) {
        stopped_.set_phase("after the injected call returned");
        kill_point("inject-call-returned", stopped_.pid());
        uint64_t result = 0;
        if (auto r = copy_from(tid, frame_.result_slot, &result, sizeof result); !r)
            return r.error();
        if (auto r = restore_extended_state(); !r) return r.error();
        user_regs_struct resumed = resumed_registers(thread_.regs, /*restart_block_intact=*/true);
        if (ptrace(PTRACE_SETREGS, tid, nullptr, &resumed) != 0)
            return errno_error(errno, fmt::format("restoring registers of thread {}", tid));
        state_ = State::idle;
        if (auto r = restore_stack(); !r) return r.error();
        // Run to the skipped call's exit stop: the thread must be stopped to be detached.
        for (;;) {
            if (ptrace(PTRACE_SYSCALL, tid, nullptr, nullptr) != 0)
                return errno_error(errno, fmt::format("resuming thread {}", tid));
            auto waited = stopped_.wait_for(tid, "after the injected call returned");
            if (!waited) return waited.error();
            const int status = *waited;
            if (WIFEXITED(status) || WIFSIGNALED(status))
                return stopped_.death_error("after the injected call returned");
            if (WSTOPSIG(status) == (SIGTRAP | 0x80)) return result;
            // Nothing else can come before the exit stop; keep any signal for the thread.
            if ((status >> 16) == 0) {
                for (auto& t : stopped_.threads())
                    if (t.tid == tid) t.pending_signal = WSTOPSIG(status);
                return result;
            }
        }
    }

    bool is_frame_sigreturn(const user_regs_struct& now) const {
        return gadgets_ && static_cast<long>(now.orig_rax) == SYS_rt_sigreturn &&
               now.rsp == frame_.sigreturn_sp && now.rip == gadgets_->restore_rt + 9;
    }

    Result<uint64_t> run_until_return(Clock::time_point start) {
        pid_t tid = thread_.tid;
        int deliver = 0;
        // Syscall stops are only needed to catch the frame's rt_sigreturn.
        const auto resume = gadgets_ ? PTRACE_SYSCALL : PTRACE_CONT;
        bool first = true;
        for (;;) {
            if (ptrace(resume, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(deliver))) !=
                0)
                return errno_error(errno, fmt::format("resuming thread {}", tid));
            if (first) kill_point("inject-call-running", stopped_.pid()), first = false;
            deliver = 0;
            int status = 0;
            auto waited = wait_with_release(tid, status, start);
            if (!waited || WIFEXITED(status) || WIFSIGNALED(status)) {
                // The process died (or the call ended its thread): nothing left to restore.
                if (state_ == State::running) state_ = State::idle;
                stack_backup_.clear();
                if (!waited) return waited.error();
                return stopped_.death_error("during the injected call");
            }
            int sig = WSTOPSIG(status);
            if (sig == (SIGTRAP | 0x80)) {
                user_regs_struct now;
                if (ptrace(PTRACE_GETREGS, tid, nullptr, &now) != 0)
                    return errno_error(errno, "reading registers at a system call");
                if (is_frame_sigreturn(now)) return finish_returned_call(tid);
                continue;
            }
            if ((status >> 16) != 0) continue;  // an event stop (job control): just continue
            if (sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE) {
                user_regs_struct now;
                if (ptrace(PTRACE_GETREGS, tid, nullptr, &now) != 0)
                    return errno_error(errno, "reading registers after the call");
                state_ = State::faulted;
                if (!gadgets_ && sig == SIGSEGV && now.rsp == frame_.entry_sp) {
                    uint64_t top = 0;
                    if (copy_from(tid, now.rsp, &top, sizeof top) && top == kReturnAddress) {
                        if (auto r = restore(); !r) return r.error();
                        return now.rax;
                    }
                }
                return make_error(
                    EFAULT,
                    fmt::format("the injected call faulted in process {} (signal {} at ip {:#x}); "
                                "the thread's registers were restored",
                                stopped_.pid(), sig, now.rip));
            }
            deliver = sig;  // a signal for the application: let its handler run
        }
    }

    // Polls the call's thread so that a call that takes too long can release the other
    // threads, and be given up after call_timeout_ms (the thread is then left to finish it and
    // return through its frame; without the frame it could not survive that, so it is waited
    // for as long as the process lives). A process that dies meanwhile ends the wait (ESRCH).
    Result<void> wait_with_release(pid_t tid, int& status, Clock::time_point start) {
        constexpr const char* kDuring = "during the injected call";
        auto nap = std::chrono::microseconds(5);
        for (;;) {
            auto polled = stopped_.poll(tid, kDuring);
            if (!polled) return polled.error();
            if (*polled) {
                status = **polled;
                return {};
            }
            double elapsed = ms_between(start, Clock::now());
            if (!released_early_ && elapsed > options_.release_after_ms) {
                stopped_.release_all(tid);
                released_early_ = true;
                if (stats_) stats_->released_early = true;
            }
            if (gadgets_ && elapsed > options_.call_timeout_ms) {
                // Stop it (any stop will do) so that release_all() can detach it.
                ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr);
                auto stop = stopped_.wait_for(tid, kDuring);
                if (!stop && stop.error().code == ESRCH) return stop.error();
                state_ = State::abandoned;
                stack_backup_.clear();
                if (stop && WIFSTOPPED(*stop) && (*stop >> 16) == 0 &&
                    WSTOPSIG(*stop) != (SIGTRAP | 0x80))
                    for (auto& t : stopped_.threads())
                        if (t.tid == tid) t.pending_signal = WSTOPSIG(*stop);
                return make_error(ETIMEDOUT,
                                  fmt::format("the injected call did not return within {} ms in "
                                              "process {}; it was left to finish by itself{}",
                                              options_.call_timeout_ms, stopped_.pid(),
                                              stop ? "" : " (" + stop.error().message + ")"));
            }
            std::this_thread::sleep_for(nap);
            nap = std::min(nap * 2, std::chrono::microseconds(released_early_ ? 10000 : 200));
        }
    }

    StoppedProcess& stopped_;
    // A copy: a call that takes long releases the other threads (release_all(keep)), which
    // rebuilds the stopped thread list and would leave a reference into it dangling.
    const Tracee thread_;
    const std::optional<ReturnGadgets> gadgets_;
    const InjectOptions& options_;
    InjectStats* stats_;
    std::vector<uint8_t> xstate_;
    user_fpregs_struct fpregs_{};
    uint64_t sigmask_ = 0;
    bool have_xstate_ = false, released_early_ = false;
    State state_ = State::idle;
    CallFrame frame_;
    std::vector<uint8_t> stack_backup_;
    uint64_t stack_backup_addr_ = 0;
};

// Stops the process at a safe point and runs `body` with a caller on the chosen thread.
// `keep_out` (optional) adds the code no thread may be executing at the safe point.
template <typename Body>
auto with_target_stopped(pid_t pid, InjectStats* stats, const InjectOptions& options, Body body,
                         const std::function<Result<void>(TargetModel&)>& keep_out = {})
    -> decltype(body(std::declval<const TargetModel&>(), std::declval<RemoteCaller&>())) {
    InjectStats local;
    InjectStats& st = stats ? *stats : local;
    st = InjectStats{};
    if (pid <= 0) return make_error(EINVAL, fmt::format("invalid process id {}", pid));
    if (auto r = check_x86_64(pid); !r) return r.error();
    auto model = model_target(pid);
    if (!model) return model.error();
    if (keep_out)
        if (auto r = keep_out(*model); !r) return r.error();
    std::string reason;
    for (int attempt = 1; attempt <= std::max(1, options.max_attempts); ++attempt) {
        st.attempts = attempt;
        StoppedProcess stopped(pid, options);
        if (auto r = stopped.stop_all(); !r) return r.error();
        Tracee* thread = pick_call_thread(stopped, *model, reason);
        if (!thread) {
            stopped.release_all();
            st.total_pause_ms += stopped.pause_ms();
            // Let the threads leave the loader / allocator; back off a little more each time.
            std::this_thread::sleep_for(std::chrono::microseconds(200 * attempt));
            continue;
        }
        st.threads = static_cast<int>(stopped.threads().size());
        kill_point("inject-stopped", pid);
        auto result = [&]() -> decltype(body(*model, std::declval<RemoteCaller&>())) {
            RemoteCaller caller(stopped, *thread, *model, options, &st);
            if (auto r = caller.save(); !r) return r.error();
            auto out = body(*model, caller);
            if (auto r = caller.restore(); !r) return r.error();
            return out;
        }();
        // A ptrace request failing with ESRCH on a thread we hold stopped: it was killed, and
        // with it the whole process (e.g. SIGKILLed while stopped).
        if (!result && !stopped.death_reported() &&
            (result.error().code == ESRCH || stopped.dying(true)))
            result = stopped.death_error(stopped.phase());
        stopped.release_all();
        st.pause_ms = stopped.pause_ms();
        st.stop_ms = stopped.stop_ms();
        st.total_pause_ms += st.pause_ms;
        return result;
    }
    return make_error(EAGAIN, fmt::format("no safe point in process {} after {} attempts: {}", pid,
                                          st.attempts, reason));
}

std::string absolute_path(const std::string& path) {
    char buf[PATH_MAX];
    if (realpath(path.c_str(), buf)) return buf;
    if (!path.empty() && path[0] == '/') return path;
    if (getcwd(buf, sizeof buf)) return std::string(buf) + "/" + path;
    return path;
}

}  // namespace

Result<InjectedLibrary> inject_library(pid_t pid, const std::string& so_path, InjectStats* stats,
                                       const InjectOptions& options) {
    if (pid <= 0) return make_error(EINVAL, fmt::format("invalid process id {}", pid));
    if (so_path.empty()) return make_error(EINVAL, "empty library path");
    std::string path = absolute_path(so_path);
    auto creds = read_credentials(pid);
    if (!creds) return creds.error();
    if (auto r = check_library_readable(pid, path, *creds); !r) return r.error();
    return with_target_stopped(
        pid, stats, options,
        [&](const TargetModel& model, RemoteCaller& caller) -> Result<InjectedLibrary> {
            auto handle = caller.call(model.dlopen, {RemoteCaller::kDataArg, kRtldNow}, path);
            if (!handle) return handle.error();
            if (*handle == 0) {
                std::string text = "(no dlerror text)";
                if (auto msg = caller.call(model.dlerror, {}); msg && *msg != 0)
                    text = read_remote_string(pid, *msg);
                return make_error(ELIBBAD, fmt::format("dlopen(\"{}\") failed in process {}: {}",
                                                       path, pid, text));
            }
            return InjectedLibrary{pid, path, *handle};
        });
}

Result<void> unload_library(const InjectedLibrary& lib, InjectStats* stats,
                            const InjectOptions& options) {
    if (lib.handle == 0) return make_error(EINVAL, "library handle is null (not injected)");
    // The library's mappings are read once before stopping: only dlclose (ours) removes them,
    // and nothing else adds code the library could be reached through while it is detached.
    auto library_code = [&](TargetModel& model) -> Result<void> {
        auto maps = read_maps(lib.pid);
        if (!maps) return maps.error();
        const std::string deleted = lib.path + " (deleted)";  // rebuilt on disk since the load
        for (const auto& m : *maps) {
            bool own = m.path == lib.path || m.path == deleted;
            bool generated = options.anonymous_code_is_library && m.exec && m.path.empty();
            if (own || generated) model.keep_out_ranges.emplace_back(m.start, m.end);
        }
        model.keep_out_what = options.anonymous_code_is_library
                                  ? fmt::format("{} or code it generated", lib.path)
                                  : lib.path;
        return {};
    };
    return with_target_stopped(
        lib.pid, stats, options,
        [&](const TargetModel& model, RemoteCaller& caller) -> Result<void> {
            auto rc = caller.call(model.dlclose, {lib.handle});
            if (!rc) return rc.error();
            if (static_cast<int>(*rc) != 0) {
                std::string text = "(no dlerror text)";
                if (auto msg = caller.call(model.dlerror, {}); msg && *msg != 0)
                    text = read_remote_string(lib.pid, *msg);
                return make_error(ELIBBAD, fmt::format("dlclose({}) failed in process {}: {}",
                                                       lib.path, lib.pid, text));
            }
            return {};
        },
        library_code);
}

Result<long> call_in_target(const InjectedLibrary& lib, const std::string& symbol,
                            std::initializer_list<long> args, InjectStats* stats,
                            const InjectOptions& options) {
    if (lib.handle == 0) return make_error(EINVAL, "library handle is null (not injected)");
    if (args.size() > 6)
        return make_error(E2BIG, fmt::format("{}: at most six arguments can be passed", symbol));
    return with_target_stopped(
        lib.pid, stats, options,
        [&](const TargetModel& model, RemoteCaller& caller) -> Result<long> {
            auto address = caller.call(model.dlsym, {lib.handle, RemoteCaller::kDataArg}, symbol);
            if (!address) return address.error();
            if (*address == 0)
                return make_error(ENOENT, fmt::format("{} has no symbol {} in process {}", lib.path,
                                                      symbol, lib.pid));
            std::vector<uint64_t> a(args.begin(), args.end());
            a.resize(6, 0);
            auto rc = caller.call(*address, {a[0], a[1], a[2], a[3], a[4], a[5]});
            if (!rc) return rc.error();
            return static_cast<long>(*rc);
        });
}

}  // namespace liveio::inject
