// Private to the verifier: the abstract state of one program path (registers, stack frames,
// reserved ring buffer records) and the covering relation used to prune paths.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "ebpf/insn.h"
#include "ebpf/verifier_range.h"

namespace liveio::ebpf::verifier_detail {

// Where a scalar's value came from: slot `slot` of the state saved at checkpoint
// `checkpoint`. When a decision depends on the value's range (a branch taken one way only,
// pointer arithmetic, a helper size), every origin is marked precise; pruning compares
// ranges only in precise slots, so values that only flow into stores and results do not
// multiply the states (the kernel's precision tracking).
struct Origin {
    uint32_t checkpoint;
    uint16_t slot;
};
inline constexpr int kMaxOrigins = 4;

// Slots number the registers and 8-byte stack slots of every frame.
inline constexpr int kSlotsPerFrame = kNumRegs + kStackSize / 8;
inline constexpr int kMaxSlots = kMaxCallDepth * kSlotsPerFrame;
inline constexpr int reg_slot(int frame, int regno) { return frame * kSlotsPerFrame + regno; }
inline constexpr int spill_slot(int frame, int stack_slot) {
    return frame * kSlotsPerFrame + kNumRegs + stack_slot;
}

enum class Kind : uint8_t {
    Uninit,
    Scalar,
    Ctx,               // the program's context, `size` bytes
    Stack,             // a stack frame (`frame`), offsets relative to that frame's r10
    MapValue,          // value of map `map`, `size` bytes
    MapValueOrNull,    // map_lookup_elem result before its null check
    MapPtr,            // map `map` itself (lddw), only for helpers
    RingbufMem,        // a reserved ring buffer record of `size` bytes (reference `id`)
    RingbufMemOrNull,  // bpf_ringbuf_reserve result before its null check
    Func,              // a subprogram (lddw src=kPseudoFunc) at insn `target`
};

const char* kind_name(Kind kind);

struct Reg {
    Kind kind = Kind::Uninit;
    // Scalar: the value; pointers: the offset from the start of the region (stack: from r10).
    Range r = Range::constant(0);
    // Scalars: copies made by `mov` share an id so a comparison narrows all of them. OrNull
    // pointers: copies share it so one null check resolves all. Ring buffer records: the
    // reference that submit/discard releases.
    uint32_t id = 0;
    int32_t map = -1;       // MapValue*, MapPtr: index into Program::maps
    uint32_t frame = 0;     // Stack
    uint32_t size = 0;      // Ctx, MapValue*, RingbufMem*: bytes in the region
    int32_t target = 0;     // Func
    uint8_t n_origins = 0;  // Scalar: how many of `origins` are set
    std::array<Origin, kMaxOrigins> origins{};

    static Reg scalar(Range r) {
        Reg reg;
        reg.kind = Kind::Scalar;
        reg.r = r;
        return reg;
    }
    bool is_init() const { return kind != Kind::Uninit; }
    bool is_pointer() const { return kind != Kind::Uninit && kind != Kind::Scalar; }
};

// Stack bytes: never written, written with data (read back as scalars), or part of an
// 8-byte aligned register spill (read back as that register).
enum class Byte : uint8_t { Uninit, Misc, Spill };

struct StackFrame {
    std::array<Byte, kStackSize> bytes{};         // index kStackSize + offset (offset < 0)
    std::vector<std::pair<uint8_t, Reg>> spills;  // slot (index / 8) -> register, sorted

    const Reg* spill(int slot) const;
    void set_spill(int slot, const Reg& reg);
    // Bytes [lo, hi) (indexes) become Misc where written; spills they touch dissolve into
    // Misc bytes (the spill had initialized all 8).
    void write_misc(int lo, int hi);
    // Same, but only dissolves spills: for writes whose exact bytes are unknown.
    void clobber_spills(int lo, int hi);
};

struct Frame {
    std::array<Reg, kNumRegs> regs{};
    StackFrame stack;
    int32_t callsite = -1;       // insn of the call that created this frame (-1: entry)
    bool callback = false;       // entered by a helper (bpf_loop), returns to the helper
    int32_t callback_entry = 0;  // callback: its first insn and the context argument it got,
    Reg callback_arg;            // to enter it again for the helper's next iteration
};

struct Reference {
    uint32_t id;
    uint32_t pc;  // where it was acquired
    bool operator==(const Reference&) const = default;
};

struct State {
    std::vector<Frame> frames;
    std::vector<Reference> refs;  // ring buffer records reserved and not yet released

    Frame& cur() { return frames.back(); }
    const Frame& cur() const { return frames.back(); }
    // Visits every register and spilled register of every frame.
    template <typename F>
    void for_each_reg(F&& f) {
        for (Frame& fr : frames) {
            for (Reg& r : fr.regs) f(r);
            for (auto& [slot, r] : fr.stack.spills) f(r);
        }
    }
    // Visits every register and spilled register with its slot number.
    template <typename F>
    void for_each_slot(F&& f) {
        for (std::size_t fr = 0; fr < frames.size(); ++fr) {
            for (int r = 0; r < kNumRegs; ++r)
                f(reg_slot(static_cast<int>(fr), r), frames[fr].regs[r]);
            for (auto& [slot, r] : frames[fr].stack.spills)
                f(spill_slot(static_cast<int>(fr), slot), r);
        }
    }
    Reg* at_slot(int slot);
    // Drops scalar ids held by a single register: they link nothing and would only make
    // otherwise equal states differ.
    void drop_lone_scalar_ids();
};

// Does every concrete state described by `cur` also belong to `old`? A path from `cur` then
// behaves as one of the paths already verified from `old`.
// `precise` (kMaxSlots flags, or null for all) names the slots whose scalar ranges matter
// in `old`; other scalars of `old` cover any scalar.
bool covers(const State& old, const State& cur, const uint8_t* precise);
inline bool equal(const State& a, const State& b) {
    return covers(a, b, nullptr) && covers(b, a, nullptr);
}
// A hash of what equal() compares: equal states have equal fingerprints. Ids enter only
// through which registers share them (equal() matches them up to renaming), origins not at
// all.
uint64_t fingerprint(const State& s);

}  // namespace liveio::ebpf::verifier_detail
