#include "ebpf/verifier_state.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <unordered_map>

namespace liveio::ebpf::verifier_detail {

const char* kind_name(Kind kind) {
    switch (kind) {
        case Kind::Uninit: return "uninitialized";
        case Kind::Scalar: return "scalar";
        case Kind::Ctx: return "context pointer";
        case Kind::Stack: return "stack pointer";
        case Kind::MapValue: return "map value pointer";
        case Kind::MapValueOrNull: return "map value pointer that may be null";
        case Kind::MapPtr: return "map";
        case Kind::RingbufMem: return "ring buffer record pointer";
        case Kind::RingbufMemOrNull: return "ring buffer record pointer that may be null";
        case Kind::Func: return "function pointer";
    }
    return "?";
}

const Reg* StackFrame::spill(int slot) const {
    auto it = std::lower_bound(spills.begin(), spills.end(), slot,
                               [](const auto& e, int s) { return e.first < s; });
    return it != spills.end() && it->first == slot ? &it->second : nullptr;
}

void StackFrame::set_spill(int slot, const Reg& reg) {
    auto it = std::lower_bound(spills.begin(), spills.end(), slot,
                               [](const auto& e, int s) { return e.first < s; });
    if (it != spills.end() && it->first == slot)
        it->second = reg;
    else
        spills.insert(it, {static_cast<uint8_t>(slot), reg});
    std::fill_n(bytes.begin() + slot * 8, 8, Byte::Spill);
}

void StackFrame::clobber_spills(int lo, int hi) {
    std::erase_if(spills, [&](const auto& e) {
        const int start = e.first * 8;
        if (start >= hi || start + 8 <= lo) return false;
        std::fill_n(bytes.begin() + start, 8, Byte::Misc);
        return true;
    });
}

void StackFrame::write_misc(int lo, int hi) {
    clobber_spills(lo, hi);
    std::fill(bytes.begin() + lo, bytes.begin() + hi, Byte::Misc);
}

Reg* State::at_slot(int slot) {
    const int fr = slot / kSlotsPerFrame, in_frame = slot % kSlotsPerFrame;
    if (fr >= static_cast<int>(frames.size())) return nullptr;
    if (in_frame < kNumRegs) return &frames[fr].regs[in_frame];
    auto& spills = frames[fr].stack.spills;
    for (auto& [s, r] : spills) {
        if (s == in_frame - kNumRegs) return &r;
    }
    return nullptr;
}

void State::drop_lone_scalar_ids() {
    std::unordered_map<uint32_t, int> count;
    for_each_reg([&](Reg& r) {
        if (r.kind == Kind::Scalar && r.id) ++count[r.id];
    });
    for_each_reg([&](Reg& r) {
        if (r.kind == Kind::Scalar && r.id && count[r.id] == 1) r.id = 0;
    });
}

namespace {

// A consistent one-to-one renaming of ids between the old and the current state: ids are
// allocated per path, so equal situations reached on different paths carry different ids.
class IdMap {
public:
    bool match(uint32_t old_id, uint32_t cur_id) {
        if (old_id == 0) return true;  // the old path relied on no link
        if (cur_id == 0) return false;
        for (auto [o, c] : pairs_) {
            if (o == old_id || c == cur_id) return o == old_id && c == cur_id;
        }
        pairs_.emplace_back(old_id, cur_id);
        return true;
    }

private:
    std::vector<std::pair<uint32_t, uint32_t>> pairs_;
};

bool reg_covers(const Reg& old, const Reg& cur, IdMap& ids, bool precise) {
    if (old.kind == Kind::Uninit) return true;  // the old path never read it
    if (old.kind != cur.kind) return false;
    if (old.kind == Kind::Scalar && !precise)
        return true;  // no decision of the old path used its range
    if (!old.r.contains(cur.r)) return false;
    if (!ids.match(old.id, cur.id)) return false;
    switch (old.kind) {
        case Kind::Scalar: return true;
        case Kind::Stack: return old.frame == cur.frame;
        case Kind::Func: return old.target == cur.target;
        default: return old.map == cur.map && old.size == cur.size;
    }
}

bool stack_covers(const StackFrame& old, const StackFrame& cur, IdMap& ids, const uint8_t* precise,
                  int frame) {
    auto slot_precise = [&](int slot) { return !precise || precise[spill_slot(frame, slot)]; };
    // Equal byte maps (the common case: most paths touch the same slots) need no byte walk;
    // the walk per stored state made pruning the verifier's hot spot (fuzz.verifier timeout).
    const bool same_bytes = old.bytes == cur.bytes;
    for (int i = 0; !same_bytes && i < kStackSize; ++i) {
        const Byte o = old.bytes[i], c = cur.bytes[i];
        if (o == Byte::Uninit || o == c) continue;
        if (c == Byte::Uninit) return false;
        if (o == Byte::Misc) {
            // Old read these bytes as data; a spilled scalar reads the same way.
            const Reg* spilled = cur.spill(i / 8);
            if (!spilled || spilled->kind != Kind::Scalar) return false;
            continue;
        }
        // Old held a spill, cur plain data: equivalent when old's was a scalar whose range
        // never mattered.
        const Reg* spilled = old.spill(i / 8);
        if (!spilled || spilled->kind != Kind::Scalar || slot_precise(i / 8)) return false;
    }
    for (const auto& [slot, reg] : old.spills) {
        const Reg* c = cur.spill(slot);
        if (!c) continue;  // checked bytewise above
        if (!reg_covers(reg, *c, ids, slot_precise(slot))) return false;
    }
    return true;
}

// One multiply per value: fingerprints only need to tell most unequal states apart cheaply
// (a collision costs one comparison, never a wrong answer).
class Hasher {
public:
    void add(uint64_t v) { h_ = (std::rotl(h_, 23) ^ v) * 0x9e3779b97f4a7c15ull; }
    uint64_t value() const { return h_ ^ (h_ >> 29); }

private:
    uint64_t h_ = 0;
};

// Only the fields reg_covers compares for the register's kind: equal() compares nothing else.
// An id enters as the position of the first register sharing it (`ids`: id -> position), the
// same in two states whose ids differ only by a renaming.
void hash_reg(Hasher& h, const Reg& r, std::vector<std::pair<uint32_t, uint32_t>>& ids) {
    if (r.kind == Kind::Uninit) {
        h.add(0);
        return;
    }
    uint64_t id = 0;
    if (r.id != 0) {
        id = ids.size() + 1;
        for (const auto& [known, position] : ids)
            if (known == r.id) id = position;
        if (id == ids.size() + 1) ids.emplace_back(r.id, static_cast<uint32_t>(id));
    }
    uint64_t extra = 0;
    switch (r.kind) {
        case Kind::Scalar: break;
        case Kind::Stack: extra = r.frame; break;
        case Kind::Func: extra = static_cast<uint32_t>(r.target); break;
        default: extra = uint64_t{static_cast<uint32_t>(r.map)} << 32 | r.size;
    }
    h.add(static_cast<uint64_t>(r.kind) | id << 8);
    h.add(r.r.umin ^ std::rotl(r.r.umax, 17));
    h.add(static_cast<uint64_t>(r.r.smin) ^ std::rotl(static_cast<uint64_t>(r.r.smax), 41));
    if (extra) h.add(extra);
}

}  // namespace

uint64_t fingerprint(const State& s) {
    Hasher h;
    std::vector<std::pair<uint32_t, uint32_t>> ids;
    h.add(s.frames.size() | s.refs.size() << 16);
    for (const Frame& f : s.frames) {
        h.add(static_cast<uint32_t>(f.callsite) | uint64_t{f.callback} << 32);
        for (const Reg& r : f.regs) hash_reg(h, r, ids);
        // Equal frames have equal byte maps (a byte differing in kind fails one direction of
        // stack_covers).
        for (std::size_t i = 0; i < f.stack.bytes.size(); i += 8) {
            uint64_t word;
            std::memcpy(&word, f.stack.bytes.data() + i, 8);
            if (word) h.add(word ^ i);
        }
        for (const auto& [slot, r] : f.stack.spills) {
            h.add(slot);
            hash_reg(h, r, ids);
        }
    }
    return h.value();
}

bool covers(const State& old, const State& cur, const uint8_t* precise) {
    if (old.frames.size() != cur.frames.size() || old.refs.size() != cur.refs.size()) return false;
    IdMap ids;
    for (size_t f = 0; f < old.frames.size(); ++f) {
        const Frame &o = old.frames[f], &c = cur.frames[f];
        if (o.callsite != c.callsite || o.callback != c.callback) return false;
        for (int r = 0; r < kNumRegs; ++r) {
            const bool p = !precise || precise[reg_slot(static_cast<int>(f), r)];
            if (!reg_covers(o.regs[r], c.regs[r], ids, p)) return false;
        }
        if (!stack_covers(o.stack, c.stack, ids, precise, static_cast<int>(f))) return false;
    }
    // Every reference held must correspond (the old path released each exactly once).
    for (const Reference& o : old.refs) {
        bool found = false;
        for (const Reference& c : cur.refs) {
            IdMap probe = ids;
            if (probe.match(o.id, c.id)) {
                ids = probe;
                found = true;
                break;
            }
        }
        if (!found) return false;
    }
    return true;
}

}  // namespace liveio::ebpf::verifier_detail
