// The input format shared by the verifier and JIT fuzz targets, and the corpus generator:
// a 64-byte header describing the program's context and maps, then raw instructions.
//
//   u16 ctx_size (capped at kMaxCtx), u8 ctx_writable, u8 nmaps (capped at kMaxMaps),
//   kMaxMaps x { u8 type, u8 key_size, u16 value_size, u16 max_entries } (unused ones ignored),
//   padding to 64 bytes, then 8-byte instructions (at most kMaxInsns; a trailing partial one is
//   dropped).
// Map references in the instructions (lddw src=1/2) index the maps in header order, as the
// loader's relocation leaves them, so programs taken from real objects keep their maps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "ebpf/insn.h"
#include "ebpf/map.h"
#include "ebpf/program.h"

namespace liveio::fuzz {

inline constexpr size_t kHeaderBytes = 64;
inline constexpr size_t kMaxMaps = 8;
inline constexpr uint32_t kMaxCtx = 512;
inline constexpr size_t kMaxInsns = 4096;
// Instructions the fuzz targets let the verifier explore per input (see verifies_quickly).
inline constexpr uint64_t kVerifierBudget = 5000;

struct MapShape {
    uint8_t type;
    uint8_t key_size;
    uint16_t value_size;
    uint16_t max_entries;
};

struct ProgramShape {
    uint16_t ctx_size = 0;
    uint8_t ctx_writable = 0;
    uint8_t nmaps = 0;
    MapShape maps[kMaxMaps] = {};
};
static_assert(sizeof(ProgramShape) <= kHeaderBytes);

// The spec a shape byte pattern stands for; nullopt when the type is not one the fuzzers use
// (program arrays need a tail-call registry; they are covered by the unit tests).
inline std::optional<ebpf::MapSpec> map_spec(const MapShape& s) {
    using ebpf::MapType;
    ebpf::MapSpec spec;
    spec.name = "m";
    switch (static_cast<MapType>(s.type)) {
        case MapType::Hash:
        case MapType::Array:
        case MapType::PercpuHash:
        case MapType::PercpuArray:
        case MapType::LruHash:
        case MapType::LruPercpuHash:
            spec.type = static_cast<MapType>(s.type);
            spec.key_size = s.key_size;
            spec.value_size = s.value_size;
            // Small maps keep each execution cheap; the verifier's checks do not depend on size.
            spec.max_entries = s.max_entries > 64 ? 64 : s.max_entries;
            if (spec.value_size > 4096) return std::nullopt;
            return spec;
        case MapType::RingBuf:
            spec.type = MapType::RingBuf;
            spec.max_entries = 4096u << (s.max_entries & 3);
            return spec;
        default: return std::nullopt;
    }
}

struct ProgramInput {
    ProgramShape shape;
    std::vector<ebpf::Insn> insns;
};

inline std::optional<ProgramInput> decode_program_input(const uint8_t* data, size_t size) {
    if (size < kHeaderBytes) return std::nullopt;
    ProgramInput in;
    std::memcpy(&in.shape, data, sizeof(ProgramShape));
    if (in.shape.ctx_size > kMaxCtx) in.shape.ctx_size = kMaxCtx;
    if (in.shape.nmaps > kMaxMaps) in.shape.nmaps = kMaxMaps;
    size_t n = (size - kHeaderBytes) / sizeof(ebpf::Insn);
    if (n == 0) return std::nullopt;
    if (n > kMaxInsns) n = kMaxInsns;
    in.insns.resize(n);
    std::memcpy(in.insns.data(), data + kHeaderBytes, n * sizeof(ebpf::Insn));
    return in;
}

inline std::vector<uint8_t> encode_program_input(const ProgramShape& shape,
                                                 const std::vector<ebpf::Insn>& insns) {
    std::vector<uint8_t> out(kHeaderBytes + insns.size() * sizeof(ebpf::Insn), 0);
    std::memcpy(out.data(), &shape, sizeof shape);
    std::memcpy(out.data() + kHeaderBytes, insns.data(), insns.size() * sizeof(ebpf::Insn));
    return out;
}

// A Program with fresh maps for `in`; nullopt when a map cannot be created from its shape.
inline std::shared_ptr<ebpf::Program> build_program(const ProgramInput& in) {
    auto p = std::make_shared<ebpf::Program>();
    p->name = "fuzz";
    p->section = "fuzz";
    p->license = "GPL";
    p->insns = in.insns;
    p->context.size = in.shape.ctx_size;
    p->context.writable = in.shape.ctx_writable & 1;
    for (size_t i = 0; i < in.shape.nmaps; ++i) {
        auto spec = map_spec(in.shape.maps[i]);
        if (!spec) return nullptr;
        auto m = ebpf::create_map(*spec);
        if (!m) return nullptr;
        p->maps.push_back(std::move(m).value());
    }
    return p;
}

}  // namespace liveio::fuzz
