// The liveio side of `liveio soak clickhouse`: attach cycles through the real commands
// (`liveio attach/load/policy/status/unload/detach`, run as child processes), each mechanism in
// turn, with every policy of the catalog switched on and off and a BPF object loaded and
// unloaded, until a deadline.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "soak_load.h"

namespace liveio::bench {

struct CycleOptions {
    std::vector<std::string> mechanisms{"got", "inline", "rewrite"};
    // Time the target runs in each configuration (attached, each policy on, detached).
    std::chrono::milliseconds step{1000};
};

struct CycleReport {
    uint64_t cycles = 0;                  // attach .. detach completed without a failed step
    std::vector<uint64_t> per_mechanism;  // cycles per CycleOptions::mechanisms entry
    uint64_t steps = 0;                   // liveio commands run
    FailureLog failures;                  // commands that failed, or an agent left mapped
};

// Cycles until `deadline`; a failed step is counted, then the cycle is abandoned with a detach
// so the next one starts from a process without the agent.
void run_attach_cycles(pid_t pid, const CycleOptions& options, SoakClock::time_point deadline,
                       CycleReport& report);

}  // namespace liveio::bench
