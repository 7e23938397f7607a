// Private to the verifier: the abstract domain of scalars (an unsigned and a signed interval
// that constrain each other) and the transfer functions of ALU instructions over it.
#pragma once

#include <cstdint>
#include <limits>

namespace liveio::ebpf::verifier_detail {

struct Range {
    uint64_t umin = 0, umax = std::numeric_limits<uint64_t>::max();
    int64_t smin = std::numeric_limits<int64_t>::min(), smax = std::numeric_limits<int64_t>::max();

    static Range unknown() { return {}; }
    static Range constant(uint64_t v) {
        return {v, v, static_cast<int64_t>(v), static_cast<int64_t>(v)};
    }
    static Range unsigned_range(uint64_t lo, uint64_t hi);  // lo <= hi
    static Range signed_range(int64_t lo, int64_t hi);      // lo <= hi
    bool is_const() const { return umin == umax; }
    bool empty() const { return umin > umax || smin > smax; }
    // Does every value of `other` lie in this range?
    bool contains(const Range& other) const {
        return umin <= other.umin && other.umax <= umax && smin <= other.smin && other.smax <= smax;
    }
    bool operator==(const Range&) const = default;
};

// Tightens each interval with what the other implies; returns false when the range is empty
// (the path that produced it is infeasible).
bool normalize(Range& r);

// dst = dst OP src for the ALU instruction `opcode` (class, operation, source bit) with its
// offset (signed division, sign-extending moves) and imm (endianness width).
Range alu_range(uint8_t opcode, int16_t offset, int32_t imm, const Range& dst, const Range& src);

// Narrows a and b to the values for which `a OP b` (jump operation `code`, 64-bit) has the
// outcome `taken`. Returns false when that outcome is impossible.
bool refine_branch(uint8_t code, bool taken, Range& a, Range& b);
// The same for a JMP32 comparison: exact when both sides fit in 31 bits or are constants,
// otherwise both outcomes stay possible and nothing is narrowed.
bool refine_branch32(uint8_t code, bool taken, Range& a, Range& b);

}  // namespace liveio::ebpf::verifier_detail
