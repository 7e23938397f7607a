#include "kernel_probe.h"

#include <unistd.h>

#include <cstring>
#include <iterator>

#include <bpf/bpf.h>
#include <fmt/format.h>

namespace liveio::bench {
namespace {

Result<int> load_counting_program(bpf_prog_type type, int map_fd, uint32_t tgid) {
    const bpf_insn insns[] = {
        {BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_current_pid_tgid},
        {BPF_ALU64 | BPF_RSH | BPF_K, BPF_REG_0, 0, 0, 32},
        {BPF_JMP | BPF_JNE | BPF_K, BPF_REG_0, 0, 9, static_cast<int32_t>(tgid)},
        {BPF_ST | BPF_MEM | BPF_W, BPF_REG_10, 0, -4, 0},
        {BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0},
        {BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -4},
        {BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map_fd},
        {0, 0, 0, 0, 0},
        {BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem},
        {BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 2, 0},
        {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, 1},
        {BPF_STX | BPF_ATOMIC | BPF_DW, BPF_REG_0, BPF_REG_1, 0, BPF_ADD},
        {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0},
        {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
    };
    const int fd = bpf_prog_load(type, "liveio_count", "GPL", insns, std::size(insns), nullptr);
    if (fd < 0) return make_error(-fd, fmt::format("bpf_prog_load: {}", strerror(-fd)));
    return fd;
}

}  // namespace

CountingProgram::CountingProgram(bpf_prog_type type) {
    map_fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "liveio_count", 4, 8, 1, nullptr);
    if (map_fd < 0) {
        error = fmt::format("bpf_map_create: {}", strerror(-map_fd));
        map_fd = -1;
        return;
    }
    auto prog = load_counting_program(type, map_fd, static_cast<uint32_t>(getpid()));
    if (!prog) error = prog.error().message;
    else prog_fd = *prog;
}

CountingProgram::~CountingProgram() {
    if (prog_fd >= 0) close(prog_fd);
    if (map_fd >= 0) close(map_fd);
}

uint64_t CountingProgram::count() const {
    uint32_t key = 0;
    uint64_t value = 0;
    return bpf_map_lookup_elem(map_fd, &key, &value) == 0 ? value : 0;
}

Result<int> attach_raw_tracepoint(const CountingProgram& program, const char* name) {
    if (!program.error.empty()) return make_error(EINVAL, program.error);
    const int link = bpf_raw_tracepoint_open(name, program.prog_fd);
    if (link < 0) return make_error(-link, fmt::format("bpf_raw_tracepoint_open({}): {}", name, strerror(-link)));
    return link;
}

}  // namespace liveio::bench
