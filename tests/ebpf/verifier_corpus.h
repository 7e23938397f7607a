// The verifier corpus fixture: programs assembled from text with a fixed set of maps and
// helper prototypes, and assertions on where and why the verifier rejects them.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "ebpf/assembler.h"
#include "ebpf/verifier.h"
#include "ebpf/vm.h"

namespace liveio::ebpf::corpus {

// lddw immediates the fixture turns into map and function references.
inline constexpr uint64_t kMapMarker = 0x4d41500000000000;  // + index: map pointer
inline constexpr uint64_t kMapValueMarker =
    0x4d41560000000000;  // + index: the value of a global data map
inline constexpr uint64_t kFuncMarker = 0x46554e4300000000;  // + insn index: callback

inline uint64_t dummy_helper(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    return 0;
}

// The helpers the corpus calls, declared here so the tests do not depend on
// HelperTable::standard(): the prototypes are what the verifier checks.
inline HelperTable corpus_helpers() {
    using A = ArgType;
    HelperTable t;
    auto add = [&](int32_t id, const char* name, RetType ret, std::array<ArgType, 5> args) {
        HelperProto p;
        p.name = name;
        p.fn = dummy_helper;
        p.ret = ret;
        p.args = args;
        t.add(id, p);
    };
    add(helper_id::kMapLookupElem, "map_lookup_elem", RetType::MapValueOrNull,
        {A::PtrToMap, A::PtrToMapKey});
    add(helper_id::kMapUpdateElem, "map_update_elem", RetType::Integer,
        {A::PtrToMap, A::PtrToMapKey, A::PtrToMapValue, A::Scalar});
    add(helper_id::kProbeRead, "probe_read", RetType::Integer,
        {A::PtrToUninitMem, A::ConstSizeOrZero, A::Anything});
    add(helper_id::kGetCurrentComm, "get_current_comm", RetType::Integer,
        {A::PtrToUninitMem, A::ConstSize});
    add(helper_id::kKtimeGetNs, "ktime_get_ns", RetType::Integer, {});
    add(helper_id::kRingbufReserve, "ringbuf_reserve", RetType::RingbufMemOrNull,
        {A::PtrToMap, A::ConstSizeOrZero, A::Scalar});
    add(helper_id::kRingbufSubmit, "ringbuf_submit", RetType::Void,
        {A::PtrToRingbufMem, A::Scalar});
    add(helper_id::kRingbufDiscard, "ringbuf_discard", RetType::Void,
        {A::PtrToRingbufMem, A::Scalar});
    add(helper_id::kLoop, "loop", RetType::Integer,
        {A::Scalar, A::PtrToFunc, A::Anything, A::Scalar});
    return t;
}

inline MapSpec spec(MapType type, uint32_t key, uint32_t value, uint32_t entries,
                    uint32_t flags = 0) {
    MapSpec s;
    s.name = fmt::format("map{}", static_cast<uint32_t>(type));
    s.type = type;
    s.key_size = key;
    s.value_size = value;
    s.max_entries = entries;
    s.flags = flags;
    return s;
}

// Maps of the corpus: MAP0 hash u32 -> 16 bytes, MAP1 ring buffer, MAP2 array u32 -> 8 bytes
// (global data style), MAP3 read-only array (BPF_F_RDONLY_PROG), MAP4 program array.
inline std::vector<std::shared_ptr<Map>> corpus_maps() {
    std::vector<std::shared_ptr<Map>> maps;
    for (const MapSpec& s : {spec(MapType::Hash, 4, 16, 8), spec(MapType::RingBuf, 0, 0, 4096),
                             spec(MapType::Array, 4, 8, 1), spec(MapType::Array, 4, 8, 1, 1u << 7),
                             spec(MapType::ProgArray, 4, 4, 4)}) {
        auto m = create_map(s);
        EXPECT_TRUE(m.ok()) << m.error().message;
        maps.push_back(m.ok() ? m.value() : nullptr);
    }
    return maps;
}

struct Corpus {
    Program program;
    HelperTable helpers = corpus_helpers();
};

// Assembles `text` with a `ctx_size`-byte context (writable or not) and the corpus maps.
inline Program make_program(const std::string& text, uint32_t ctx_size = 16,
                            bool writable = false) {
    Program p;
    auto insns = assemble(text);
    EXPECT_TRUE(insns.ok()) << insns.error().message;
    if (!insns.ok()) return p;
    p.name = "corpus";
    p.insns = std::move(insns.value());
    p.maps = corpus_maps();
    p.context = {ctx_size, writable};
    for (size_t i = 0; i + 1 < p.insns.size(); ++i) {
        Insn& in = p.insns[i];
        if (in.opcode != op::kLddw) continue;
        const uint64_t v = static_cast<uint32_t>(in.imm) |
                           (uint64_t{static_cast<uint32_t>(p.insns[i + 1].imm)} << 32);
        const uint64_t tag = v & ~0xffffull, arg = v & 0xffff;
        if (tag == kMapMarker || tag == kMapValueMarker) {
            in.src = tag == kMapMarker ? op::kPseudoMapIdx : op::kPseudoMapIdxValue;
            in.imm = static_cast<int32_t>(arg);
            p.insns[i + 1].imm = 0;
        } else if (tag == kFuncMarker) {
            in.src = op::kPseudoFunc;
            in.imm = static_cast<int32_t>(arg) - static_cast<int32_t>(i + 1);
            p.insns[i + 1].imm = 0;
        }
        ++i;
    }
    return p;
}

inline std::string map(int index) { return fmt::format("{:#x}", kMapMarker + index); }
inline std::string map_value(int index) { return fmt::format("{:#x}", kMapValueMarker + index); }
inline std::string func(int insn) { return fmt::format("{:#x}", kFuncMarker + insn); }

// r0 = bpf_map_lookup_elem(map `index`, &(u32)key), the key at [r10-4]: six instructions.
inline std::string lookup(int index, int key) {
    return fmt::format("stw [%r10-4], {}\nlddw %r1, {}\nmov %r2, %r10\nadd %r2, -4\ncall 1\n", key,
                       map(index));
}

inline Result<VerifierReport> check(const Program& p, const VerifierOptions& options = {}) {
    return verify(p, corpus_helpers(), options);
}

// Asserts rejection at `insn` with `reason` in the message.
inline void expect_rejected(const Program& p, int insn, const std::string& reason,
                            const VerifierOptions& options = {}) {
    auto r = check(p, options);
    ASSERT_FALSE(r.ok()) << "accepted, expected rejection at insn " << insn << ": " << reason;
    const std::string& msg = r.error().message;
    EXPECT_EQ(msg.rfind(fmt::format("insn {}", insn), 0), 0u) << msg;
    EXPECT_NE(msg.find(reason), std::string::npos) << msg;
}

// One program of a rule table: its text, where it is refused and why.
struct Refusal {
    std::string text;
    int insn;
    std::string reason;
};

inline void expect_all_rejected(const std::vector<Refusal>& table,
                                const VerifierOptions& options = {}) {
    for (const Refusal& r : table) {
        SCOPED_TRACE(r.text);
        expect_rejected(make_program(r.text, 16, true), r.insn, r.reason, options);
    }
}

inline void expect_accepted(const Program& p, const VerifierOptions& options = {}) {
    auto r = check(p, options);
    EXPECT_TRUE(r.ok()) << r.error().message;
}

}  // namespace liveio::ebpf::corpus
