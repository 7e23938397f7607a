#include "agent/bpf_host.h"

#include <asm/ptrace.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <new>

#include "agent/bpf_host_io.h"
#include "agent/bpf_host_socket.h"
#include "hook/dispatcher.h"
#include "liveio/io_edge.h"
#include "liveio/policy.h"

namespace liveio::agent {
namespace {

// Per-thread state of the hooked call path. Initial-exec TLS: the agent is dlopen'ed, and a
// general-dynamic thread_local would be reached through __tls_get_addr, which allocates on a
// thread's first use -- possibly from inside a hooked malloc (see src/agent/CMakeLists.txt).
// Zero-initialized plain data, so no TLS constructor runs either.
struct ThreadState {
    AgentReadSections::ThreadCache sections;
    pid_t tid;
    pid_t tid_pid;
    // The host's tracked file positions while its edge runs programs on this thread (null
    // when positions are not tracked): liveio_file_pos answers from them.
    FdClassCache* positions;
};
__attribute__((tls_model("initial-exec"))) thread_local ThreadState t_thread;

// struct trace_event_raw_sys_enter / _sys_exit (and the per-syscall tracepoints, whose
// int __syscall_nr at 8 is the low half of `nr` here): the format files under
// /sys/kernel/tracing/events/{syscalls,raw_syscalls}/.
struct TracepointCtx {
    uint16_t common_type;
    uint8_t common_flags;
    uint8_t common_preempt_count;
    int32_t common_pid;
    int64_t nr;
    uint64_t args[6];  // sys_exit: args[0] is ret
};
static_assert(sizeof(TracepointCtx) == 64);
constexpr size_t kSysExitCtxSize = 24;

void fill_tracepoint(TracepointCtx& c, pid_t tid, const hook::SyscallCall& call) {
    c = {};
    c.common_pid = tid;
    c.nr = call.nr;
}

void fill_regs(pt_regs& r, const hook::SyscallCall& call, long ax) {
    r = {};
    r.rdi = static_cast<unsigned long>(call.args[0]);
    r.rsi = static_cast<unsigned long>(call.args[1]);
    r.rdx = static_cast<unsigned long>(call.args[2]);
    r.r10 = static_cast<unsigned long>(call.args[3]);
    r.r8 = static_cast<unsigned long>(call.args[4]);
    r.r9 = static_cast<unsigned long>(call.args[5]);
    r.orig_rax = static_cast<unsigned long>(call.nr);
    r.rax = static_cast<unsigned long>(ax);
}

// The path a successful open/openat/openat2/creat named (the kernel has read it: mapped);
// null for other calls.
const char* opened_path(const hook::SyscallCall& call) {
    switch (call.nr) {
        case SYS_open:
        case SYS_creat: return reinterpret_cast<const char*>(call.args[0]);
        case SYS_openat:
        case SYS_openat2: return reinterpret_cast<const char*>(call.args[1]);
        default: return nullptr;
    }
}

void fill_io(liveio_io_ctx& io, const hook::SyscallCall& call, pid_t tid, bool exit, long result,
             uint64_t start, uint64_t now, FdClassCache& fds) {
    const IoShape s = io_shape(call.nr);
    io = {};
    io.size = sizeof io;
    io.tid = static_cast<uint32_t>(tid);
    io.nr = static_cast<uint64_t>(call.nr);
    io.fd = s.fd_arg >= 0 ? static_cast<int>(call.args[s.fd_arg])
                          : (exit && s.fd_event && result >= 0 ? result : -1);
    io.offset = s.offset_arg >= 0 ? call.args[s.offset_arg] : -1;
    const bool done = exit && result >= 0;
    switch (s.count) {
        case IoShape::kNoCount: break;
        case IoShape::kCountArg: io.count = static_cast<uint64_t>(call.args[s.count_arg]); break;
        case IoShape::kCountIov:
            io.count = done ? iovec_bytes(call.args[1], call.args[s.count_arg])
                            : iovec_bytes_checked(call.args[1], call.args[s.count_arg]);
            break;
        case IoShape::kCountMsg:
            if (done && call.args[s.count_arg] != 0) {
                const auto* msg = reinterpret_cast<const msghdr*>(call.args[s.count_arg]);
                io.count = iovec_bytes(reinterpret_cast<long>(msg->msg_iov),
                                       static_cast<long>(msg->msg_iovlen));
            }
            break;
    }
    io.result = exit ? result : 0;
    io.start_ns = start;
    io.latency_ns = exit && now > start ? now - start : 0;  // re-anchoring may step back a little
    io.direction = s.direction;
    if (io.fd >= 0) {
        // A closed descriptor cannot be classified any more: only what was cached counts.
        const FdInfo info =
            call.nr == SYS_close && exit
                ? fds.peek(static_cast<int>(io.fd))
                : fds.get(static_cast<int>(io.fd), exit ? opened_path(call) : nullptr);
        io.file_class = info.file_class;
        io.file_id = info.file_id;
    }
}

void invalidate_fds(FdClassCache& fds, const hook::SyscallCall& call, long result) {
    switch (call.nr) {
        case SYS_close: fds.invalidate(static_cast<int>(call.args[0])); return;
        case SYS_pipe:
        case SYS_pipe2:
        case SYS_socketpair: {
            if (result != 0) return;
            const int* pair =
                reinterpret_cast<const int*>(call.args[call.nr == SYS_socketpair ? 3 : 0]);
            fds.invalidate(pair[0]);
            fds.invalidate(pair[1]);
            return;
        }
        case SYS_fcntl:
            if (call.args[1] != F_DUPFD && call.args[1] != F_DUPFD_CLOEXEC) return;
            break;
        default: break;
    }
    if (result >= 0 && result <= INT32_MAX) fds.invalidate(static_cast<int>(result));
}

// bpf_get_current_pid_tgid from the calling thread's cache: the standard helper makes two
// syscalls (getpid, gettid) per call, which kernel-style programs pairing enter and exit by
// pid_tgid pay twice per hooked call. Programs run by the host run after current_tid()
// refreshed the cache for this thread and process (see pid_page_); elsewhere the cache is
// empty and the helper asks the kernel.
uint64_t cached_pid_tgid(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ebpf::ExecEnv*) {
    const ThreadState& ts = t_thread;
    if (ts.tid_pid == 0)
        return static_cast<uint64_t>(hook::raw_syscall(SYS_getpid)) << 32 |
               static_cast<uint32_t>(hook::raw_syscall(SYS_gettid));
    return static_cast<uint64_t>(static_cast<uint32_t>(ts.tid_pid)) << 32 |
           static_cast<uint32_t>(ts.tid);
}

// liveio_file_pos from the position the host tracked for the descriptor (see
// BpfHost::track_positions_), else lseek(fd, 0, SEEK_CUR), which is then recorded.
// The file position of `fd`: the one tracked in `positions` (null: positions not tracked), else
// lseek(fd, 0, SEEK_CUR), which is then recorded there.
long file_position(FdClassCache* positions, int fd) {
    if (positions != nullptr)
        if (const int64_t pos = positions->position(fd); pos >= 0) return static_cast<long>(pos);
    const long pos = hook::raw_syscall(SYS_lseek, fd, 0, SEEK_CUR);
    if (positions != nullptr && pos >= 0) positions->set_position(fd, pos);
    return pos;
}

uint64_t tracked_file_pos(uint64_t fd, uint64_t, uint64_t, uint64_t, uint64_t, ebpf::ExecEnv*) {
    return static_cast<uint64_t>(file_position(t_thread.positions, static_cast<int>(fd)));
}

ebpf::HelperTable host_helpers() {
    ebpf::HelperTable t = ebpf::HelperTable::standard();
    // The policy helpers answer -EPERM to programs of no policy (liveio/policy.h); the IDs
    // are free in a fresh table, so this cannot fail.
    (void)policy::Runtime::add_helpers(t);
    (void)add_socket_helpers(t);
    if (const auto* p = t.find(ebpf::helper_id::kGetCurrentPidTgid)) {
        auto cached = *p;
        cached.fn = cached_pid_tgid;
        t.add(ebpf::helper_id::kGetCurrentPidTgid, cached);
    }
    if (const auto* p = t.find(LIVEIO_HELPER_FILE_POS)) {
        auto tracked = *p;
        tracked.fn = tracked_file_pos;
        t.add(LIVEIO_HELPER_FILE_POS, tracked);
    }
    return t;
}

std::string basename_of(const std::string& path) {
    const size_t slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

struct BpfHost::LoadedProgram {
    std::string name;
    std::string section;
    AttachPoint point;
    std::unique_ptr<ebpf::Executable> exe;
    std::atomic<uint64_t> runs{0};
    void* probe_address = nullptr;  // uprobes: the probed instruction
};

// One hook::Uprobe per probed address and kind, shared by every program attached there (the
// hook allows one probe per address); its callback runs the site's current list.
struct BpfHost::ProbeSite {
    std::atomic<const EdgeList*> list{nullptr};
    std::unique_ptr<hook::Uprobe> probe;
};

struct BpfHost::LoadedObject {
    uint32_t id = 0;
    std::string path;
    ebpf::Object object;
    std::vector<std::unique_ptr<LoadedProgram>> programs;
    ObjectInfo info;
};

Result<std::unique_ptr<BpfHost>> BpfHost::create(Options options) {
    hook::Dispatcher::ScopedInside inside;
    ebpf::Runtime::Options ro;
    ro.trace_log_bytes = options.trace_log_bytes;
    auto runtime = ebpf::Runtime::create(ro);
    if (!runtime) return runtime.error();
    try {
        return std::unique_ptr<BpfHost>(
            new BpfHost(std::move(options), std::move(runtime).value()));
    } catch (const std::bad_alloc&) {
        return make_error(ENOMEM, "cannot allocate the BPF host");
    }
}

BpfHost::BpfHost(Options options, std::unique_ptr<ebpf::Runtime> runtime)
    : options_(std::move(options)), runtime_(std::move(runtime)), helpers_(host_helpers()) {
    const long page = ::sysconf(_SC_PAGESIZE);
    void* p = ::mmap(nullptr, static_cast<size_t>(page), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    // Without WIPEONFORK (kernels before 4.14) a forked child would keep its parent's tids;
    // every supported kernel has it.
    (void)::madvise(p, static_cast<size_t>(page), MADV_WIPEONFORK);
    pid_page_ = new (p) std::atomic<pid_t>(0);
}

BpfHost::~BpfHost() {
    unload_all();
    ::munmap(pid_page_, static_cast<size_t>(::sysconf(_SC_PAGESIZE)));
}

pid_t BpfHost::current_tid() {
    ThreadState& ts = t_thread;
    pid_t pid = pid_page_->load(std::memory_order_relaxed);
    if (pid == 0) [[unlikely]] {
        pid = static_cast<pid_t>(hook::raw_syscall(SYS_getpid));
        pid_page_->store(pid, std::memory_order_relaxed);
    }
    if (ts.tid_pid != pid) [[unlikely]] {
        ts.tid = static_cast<pid_t>(hook::raw_syscall(SYS_gettid));
        ts.tid_pid = pid;
    }
    return ts.tid;
}

// ---- the hooked call path ----

uint64_t BpfHost::run_program(const ProgramRun& run, void* ctx, size_t size) {
    // A statistic: load and store rather than a locked add (races may lose a count).
    run.runs->store(run.runs->load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    ebpf::ExecEnv env = runtime_->make_env();
    return run.exe->run(env, reinterpret_cast<uint64_t>(ctx), size);
}

__attribute__((noinline)) void BpfHost::run_edge(CallFrame& frame, bool exit) {
    const hook::SyscallCall& call = frame.call;
    const long result = exit ? frame.result : 0;
    ThreadState& ts = t_thread;
    const pid_t tid = current_tid();
    AgentReadSections::Section section(readers_, ts.sections);
    const EdgeList* list = (exit ? exit_ : enter_)[call.nr].load(std::memory_order_acquire);
    if (list == nullptr) return;
    // A descriptor the call created names a new object: forgotten before the programs
    // classify it, so that their classification is the one kept.
    if (list->invalidate_fd && call.nr != SYS_close) {
        invalidate_fds(fd_classes_, call, result);
        // A file just opened is classified by the path it was opened with (no readlink), also
        // when no program runs here: enter programs classify it at its first call otherwise.
        if (const char* path = opened_path(call); path != nullptr && result >= 0)
            (void)fd_classes_.get(static_cast<int>(result), path);
    }
    if (list->track_position) track_position(call, result);
    // A read of a file the policies prefetched: its bytes are "used" (before the programs
    // run, so their feedback includes this read; after the position moved past it).
    if (exit && result > 0 && (call.nr == SYS_read || call.nr == SYS_pread64))
        if (policy::Runtime* rt = policy_.load(std::memory_order_acquire); rt != nullptr)
            account_read(frame, *rt);
    // liveio_file_pos of the programs below (restored: a signal handler's call may nest).
    struct PositionsScope {
        ThreadState& ts;
        FdClassCache* saved;
        ~PositionsScope() { ts.positions = saved; }
    } positions{ts, ts.positions};
    ts.positions = track_positions_.load(std::memory_order_relaxed) ? &fd_classes_ : nullptr;
    uint64_t start = 0;
    bool timed = true;
    if (!exit) {
        if (list->record_start || list->has_io) start = clock_.now_ns();
        if (list->record_start) frame.start_ns = start;
    } else {
        // A call that entered before the program was attached has no start time: like an
        // unpaired kernel enter/exit, the io edge does not report it.
        start = frame.start_ns;
        timed = list->has_io && start != 0;
    }
    // Each context is built once, for the first program that needs it.
    TracepointCtx tp;
    pt_regs regs;
    uint64_t raw[2];
    liveio_io_ctx io;
    bool tp_ready = false, raw_ready = false, io_ready = false;
    // liveio_io_load: the bytes a read returned, for the io_exit programs of this call.
    const bool returned_data =
        exit && result > 0 && (call.nr == SYS_read || call.nr == SYS_pread64);
    policy::ReadDataScope read_data(returned_data ? &io : nullptr,
                                    reinterpret_cast<const void*>(call.args[1]),
                                    returned_data ? static_cast<size_t>(result) : 0);
    // liveio_socket_endpoints: the addresses of the socket a connect/accept connected.
    SocketEdgeScope socket_edge(exit ? &io : nullptr, call, result);
    for (const ProgramRun& run : list->runs) {
        switch (run.ctx) {
            case CtxKind::Tracepoint:
                if (!tp_ready) {
                    fill_tracepoint(tp, tid, call);
                    if (exit)
                        tp.args[0] = static_cast<uint64_t>(result);
                    else
                        for (int i = 0; i < 6; ++i)
                            tp.args[i] = static_cast<uint64_t>(call.args[i]);
                    tp_ready = true;
                }
                run_program(run, &tp, exit ? kSysExitCtxSize : sizeof tp);
                break;
            case CtxKind::RawTracepoint:
                if (!raw_ready) {
                    fill_regs(regs, call, exit ? result : -ENOSYS);
                    raw[0] = reinterpret_cast<uint64_t>(&regs);
                    raw[1] = static_cast<uint64_t>(exit ? result : call.nr);
                    raw_ready = true;
                }
                run_program(run, raw, sizeof raw);
                break;
            case CtxKind::Io:
                if (!timed) break;
                if (!io_ready) {
                    fill_io(io, call, tid, exit, result, start, exit ? clock_.now_ns() : start,
                            fd_classes_);
                    io_ready = true;
                }
                run_program(run, &io, sizeof io);
                break;
        }
    }
    // A closed descriptor's class was still there for the programs (peek).
    if (list->invalidate_fd && call.nr == SYS_close) invalidate_fds(fd_classes_, call, result);
}

// ---- lists ----

void BpfHost::publish_lists() {
    std::vector<const LoadedProgram*> attached;
    for (auto& [id, obj] : objects_)
        for (auto& p : obj->programs)
            if (p->point.kind != AttachKind::Uprobe && p->point.kind != AttachKind::Uretprobe)
                attached.push_back(p.get());
    bool any_io = false, any_io_exit = false;
    for (const LoadedProgram* p : attached) {
        any_io |= p->point.kind == AttachKind::IoEnter || p->point.kind == AttachKind::IoExit;
        any_io_exit |= p->point.kind == AttachKind::IoExit;
    }
    // While no io program ran, closes went unobserved: what the cache holds may be stale.
    if (any_io && !io_programs_) fd_classes_.clear();
    // Likewise the calls that moved file positions while they were not tracked.
    if (any_io_exit && !track_positions_.load(std::memory_order_relaxed))
        fd_classes_.clear_positions();

    std::vector<std::unique_ptr<EdgeList>> fresh;
    for (long nr = 0; nr < kMaxSyscalls; ++nr) {
        const IoShape shape = io_shape(nr);
        auto enter = std::make_unique<EdgeList>();
        auto exit = std::make_unique<EdgeList>();
        for (const LoadedProgram* p : attached) {
            auto* runs = const_cast<std::atomic<uint64_t>*>(&p->runs);
            const ebpf::Executable* exe = p->exe.get();
            switch (p->point.kind) {
                case AttachKind::SyscallEnter:
                    if (p->point.nr == nr) enter->runs.push_back({exe, CtxKind::Tracepoint, runs});
                    break;
                case AttachKind::SyscallExit:
                    if (p->point.nr == nr) exit->runs.push_back({exe, CtxKind::Tracepoint, runs});
                    break;
                case AttachKind::RawSyscallsEnter:
                    enter->runs.push_back({exe, CtxKind::Tracepoint, runs});
                    break;
                case AttachKind::RawSyscallsExit:
                    exit->runs.push_back({exe, CtxKind::Tracepoint, runs});
                    break;
                case AttachKind::RawTpEnter:
                    enter->runs.push_back({exe, CtxKind::RawTracepoint, runs});
                    break;
                case AttachKind::RawTpExit:
                    exit->runs.push_back({exe, CtxKind::RawTracepoint, runs});
                    break;
                case AttachKind::IoEnter:
                    if (shape.io) {
                        enter->runs.push_back({exe, CtxKind::Io, runs});
                        enter->has_io = true;
                    }
                    break;
                case AttachKind::IoExit:
                    if (shape.io) {
                        exit->runs.push_back({exe, CtxKind::Io, runs});
                        exit->has_io = true;
                    }
                    break;
                case AttachKind::Uprobe:
                case AttachKind::Uretprobe:
                case AttachKind::IoComplete: break;
            }
        }
        exit->invalidate_fd = any_io && shape.fd_event;
        exit->track_position = any_io_exit && shape.io;
        enter->record_start = exit->has_io;
        const bool use_enter = !enter->runs.empty() || enter->record_start;
        const bool use_exit = !exit->runs.empty() || exit->invalidate_fd;
        enter_[nr].store(use_enter ? enter.get() : nullptr, std::memory_order_release);
        exit_[nr].store(use_exit ? exit.get() : nullptr, std::memory_order_release);
        if (use_enter) fresh.push_back(std::move(enter));
        if (use_exit) fresh.push_back(std::move(exit));
    }
    for (auto& [key, site] : probes_) {
        auto list = std::make_unique<EdgeList>();
        for (auto& [id, obj] : objects_)
            for (auto& p : obj->programs)
                if (p->probe_address == key.first &&
                    (p->point.kind == AttachKind::Uretprobe) == key.second)
                    list->runs.push_back({p->exe.get(), CtxKind::Tracepoint, &p->runs});
        site->list.store(list->runs.empty() ? nullptr : list.get(), std::memory_order_release);
        if (!list->runs.empty()) fresh.push_back(std::move(list));
    }
    io_programs_ = any_io;
    track_positions_.store(any_io_exit, std::memory_order_relaxed);
    // The old lists (and whatever programs only they referenced) are unreachable for any
    // read section starting now; wait for the ones that started before.
    readers_.synchronize();
    lists_.swap(fresh);
    // Sites left without programs: restore the function (waits until no callback runs).
    for (auto it = probes_.begin(); it != probes_.end();) {
        if (it->second->list.load(std::memory_order_relaxed) != nullptr) {
            ++it;
            continue;
        }
        (void)it->second->probe->detach();
        it = probes_.erase(it);
    }
}

Result<void> BpfHost::attach_uprobe(LoadedProgram& program) {
    auto address = resolve_uprobe_target(program.point);
    if (!address) return address.error();
    program.probe_address = *address;
    const bool ret = program.point.kind == AttachKind::Uretprobe;
    const auto key = std::make_pair(*address, ret);
    if (probes_.count(key)) return {};
    auto site = std::make_unique<ProbeSite>();
    auto probe = hook::attach_uprobe(
        *address,
        [this, s = site.get()](pt_regs* regs) {
            ThreadState& ts = t_thread;
            (void)current_tid();  // refreshes the cache the helpers read
            AgentReadSections::Section section(readers_, ts.sections);
            const EdgeList* list = s->list.load(std::memory_order_acquire);
            if (list == nullptr) return;
            for (const ProgramRun& run : list->runs) (void)run_program(run, regs, sizeof *regs);
        },
        ret);
    if (!probe) return probe.error();
    site->probe = std::move(probe).value();
    probes_.emplace(key, std::move(site));
    return {};
}

// ---- loading ----

Result<BpfHost::ObjectInfo> BpfHost::load(const LoadRequest& request) {
    hook::Dispatcher::ScopedInside inside;
    const std::string& path = request.path;
    if (path.empty() || path[0] != '/')
        return make_error(EINVAL,
                          "bpf.load needs an absolute path to the object, got '" + path + "'");
    {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return make_error(errno,
                              "cannot read " + path + " in the target: " + std::strerror(errno));
        ::close(fd);
    }
    auto opened = ebpf::Object::open(path);
    if (!opened) return opened.error();

    auto obj = std::make_unique<LoadedObject>();
    obj->path = path;
    obj->object = std::move(opened).value();
    const auto& programs = obj->object.programs();

    std::vector<std::shared_ptr<const ebpf::Program>> selected;
    for (const std::string& want : request.programs) {
        auto it = std::find_if(programs.begin(), programs.end(),
                               [&](auto& p) { return p->name == want; });
        if (it == programs.end()) {
            std::string names;
            for (auto& p : programs) names += (names.empty() ? "" : ", ") + p->name;
            return make_error(
                ENOENT, "no program '" + want + "' in " + path + " (programs: " + names + ")");
        }
        selected.push_back(*it);
    }
    if (request.programs.empty()) {
        for (auto& p : programs)
            if (is_attach_section(p->section)) selected.push_back(p);
        if (selected.empty()) {
            std::string sections;
            for (auto& p : programs) sections += (sections.empty() ? "" : ", ") + p->section;
            return make_error(ENOENT, path + " has no program the agent can attach (sections: " +
                                          (sections.empty() ? "none" : sections) + ")");
        }
    }

    bool syscall_edges = false;
    for (auto& program : selected) {
        auto point = parse_attach_point(program->section);
        if (!point)
            return make_error(point.error().code,
                              "program '" + program->name + "': " + point.error().message);
        auto exe = ebpf::Executable::load(program, helpers_, request.engine);
        if (!exe) return exe.error();  // verbatim: it names the program and the instruction
        auto lp = std::make_unique<LoadedProgram>();
        lp->name = program->name;
        lp->section = program->section;
        lp->point = std::move(point).value();
        lp->exe = std::move(exe).value();
        syscall_edges |= lp->point.kind != AttachKind::Uprobe &&
                         lp->point.kind != AttachKind::Uretprobe &&
                         lp->point.kind != AttachKind::IoComplete;
        obj->programs.push_back(std::move(lp));
    }
    if (syscall_edges && options_.ensure_interception) {
        if (auto r = options_.ensure_interception(); !r)
            return make_error(r.error().code, "cannot observe syscalls: " + r.error().message);
    }
    obj->info.name = basename_of(path);
    for (auto& p : obj->programs)
        obj->info.programs.push_back({p->name, p->section, p->point.describe(), p->exe->engine(),
                                      p->exe->program().insns.size(), 0});
    for (auto& m : obj->object.maps()) {
        const ebpf::MapSpec& spec = m.map->spec();
        obj->info.maps.push_back(
            {m.name, spec.type, spec.key_size, spec.value_size, spec.max_entries});
    }

    std::lock_guard lock(mu_);
    for (auto& p : obj->programs) {
        if (p->point.kind != AttachKind::Uprobe && p->point.kind != AttachKind::Uretprobe) continue;
        if (auto r = attach_uprobe(*p); !r) {
            publish_lists();  // removes the sites this load created
            return make_error(r.error().code, "program '" + p->name + "': " + r.error().message);
        }
    }
    obj->id = next_id_++;
    obj->info.id = obj->id;
    ObjectInfo info = obj->info;
    objects_.emplace(obj->id, std::move(obj));
    publish_lists();
    return info;
}

Result<void> BpfHost::unload(uint32_t object) {
    hook::Dispatcher::ScopedInside inside;
    std::unique_ptr<LoadedObject> gone;
    {
        std::lock_guard lock(mu_);
        auto it = objects_.find(object);
        if (it == objects_.end())
            return make_error(ENOENT, "no BPF object " + std::to_string(object) + " is loaded");
        gone = std::move(it->second);
        objects_.erase(it);
        publish_lists();  // returns once no thread runs the object's programs
    }
    return {};
}

void BpfHost::unload_all() {
    hook::Dispatcher::ScopedInside inside;
    std::map<uint32_t, std::unique_ptr<LoadedObject>> gone;
    {
        std::lock_guard lock(mu_);
        gone.swap(objects_);
        publish_lists();
    }
}

std::vector<BpfHost::ObjectInfo> BpfHost::list() const {
    std::lock_guard lock(mu_);
    std::vector<ObjectInfo> objects;
    for (auto& [id, obj] : objects_) {
        ObjectInfo o = obj->info;
        for (size_t i = 0; i < obj->programs.size(); ++i)
            o.programs[i].runs = obj->programs[i]->runs.load(std::memory_order_relaxed);
        objects.push_back(std::move(o));
    }
    return objects;
}

Result<std::vector<std::shared_ptr<ebpf::Map>>> BpfHost::maps(uint32_t object) const {
    std::lock_guard lock(mu_);
    auto it = objects_.find(object);
    if (it == objects_.end())
        return make_error(ENOENT, "no BPF object " + std::to_string(object) + " is loaded");
    std::vector<std::shared_ptr<ebpf::Map>> out;
    for (auto& m : it->second->object.maps()) out.push_back(m.map);
    return out;
}

Result<BpfHost::ObjectInfo> BpfHost::describe(uint32_t object) const {
    std::lock_guard lock(mu_);
    auto it = objects_.find(object);
    if (it == objects_.end())
        return make_error(ENOENT, "no BPF object " + std::to_string(object) + " is loaded");
    return it->second->info;
}

Result<BpfHost::ObjectPrograms> BpfHost::object_programs(uint32_t object) const {
    std::lock_guard lock(mu_);
    auto it = objects_.find(object);
    if (it == objects_.end())
        return make_error(ENOENT, "no BPF object " + std::to_string(object) + " is loaded");
    ObjectPrograms out;
    for (auto& p : it->second->programs) {
        out.programs.push_back(&p->exe->program());
        if (p->point.kind == AttachKind::IoComplete) {
            if (out.completion != nullptr)
                return make_error(EINVAL, it->second->info.name +
                                              " has more than one liveio/io_complete program");
            out.completion = p->exe.get();
        }
    }
    return out;
}

void BpfHost::account_read(const CallFrame& frame, policy::Runtime& rt) {
    const hook::SyscallCall& call = frame.call;
    const long result = frame.result;
    if (rt.ledger().ranges() == 0) return;
    const int fd = static_cast<int>(call.args[0]);
    const FdInfo info = fd_classes_.get(fd);
    if (info.file_id == 0 || !rt.tracks(info.file_id)) return;
    long offset = call.args[3];
    if (call.nr == SYS_read) {
        // The position after the read: tracked (advanced by this read already), else asked.
        const bool tracked = track_positions_.load(std::memory_order_relaxed);
        const long pos = file_position(tracked ? &fd_classes_ : nullptr, fd);
        if (pos < result) return;
        offset = pos - result;
    }
    rt.observe_read(info.file_id, static_cast<uint64_t>(offset), static_cast<uint64_t>(result));
}

void BpfHost::track_position(const hook::SyscallCall& call, long result) {
    const int fd = static_cast<int>(call.args[0]);
    switch (call.nr) {
        case SYS_lseek:
            if (result < 0) return;
            (void)fd_classes_.get(fd);  // a position is kept with the descriptor's class entry
            fd_classes_.set_position(fd, result);
            return;
        case SYS_read:
        case SYS_readv:
            if (result > 0) fd_classes_.advance_position(fd, result);
            return;
        case SYS_write:
        case SYS_writev:
            // O_APPEND moves the position to the end of the file, which only the kernel knows.
            if (result > 0) fd_classes_.forget_position(fd);
            return;
        case SYS_preadv2:
        case SYS_pwritev2:
            if (call.args[3] == -1 && result > 0) fd_classes_.forget_position(fd);
            return;
        case SYS_sendfile:  // in_fd's position moves when no offset is given; out_fd's always
            fd_classes_.forget_position(fd);
            fd_classes_.forget_position(static_cast<int>(call.args[1]));
            return;
        case SYS_copy_file_range:
        case SYS_splice:
            fd_classes_.forget_position(fd);
            fd_classes_.forget_position(static_cast<int>(call.args[2]));
            return;
        default: return;  // positioned calls, syncs, sockets: no position moves
    }
}

std::shared_ptr<ebpf::Map> BpfHost::map(uint32_t object, std::string_view name) const {
    std::lock_guard lock(mu_);
    auto it = objects_.find(object);
    return it == objects_.end() ? nullptr : it->second->object.map(name);
}

}  // namespace liveio::agent
