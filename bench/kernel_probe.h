// Kernel-side observation for the comparison rows of the benchmarks (root only): a BPF
// program that counts the calls of this process (if current tgid == ours: counter[0]++),
// loaded through libbpf for a raw tracepoint or a perf event (uprobe).
#pragma once

#include <linux/bpf.h>

#include <cstdint>
#include <string>

#include "base/result.h"

namespace liveio::bench {

// The counting program and its one-element array map, owned together. `error` is set (and
// the descriptors are -1) when the kernel refused either.
struct CountingProgram {
    int map_fd = -1;
    int prog_fd = -1;
    std::string error;
    explicit CountingProgram(bpf_prog_type type);
    ~CountingProgram();
    CountingProgram(const CountingProgram&) = delete;
    CountingProgram& operator=(const CountingProgram&) = delete;
    uint64_t count() const;
};

// The program attached to the raw tracepoint `name` ("sys_enter": every syscall of every
// process enters it, as bpftrace's tracepoint:raw_syscalls:sys_enter) through
// BPF_RAW_TRACEPOINT_OPEN, which needs no tracefs. Returns the link descriptor; closing it
// detaches.
Result<int> attach_raw_tracepoint(const CountingProgram& program, const char* name);

}  // namespace liveio::bench
