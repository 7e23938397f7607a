#include "ebpf/encoding.h"

#include <cerrno>

#include <fmt/format.h>

namespace liveio::ebpf {
namespace {

// The reason `in` (at pc) is malformed, or nullptr.
const char* alu_problem(const Insn& in, bool is64) {
    const uint8_t code = in.opcode & 0xf0;
    const bool x = in.opcode & op::kSrcX;
    if (code == op::kEnd) {
        if (is64 && x) return "bswap with the source bit set";
        if (in.src != 0 || in.offset != 0)
            return "reserved field of an endianness instruction is not zero";
        if (in.imm != 16 && in.imm != 32 && in.imm != 64)
            return "endianness width must be 16, 32 or 64";
        return nullptr;
    }
    if (code > op::kEnd) return "unknown ALU operation";
    if (code == op::kNeg) {
        if (x || in.src != 0 || in.imm != 0 || in.offset != 0)
            return "reserved field of neg is not zero";
        return nullptr;
    }
    if (x ? in.imm != 0 : in.src != 0)
        return x ? "imm of a register-source ALU instruction is not zero"
                 : "src of an immediate ALU instruction is not zero";
    const bool offset_ok =
        in.offset == 0 || ((code == op::kDiv || code == op::kMod) && in.offset == 1) ||
        (code == op::kMov && x && (in.offset == 8 || in.offset == 16 || (is64 && in.offset == 32)));
    return offset_ok ? nullptr : "invalid offset for this ALU instruction";
}

const char* jmp_problem(const Insn& in, bool is32) {
    const uint8_t code = in.opcode & 0xf0;
    const bool x = in.opcode & op::kSrcX;
    switch (code) {
        case op::kJa:
            if (x || in.dst != 0 || in.src != 0) return "reserved field of ja is not zero";
            if (is32 ? in.offset != 0 : in.imm != 0) return "reserved field of ja is not zero";
            return nullptr;
        case op::kCall:
            if (is32) return "call in the JMP32 class";
            if (in.offset != 0) return "offset of call is not zero";
            if (x) {
                if (in.src != 0) return "src of callx is not zero";
                // The register is dst, or imm where older assemblers put it: r0..r10 either way
                // (the engines index their register file with it).
                if (in.dst == 0 && (in.imm < 0 || in.imm > 10))
                    return "callx register in imm is not r0..r10";
                return nullptr;
            }
            if (in.dst != 0) return "dst of call is not zero";
            if (in.src != 0 && in.src != op::kPseudoCall)
                return "unsupported call kind (kfunc calls are not supported)";
            return nullptr;
        case op::kExit:
            if (is32) return "exit in the JMP32 class";
            if (x || in.dst != 0 || in.src != 0 || in.imm != 0 || in.offset != 0)
                return "reserved field of exit is not zero";
            return nullptr;
        default:
            if (code > op::kJsle) return "unknown jump operation";
            if (x ? in.imm != 0 : in.src != 0)
                return x ? "imm of a register-source jump is not zero"
                         : "src of an immediate jump is not zero";
            return nullptr;
    }
}

const char* mem_problem(const Insn& in) {
    const uint8_t cls = op::class_of(in.opcode);
    const uint8_t mode = in.opcode & 0xe0;
    const uint8_t size = in.opcode & 0x18;
    switch (cls) {
        case op::kClassLdx:
            if (mode != op::kModeMem && !(mode == op::kModeMemSx && size != op::kSizeDW))
                return "unsupported load mode";
            return in.imm != 0 ? "imm of a load is not zero" : nullptr;
        case op::kClassSt:
            if (mode != op::kModeMem) return "unsupported store mode";
            return in.src != 0 ? "src of an immediate store is not zero" : nullptr;
        default:  // STX
            if (mode == op::kModeMem)
                return in.imm != 0 ? "imm of a register store is not zero" : nullptr;
            if (mode != op::kModeAtomic) return "unsupported store mode";
            if (size != op::kSizeW && size != op::kSizeDW)
                return "atomic operations are 32 or 64 bits";
            switch (in.imm) {
                case op::kAdd:
                case op::kOr:
                case op::kAnd:
                case op::kXor:
                case op::kAdd | op::kAtomicFetch:
                case op::kOr | op::kAtomicFetch:
                case op::kAnd | op::kAtomicFetch:
                case op::kXor | op::kAtomicFetch:
                case op::kAtomicXchg:
                case op::kAtomicCmpXchg: return nullptr;
            }
            return "unknown atomic operation";
    }
}

// Instructions that write dst: r10 is read-only.
bool writes_dst(const Insn& in) {
    const uint8_t cls = op::class_of(in.opcode);
    return cls == op::kClassAlu || cls == op::kClassAlu64 || cls == op::kClassLdx ||
           in.opcode == op::kLddw;
}

}  // namespace

Result<void> check_encoding(const std::vector<Insn>& insns) {
    if (insns.empty()) return make_error(EINVAL, "empty program");
    if (insns.size() > kMaxInsns)
        return make_error(
            E2BIG, fmt::format("program has {} instructions, limit {}", insns.size(), kMaxInsns));
    for (size_t pc = 0; pc < insns.size(); ++pc) {
        const Insn& in = insns[pc];
        const char* problem = nullptr;
        if (in.dst >= kNumRegs || in.src >= kNumRegs)
            problem = "register number above r10";
        else if (in.dst == 10 && writes_dst(in))
            problem = "r10 is read-only";
        else
            switch (op::class_of(in.opcode)) {
                case op::kClassAlu: problem = alu_problem(in, false); break;
                case op::kClassAlu64: problem = alu_problem(in, true); break;
                case op::kClassJmp: problem = jmp_problem(in, false); break;
                case op::kClassJmp32: problem = jmp_problem(in, true); break;
                case op::kClassLd:
                    if (in.opcode != op::kLddw) {
                        problem = "legacy packet access (ld abs/ind) is not supported";
                        break;
                    }
                    if (pc + 1 >= insns.size()) {
                        problem = "lddw lacks its second slot";
                        break;
                    }
                    if (in.offset != 0) {
                        problem = "offset of lddw is not zero";
                        break;
                    }
                    if (in.src != 0 && in.src != op::kPseudoMapIdx &&
                        in.src != op::kPseudoMapIdxValue && in.src != op::kPseudoFunc) {
                        problem = "unsupported lddw source (maps must be relocated to map indexes)";
                        break;
                    }
                    if (const Insn& next = insns[pc + 1];
                        next.opcode || next.dst || next.src || next.offset) {
                        problem = "second slot of lddw has non-zero fields";
                        break;
                    }
                    ++pc;
                    break;
                default: problem = mem_problem(in); break;
            }
        if (problem)
            return make_error(EINVAL,
                              fmt::format("insn {} (opcode {:#04x}): {}", pc, in.opcode, problem));
    }
    return {};
}

}  // namespace liveio::ebpf
