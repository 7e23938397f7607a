// Entry points of liveio-agent.so (this file is built only into the shared library).
//
// The library owns the process's one Agent (the documented one-per-process object). It
// starts when the library is loaded:
//  - by `liveio run` through LD_PRELOAD: LIVEIO_AGENT_RUN=1 is set and LIVEIO_MECHANISM /
//    LIVEIO_OBJECTS / LIVEIO_FUNCTIONS say what to install before main() runs. Those variables
//    and the library's LD_PRELOAD entry are removed from the environment, so the program's
//    children run unpatched. A preloaded library can never be unloaded: the agent is
//    "resident" and keeps its control socket after a detach.
//  - by `liveio attach` through dlopen in the running process: only the control thread
//    starts; the CLI then sends `install`. After `detach` the CLI dlcloses the library.
// liveio_agent_start() starts it again if it is not running (re-attach to a library that the
// loader kept mapped).
#include <dlfcn.h>
#include <link.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>

#include "agent/agent.h"
#include "hook/dispatcher.h"

namespace liveio::agent {
namespace {

void report(const std::string& message) {
    const std::string line = "liveio-agent[" + std::to_string(::getpid()) + "]: " + message + "\n";
    (void)!hook::raw_syscall(SYS_write, 2, reinterpret_cast<long>(line.data()),
                             static_cast<long>(line.size()));
}

std::vector<std::string> split_list(const char* text) {
    std::vector<std::string> out;
    if (text == nullptr) return out;
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    return out;
}

// Removes `path` from LD_PRELOAD (entries are separated by spaces or colons).
void remove_from_preload(const std::string& path) {
    const char* preload = std::getenv("LD_PRELOAD");
    if (preload == nullptr) return;
    std::string kept, entry;
    for (const char* p = preload;; ++p) {
        if (*p == ':' || *p == ' ' || *p == '\0') {
            if (!entry.empty() && entry != path) kept += (kept.empty() ? "" : ":") + entry;
            entry.clear();
            if (*p == '\0') break;
        } else {
            entry += *p;
        }
    }
    if (kept.empty())
        ::unsetenv("LD_PRELOAD");
    else
        ::setenv("LD_PRELOAD", kept.c_str(), 1);
}

class AgentHolder {
public:
    ~AgentHolder() {
        std::lock_guard lock(mu_);
        if (!agent_) return;
        if (agent_->control_stopped()) {
            agent_.reset();  // dlclose after detach: join, close, free everything
        } else {
            // Process exit with the agent active: other threads may sit in hooked blocking
            // calls, and uninstall would wait for them forever. The process is ending anyway,
            // so the agent is left in place (its memory dies with the process).
            (void)agent_.release();
        }
    }

    int start(bool from_constructor) {
        std::lock_guard lock(mu_);
        if (agent_ && !agent_->control_stopped()) return 0;
        agent_.reset();
        try {
            AgentOptions options;
            locate_library(options);
            const bool run_mode = from_constructor && env_is_set("LIVEIO_AGENT_RUN");
            options.resident = run_mode;
            json spec;
            if (run_mode) {
                spec = {{"mechanism", env_or("LIVEIO_MECHANISM", "got")},
                        {"objects", split_list(std::getenv("LIVEIO_OBJECTS"))},
                        {"functions", split_list(std::getenv("LIVEIO_FUNCTIONS"))}};
                for (const char* v :
                     {"LIVEIO_AGENT_RUN", "LIVEIO_MECHANISM", "LIVEIO_OBJECTS", "LIVEIO_FUNCTIONS"})
                    ::unsetenv(v);
                remove_from_preload(options.library_path);
            }
            auto agent = Agent::start(std::move(options));
            if (!agent) {
                report("not started: " + agent.error().message);
                return -agent.error().code;
            }
            agent_ = std::move(agent).value();
            if (run_mode && spec["mechanism"] != "none") {
                if (auto r = agent_->install(spec); !r) {
                    // The program runs unpatched rather than not at all.
                    report("install failed, running without interception: " + r.error().message);
                    agent_->set_last_error("install at startup failed: " + r.error().message);
                }
            }
            return 0;
        } catch (const std::exception& e) {
            report(std::string("not started: ") + e.what());
            return -ENOMEM;
        } catch (...) {
            return -EIO;
        }
    }

private:
    using json = nlohmann::json;

    static bool env_is_set(const char* name) {
        const char* v = std::getenv(name);
        return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
    }
    static std::string env_or(const char* name, const char* fallback) {
        const char* v = std::getenv(name);
        return v != nullptr && *v != '\0' ? v : fallback;
    }
    // The loader's link_map of this library is the handle dlopen returned for it; reading it
    // with dladdr1 does not change the library's reference count.
    static void locate_library(AgentOptions& options) {
        Dl_info info{};
        link_map* map = nullptr;
        if (dladdr1(reinterpret_cast<void*>(&report), &info, reinterpret_cast<void**>(&map),
                    RTLD_DL_LINKMAP) != 0) {
            if (info.dli_fname) options.library_path = info.dli_fname;
            options.library_handle = reinterpret_cast<uint64_t>(map);
        }
    }

    std::mutex mu_;
    std::unique_ptr<Agent> agent_;
};

AgentHolder holder;

__attribute__((constructor)) void on_load() {
    hook::Dispatcher::ScopedInside inside;
    (void)holder.start(true);
}

}  // namespace
}  // namespace liveio::agent

// Starts the agent if it is not running (e.g. after a detach when the loader kept the library
// mapped). Returns 0 or -errno. Called by `liveio attach` through the injector.
extern "C" __attribute__((visibility("default"))) int liveio_agent_start() {
    liveio::hook::Dispatcher::ScopedInside inside;
    return liveio::agent::holder.start(false);
}
