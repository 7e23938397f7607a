// `liveio run`, `attach`, `detach`, `status`: starting a program with the agent preloaded,
// loading it into a running process (inject/inject.h), and talking to it over its control
// socket (agent/protocol.h).
#include <limits.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "base/proc_tasks.h"
#include "cli/commands.h"
#include "cli/policy_ops.h"
#include "cli/process_ops.h"
#include "control/protocol.h"
#include "inject/inject.h"
#include "inject/kill_point.h"

namespace liveio::cli {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "liveio: %s\n", message.c_str());
    throw CLI::RuntimeError(1);
}

template <typename T>
T check(Result<T> r, const std::string& what) {
    if (!r) fail(what + ": " + r.error().message);
    if constexpr (!std::is_void_v<T>) return std::move(r).value();
}

// check() for a request to the agent of `pid`: when the process has died meanwhile, says so
// (the error alone, e.g. a connection reset, would not tell).
template <typename T>
T check_agent(Result<T> r, pid_t pid, const std::string& what) {
    if (!r && !process_running(pid))
        fail(fmt::format("{}: process {} died meanwhile ({})", what, pid, r.error().message));
    return check(std::move(r), what);
}

// --agent PATH, else $LIVEIO_AGENT, else liveio-agent.so next to this executable, else
// ../lib/liveio/liveio-agent.so relative to it (an installed layout).
std::string find_agent(const std::string& option) {
    auto usable = [](const fs::path& p) { return ::access(p.c_str(), R_OK) == 0; };
    if (!option.empty()) {
        if (!usable(option)) fail("agent library " + option + " is not readable");
        return fs::absolute(option).lexically_normal();
    }
    if (const char* env = std::getenv("LIVEIO_AGENT"); env && *env) {
        if (!usable(env)) fail(std::string("LIVEIO_AGENT=") + env + " is not readable");
        return fs::absolute(env).lexically_normal();
    }
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        for (const fs::path& p : {exe.parent_path() / "liveio-agent.so",
                                  exe.parent_path() / "../lib/liveio/liveio-agent.so"})
            if (usable(p)) return fs::weakly_canonical(p);
    }
    fail("cannot find liveio-agent.so next to " + exe.string() +
         " (use --agent PATH or LIVEIO_AGENT)");
}

struct InstallArgs {
    std::string mechanism = "got";
    // -m was given: an attached process must have this mechanism. Without it, attach to a
    // process that has one already accepts whichever it has.
    bool mechanism_given = true;
    std::vector<std::string> objects, functions;
    std::string agent;
    std::vector<std::string> policies;  // attach: exactly these are on once attached

    void add_to(CLI::App* cmd) {
        mechanism_option = cmd->add_option("--mechanism,-m", mechanism, "how calls are intercepted")
                               ->check(CLI::IsMember(control::mechanism_names()))
                               ->capture_default_str();
        cmd->add_option("--objects", objects,
                        "GOT: objects to patch (default: all but libc, ld.so, liveio)")
            ->delimiter(',');
        cmd->add_option("--functions", functions, "functions to intercept (default: the I/O set)")
            ->delimiter(',');
        cmd->add_option("--agent", agent, "path of liveio-agent.so");
    }
    // After parsing: whether -m was on the command line.
    void parsed() { mechanism_given = mechanism_option && mechanism_option->count() > 0; }
    CLI::Option* mechanism_option = nullptr;
    json spec() const {
        return {{"mechanism", mechanism}, {"objects", objects}, {"functions", functions}};
    }
};

std::string join(const std::vector<std::string>& v) {
    std::string out;
    for (auto& s : v) out += (out.empty() ? "" : ",") + s;
    return out;
}

void cmd_run(const InstallArgs& args, const std::vector<std::string>& command) {
    if (command.empty()) fail("run: no command given (liveio run [options] -- CMD ARGS...)");
    const std::string agent = find_agent(args.agent);
    const char* old = std::getenv("LD_PRELOAD");
    const std::string preload = old && *old ? agent + ":" + old : agent;
    ::setenv("LD_PRELOAD", preload.c_str(), 1);
    ::setenv("LIVEIO_AGENT_RUN", "1", 1);
    ::setenv("LIVEIO_MECHANISM", args.mechanism.c_str(), 1);
    ::setenv("LIVEIO_OBJECTS", join(args.objects).c_str(), 1);
    ::setenv("LIVEIO_FUNCTIONS", join(args.functions).c_str(), 1);
    std::vector<char*> argv;
    for (auto& a : command) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    std::fflush(nullptr);
    ::execvp(argv[0], argv.data());
    const int err = errno;
    std::fprintf(stderr, "liveio: cannot run %s: %s\n", argv[0], std::strerror(err));
    std::exit(err == ENOENT ? 127 : 126);
}

control::ControlClient connect_agent(pid_t pid) {
    return check(control::ControlClient::connect(pid), "process " + std::to_string(pid));
}

bool wait_thread_gone(pid_t pid, pid_t tid) {
    if (tid <= 0) return true;
    const std::string path = fmt::format("/proc/{}/task/{}", pid, tid);
    for (int i = 0; i < 10000; ++i) {  // up to ~10 s: it only has to return and exit
        if (::access(path.c_str(), F_OK) != 0) return true;
        ::usleep(1000);
    }
    return false;
}

// Execute-only memory needs protection keys (CPU flag pku, enabled by the kernel: ospke).
bool cpu_has_protection_keys() {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);) {
        if (!line.starts_with("flags")) continue;
        line += ' ';
        return line.find(" pku ") != std::string::npos && line.find(" ospke ") != std::string::npos;
    }
    return false;
}

// What the uninstall of each mechanism had to do: threads it moved out of calls in progress
// instead of waiting for them, world stops, time spent waiting for handler code, memory kept.
std::string describe_uninstall(const json& how) {
    std::string out;
    for (auto& [name, h] : how.items()) {
        std::string part = fmt::format("{}: waited {:.1f} ms for hook code, {} world stop{}", name,
                                       h.value("waited_ms", 0.0), h.value("world_stops", 0),
                                       h.value("world_stops", 0) == 1 ? "" : "s");
        if (const unsigned moved = h.value("moved_out", 0u); moved != 0)
            part +=
                fmt::format(", moved {} thread{} sleeping in a hooked call back to the application",
                            moved, moved == 1 ? "" : "s");
        if (h.contains("kept")) part += "; kept " + h["kept"].get<std::string>();
        out += (out.empty() ? "" : "; ") + part;
    }
    return out;
}

// The names of the mechanisms and of the policies on in an agent's status.
std::vector<std::string> installed_mechanisms(const json& status) {
    std::vector<std::string> out;
    for (const json& m : status.value("mechanisms", json::array()))
        out.push_back(m.value("name", std::string()));
    return out;
}

std::vector<std::string> policies_on(const json& status) {
    std::vector<std::string> out;
    const json policies = status.value("policies", json::object());
    for (const json& p : policies.value("policies", json::array()))
        if (p.value("on", false)) out.push_back(p.value("name", std::string()));
    return out;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
}

// Makes the policies on in `pid` exactly `wanted`: the missing ones on first (the I/O thread
// keeps running while one set replaces the other), then the others off (drained).
void switch_policies(pid_t pid, const std::vector<std::string>& wanted,
                     const std::vector<std::string>& on) {
    bool changed = false;
    for (const std::string& name : wanted) {
        if (contains(on, name)) continue;
        auto r = policy_on(pid, name, {});
        if (!r) fail(fmt::format("policy on {} in {}: {}", name, pid, r.error().message));
        std::printf("policy %s on in %d\n", name.c_str(), pid);
        changed = true;
    }
    for (const std::string& name : on) {
        if (contains(wanted, name)) continue;
        auto r = policy_off(pid, name);
        if (!r)
            fail(fmt::format("policy off {} in {} (not in --policy {}): {}", name, pid,
                             wanted.empty() ? "(none)" : join(wanted), r.error().message));
        std::printf("policy %s off in %d (not in --policy)\n", name.c_str(), pid);
        changed = true;
    }
    if (!changed)
        std::printf("policies on in %d: %s (unchanged)\n", pid,
                    wanted.empty() ? "none" : join(wanted).c_str());
}

// `attach` leaves `pid` with the agent, a mechanism, and exactly the --policy policies on. On
// a process that is attached already it installs nothing: the same mechanism (or no -m) is
// "already attached", and the policies are switched live to the requested set; another -m is
// refused, naming the detach it needs (mechanisms are not swapped under running calls).
void cmd_attach(pid_t pid, const InstallArgs& args) {
    auto existing = control::ControlClient::connect(pid);
    if (!existing && existing.error().code == ESRCH) fail(existing.error().message);
    std::optional<inject::InjectedLibrary> injected;
    inject::InjectStats stats;
    if (!existing) {
        const std::string path = find_agent(args.agent);
        injected =
            check(inject::inject_library(pid, path, &stats), "attach " + std::to_string(pid));
        inject::kill_point("attach-injected", pid);
        existing = control::ControlClient::connect(pid);
        if (!existing) {
            // The loader kept an earlier copy mapped, so no constructor ran: start it.
            const long rc = check(inject::call_in_target(*injected, "liveio_agent_start", {}),
                                  "starting the agent in " + std::to_string(pid));
            if (rc != 0)
                fail(fmt::format("agent failed to start in {}: {}", pid,
                                 std::strerror(static_cast<int>(-rc))));
            existing = control::ControlClient::connect(pid);
        }
        if (!existing) fail("agent loaded but not reachable: " + existing.error().message);
    }
    auto& client = *existing;
    const json status =
        injected ? json::object() : check(client.call("status"), "status " + std::to_string(pid));
    const std::vector<std::string> mechanisms = installed_mechanisms(status);
    if (!mechanisms.empty()) {
        if (args.mechanism_given && !contains(mechanisms, args.mechanism))
            fail(fmt::format(
                "{} is attached with mechanism {}, not {}; nothing was changed. Mechanisms are "
                "not switched under running calls: liveio detach {}, then liveio attach {} -m "
                "{}{}",
                pid, join(mechanisms), args.mechanism, pid, pid, args.mechanism,
                args.policies.empty() ? "" : " --policy " + join(args.policies)));
        std::printf("already attached to %d: mechanism %s\n", pid,
                    args.mechanism_given ? args.mechanism.c_str() : join(mechanisms).c_str());
        switch_policies(pid, args.policies, policies_on(status));
        return;
    }
    // Installing reads and patches the text of every loaded object (syscall rewriting scans
    // it all): on a large server on a loaded machine that takes more than the default reply
    // time, and an install the command stopped waiting for would finish unobserved.
    auto installed = client.call("install", args.spec(), 120000);
    if (!installed) {
        if (injected) {
            // Leave the process as we found it: the same stop-serving, wait, unload as detach.
            auto detached = client.call("detach");
            if (detached && wait_thread_gone(pid, detached->value("control_tid", 0)))
                (void)inject::unload_library(*injected);
        }
        check_agent(std::move(installed), pid,
                    fmt::format("install {} in {}", args.mechanism, pid));
    }
    inject::kill_point("attach-installed", pid);
    if (args.mechanism == "rewrite" && !cpu_has_protection_keys())
        std::printf(
            "note: this CPU has no protection keys, so page 0 (the syscall trampoline) is readable "
            "while attached: a NULL read in %d returns trampoline bytes instead of faulting "
            "(detach "
            "unmaps it)\n",
            pid);
    if (injected)
        std::printf(
            "attached to %d: mechanism %s; load pause %.2f ms (%d threads stopped, %d attempt%s)\n",
            pid, args.mechanism.c_str(), stats.pause_ms, stats.threads, stats.attempts,
            stats.attempts == 1 ? "" : "s");
    else
        std::printf("attached to %d: mechanism %s (agent was already loaded)\n", pid,
                    args.mechanism.c_str());
    const std::vector<std::string> on = policies_on(status);
    if (args.policies.empty() && on.empty()) return;  // a plain attach says nothing of policies
    switch_policies(pid, args.policies, on);
}

// The path of liveio-agent.so if it is mapped in `pid`.
std::string mapped_agent(pid_t pid) {
    std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
    std::string line;
    while (std::getline(maps, line)) {
        const size_t slash = line.find('/');
        if (slash != std::string::npos && line.ends_with("/liveio-agent.so"))
            return line.substr(slash);
    }
    return "";
}

// An agent whose control thread already ended (an earlier detach whose CLI gave up waiting
// before unloading) has nothing installed; its library is unloaded through a fresh handle:
// dlopen of the loaded path returns the same handle with one more reference, so two
// dlcloses bring the count to zero.
void unload_stopped_agent(pid_t pid, const std::string& path) {
    inject::InjectStats stats;
    auto lib = check(inject::inject_library(pid, path, &stats),
                     "reopening the agent library in " + std::to_string(pid));
    check(inject::unload_library(lib), "unloading the agent from " + std::to_string(pid));
    check(inject::unload_library(lib), "unloading the agent from " + std::to_string(pid));
    std::printf("detached from %d: agent was already stopped; library unloaded\n", pid);
}

// Why a detach may not finish: threads sleeping in a system call made from the agent's code
// (a handler's own blocking call) keep a hook in flight, and the agent waits for them before
// it answers. Threads sleeping in the original function called from a hook, or in a call the
// syscall entry made for them, are moved out at a world stop, unless they block its signal.
// Their instruction pointers (sleeping_threads) are compared with the agent's mappings.
std::string threads_blocked_in_agent(pid_t pid) {
    std::vector<std::pair<uint64_t, uint64_t>> agent_ranges;
    {
        std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
        for (std::string line; std::getline(maps, line);) {
            unsigned long long lo = 0, hi = 0;
            if (line.ends_with("/liveio-agent.so") &&
                std::sscanf(line.c_str(), "%llx-%llx", &lo, &hi) == 2)
                agent_ranges.emplace_back(lo, hi);
        }
    }
    std::map<long, int> by_syscall;
    int blocked = 0;
    for (const SleepingThread& t : sleeping_threads(pid))
        for (auto [lo, hi] : agent_ranges)
            if (t.pc >= lo && t.pc < hi) {
                ++blocked;
                ++by_syscall[t.nr];
                break;
            }
    if (blocked == 0) return "";
    std::string which;
    for (auto [nr, n] : by_syscall)
        which += fmt::format("{}syscall {} x{}", which.empty() ? "" : ", ", nr, n);
    return fmt::format(
        "; {} thread(s) of {} sleep in system calls made through the agent ({}) and keep its hooks "
        "in flight: the agent finishes the detach when they return",
        blocked, pid, which);
}

void cmd_detach(pid_t pid) {
    auto connected = control::ControlClient::connect(pid);
    if (!connected && connected.error().code == ECONNREFUSED) {
        if (const std::string path = mapped_agent(pid); !path.empty())
            return unload_stopped_agent(pid, path);
    }
    auto client = check(std::move(connected), "process " + std::to_string(pid));
    auto detached = client.call("detach", json::object(), 60000);
    if (!detached && detached.error().code == ETIMEDOUT)
        fail(fmt::format("detach {}: {}{}", pid, detached.error().message,
                         threads_blocked_in_agent(pid)));
    const json result = check_agent(std::move(detached), pid, "detach " + std::to_string(pid));
    inject::kill_point("detach-answered", pid);
    std::string removed;
    for (auto& m : result.value("uninstalled", json::array()))
        removed += (removed.empty() ? "" : ",") + m.get<std::string>();
    if (!result.value("unloadable", false)) {
        std::printf("detached from %d: removed %s; agent stays loaded (preloaded by liveio run)\n",
                    pid, removed.empty() ? "nothing" : removed.c_str());
        if (const std::string how = describe_uninstall(result.value("how", json::object()));
            !how.empty())
            std::printf("  %s\n", how.c_str());
        return;
    }
    if (!result.contains("library")) fail("agent did not say where it is loaded; cannot unload it");
    // The agent's destructor joins its control thread; the injector stops every thread while
    // dlclose runs, so that thread must be gone before, or the unload would wait for it.
    if (!wait_thread_gone(pid, result.value("control_tid", 0)))
        fail(fmt::format("the agent's control thread in {} did not exit; not unloading", pid));
    inject::InjectedLibrary lib{pid, result["library"].value("path", std::string()),
                                result["library"].value("handle", uint64_t{0})};
    inject::InjectStats stats;
    check(inject::unload_library(lib, &stats), "unloading the agent from " + std::to_string(pid));
    std::printf("detached from %d: removed %s; agent unloaded (pause %.2f ms)\n", pid,
                removed.empty() ? "nothing" : removed.c_str(), stats.pause_ms);
    if (const std::string how = describe_uninstall(result.value("how", json::object()));
        !how.empty())
        std::printf("  %s\n", how.c_str());
}

void print_status(const json& s) {
    std::printf("pid %d  agent %s (protocol %d)  uptime %.1f s%s\n", s.value("pid", 0),
                s.value("agent_version", std::string("?")).c_str(), s.value("protocol", 0),
                s.value("uptime_s", 0.0), s.value("resident", false) ? "  preloaded" : "");
    std::string mechs;
    for (auto& m : s.value("mechanisms", json::array()))
        mechs += fmt::format("{}{} ({} calls)", mechs.empty() ? "" : ", ",
                             m.value("name", std::string("?")),
                             m.value("calls_dispatched", uint64_t{0}));
    std::printf("mechanisms: %s\n", mechs.empty() ? "none installed" : mechs.c_str());
    if (s.contains("last_error"))
        std::printf("last error: %s\n", s["last_error"].get<std::string>().c_str());
    if (const json control = s.value("control", json::object());
        control.value("refused_connections", uint64_t{0}) > 0)
        std::printf(
            "control: refused %llu connection(s) from other users (only uid %d and root may "
            "control it)\n",
            static_cast<unsigned long long>(control["refused_connections"].get<uint64_t>()),
            control.value("allowed_uids", json::array({-1})).at(0).get<int>());
    std::printf("%-14s %14s %16s %10s\n", "syscall", "calls", "bytes", "errors");
    const json calls = s.value("calls", json::object());
    auto row = [](const std::string& name, const json& c) {
        std::printf("%-14s %14llu %16llu %10llu\n", name.c_str(),
                    static_cast<unsigned long long>(c.value("calls", uint64_t{0})),
                    static_cast<unsigned long long>(c.value("bytes", uint64_t{0})),
                    static_cast<unsigned long long>(c.value("errors", uint64_t{0})));
    };
    for (auto& [name, c] : calls.items())
        if (name != "total") row(name, c);
    if (calls.contains("total")) row("total", calls["total"]);
    if (s.contains("policies")) print_policies(s["policies"]);
    if (s.contains("faults")) {
        std::string line;
        for (auto& [name, f] : s["faults"].items())
            line += fmt::format("{}{} {} injected, {} armed", line.empty() ? "" : "; ", name,
                                f.value("injected", uint64_t{0}), f.value("armed", uint64_t{0}));
        std::printf("fault injection: %s\n", line.c_str());
    }
}

void cmd_fault(pid_t pid, const std::string& point, uint32_t times) {
    auto client = connect_agent(pid);
    check(client.call("fault.arm", json{{"point", point}, {"times", times}}),
          "fault " + std::to_string(pid));
    std::printf("fault %s armed in %d: the next %u run%s fail%s\n", point.c_str(), pid, times,
                times == 1 ? "" : "s", times == 1 ? "s" : "");
}

void cmd_status(pid_t pid, bool as_json) {
    auto client = connect_agent(pid);
    const json s = check(client.call("status"), "status " + std::to_string(pid));
    if (as_json)
        std::printf("%s\n", s.dump(2).c_str());
    else
        print_status(s);
}

}  // namespace

void attach_process(pid_t pid, const std::string& mechanism, const std::string& agent) {
    InstallArgs args;
    args.mechanism = mechanism;
    args.agent = agent;
    cmd_attach(pid, args);
}

void detach_process(pid_t pid) { cmd_detach(pid); }

void add_process_commands(CLI::App& app) {
    {
        auto* run = app.add_subcommand("run", "Start a program with the liveio agent preloaded");
        auto args = std::make_shared<InstallArgs>();
        auto command = std::make_shared<std::vector<std::string>>();
        args->add_to(run);
        run->add_option("command", *command, "program and its arguments (after --)")->required();
        run->callback([args, command] { cmd_run(*args, *command); });
    }
    {
        auto* attach = app.add_subcommand(
            "attach", "Load the agent into a running process and intercept its I/O");
        auto args = std::make_shared<InstallArgs>();
        auto pid = std::make_shared<pid_t>(0);
        attach->add_option("pid", *pid, "process id")->required()->check(CLI::PositiveNumber);
        args->add_to(attach);
        attach
            ->add_option("--policy", args->policies,
                         "acceleration policies to switch on (liveio policy PID list)")
            ->delimiter(',');
        attach->callback([args, pid] {
            args->parsed();
            cmd_attach(*pid, *args);
        });
    }
    {
        auto* detach = app.add_subcommand(
            "detach", "Remove all interception from a process and unload the agent");
        auto pid = std::make_shared<pid_t>(0);
        detach->add_option("pid", *pid, "process id")->required()->check(CLI::PositiveNumber);
        detach->callback([pid] { cmd_detach(*pid); });
    }
    {
        auto* fault = app.add_subcommand(
            "fault",
            "Test liveio's error paths: make an io_uring engine step fail N times in a process");
        auto pid = std::make_shared<pid_t>(0);
        auto point = std::make_shared<std::string>();
        auto times = std::make_shared<uint32_t>(1);
        fault->add_option("pid", *pid, "process id")->required()->check(CLI::PositiveNumber);
        fault
            ->add_option("point", *point,
                         "ring_create, submit_eagain, submit_ebusy, submit_eintr, submit_enomem, "
                         "complete_eagain, complete_eio, complete_short")
            ->required();
        fault->add_option("times", *times, "how many runs of the step fail")->capture_default_str();
        fault->callback([pid, point, times] { cmd_fault(*pid, *point, *times); });
    }
    {
        auto* status =
            app.add_subcommand("status", "Show the agent's mechanisms and per-syscall counts");
        auto pid = std::make_shared<pid_t>(0);
        auto as_json = std::make_shared<bool>(false);
        status->add_option("pid", *pid, "process id")->required()->check(CLI::PositiveNumber);
        status->add_flag("--json", *as_json, "print the agent's answer as JSON");
        status->callback([pid, as_json] { cmd_status(*pid, *as_json); });
    }
}

}  // namespace liveio::cli
