// The policies liveio ships: name, BPF object (bpf/policies/NAME.bpf.o) and knobs. A knob is
// either one of the program's (read with liveio_knob(index)) or one of the runtime's
// (index kRuntimeKnob: e.g. budget_mb, the I/O thread's memory budget, shared by all
// policies: the last value set wins).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace liveio::policy {

inline constexpr int kRuntimeKnob = -1;

struct KnobDef {
    std::string name;
    int index = 0;  // liveio_knob index, or kRuntimeKnob
    uint64_t default_value = 0;
    std::string help;
};

struct PolicyDef {
    std::string name;
    std::string object;  // file name under the BPF directory, e.g. "policies/prefetch.bpf.o"
    std::string summary;
    std::vector<KnobDef> knobs;

    const KnobDef* knob(std::string_view name) const;
    // "key=value" -> the knob and its value; errors list the policy's knobs.
    Result<std::pair<const KnobDef*, uint64_t>> parse_setting(std::string_view setting) const;
};

const std::vector<PolicyDef>& catalog();
// The policy named `name`; ENOENT lists the known ones.
Result<const PolicyDef*> find_policy(std::string_view name);

}  // namespace liveio::policy
