// `liveio attach` and `liveio detach` as functions, for the commands that attach to a process
// themselves when it has no agent yet (top, stats, hist, trace, maps, load, serve), so that
// they take exactly the code path of the commands. Both narrate on stdout and, on failure,
// print the reason on stderr and throw CLI::RuntimeError(1).
#pragma once

#include <sys/types.h>

#include <string>

namespace liveio::cli {

// Loads the agent into `pid` (unless it is already there) and installs `mechanism`
// ("got", "inline" or "rewrite"); `agent` is the --agent option ("" to search as attach does).
void attach_process(pid_t pid, const std::string& mechanism, const std::string& agent);
// Removes all interception from `pid` and unloads the agent.
void detach_process(pid_t pid);

}  // namespace liveio::cli
