// Test BPF objects built by bpf/CMakeLists.txt from tests/ebpf/bpf/*.bpf.c (and the shipped
// programs of bpf/), shared by the loader and kernel-parity tests.
#pragma once

#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "ebpf/program.h"

namespace liveio::ebpf::testing {

inline std::string test_object_path(const std::string& name) {
    return std::string(LIVEIO_TEST_BPF_DIR) + "/" + name + ".bpf.o";
}

inline std::string shipped_object_path(const std::string& name) {
    return std::string(LIVEIO_BPF_DIR) + "/" + name + ".bpf.o";
}

inline std::vector<uint8_t> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in),
                                std::istreambuf_iterator<char>());
}

// What the loader promises about a linked program (program.h): every map reference indexes
// Program::maps, every call/function reference lands inside the program, lddw pairs are whole.
// Returns "" or the first violation.
inline std::string linked_form_violation(const Program& p) {
    const int64_t n = static_cast<int64_t>(p.insns.size());
    for (int64_t i = 0; i < n; ++i) {
        const Insn& in = p.insns[i];
        if (in.opcode == op::kLddw) {
            if (i + 1 >= n) return "lddw at the end at " + std::to_string(i);
            if (in.src == op::kPseudoMapIdx || in.src == op::kPseudoMapIdxValue) {
                if (in.imm < 0 || static_cast<size_t>(in.imm) >= p.maps.size() || !p.maps[in.imm])
                    return "map index out of range at " + std::to_string(i);
            } else if (in.src == op::kPseudoFunc) {
                const int64_t t = i + 1 + in.imm;
                if (t < 0 || t >= n) return "function address out of range at " + std::to_string(i);
            } else if (in.src != 0) {
                return "unrelocated lddw src " + std::to_string(in.src) + " at " +
                       std::to_string(i);
            }
            ++i;
        } else if (in.opcode == (op::kClassJmp | op::kCall) && in.src == op::kPseudoCall) {
            const int64_t t = i + 1 + in.imm;
            if (t < 0 || t >= n) return "call target out of range at " + std::to_string(i);
        }
    }
    return "";
}

}  // namespace liveio::ebpf::testing
