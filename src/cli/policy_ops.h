// `liveio policy` as functions, for `liveio attach --policy` and the benchmarks: switch a
// shipped policy on in a process that has the agent (its object resolved like the built-in
// BPF programs: $LIVEIO_BPF_DIR or next to the executable, under policies/).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/result.h"

namespace liveio::cli {

// The absolute path of policy `name`'s BPF object.
Result<std::string> policy_object_path(const std::string& name);
// policy.on in `pid` with `settings` ("key=value"); the agent's reply.
Result<nlohmann::json> policy_on(pid_t pid, const std::string& name,
                                 const std::vector<std::string>& settings);
// policy.off of `name` in `pid` (waits for its I/O to drain); the agent's reply.
Result<nlohmann::json> policy_off(pid_t pid, const std::string& name);
// One line per policy that is on: counters in human units (status, policy list).
void print_policies(const nlohmann::json& list);

}  // namespace liveio::cli
