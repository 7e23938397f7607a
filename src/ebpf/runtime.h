// The services BPF programs reach through ExecEnv::services: the trace_printk log (shared
// memory another process reads live) and the program registry behind bpf_tail_call.
//
//   auto rt = Runtime::create({}).value();
//   const uint32_t id = rt->add_program(*exe).value();      // exe outlives its registration
//   rt->set_tail_call(*prog_array, 3, id);                    // prog_array[3] -> exe
//   rt->run(*entry, ctx, len);                                // helpers see rt as services
//
// Helpers find the runtime by checking a tag at the start of the object `services` points
// to, so a program run with other (or no) services gets an error code from trace_printk
// instead of a misinterpreted pointer.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string_view>

#include "base/result.h"
#include "ebpf/exec_env.h"
#include "ebpf/map.h"

namespace liveio::ebpf {

class Executable;

// One trace_printk line as the consumer sees it.
struct TraceLine {
    uint64_t time_ns = 0;   // CLOCK_MONOTONIC at the call, as bpf_ktime_get_ns
    uint32_t tgid = 0;      // process id of the caller
    uint32_t tid = 0;       // thread id of the caller
    std::string_view text;  // the formatted message, without a trailing NUL
};

// The trace_printk log: a BPF ring buffer in a memfd, one record per call
// {u64 time_ns, u32 tgid, u32 tid, text}. Writers are BPF programs on any thread; the reader
// is any process holding the memfd (the CLI opens it with open()). A full log drops the new
// line and counts it in dropped(); nothing is overwritten.
class TraceLog {
public:
    // `bytes`: a power of two, a multiple of the page size.
    static Result<TraceLog> create(uint32_t bytes);
    // Maps the log of another process (memfd received over a Unix socket, /proc/PID/fd/N...).
    static Result<TraceLog> open(int memfd);

    // Appends one line. Returns 0 or -ENOSPC (the log is full: counted in dropped()).
    long write(uint64_t time_ns, uint32_t tgid, uint32_t tid, std::string_view text);
    // Consumer side (one consumer at a time): every line written since the last read, in
    // order. Returns the number of lines delivered.
    size_t read(const std::function<void(const TraceLine&)>& fn);
    uint64_t dropped() const { return ring_->dropped(); }
    int memfd() const { return ring_->memfd(); }

private:
    explicit TraceLog(std::shared_ptr<RingBuffer> ring) : ring_(std::move(ring)) {}
    std::shared_ptr<RingBuffer> ring_;
};

// Longest trace_printk line (the kernel's BPF_TRACE_PRINTK_SIZE); longer output is truncated.
inline constexpr size_t kTracePrintkMax = 1024;

class Runtime {
public:
    struct Options {
        uint32_t trace_log_bytes = 256 * 1024;  // power of two, page multiple
        uint32_t max_programs = 4096;           // registry capacity (ids 1..max_programs)
    };

    static Result<std::unique_ptr<Runtime>> create(const Options& options);
    static Result<std::unique_ptr<Runtime>> create() { return create(Options{}); }
    Runtime(const Runtime&) = delete;
    Runtime& operator=(const Runtime&) = delete;
    ~Runtime();

    // The runtime behind ExecEnv::services, or nullptr when services is something else.
    static Runtime* from(void* services) {
        auto* rt = static_cast<Runtime*>(services);
        return rt && rt->tag_ == kTag ? rt : nullptr;
    }

    TraceLog& trace_log() { return trace_log_; }

    // bpf_get_prandom_u32: the kernel keeps a generator per CPU; here one splitmix64 counter
    // per CPU slot (sched_getcpu() folded into kPrandomSlots), advanced with one relaxed
    // atomic add, so threads never lock and never share a draw. No thread-locals: helpers run
    // inside hooked code of the target, where a first TLS access may allocate.
    uint32_t prandom_u32();

    // Registers a program as a tail-call target and returns its id (>= 1, the value stored in
    // ProgArray slots). The Executable must stay alive until remove_program(id) returns and
    // no program can still be running a tail call into it.
    Result<uint32_t> add_program(const Executable& exe);
    // Unregisters; later tail calls through slots holding `id` fall through (-ENOENT).
    void remove_program(uint32_t id);
    // prog_array[index] = id (id 0 empties the slot). Checks the map type, the index and that
    // id is registered.
    Result<void> set_tail_call(Map& prog_array, uint32_t index, uint32_t id);

    // TailCallResolver (exec_env.h) for `services` = a Runtime.
    static const Executable* resolve_tail_call(void* services, Map* map, uint32_t index);

    // Runs `exe` with this runtime's services and tail calls.
    uint64_t run(const Executable& exe, void* ctx, size_t len);
    // An environment for Executable::run(ExecEnv&, ...) callers.
    ExecEnv make_env() {
        ExecEnv env;
        env.services = this;
        env.resolve_tail_call = &Runtime::resolve_tail_call;
        return env;
    }

private:
    static constexpr uint64_t kTag = 0x6c697665696f5254ull;  // "liveioRT"
    Runtime(TraceLog log, uint32_t max_programs);

    const uint64_t tag_ = kTag;  // first member: what from() checks
    TraceLog trace_log_;
    const uint32_t max_programs_;
    // Slot i holds the program with id i + 1; readers (tail calls, any thread) load without
    // locking, add/remove serialize on the mutex.
    std::unique_ptr<std::atomic<const Executable*>[]> programs_;
    std::mutex registry_mutex_;

    static constexpr uint32_t kPrandomSlots = 64;
    struct alignas(64) PrandomSlot {
        std::atomic<uint64_t> state{0};
    };
    std::unique_ptr<PrandomSlot[]> prandom_;
};

}  // namespace liveio::ebpf
