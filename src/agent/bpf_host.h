// The agent's BPF program host: verified BPF programs (ELF objects built with clang -target
// bpf) run inside the target at every hooked I/O edge, with the kernel's context layouts so
// programs written for kernel tracepoints run unchanged (attach points: bpf_host_sections.h).
//
// The host is an observer of the agent's call pipeline (call_pipeline.h): the pipeline calls
// its enter and exit edges for every intercepted call. The hooked call path:
//   - no program on the call's syscall: one load of the syscall's attachment list and a
//     branch (nothing else: no clock read, no atomic);
//   - programs attached: the list (an immutable array) is read inside a lock-free read
//     section (base/read_sections.h); loading and unloading publish a new list and free the old one
//     after a grace period, so unload returns only when no thread still runs its programs.
//     A call whose exit edge reports a latency gets its start time in CallFrame::start_ns
//     at the enter edge.
// A program's return value is ignored: programs observe, they never change a call.
//
// Using the host without the control socket (benchmarks, tests):
//
//   auto host = BpfHost::create({}).value();
//   CallPipelineOf<BpfHost> pipeline(*host);
//   auto interceptor = hook::Interceptor::install({hook::Mechanism::Got}, &pipeline).value();
//   auto loaded = host->load({"/path/io_stats.bpf.o"}).value();    // a BpfHost::ObjectInfo
//   auto stats = host->map(loaded.id, "syscall_stats");             // live ebpf::Map
//   ...
//   interceptor->uninstall();  // before the host goes away: the pipeline calls it
//   host.reset();              // unloads everything
//
// Thread safety: load/unload/list/maps may be called from any thread (they serialize on a
// mutex); the observer methods from any number of threads at once.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "agent/bpf_host_clock.h"
#include "agent/bpf_host_sections.h"
#include "agent/call_pipeline.h"
#include "agent/fd_classes.h"
#include "agent/router.h"
#include "base/result.h"
#include "ebpf/helpers.h"
#include "ebpf/loader.h"
#include "ebpf/runtime.h"
#include "ebpf/vm.h"
#include "hook/dispatch.h"
#include "hook/uprobe.h"
#include "policy/runtime.h"

namespace liveio::agent {

class BpfHost final : public CallObserver {
public:
    struct Options {
        // Called by load() before attaching programs at syscall edges, so that some
        // interception mechanism delivers calls (the agent installs GOT hooks when none is
        // installed). Null: the caller is responsible.
        std::function<Result<void>()> ensure_interception;
        uint32_t trace_log_bytes = 256 * 1024;
    };

    struct LoadRequest {
        std::string path;  // absolute path of the .bpf.o, opened by the host
        ebpf::Engine engine = ebpf::Engine::Jit;
        std::vector<std::string> programs;  // function names; empty: every attachable program
    };

    // What the host reports of a loaded object (the control protocol renders it as JSON).
    struct ProgramInfo {
        std::string name;
        std::string section;
        std::string attach;  // the attach point, in the kernel's notation
        ebpf::Engine engine = ebpf::Engine::Jit;
        size_t insns = 0;
        uint64_t runs = 0;  // times the program ran (list() only; 0 from load())
    };
    struct MapInfo {
        std::string name;
        ebpf::MapType type = ebpf::MapType::Array;
        uint32_t key_size = 0;
        uint32_t value_size = 0;
        uint32_t max_entries = 0;
    };
    struct ObjectInfo {
        uint32_t id = 0;                    // the handle of unload(), maps(), map()
        std::string name;                   // the object file's name
        std::vector<ProgramInfo> programs;  // the attached ones, in load order
        std::vector<MapInfo> maps;          // in the order of maps()
    };

    static Result<std::unique_ptr<BpfHost>> create(Options options);
    // Unloads every object (waiting until no thread runs their programs).
    ~BpfHost() override;
    BpfHost(const BpfHost&) = delete;
    BpfHost& operator=(const BpfHost&) = delete;

    // Opens, verifies, loads and attaches. Nothing stays attached or allocated when it fails.
    Result<ObjectInfo> load(const LoadRequest& request);
    // Detaches the object's programs, waits until no thread runs them, frees everything.
    Result<void> unload(uint32_t object);
    void unload_all();
    // Every loaded object, with its programs' run counts, in load order.
    std::vector<ObjectInfo> list() const;
    // What load() returned for the object.
    Result<ObjectInfo> describe(uint32_t object) const;
    // The object's maps, in the order of its ObjectInfo::maps.
    Result<std::vector<std::shared_ptr<ebpf::Map>>> maps(uint32_t object) const;
    std::shared_ptr<ebpf::Map> map(uint32_t object, std::string_view name) const;
    ebpf::Runtime& runtime() { return *runtime_; }

    // What a policy needs of a loaded object: every program (the helpers find their policy
    // by program) and its liveio/io_complete program, if any. Valid until unload(object).
    struct ObjectPrograms {
        std::vector<const ebpf::Program*> programs;
        const ebpf::Executable* completion = nullptr;
    };
    Result<ObjectPrograms> object_programs(uint32_t object) const;
    // The policy runtime whose used/wasted accounting the exit edge of reads feeds (null:
    // none). Set before policies are switched on, cleared after they are all off.
    void set_policy_runtime(policy::Runtime* rt) { policy_.store(rt, std::memory_order_release); }
    FdClassCache& fd_classes() { return fd_classes_; }

    // bpf.load, bpf.unload, bpf.list, bpf.maps, bpf.log on `router` (the control protocol);
    // unregister_requests removes them.
    Result<void> register_requests(RequestRouter& router);
    static void unregister_requests(RequestRouter& router);

    // CallObserver: the programs of the call's enter and exit edges.
    void enter(CallFrame& frame) override {
        const auto nr = static_cast<unsigned long>(frame.call.nr);
        if (nr < kMaxSyscalls && enter_[nr].load(std::memory_order_relaxed) != nullptr) [[unlikely]]
            run_edge(frame, false);
    }
    void exit(CallFrame& frame) override {
        const auto nr = static_cast<unsigned long>(frame.call.nr);
        if (nr < kMaxSyscalls && exit_[nr].load(std::memory_order_relaxed) != nullptr) [[unlikely]]
            run_edge(frame, true);
    }

    // What an attached program receives (internal, public for the implementation's helpers).
    enum class CtxKind : uint8_t { Tracepoint, RawTracepoint, Io };
    struct ProgramRun {
        const ebpf::Executable* exe;
        CtxKind ctx;
        std::atomic<uint64_t>* runs;
    };
    struct EdgeList {
        bool record_start = false;    // enter list: the exit edge wants this call's start time
        bool invalidate_fd = false;   // exit list: the call creates or closes a descriptor
        bool track_position = false;  // exit list: file positions are tracked (track_positions_)
        bool has_io = false;          // a program with the liveio_io_ctx context
        std::vector<ProgramRun> runs;
    };

private:
    struct LoadedProgram;
    struct LoadedObject;
    struct ProbeSite;

    explicit BpfHost(Options options, std::unique_ptr<ebpf::Runtime> runtime);
    // Rebuilds and publishes every syscall's and probe site's lists from objects_, frees the
    // old ones after a grace period and detaches probe sites left without programs. Called
    // with mu_ held.
    void publish_lists();
    // Runs the programs of the call's enter or exit edge (the slow path of enter/exit).
    void run_edge(CallFrame& frame, bool exit);
    uint64_t run_program(const ProgramRun& run, void* ctx, size_t size);
    // Resolves the program's function and makes sure a probe site exists there (mu_ held).
    Result<void> attach_uprobe(LoadedProgram& program);
    // Kernel thread id of the caller, cached per thread (re-read after fork: see pid_page_).
    pid_t current_tid();

    Options options_;
    std::unique_ptr<ebpf::Runtime> runtime_;
    ebpf::HelperTable helpers_;
    AgentReadSections readers_{AgentReadSections::Transient{}};
    FdClassCache fd_classes_;
    EdgeClock clock_;
    // The process id, in a page the kernel zeroes in a forked child (MADV_WIPEONFORK): a
    // thread's cached tid is valid while the pid it was cached under matches this one.
    std::atomic<pid_t>* pid_page_ = nullptr;

    std::atomic<const EdgeList*> enter_[kMaxSyscalls] = {};
    std::atomic<const EdgeList*> exit_[kMaxSyscalls] = {};

    mutable std::mutex mu_;                         // guards everything below
    std::vector<std::unique_ptr<EdgeList>> lists_;  // the published lists
    std::map<uint32_t, std::unique_ptr<LoadedObject>> objects_;
    std::map<std::pair<void*, bool>, std::unique_ptr<ProbeSite>> probes_;  // (address, return)
    uint32_t next_id_ = 1;
    bool io_programs_ = false;  // whether the published lists contain liveio/io_* programs
    // Whether file positions are tracked (fd_classes_, FdClassCache::position): while a
    // liveio/io_exit program is attached every I/O call has an exit edge, so every hooked call
    // moving a position passes it. liveio_file_pos and the read accounting answer from the
    // tracked position then, without an lseek.
    std::atomic<bool> track_positions_{false};
    std::atomic<policy::Runtime*> policy_{nullptr};
    // A read of a file the policies prefetched: its bytes are "used".
    void account_read(const CallFrame& frame, policy::Runtime& rt);
    // The exit edge's update of the tracked file positions.
    void track_position(const hook::SyscallCall& call, long result);
};

}  // namespace liveio::agent
