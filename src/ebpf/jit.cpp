#include "ebpf/jit.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "ebpf/map.h"

namespace liveio::ebpf {
namespace {

// x86-64 register numbers.
enum X : uint8_t {
    RAX = 0,
    RCX,
    RDX,
    RBX,
    RSP,
    RBP,
    RSI,
    RDI,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15
};
constexpr uint8_t kRegMap[kNumRegs] = {RAX, RDI, RSI, RDX, RCX, R8, RBX, R13, R14, R15, RBP};
constexpr uint8_t kEnv = R12, kT1 = R10, kT2 = R11;

// x86 condition codes for jcc (0F 80+cc).
constexpr uint8_t kCcE = 0x4, kCcNE = 0x5, kCcA = 0x7, kCcAE = 0x3, kCcB = 0x2, kCcBE = 0x6,
                  kCcG = 0xf, kCcGE = 0xd, kCcL = 0xc, kCcLE = 0xe;

class Emitter {
public:
    std::vector<uint8_t> code;

    size_t pos() const { return code.size(); }
    void byte(uint8_t b) { code.push_back(b); }
    void u32(uint32_t v) {
        for (int i = 0; i < 4; ++i) byte(static_cast<uint8_t>(v >> (8 * i)));
    }
    void u64(uint64_t v) {
        for (int i = 0; i < 8; ++i) byte(static_cast<uint8_t>(v >> (8 * i)));
    }
    void patch32(size_t at, uint32_t v) { std::memcpy(&code[at], &v, 4); }

    // REX prefix; `force` emits it even when empty (needed to address sil/dil as bytes).
    void rex(bool w, uint8_t reg, uint8_t rm, bool force = false) {
        uint8_t r = 0x40 | (w ? 8 : 0) | ((reg >> 3) << 2) | (rm >> 3);
        if (r != 0x40 || force) byte(r);
    }
    void modrm_reg(uint8_t reg, uint8_t rm) { byte(0xc0 | ((reg & 7) << 3) | (rm & 7)); }
    // [base + disp32]; always the disp32 form so rbp/r13 need no special case.
    void modrm_mem(uint8_t reg, uint8_t base, int32_t disp) {
        byte(0x80 | ((reg & 7) << 3) | (base & 7));
        if ((base & 7) == RSP) byte(0x24);
        u32(static_cast<uint32_t>(disp));
    }

    // op r/m, reg (register form): add/or/and/sub/xor/cmp/mov/test...
    void rr(uint8_t opcode, bool w, uint8_t src, uint8_t dst) {
        rex(w, src, dst);
        byte(opcode);
        modrm_reg(src, dst);
    }
    // 0F-prefixed reg, r/m (register form), e.g. imul, movzx, movsx.
    void rr0f(uint8_t opcode, bool w, uint8_t reg, uint8_t rm, bool force = false) {
        rex(w, reg, rm, force);
        byte(0x0f);
        byte(opcode);
        modrm_reg(reg, rm);
    }
    // 81 /ext imm32 (add/or/adc/sbb/and/sub/xor/cmp with immediate).
    void ri(uint8_t ext, bool w, uint8_t dst, int32_t imm) {
        rex(w, 0, dst);
        byte(0x81);
        modrm_reg(ext, dst);
        u32(static_cast<uint32_t>(imm));
    }
    void mov_rr(bool w, uint8_t src, uint8_t dst) { rr(0x89, w, src, dst); }
    void mov_imm64(uint8_t dst, uint64_t v) {
        if (v <= UINT32_MAX) {  // mov r32, imm32 zero-extends
            rex(false, 0, dst);
            byte(0xb8 + (dst & 7));
            u32(static_cast<uint32_t>(v));
        } else if (static_cast<int64_t>(v) >= INT32_MIN && static_cast<int64_t>(v) < 0) {
            rex(true, 0, dst);
            byte(0xc7);
            modrm_reg(0, dst);
            u32(static_cast<uint32_t>(v));
        } else {
            rex(true, 0, dst);
            byte(0xb8 + (dst & 7));
            u64(v);
        }
    }
    void push(uint8_t r) {
        if (r >= 8) byte(0x41);
        byte(0x50 + (r & 7));
    }
    void pop(uint8_t r) {
        if (r >= 8) byte(0x41);
        byte(0x58 + (r & 7));
    }
    void ret() { byte(0xc3); }
    void call_reg(uint8_t r) {
        rex(false, 0, r);
        byte(0xff);
        modrm_reg(2, r);
    }
    void call_abs(uint64_t fn) {
        mov_imm64(kT2, fn);
        call_reg(kT2);
    }
    // Shift by cl (D3 /ext) or by imm8 (C1 /ext ib).
    void shift_cl(uint8_t ext, bool w, uint8_t dst) {
        rex(w, 0, dst);
        byte(0xd3);
        modrm_reg(ext, dst);
    }
    void shift_imm(uint8_t ext, bool w, uint8_t dst, uint8_t n) {
        rex(w, 0, dst);
        byte(0xc1);
        modrm_reg(ext, dst);
        byte(n);
    }
    // sub/add rsp, imm32
    void adjust_rsp(int32_t delta) {
        if (delta == 0) return;
        ri(delta > 0 ? 0 : 5, true, RSP, delta > 0 ? delta : -delta);
    }
    // Jumps with rel32 returning the position of the displacement for patching.
    size_t jmp32() {
        byte(0xe9);
        u32(0);
        return pos() - 4;
    }
    size_t jcc32(uint8_t cc) {
        byte(0x0f);
        byte(0x80 | cc);
        u32(0);
        return pos() - 4;
    }
    void bind(size_t disp_at) { patch32(disp_at, static_cast<uint32_t>(pos() - (disp_at + 4))); }
};

bool is_call_target_insn(const Insn& in) {
    return in.opcode == (op::kClassJmp | op::kCall) && in.src == op::kPseudoCall;
}

}  // namespace

bool jit_supports(const Program& program, std::string* why) {
    for (size_t pc = 0; pc < program.insns.size(); ++pc) {
        if (program.insns[pc].opcode == (op::kClassJmp | op::kCall | op::kSrcX)) {
            if (why) *why = fmt::format("insn {}: callx (helper chosen at run time)", pc);
            return false;
        }
    }
    return true;
}

namespace {

struct Fixup {
    size_t disp_at;  // where the rel32 lives
    size_t target;   // BPF insn index
    bool function;   // to the function entry (prologue) rather than the insn body
};

// tail_call_thunk(ctx, map, index, taken*, -, env): runs the target and reports whether the
// tail call happened; the JIT'ed caller then returns the target's r0 as its own.
uint64_t tail_call_thunk(uint64_t ctx, uint64_t map, uint64_t index, uint64_t taken_ptr, uint64_t,
                         ExecEnv* env) {
    auto* taken = reinterpret_cast<uint64_t*>(taken_ptr);
    *taken = 0;
    if (env->tail_calls >= kMaxTailCalls || !env->resolve_tail_call)
        return static_cast<uint64_t>(-ENOENT);
    const Executable* target = env->resolve_tail_call(env->services, reinterpret_cast<Map*>(map),
                                                      static_cast<uint32_t>(index));
    if (!target) return static_cast<uint64_t>(-ENOENT);
    ++env->tail_calls;
    *taken = 1;
    const uint64_t r0 = target->run(*env, ctx, 0);  // restores our engine fields on return
    return r0;
}

uint64_t invoke_jit_callback(ExecEnv* env, uint64_t fn, uint64_t a1, uint64_t a2, uint64_t a3,
                             uint64_t a4, uint64_t a5) {
    const uint64_t args[5] = {a1, a2, a3, a4, a5};
    return static_cast<const JitProgram*>(env->engine_state)->call_native(*env, fn, args);
}

class Compiler {
public:
    Compiler(const Program& program, const ResolvedProgram& resolved)
        : insns_(program.insns), resolved_(resolved) {}

    Result<void> compile() {
        const size_t n = insns_.size();
        function_start_.insert(0);
        for (size_t pc = 0; pc < n; ++pc) {
            const Insn& in = insns_[pc];
            if (is_call_target_insn(in) || (in.opcode == op::kLddw && in.src == op::kPseudoFunc)) {
                const int64_t t = static_cast<int64_t>(pc) + 1 + in.imm;
                if (t < 0 || t >= static_cast<int64_t>(n))
                    return make_error(EINVAL,
                                      fmt::format("insn {}: call target out of program", pc));
                function_start_.insert(static_cast<size_t>(t));
            }
            if (in.opcode == op::kLddw) ++pc;
        }
        insn_pos_.assign(n + 1, 0);
        func_pos_.assign(n, 0);
        trampoline();
        for (size_t pc = 0; pc < n; ++pc) {
            if (function_start_.count(pc)) {
                func_pos_[pc] = e_.pos();
                prologue();
            }
            insn_pos_[pc] = e_.pos();
            if (auto r = insn(pc); !r) return r;
            if (insns_[pc].opcode == op::kLddw) {
                ++pc;
                insn_pos_[pc] = e_.pos();
            }
        }
        for (const Fixup& f : fixups_) {
            if (f.target >= n) return make_error(EINVAL, "jump out of program");
            const size_t to = f.function ? func_pos_[f.target] : insn_pos_[f.target];
            e_.patch32(f.disp_at, static_cast<uint32_t>(static_cast<int64_t>(to) -
                                                        static_cast<int64_t>(f.disp_at + 4)));
        }
        return {};
    }

    std::vector<uint8_t>& code() { return e_.code; }
    size_t entry() const { return func_pos_[0]; }
    size_t trampoline_pos() const { return 0; }
    // Offsets of the 64-bit absolute addresses of pseudo-func lddw's (patched after mapping).
private:
    // trampoline(env=rdi, target=rsi, args=rdx): saves the SysV callee-saved registers,
    // installs env in r12, loads r1..r5 from args and calls target.
    void trampoline() {
        for (uint8_t r : {RBP, RBX, R12, R13, R14, R15}) e_.push(r);
        e_.adjust_rsp(-8);  // 6 pushes + return address: realign to 16 for the call
        e_.mov_rr(true, RDI, kEnv);
        e_.mov_rr(true, RSI, kT2);
        e_.mov_rr(true, RDX, kT1);
        const uint8_t args[5] = {RDI, RSI, RDX, RCX, R8};
        for (int i = 0; i < 5; ++i) load(op::kSizeDW, false, args[i], kT1, i * 8);
        e_.call_reg(kT2);
        e_.adjust_rsp(8);
        for (uint8_t r : {R15, R14, R13, R12, RBX, RBP}) e_.pop(r);
        e_.ret();
    }
    // Each BPF function: save r10 (rbp) and r6..r9, then a fresh 512-byte frame below rbp.
    // Entry rsp is 8 mod 16; five pushes make it 0, and 512 keeps it so helper calls are aligned.
    void prologue() {
        for (uint8_t r : {RBP, RBX, R13, R14, R15}) e_.push(r);
        e_.mov_rr(true, RSP, RBP);
        e_.adjust_rsp(-kStackSize);
    }
    void epilogue() {
        e_.mov_rr(true, RBP, RSP);
        for (uint8_t r : {R15, R14, R13, RBX, RBP}) e_.pop(r);
        e_.ret();
    }

    void jump_to(size_t disp_at, size_t target, bool function = false) {
        fixups_.push_back({disp_at, target, function});
    }

    // dst = [base + off] with BPF size/sign semantics.
    void load(uint8_t size, bool sign, uint8_t dst, uint8_t base, int32_t off) {
        switch (size) {
            case op::kSizeB:
                e_.rex(sign, dst, base);
                e_.byte(0x0f);
                e_.byte(sign ? 0xbe : 0xb6);
                break;
            case op::kSizeH:
                e_.rex(sign, dst, base);
                e_.byte(0x0f);
                e_.byte(sign ? 0xbf : 0xb7);
                break;
            case op::kSizeW:
                e_.rex(sign, dst, base);
                e_.byte(sign ? 0x63 : 0x8b);
                break;
            default:
                e_.rex(true, dst, base);
                e_.byte(0x8b);
                break;
        }
        e_.modrm_mem(dst, base, off);
    }
    void store_reg(uint8_t size, uint8_t base, int32_t off, uint8_t src) {
        if (size == op::kSizeH) e_.byte(0x66);
        e_.rex(size == op::kSizeDW, src, base, size == op::kSizeB);
        e_.byte(size == op::kSizeB ? 0x88 : 0x89);
        e_.modrm_mem(src, base, off);
    }
    void store_imm(uint8_t size, uint8_t base, int32_t off, int32_t imm) {
        if (size == op::kSizeH) e_.byte(0x66);
        e_.rex(size == op::kSizeDW, 0, base);
        e_.byte(size == op::kSizeB ? 0xc6 : 0xc7);
        e_.modrm_mem(0, base, off);
        if (size == op::kSizeB)
            e_.byte(static_cast<uint8_t>(imm));
        else if (size == op::kSizeH) {
            e_.byte(static_cast<uint8_t>(imm));
            e_.byte(static_cast<uint8_t>(imm >> 8));
        } else {
            e_.u32(static_cast<uint32_t>(imm));
        }
    }

    // div/mod with the BPF rules: x/0 = 0, x%0 = x, signed INT_MIN/-1 = INT_MIN, INT_MIN%-1 = 0.
    void divmod(bool w, bool is_mod, bool is_signed, uint8_t dst, const Insn& in) {
        if (in.opcode & op::kSrcX)
            e_.mov_rr(true, kRegMap[in.src], kT2);
        else
            e_.mov_imm64(kT2, static_cast<uint64_t>(static_cast<int64_t>(in.imm)));
        e_.rr(0x85, w, kT2, kT2);  // test divisor
        const size_t to_zero = e_.jcc32(kCcE);
        size_t to_minus_one = 0;
        if (is_signed) {
            e_.ri(7, w, kT2, -1);  // cmp divisor, -1
            to_minus_one = e_.jcc32(kCcE);
        }
        e_.push(RAX);
        e_.push(RDX);
        e_.mov_rr(true, dst, RAX);
        if (is_signed) {
            if (w) e_.byte(0x48);
            e_.byte(0x99);  // cqo / cdq
        } else {
            e_.rr(0x31, false, RDX, RDX);
        }
        e_.rex(w, 0, kT2);
        e_.byte(0xf7);
        e_.modrm_reg(is_signed ? 7 : 6, kT2);  // idiv / div
        e_.mov_rr(w, is_mod ? RDX : RAX, kT1);
        e_.pop(RDX);
        e_.pop(RAX);
        e_.mov_rr(true, kT1, dst);
        const size_t done1 = e_.jmp32();
        e_.bind(to_zero);
        if (is_mod) {
            if (!w) e_.mov_rr(false, dst, dst);  // 32-bit result zero-extends
        } else {
            e_.rr(0x31, false, dst, dst);
        }
        size_t done2 = 0;
        if (is_signed) {
            done2 = e_.jmp32();
            e_.bind(to_minus_one);
            if (is_mod) {
                e_.rr(0x31, false, dst, dst);
            } else {
                e_.rex(w, 0, dst);  // neg dst
                e_.byte(0xf7);
                e_.modrm_reg(3, dst);
            }
        }
        e_.bind(done1);
        if (is_signed) e_.bind(done2);
    }

    // Shift dst by a register count, routing the count through cl (BPF r4 lives in rcx).
    void shift_reg(uint8_t ext, bool w, uint8_t dst, uint8_t count) {
        if (count == RCX) {
            e_.shift_cl(ext, w, dst);
            return;
        }
        e_.mov_rr(true, RCX, kT2);
        e_.mov_rr(true, count, RCX);
        const uint8_t target = dst == RCX ? kT2 : dst;
        e_.shift_cl(ext, w, target);
        // Restore rcx: the saved count register, or the shifted value when rcx was dst.
        e_.mov_rr(true, kT2, RCX);
    }

    Result<void> alu(size_t pc, const Insn& in, bool w) {
        const uint8_t code = in.opcode & 0xf0;
        const bool x = in.opcode & op::kSrcX;
        const uint8_t dst = kRegMap[in.dst];
        const uint8_t src = kRegMap[in.src];
        auto binop = [&](uint8_t rr_op, uint8_t ext) {
            if (x)
                e_.rr(rr_op, w, src, dst);
            else
                e_.ri(ext, w, dst, in.imm);
        };
        switch (code) {
            case op::kAdd: binop(0x01, 0); break;
            case op::kSub: binop(0x29, 5); break;
            case op::kOr: binop(0x09, 1); break;
            case op::kAnd: binop(0x21, 4); break;
            case op::kXor: binop(0x31, 6); break;
            case op::kMul:
                if (x) {
                    e_.rr0f(0xaf, w, dst, src);
                } else {
                    e_.rex(w, dst, dst);
                    e_.byte(0x69);
                    e_.modrm_reg(dst, dst);
                    e_.u32(static_cast<uint32_t>(in.imm));
                }
                break;
            case op::kDiv:
            case op::kMod:
                if (in.offset != 0 && in.offset != 1) return bad(pc);
                divmod(w, code == op::kMod, in.offset == 1, dst, in);
                break;
            case op::kLsh:
            case op::kRsh:
            case op::kArsh: {
                const uint8_t ext = code == op::kLsh ? 4 : code == op::kRsh ? 5 : 7;
                if (x)
                    shift_reg(ext, w, dst, src);
                else
                    e_.shift_imm(ext, w, dst, static_cast<uint8_t>(in.imm & (w ? 63 : 31)));
                break;
            }
            case op::kNeg:
                e_.rex(w, 0, dst);
                e_.byte(0xf7);
                e_.modrm_reg(3, dst);
                break;
            case op::kMov:
                if (!x) {
                    if (w)
                        e_.mov_imm64(dst, static_cast<uint64_t>(static_cast<int64_t>(in.imm)));
                    else
                        e_.mov_imm64(dst, static_cast<uint32_t>(in.imm));
                } else if (in.offset == 0) {
                    e_.mov_rr(w, src, dst);
                } else if (in.offset == 8) {
                    e_.rr0f(0xbe, w, dst, src, true);
                } else if (in.offset == 16) {
                    e_.rr0f(0xbf, w, dst, src);
                } else if (in.offset == 32 && w) {
                    e_.rex(true, dst, src);
                    e_.byte(0x63);
                    e_.modrm_reg(dst, src);
                } else {
                    return bad(pc);
                }
                break;
            case op::kEnd: {
                const bool swap = w || x;  // ALU64 END: bswap; ALU END|X: to big-endian
                if (in.imm == 16) {
                    if (swap) {  // rol r16, 8
                        e_.byte(0x66);
                        e_.rex(false, 0, dst);
                        e_.byte(0xc1);
                        e_.modrm_reg(0, dst);
                        e_.byte(8);
                    }
                    e_.rr0f(0xb7, false, dst, dst);  // movzx r32, r16
                } else if (in.imm == 32) {
                    if (swap) {
                        e_.rex(false, 0, dst);
                        e_.byte(0x0f);
                        e_.byte(0xc8 + (dst & 7));
                    } else {
                        e_.mov_rr(false, dst, dst);
                    }
                } else if (in.imm == 64) {
                    if (swap) {
                        e_.rex(true, 0, dst);
                        e_.byte(0x0f);
                        e_.byte(0xc8 + (dst & 7));
                    }
                } else {
                    return bad(pc);
                }
                break;
            }
            default: return bad(pc);
        }
        return {};
    }

    Result<void> jump(size_t pc, const Insn& in) {
        const bool is32 = op::class_of(in.opcode) == op::kClassJmp32;
        const uint8_t code = in.opcode & 0xf0;
        const bool x = in.opcode & op::kSrcX;
        const int64_t target =
            static_cast<int64_t>(pc) + 1 + (is32 && code == op::kJa ? in.imm : in.offset);
        if (code != op::kCall && code != op::kExit &&
            (target < 0 || target >= static_cast<int64_t>(insns_.size())))
            return make_error(EINVAL, fmt::format("insn {}: jump out of program", pc));
        if (code == op::kJa) {
            jump_to(e_.jmp32(), static_cast<size_t>(target));
            return {};
        }
        if (code == op::kExit) {
            if (is32) return bad(pc);
            epilogue();
            return {};
        }
        if (code == op::kCall) {
            if (is32 || x) return bad(pc);
            if (in.src == op::kPseudoCall) {
                e_.byte(0xe8);
                e_.u32(0);
                jump_to(e_.pos() - 4, static_cast<size_t>(static_cast<int64_t>(pc) + 1 + in.imm),
                        true);
                return {};
            }
            if (in.src != 0) return bad(pc);
            e_.mov_rr(true, kEnv, R9);
            if (in.imm == helper_id::kTailCall) {
                e_.adjust_rsp(-16);
                e_.mov_rr(true, RSP, RCX);
                e_.call_abs(reinterpret_cast<uint64_t>(&tail_call_thunk));
                load(op::kSizeDW, false, kT2, RSP, 0);
                e_.adjust_rsp(16);
                e_.rr(0x85, true, kT2, kT2);
                const size_t not_taken = e_.jcc32(kCcE);
                epilogue();
                e_.bind(not_taken);
                return {};
            }
            e_.call_abs(reinterpret_cast<uint64_t>(resolved_.helper_at[pc]));
            return {};
        }
        uint8_t cc;
        switch (code) {
            case op::kJeq: cc = kCcE; break;
            case op::kJne: cc = kCcNE; break;
            case op::kJgt: cc = kCcA; break;
            case op::kJge: cc = kCcAE; break;
            case op::kJlt: cc = kCcB; break;
            case op::kJle: cc = kCcBE; break;
            case op::kJsgt: cc = kCcG; break;
            case op::kJsge: cc = kCcGE; break;
            case op::kJslt: cc = kCcL; break;
            case op::kJsle: cc = kCcLE; break;
            case op::kJset: cc = kCcNE; break;
            default: return bad(pc);
        }
        const uint8_t dst = kRegMap[in.dst];
        const bool w = !is32;
        if (code == op::kJset) {
            if (x) {
                e_.rr(0x85, w, kRegMap[in.src], dst);
            } else {
                e_.rex(w, 0, dst);
                e_.byte(0xf7);
                e_.modrm_reg(0, dst);
                e_.u32(static_cast<uint32_t>(in.imm));
            }
        } else if (x) {
            e_.rr(0x39, w, kRegMap[in.src], dst);
        } else {
            e_.ri(7, w, dst, in.imm);
        }
        jump_to(e_.jcc32(cc), static_cast<size_t>(target));
        return {};
    }

    // BPF atomics on [dst + off] with src.
    Result<void> atomic(size_t pc, const Insn& in) {
        const uint8_t size = in.opcode & 0x18;
        if (size != op::kSizeW && size != op::kSizeDW) return bad(pc);
        const bool w = size == op::kSizeDW;
        const uint8_t base = kRegMap[in.dst];
        const uint8_t src = kRegMap[in.src];
        const int32_t aop = in.imm & ~op::kAtomicFetch;
        const bool fetch = in.imm & op::kAtomicFetch;
        auto locked = [&](uint8_t opcode, bool twobyte, uint8_t reg, uint8_t b, int32_t off) {
            e_.byte(0xf0);
            e_.rex(w, reg, b);
            if (twobyte) e_.byte(0x0f);
            e_.byte(opcode);
            e_.modrm_mem(reg, b, off);
        };
        if (in.imm == op::kAtomicXchg) {
            e_.rex(w, src, base);
            e_.byte(0x87);  // xchg is implicitly locked
            e_.modrm_mem(src, base, in.offset);
            return {};
        }
        if (in.imm == op::kAtomicCmpXchg) {
            locked(0xb1, true, src, base, in.offset);  // compares with and loads into rax (r0)
            if (!w) e_.mov_rr(false, RAX, RAX);        // r0 = zero-extended old value
            return {};
        }
        if (aop == op::kAdd) {
            locked(fetch ? 0xc1 : 0x01, fetch, src, base, in.offset);  // xadd / add
            return {};
        }
        uint8_t rr_op;
        switch (aop) {
            case op::kOr: rr_op = 0x09; break;
            case op::kAnd: rr_op = 0x21; break;
            case op::kXor: rr_op = 0x31; break;
            default: return bad(pc);
        }
        if (!fetch) {
            locked(rr_op, false, src, base, in.offset);
            return {};
        }
        // Fetching or/and/xor: a cmpxchg loop, which needs rax (r0) and a copy of src.
        e_.rex(true, kT1, base);  // lea r10, [base + off]
        e_.byte(0x8d);
        e_.modrm_mem(kT1, base, in.offset);
        e_.push(src);
        e_.push(RAX);
        load(w ? op::kSizeDW : op::kSizeW, false, RAX, kT1, 0);
        const size_t retry = e_.pos();
        e_.mov_rr(w, RAX, kT2);
        e_.rex(w, kT2, RSP);  // op r11, [rsp + 8]
        e_.byte(static_cast<uint8_t>(rr_op + 2));
        e_.modrm_mem(kT2, RSP, 8);
        locked(0xb1, true, kT2, kT1, 0);
        e_.byte(0x0f);
        e_.byte(0x85);  // jne retry
        e_.u32(static_cast<uint32_t>(static_cast<int64_t>(retry) -
                                     static_cast<int64_t>(e_.pos() + 4)));
        e_.mov_rr(w, RAX, kT2);
        e_.pop(RAX);
        e_.adjust_rsp(8);
        e_.mov_rr(true, kT2, src);
        return {};
    }

    Result<void> insn(size_t pc) {
        const Insn& in = insns_[pc];
        if (in.dst >= kNumRegs || in.src >= kNumRegs) return bad(pc);
        switch (op::class_of(in.opcode)) {
            case op::kClassAlu64: return alu(pc, in, true);
            case op::kClassAlu: return alu(pc, in, false);
            case op::kClassJmp:
            case op::kClassJmp32: return jump(pc, in);
            case op::kClassLd:
                if (in.opcode != op::kLddw) return bad(pc);
                if (in.src == op::kPseudoFunc) {  // lea dst, [rip + function]
                    e_.rex(true, kRegMap[in.dst], 0);
                    e_.byte(0x8d);
                    e_.byte(0x05 | ((kRegMap[in.dst] & 7) << 3));
                    e_.u32(0);
                    jump_to(e_.pos() - 4,
                            static_cast<size_t>(static_cast<int64_t>(pc) + 1 + in.imm), true);
                } else {
                    e_.mov_imm64(kRegMap[in.dst], resolved_.lddw_value[pc]);
                }
                return {};
            case op::kClassLdx: {
                const uint8_t mode = in.opcode & 0xe0;
                if (mode != op::kModeMem && mode != op::kModeMemSx) return bad(pc);
                if (mode == op::kModeMemSx && (in.opcode & 0x18) == op::kSizeDW) return bad(pc);
                load(in.opcode & 0x18, mode == op::kModeMemSx, kRegMap[in.dst], kRegMap[in.src],
                     in.offset);
                return {};
            }
            case op::kClassSt:
                if ((in.opcode & 0xe0) != op::kModeMem) return bad(pc);
                store_imm(in.opcode & 0x18, kRegMap[in.dst], in.offset, in.imm);
                return {};
            case op::kClassStx:
                if ((in.opcode & 0xe0) == op::kModeAtomic) return atomic(pc, in);
                if ((in.opcode & 0xe0) != op::kModeMem) return bad(pc);
                store_reg(in.opcode & 0x18, kRegMap[in.dst], in.offset, kRegMap[in.src]);
                return {};
        }
        return bad(pc);
    }

    Result<void> bad(size_t pc) const {
        return make_error(EINVAL, fmt::format("insn {}: opcode {:#04x} not supported by the JIT",
                                              pc, insns_[pc].opcode));
    }

    const std::vector<Insn>& insns_;
    const ResolvedProgram& resolved_;
    Emitter e_;
    std::set<size_t> function_start_;
    std::vector<size_t> insn_pos_, func_pos_;
    std::vector<Fixup> fixups_;
};

}  // namespace

Result<std::unique_ptr<JitProgram>> JitProgram::compile(std::shared_ptr<const Program> program,
                                                        const HelperTable& helpers) {
    if (!program || program->insns.empty()) return make_error(EINVAL, "empty program");
    std::string why;
    if (!jit_supports(*program, &why)) return make_error(ENOTSUP, why);
    auto resolved = resolve_program(*program, helpers);
    if (!resolved) return resolved.error();
    Compiler compiler(*program, resolved.value());
    if (auto r = compiler.compile(); !r) return r.error();

    std::unique_ptr<JitProgram> jit(new JitProgram(std::move(program)));
    const auto& code = compiler.code();
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    jit->mapped_size_ = (code.size() + page - 1) / page * page;
    void* mem = mmap(nullptr, jit->mapped_size_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return make_error(errno, fmt::format("mmap JIT code: {}", std::strerror(errno)));
    jit->code_ = mem;
    std::memcpy(mem, code.data(), code.size());
    if (mprotect(mem, jit->mapped_size_, PROT_READ | PROT_EXEC) != 0)
        return make_error(errno, fmt::format("mprotect JIT code: {}", std::strerror(errno)));
    jit->code_size_ = code.size();
    auto* base = static_cast<uint8_t*>(mem);
    jit->trampoline_ = reinterpret_cast<Trampoline>(base + compiler.trampoline_pos());
    jit->entry_ = reinterpret_cast<uint64_t>(base + compiler.entry());
    return jit;
}

JitProgram::~JitProgram() {
    if (code_) munmap(code_, mapped_size_);
}

uint64_t JitProgram::call_native(ExecEnv& env, uint64_t fn, const uint64_t args[5]) const {
    EngineScope scope(env, program_.get(), invoke_jit_callback, const_cast<JitProgram*>(this));
    const uint64_t r0 = trampoline_(&env, fn, args);
    return r0;
}

uint64_t JitProgram::run(ExecEnv& env, uint64_t r1, uint64_t r2) const {
    const uint64_t args[5] = {r1, r2, 0, 0, 0};
    return call_native(env, entry_, args);
}

}  // namespace liveio::ebpf
