// Kernel-side observation for the comparison rows of the benchmarks (root only): a BPF
// program that counts the calls of this process (if current tgid == ours: counter[0]++),
// loaded through libbpf for a raw tracepoint or a perf event (uprobe).
#pragma once

#include <linux/bpf.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/result.h"

struct bpf_object;
struct bpf_link;

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

// A BPF object file (clang -target bpf) loaded into the kernel with libbpf and every program
// attached by its section name (e.g. tracepoint/raw_syscalls/sys_enter): the kernel side of
// a same-object comparison with liveio's userspace runtime. Detached and freed on destruction.
class KernelObject {
public:
    // `u32_globals` sets `const volatile __u32` globals of .rodata (by name) before loading.
    static Result<std::unique_ptr<KernelObject>> load(
        const std::string& path,
        const std::vector<std::pair<std::string, uint32_t>>& u32_globals = {});
    ~KernelObject();
    KernelObject(const KernelObject&) = delete;
    KernelObject& operator=(const KernelObject&) = delete;
    // The descriptor of map `name`, or -1.
    int map_fd(const std::string& name) const;

private:
    KernelObject() = default;
    ::bpf_object* object_ = nullptr;
    std::vector<::bpf_link*> links_;
};

}  // namespace liveio::bench
