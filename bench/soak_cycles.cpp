#include "soak_cycles.h"

#include <regex>
#include <thread>

#include <fmt/format.h>

#include "control/self_exec.h"
#include "policy/catalog.h"

namespace liveio::bench {
namespace {

class Cycle {
public:
    Cycle(pid_t pid, CycleReport& report) : pid_(std::to_string(pid)), report_(report) {}

    // Runs `liveio ARGS PID REST`; false (counted, with the output) when it fails.
    bool step(const std::string& command, std::vector<std::string> rest = {},
              std::string* output = nullptr) {
        std::vector<std::string> args{command, pid_};
        args.insert(args.end(), rest.begin(), rest.end());
        ++report_.steps;
        auto r = control::run_liveio(args);
        if (!r) {
            report_.failures.add(r.error().message);
            return false;
        }
        if (output) *output = std::move(*r);
        return true;
    }

private:
    const std::string pid_;
    CycleReport& report_;
};

}  // namespace

void run_attach_cycles(pid_t pid, const CycleOptions& options, SoakClock::time_point deadline,
                       CycleReport& report) {
    report.per_mechanism.assign(options.mechanisms.size(), 0);
    Cycle cycle(pid, report);
    auto pause = [&] { std::this_thread::sleep_for(options.step); };
    for (uint64_t n = 0; SoakClock::now() + options.step * 4 < deadline; ++n) {
        const size_t which = n % options.mechanisms.size();
        // Odd cycles switch everything off and unload before detaching; even ones leave that
        // to detach.
        const bool tidy = n % 2 == 1;
        bool ok = cycle.step("attach", {"--mechanism", options.mechanisms[which]});
        std::string loaded;
        ok = ok && cycle.step("load", {"io_stats"}, &loaded);
        std::smatch object;
        if (ok && !std::regex_search(loaded, object, std::regex(R"(object (\d+) stays loaded)"))) {
            report.failures.add("`liveio load io_stats` did not name the object it loaded:\n" +
                                loaded);
            ok = false;
        }
        for (const auto& policy : policy::catalog()) {
            if (!ok) break;
            ok = cycle.step("policy", {"on", policy.name});
            if (ok) pause();
        }
        ok = ok && cycle.step("status");
        if (ok && tidy) {
            for (const auto& policy : policy::catalog())
                ok = ok && cycle.step("policy", {"off", policy.name});
            ok = ok && cycle.step("unload", {object[1].str()});
        }
        // Always detach: also after a failed step, so the next cycle starts from scratch.
        if (control::agent_mapped(pid) || ok) ok = cycle.step("detach") && ok;
        if (control::agent_mapped(pid)) {
            report.failures.add(
                fmt::format("liveio-agent.so still mapped in {} after detach", pid));
            ok = false;
        }
        if (ok) {
            ++report.cycles;
            ++report.per_mechanism[which];
        }
        pause();
    }
}

}  // namespace liveio::bench
