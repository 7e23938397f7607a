// Running a program to completion with a bound on its run time, its output captured: the
// cluster harness configures namespaces, links and qdiscs through iproute2 (whose commands are
// the documented interface of each operation, instead of re-encoding rtnetlink messages), and
// `liveio serve` and run_liveio (control/self_exec.h) run liveio's own commands this way.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "base/result.h"

namespace liveio::control {

struct CommandOutput {
    int status = 0;      // exit status (0..255), or 128 + signal
    std::string output;  // stdout and stderr interleaved
};

// Runs argv[0] (looked up in PATH unless it has a slash) with its stdin on /dev/null, stdout
// and stderr captured together and the child's signal mask emptied (callers may block signals
// to wait for them in a thread). Killed (SIGKILL) and an ETIMEDOUT error when it runs past
// `timeout`. A non-zero exit status is not an error here.
Result<CommandOutput> run_command(
    const std::vector<std::string>& argv,
    std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));

// run_command that fails unless the status is 0; the error quotes the command and its output.
Result<std::string> run_checked(
    const std::vector<std::string>& argv,
    std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));

}  // namespace liveio::control
