// Running `liveio SUBCOMMAND ...` of this very executable as a child process, as a user would
// type it: the demo and `liveio bench observe` attach and detach through the real commands
// rather than a copy of their code.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "base/result.h"

namespace liveio::control {

// Runs /proc/self/exe with `args` through run_command (control/command.h): output captured,
// signal mask emptied, killed after `timeout`. Returns the output; a non-zero exit or a signal
// is an error whose message quotes the command and its output.
Result<std::string> run_liveio(const std::vector<std::string>& args,
                               std::chrono::milliseconds timeout = std::chrono::minutes(10));

// True when liveio-agent.so is mapped in process `pid` (attached, not yet unloaded).
bool agent_mapped(pid_t pid);

}  // namespace liveio::control
