// The BPF instruction set (RFC 9669): encoding and opcode constants shared by the loader,
// verifier, interpreter and JIT.
#pragma once

#include <cstdint>

namespace liveio::ebpf {

// One 64-bit instruction slot. lddw (BPF_LD|BPF_IMM|BPF_DW) occupies two slots; the second
// slot carries the upper 32 bits of the immediate in `imm` and must have every other field 0.
struct Insn {
    uint8_t opcode;
    uint8_t dst : 4;
    uint8_t src : 4;
    int16_t offset;
    int32_t imm;
};
static_assert(sizeof(Insn) == 8);

constexpr Insn make_insn(uint8_t opcode, uint8_t dst = 0, uint8_t src = 0, int16_t offset = 0,
                         int32_t imm = 0) {
    Insn in{};
    in.opcode = opcode;
    in.dst = dst & 0xf;
    in.src = src & 0xf;
    in.offset = offset;
    in.imm = imm;
    return in;
}

namespace op {
// Instruction classes (low 3 bits).
inline constexpr uint8_t kClassLd = 0x00, kClassLdx = 0x01, kClassSt = 0x02, kClassStx = 0x03,
                         kClassAlu = 0x04, kClassJmp = 0x05, kClassJmp32 = 0x06, kClassAlu64 = 0x07;
inline constexpr uint8_t class_of(uint8_t opcode) { return opcode & 0x07; }

// Arithmetic and jump: source bit and operation (high 4 bits).
inline constexpr uint8_t kSrcK = 0x00, kSrcX = 0x08;
inline constexpr uint8_t kAdd = 0x00, kSub = 0x10, kMul = 0x20, kDiv = 0x30, kOr = 0x40,
                         kAnd = 0x50, kLsh = 0x60, kRsh = 0x70, kNeg = 0x80, kMod = 0x90,
                         kXor = 0xa0, kMov = 0xb0, kArsh = 0xc0, kEnd = 0xd0;
inline constexpr uint8_t kJa = 0x00, kJeq = 0x10, kJgt = 0x20, kJge = 0x30, kJset = 0x40,
                         kJne = 0x50, kJsgt = 0x60, kJsge = 0x70, kCall = 0x80, kExit = 0x90,
                         kJlt = 0xa0, kJle = 0xb0, kJslt = 0xc0, kJsle = 0xd0;

// Load/store: size (bits 3-4) and mode (bits 5-7).
inline constexpr uint8_t kSizeW = 0x00, kSizeH = 0x08, kSizeB = 0x10, kSizeDW = 0x18;
inline constexpr uint8_t kModeImm = 0x00, kModeAbs = 0x20, kModeInd = 0x40, kModeMem = 0x60,
                         kModeMemSx = 0x80, kModeAtomic = 0xc0;

// Atomic operations (imm of BPF_STX|BPF_ATOMIC).
inline constexpr int32_t kAtomicFetch = 0x01, kAtomicXchg = 0xe0 | kAtomicFetch,
                         kAtomicCmpXchg = 0xf0 | kAtomicFetch;

// Pseudo sources of lddw (src field), as produced by clang/libbpf relocation.
inline constexpr uint8_t kPseudoMapFd = 1, kPseudoMapValue = 2, kPseudoBtfId = 3, kPseudoFunc = 4,
                         kPseudoMapIdx = 5, kPseudoMapIdxValue = 6;
// Pseudo sources of call (src field): 0 helper by id, 1 bpf-to-bpf call (imm = relative target).
inline constexpr uint8_t kPseudoCall = 1, kPseudoKfuncCall = 2;

inline constexpr uint8_t kLddw = kClassLd | kModeImm | kSizeDW;  // 0x18
}  // namespace op

inline constexpr int kNumRegs = 11;               // r0..r10; r10 is the read-only frame pointer
inline constexpr int kStackSize = 512;            // bytes per frame, as in the kernel
inline constexpr int kMaxCallDepth = 8;           // bpf-to-bpf frames, as in the kernel
inline constexpr uint32_t kMaxInsns = 1'000'000;  // program size limit (kernel: 1M for root)

}  // namespace liveio::ebpf
