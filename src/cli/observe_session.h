// What the observing commands (top, stats, hist, trace, maps, load, unload, serve) share: a
// session with one target process that attaches when the process has no agent yet and leaves
// it as found on exit, the built-in io_stats object in it, and quitting on signals.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "base/proc_tasks.h"
#include "control/protocol.h"
#include "observe/bpf_client.h"
#include "observe/stats.h"

namespace liveio::cli {

// Prints "liveio: <message>" on stderr and ends the command with status 1.
[[noreturn]] void observe_fail(const std::string& message);

// Options every observing command takes.
struct ObserveArgs {
    std::string mechanism = "got";  // how `attach` intercepts, when the command attaches
    std::string agent;              // --agent PATH
    bool stay = false;              // keep what the command loaded / attached after it exits
    std::string engine = "jit";     // engine of programs the command loads

    void add_to(CLI::App* cmd);
};

// The live maps of a built-in object in a target.
struct BuiltinMaps {
    observe::ObjectInfo object;
    std::vector<observe::LiveMap> maps;
    bool loaded_here = false;  // false: someone else's instance (reused, never unloaded)

    // The map named `map_name`, or the end of the command saying the object lacks it.
    ebpf::Map& need(const std::string& map_name, pid_t pid) const;
};

// The live maps of the io_stats object in a target.
struct IoStatsMaps : BuiltinMaps {
    ebpf::Map* syscalls = nullptr;  // syscall_stats
    ebpf::Map* classes = nullptr;   // class_stats (absent in objects that lack it)
};

class TargetSession {
public:
    // Connects to the agent of `pid`. Without one, attaches first (as `liveio attach`) when
    // `attach_if_needed`, else fails saying there is no agent. Failures end the command with
    // a message naming the cause (no such process, permission denied, ...).
    static std::unique_ptr<TargetSession> open(pid_t pid, const ObserveArgs& args,
                                               bool attach_if_needed = true);
    ~TargetSession();
    TargetSession(const TargetSession&) = delete;
    TargetSession& operator=(const TargetSession&) = delete;

    // Unloads the objects this session loaded and detaches if it attached, unless --stay;
    // quietly skips what the process's exit already undid. Idempotent.
    void close();
    // What close() would leave behind becomes permanent (used by `load`).
    void keep() { args_.stay = true; }

    pid_t pid() const { return pid_; }
    const std::string& comm() const { return comm_; }
    bool attached_here() const { return attached_; }
    bool alive() const;

    observe::BpfClient bpf() { return observe::BpfClient(*client_); }
    // The value, or the end of the command with a message about `what`: a process that exited
    // meanwhile is reported as such whatever the request's own error was.
    template <typename T>
    T check(Result<T> r, const std::string& what) {
        if (!r) fail_request(r.error(), what);
        if constexpr (!std::is_void_v<T>) return std::move(r).value();
    }

    // Loads an object; it is unloaded by close() unless --stay (or keep()).
    observe::ObjectInfo load(const std::string& path,
                             const std::vector<std::string>& programs = {});
    // The instance of built-in object `object_name` ("net_stats.bpf.o") already loaded in the
    // target, else a fresh one loaded here.
    BuiltinMaps builtin(const std::string& object_name);
    // builtin(io_stats) with its maps found.
    IoStatsMaps io_stats();
    observe::Snapshot snapshot(const IoStatsMaps& maps);

private:
    TargetSession(pid_t pid, ObserveArgs args) : pid_(pid), args_(std::move(args)) {}
    [[noreturn]] void fail_request(const Error& error, const std::string& what);

    pid_t pid_;
    ObserveArgs args_;
    std::string comm_;
    bool attached_ = false;
    bool closed_ = false;
    std::optional<control::ControlClient> client_;
    std::vector<uint64_t> loaded_;
};

// /proc/PID/comm without the newline ("" if gone).
std::string process_comm(pid_t pid);
// Processes with a liveio agent listening (abstract sockets "@liveio/<pid>" in /proc/net/unix).
std::vector<pid_t> processes_with_agents();

// SIGINT, SIGTERM and SIGHUP blocked and readable through a signalfd while it lives, so loops
// poll them with their other descriptors and every exit path runs the session's cleanup.
class SignalWatch {
public:
    SignalWatch();
    ~SignalWatch();
    SignalWatch(const SignalWatch&) = delete;
    SignalWatch& operator=(const SignalWatch&) = delete;
    int fd() const { return fd_; }
    // True once a signal arrived (consumes it).
    bool received();
    // Sleeps up to `seconds`; true if a signal cut it short.
    bool wait(double seconds);

private:
    int fd_ = -1;
    bool got_ = false;
    sigset_t old_{};
};

}  // namespace liveio::cli
