#include "ebpf/verifier_range.h"

#include <algorithm>
#include <optional>

#include "ebpf/insn.h"

namespace liveio::ebpf::verifier_detail {
namespace {

constexpr uint64_t kU32Max = 0xffffffffull;
constexpr int64_t kS64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kS64Max = std::numeric_limits<int64_t>::max();

// All bits up to the highest set bit of v.
uint64_t fill_below(uint64_t v) {
    for (int s = 1; s < 64; s <<= 1) v |= v >> s;
    return v;
}

// Exact results for constant operands, with the interpreter's semantics (RFC 9669: division
// by zero gives 0, modulo by zero leaves dst, shift amounts are masked). nullopt: no constant.
std::optional<uint64_t> eval64(uint8_t code, int16_t offset, uint64_t a, uint64_t b) {
    const auto sa = static_cast<int64_t>(a), sb = static_cast<int64_t>(b);
    switch (code) {
        case op::kAdd: return a + b;
        case op::kSub: return a - b;
        case op::kMul: return a * b;
        case op::kDiv:
            if (offset == 1) return b == 0 ? 0 : sb == -1 ? 0 - a : static_cast<uint64_t>(sa / sb);
            return b ? a / b : 0;
        case op::kMod:
            if (offset == 1) return b == 0 ? a : sb == -1 ? 0 : static_cast<uint64_t>(sa % sb);
            return b ? a % b : a;
        case op::kOr: return a | b;
        case op::kAnd: return a & b;
        case op::kXor: return a ^ b;
        case op::kLsh: return a << (b & 63);
        case op::kRsh: return a >> (b & 63);
        case op::kArsh: return static_cast<uint64_t>(sa >> (b & 63));
        case op::kNeg: return 0 - a;
        case op::kMov:
            switch (offset) {
                case 0: return b;
                case 8: return static_cast<uint64_t>(static_cast<int64_t>(static_cast<int8_t>(b)));
                case 16:
                    return static_cast<uint64_t>(static_cast<int64_t>(static_cast<int16_t>(b)));
                case 32:
                    return static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(b)));
            }
    }
    return std::nullopt;
}

std::optional<uint64_t> eval32(uint8_t code, int16_t offset, uint32_t a, uint32_t b) {
    const auto sa = static_cast<int32_t>(a), sb = static_cast<int32_t>(b);
    uint32_t r;
    switch (code) {
        case op::kAdd: r = a + b; break;
        case op::kSub: r = a - b; break;
        case op::kMul: r = a * b; break;
        case op::kDiv:
            if (offset == 1)
                r = b == 0 ? 0 : sb == -1 ? 0u - a : static_cast<uint32_t>(sa / sb);
            else
                r = b ? a / b : 0;
            break;
        case op::kMod:
            if (offset == 1)
                r = b == 0 ? a : sb == -1 ? 0 : static_cast<uint32_t>(sa % sb);
            else
                r = b ? a % b : a;
            break;
        case op::kOr: r = a | b; break;
        case op::kAnd: r = a & b; break;
        case op::kXor: r = a ^ b; break;
        case op::kLsh: r = a << (b & 31); break;
        case op::kRsh: r = a >> (b & 31); break;
        case op::kArsh: r = static_cast<uint32_t>(sa >> (b & 31)); break;
        case op::kNeg: r = 0 - a; break;
        case op::kMov:
            if (offset == 0)
                r = b;
            else if (offset == 8)
                r = static_cast<uint32_t>(static_cast<int32_t>(static_cast<int8_t>(b)));
            else if (offset == 16)
                r = static_cast<uint32_t>(static_cast<int32_t>(static_cast<int16_t>(b)));
            else
                return std::nullopt;
            break;
        default: return std::nullopt;
    }
    return r;
}

std::optional<uint64_t> eval_end(bool alu64, bool to_big, int32_t width, uint64_t v) {
    const bool swap = alu64 || to_big;  // the host is little-endian
    switch (width) {
        case 16:
            return swap ? __builtin_bswap16(static_cast<uint16_t>(v)) : static_cast<uint16_t>(v);
        case 32:
            return swap ? __builtin_bswap32(static_cast<uint32_t>(v)) : static_cast<uint32_t>(v);
        case 64: return swap ? __builtin_bswap64(v) : v;
    }
    return std::nullopt;
}

Range finish(Range r) { return normalize(r) ? r : Range::unknown(); }

// 64-bit transfer function for non-constant operands.
Range range64(uint8_t code, int16_t offset, const Range& a, const Range& b) {
    Range r;
    switch (code) {
        case op::kAdd: {
            uint64_t hi;
            if (!__builtin_add_overflow(a.umax, b.umax, &hi)) {
                r.umin = a.umin + b.umin;
                r.umax = hi;
            }
            int64_t lo, shi;
            if (!__builtin_add_overflow(a.smin, b.smin, &lo) &&
                !__builtin_add_overflow(a.smax, b.smax, &shi)) {
                r.smin = lo;
                r.smax = shi;
            }
            return finish(r);
        }
        case op::kSub: {
            if (a.umin >= b.umax) {
                r.umin = a.umin - b.umax;
                r.umax = a.umax - b.umin;
            }
            int64_t lo, hi;
            if (!__builtin_sub_overflow(a.smin, b.smax, &lo) &&
                !__builtin_sub_overflow(a.smax, b.smin, &hi)) {
                r.smin = lo;
                r.smax = hi;
            }
            return finish(r);
        }
        case op::kMul:
            if (a.umax <= kU32Max && b.umax <= kU32Max)
                return finish(Range::unsigned_range(a.umin * b.umin, a.umax * b.umax));
            return r;
        case op::kDiv:
            if (offset != 0) return r;
            if (b.umin == 0) return finish(Range::unsigned_range(0, a.umax));
            return finish(Range::unsigned_range(a.umin / b.umax, a.umax / b.umin));
        case op::kMod:
            if (offset != 0) return r;
            return finish(
                Range::unsigned_range(0, b.umin > 0 ? std::min(a.umax, b.umax - 1) : a.umax));
        case op::kAnd: return finish(Range::unsigned_range(0, std::min(a.umax, b.umax)));
        case op::kOr:
            return finish(Range::unsigned_range(std::max(a.umin, b.umin),
                                                fill_below(std::max(a.umax, b.umax))));
        case op::kXor:
            return finish(Range::unsigned_range(0, fill_below(std::max(a.umax, b.umax))));
        case op::kLsh:
            if (!b.is_const()) return r;
            if (const unsigned k = b.umin & 63; a.umax <= (~uint64_t{0} >> k))
                return finish(Range::unsigned_range(a.umin << k, a.umax << k));
            return r;
        case op::kRsh:
            if (!b.is_const()) return finish(Range::unsigned_range(0, a.umax));
            return finish(Range::unsigned_range(a.umin >> (b.umin & 63), a.umax >> (b.umin & 63)));
        case op::kArsh:
            if (!b.is_const()) return r;
            return finish(Range::signed_range(a.smin >> (b.umin & 63), a.smax >> (b.umin & 63)));
        case op::kNeg:
            if (a.smin == kS64Min) return r;
            return finish(Range::signed_range(-a.smax, -a.smin));
        case op::kMov: {
            if (offset == 0) return b;
            const int64_t lim = int64_t{1} << (offset - 1);
            if (b.umax < static_cast<uint64_t>(lim)) return b;
            return finish(Range::signed_range(-lim, lim - 1));
        }
    }
    return r;
}

// A 64-bit range as the low 32 bits see it.
Range low32(const Range& r) { return r.umax <= kU32Max ? r : Range::unsigned_range(0, kU32Max); }

}  // namespace

Range Range::unsigned_range(uint64_t lo, uint64_t hi) {
    Range r;
    r.umin = lo;
    r.umax = hi;
    normalize(r);
    return r;
}

Range Range::signed_range(int64_t lo, int64_t hi) {
    Range r;
    r.smin = lo;
    r.smax = hi;
    normalize(r);
    return r;
}

bool normalize(Range& r) {
    for (int round = 0; round < 2; ++round) {
        if (r.umin > r.umax || r.smin > r.smax) return false;
        // The signed interval maps to one unsigned interval when it does not cross zero.
        if (r.smin >= 0 || r.smax < 0) {
            r.umin = std::max(r.umin, static_cast<uint64_t>(r.smin));
            r.umax = std::min(r.umax, static_cast<uint64_t>(r.smax));
        }
        // The unsigned interval maps to one signed interval when it does not cross 2^63.
        if (r.umax <= static_cast<uint64_t>(kS64Max) || r.umin > static_cast<uint64_t>(kS64Max)) {
            r.smin = std::max(r.smin, static_cast<int64_t>(r.umin));
            r.smax = std::min(r.smax, static_cast<int64_t>(r.umax));
        }
    }
    return r.umin <= r.umax && r.smin <= r.smax;
}

Range alu_range(uint8_t opcode, int16_t offset, int32_t imm, const Range& dst, const Range& src) {
    const bool is64 = op::class_of(opcode) == op::kClassAlu64;
    const uint8_t code = opcode & 0xf0;
    if (code == op::kEnd) {
        if (dst.is_const()) {
            if (auto v = eval_end(is64, opcode & op::kSrcX, imm, dst.umin))
                return Range::constant(*v);
        }
        if (imm == 64) return is64 || (opcode & op::kSrcX) ? Range::unknown() : dst;
        const uint64_t max = (uint64_t{1} << imm) - 1;
        if (!is64 && !(opcode & op::kSrcX) && dst.umax <= max) return dst;
        return Range::unsigned_range(0, max);
    }
    if (dst.is_const() && src.is_const()) {
        auto v = is64 ? eval64(code, offset, dst.umin, src.umin)
                      : eval32(code, offset, static_cast<uint32_t>(dst.umin),
                               static_cast<uint32_t>(src.umin));
        if (v) return Range::constant(*v);
    }
    if (is64) return range64(code, offset, dst, src);
    // 32-bit: where the 64-bit result of the low halves stays below 2^32 no wrap happened and
    // it equals the 32-bit result; operations whose 32-bit form differs otherwise (sign bit 31,
    // shift masks) get the full 32-bit range.
    const Range a = low32(dst), b = low32(src);
    Range r = Range::unsigned_range(0, kU32Max);
    switch (code) {
        case op::kAdd:
        case op::kSub:
        case op::kMul:
        case op::kAnd:
        case op::kOr:
        case op::kXor: r = range64(code, 0, a, b); break;
        case op::kDiv:
        case op::kMod:
            if (offset == 0) r = range64(code, 0, a, b);
            break;
        case op::kLsh:
        case op::kRsh:
            if (b.is_const() && b.umin < 32) r = range64(code, 0, a, b);
            break;
        case op::kMov:
            if (offset == 0)
                r = b;
            else if (b.umax < (uint64_t{1} << (offset - 1)))
                r = b;
            break;
        default: break;
    }
    return r.umax <= kU32Max ? r : Range::unsigned_range(0, kU32Max);
}

bool refine_branch(uint8_t code, bool taken, Range& a, Range& b) {
    // Reduce to the taken form of the complementary operation.
    if (!taken) {
        switch (code) {
            case op::kJeq: code = op::kJne; break;
            case op::kJne: code = op::kJeq; break;
            case op::kJgt: code = op::kJle; break;
            case op::kJge: code = op::kJlt; break;
            case op::kJlt: code = op::kJge; break;
            case op::kJle: code = op::kJgt; break;
            case op::kJsgt: code = op::kJsle; break;
            case op::kJsge: code = op::kJslt; break;
            case op::kJslt: code = op::kJsge; break;
            case op::kJsle: code = op::kJsgt; break;
            case op::kJset:
                // Not taken: no common bit.
                if (a.is_const() && b.is_const()) return (a.umin & b.umin) == 0;
                if (b.is_const() && (a.umin & b.umin) == b.umin && b.umin != 0 && a.is_const())
                    return false;
                return true;
            default: return true;
        }
    }
    switch (code) {
        case op::kJeq: {
            Range both{std::max(a.umin, b.umin), std::min(a.umax, b.umax), std::max(a.smin, b.smin),
                       std::min(a.smax, b.smax)};
            if (!normalize(both)) return false;
            a = b = both;
            return true;
        }
        case op::kJne:
            // Only a constant on one side can shave the other's bounds.
            for (int side = 0; side < 2; ++side) {
                Range& x = side ? b : a;
                const Range& c = side ? a : b;
                if (!c.is_const()) continue;
                const uint64_t v = c.umin;
                if (x.is_const() && x.umin == v) return false;
                if (x.umin == v) ++x.umin;
                if (x.umax == v) --x.umax;
                if (x.smin == static_cast<int64_t>(v)) ++x.smin;
                if (x.smax == static_cast<int64_t>(v)) --x.smax;
                if (!normalize(x)) return false;
            }
            return true;
        case op::kJlt:  // a < b
            if (b.umax == 0 || a.umin == std::numeric_limits<uint64_t>::max()) return false;
            a.umax = std::min(a.umax, b.umax - 1);
            b.umin = std::max(b.umin, a.umin + 1);
            return normalize(a) && normalize(b);
        case op::kJle:
            a.umax = std::min(a.umax, b.umax);
            b.umin = std::max(b.umin, a.umin);
            return normalize(a) && normalize(b);
        case op::kJgt: return refine_branch(op::kJlt, true, b, a);
        case op::kJge: return refine_branch(op::kJle, true, b, a);
        case op::kJslt:
            if (b.smax == kS64Min || a.smin == kS64Max) return false;
            a.smax = std::min(a.smax, b.smax - 1);
            b.smin = std::max(b.smin, a.smin + 1);
            return normalize(a) && normalize(b);
        case op::kJsle:
            a.smax = std::min(a.smax, b.smax);
            b.smin = std::max(b.smin, a.smin);
            return normalize(a) && normalize(b);
        case op::kJsgt: return refine_branch(op::kJslt, true, b, a);
        case op::kJsge: return refine_branch(op::kJsle, true, b, a);
        case op::kJset:
            if (a.is_const() && b.is_const()) return (a.umin & b.umin) != 0;
            if (a.umax == 0 || b.umax == 0) return false;
            return true;
    }
    return true;
}

bool refine_branch32(uint8_t code, bool taken, Range& a, Range& b) {
    constexpr uint64_t kS32Max = 0x7fffffff;
    if (a.umax <= kS32Max && b.umax <= kS32Max) return refine_branch(code, taken, a, b);
    if (a.is_const() && b.is_const()) {
        // Decide on the low halves, sign-extended for the signed comparisons.
        const bool is_signed =
            code == op::kJsgt || code == op::kJsge || code == op::kJslt || code == op::kJsle;
        auto low = [&](uint64_t v) {
            return is_signed ? static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(v)))
                             : static_cast<uint64_t>(static_cast<uint32_t>(v));
        };
        Range la = Range::constant(low(a.umin)), lb = Range::constant(low(b.umin));
        return refine_branch(code, taken, la, lb);
    }
    return true;
}

}  // namespace liveio::ebpf::verifier_detail
