// Running a helper program (ip, tc) to completion with a bound on its run time: the harness
// configures namespaces, links and qdiscs through iproute2, whose commands are the documented
// interface of each operation, instead of re-encoding rtnetlink messages here.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "base/result.h"

namespace liveio::cluster {

struct CommandOutput {
    int status = 0;      // exit status (0..255), or 128 + signal
    std::string output;  // stdout and stderr interleaved
};

// Runs argv[0] (looked up in PATH) with its stdin on /dev/null. Killed (SIGKILL) and an
// ETIMEDOUT error when it runs past `timeout`. A non-zero exit status is not an error here.
Result<CommandOutput> run_command(const std::vector<std::string>& argv,
                                  std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));

// run_command that fails unless the status is 0; the error quotes the command and its output.
Result<std::string> run_checked(const std::vector<std::string>& argv,
                                std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));

}  // namespace liveio::cluster
