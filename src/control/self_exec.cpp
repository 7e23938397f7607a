#include "control/self_exec.h"

#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "control/command.h"

namespace liveio::control {

Result<std::string> run_liveio(const std::vector<std::string>& args,
                               std::chrono::milliseconds timeout) {
    std::error_code ec;
    const std::string exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) return make_error(ec.value(), "cannot find the liveio executable: " + ec.message());
    std::vector<std::string> argv{exe};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = run_command(argv, timeout);
    if (!r)
        return make_error(r.error().code,
                          fmt::format("`liveio {}`: {}", fmt::join(args, " "), r.error().message));
    if (r->status != 0) {
        const std::string how = r->status > 128 ? fmt::format("signal {}", r->status - 128)
                                                : fmt::format("exit status {}", r->status);
        return make_error(ECHILD, fmt::format("`liveio {}` failed ({}):\n{}", fmt::join(args, " "),
                                              how, r->output));
    }
    return std::move(r->output);
}

bool agent_mapped(pid_t pid) {
    std::ifstream maps(fmt::format("/proc/{}/maps", pid));
    for (std::string line; std::getline(maps, line);)
        if (line.ends_with("/liveio-agent.so")) return true;
    return false;
}

}  // namespace liveio::control
