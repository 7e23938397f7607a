#include "ebpf/interpreter.h"

#include <cerrno>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "ebpf/encoding.h"
#include "ebpf/map.h"

namespace liveio::ebpf {

const char* engine_name(Engine engine) { return engine == Engine::Jit ? "jit" : "interp"; }

Result<ResolvedProgram> resolve_program(const Program& program, const HelperTable& helpers) {
    const auto& insns = program.insns;
    if (auto valid = check_encoding(insns); !valid) return valid.error();
    ResolvedProgram r;
    r.helper_at.assign(insns.size(), nullptr);
    r.lddw_value.assign(insns.size(), 0);
    for (size_t pc = 0; pc < insns.size(); ++pc) {
        const Insn& in = insns[pc];
        if (in.opcode == (op::kClassJmp | op::kCall) && in.src == 0) {
            if (in.imm == helper_id::kTailCall) continue;  // engines implement it inline
            const HelperProto* proto = helpers.find(in.imm);
            if (!proto || !proto->fn)
                return make_error(EINVAL,
                                  fmt::format("insn {}: call to unknown helper {}", pc, in.imm));
            r.helper_at[pc] = proto->fn;
        } else if (in.opcode == op::kLddw) {
            if (pc + 1 >= insns.size())
                return make_error(EINVAL, fmt::format("insn {}: lddw lacks its second slot", pc));
            const uint64_t imm64 =
                static_cast<uint32_t>(in.imm) |
                (static_cast<uint64_t>(static_cast<uint32_t>(insns[pc + 1].imm)) << 32);
            switch (in.src) {
                case 0: r.lddw_value[pc] = imm64; break;
                case op::kPseudoFunc: break;  // engine-specific: insn index or native address
                case op::kPseudoMapIdx:
                case op::kPseudoMapIdxValue: {
                    if (in.imm < 0 || static_cast<size_t>(in.imm) >= program.maps.size() ||
                        !program.maps[in.imm])
                        return make_error(
                            EINVAL, fmt::format("insn {}: map index {} out of range", pc, in.imm));
                    Map* map = program.maps[in.imm].get();
                    if (in.src == op::kPseudoMapIdx) {
                        r.lddw_value[pc] = reinterpret_cast<uint64_t>(map);
                        break;
                    }
                    // Global data (.data/.rodata/.bss): single-element arrays; the value address
                    // is stable for the map's lifetime.
                    const uint32_t key = 0;
                    auto* value = static_cast<uint8_t*>(map->lookup(&key));
                    const uint32_t off = static_cast<uint32_t>(insns[pc + 1].imm);
                    if (!value || off >= map->spec().value_size)
                        return make_error(
                            EINVAL, fmt::format("insn {}: map value offset {} invalid for map '{}'",
                                                pc, off, map->spec().name));
                    r.lddw_value[pc] = reinterpret_cast<uint64_t>(value + off);
                    break;
                }
                default:
                    return make_error(
                        EINVAL, fmt::format("insn {}: unsupported lddw source {}", pc, in.src));
            }
            ++pc;
        }
    }
    return r;
}

Result<std::unique_ptr<Interpreter>> Interpreter::create(std::shared_ptr<const Program> program,
                                                         const HelperTable& helpers) {
    if (!program || program->insns.empty()) return make_error(EINVAL, "empty program");
    auto resolved = resolve_program(*program, helpers);
    if (!resolved) return resolved.error();
    return std::unique_ptr<Interpreter>(
        new Interpreter(std::move(program), std::move(resolved.value()), helpers));
}

namespace {

template <typename T>
T read_mem(uint64_t addr) {
    T v;
    std::memcpy(&v, reinterpret_cast<const void*>(addr), sizeof(T));
    return v;
}
template <typename T>
void write_mem(uint64_t addr, T v) {
    std::memcpy(reinterpret_cast<void*>(addr), &v, sizeof(T));
}

uint64_t sdiv64(int64_t a, int64_t b) {
    if (b == 0) return 0;
    if (b == -1)
        return static_cast<uint64_t>(0) - static_cast<uint64_t>(a);  // INT64_MIN / -1 wraps
    return static_cast<uint64_t>(a / b);
}
uint64_t smod64(int64_t a, int64_t b) {
    if (b == 0) return static_cast<uint64_t>(a);
    if (b == -1) return 0;
    return static_cast<uint64_t>(a % b);
}
uint32_t sdiv32(int32_t a, int32_t b) {
    if (b == 0) return 0;
    if (b == -1) return 0u - static_cast<uint32_t>(a);
    return static_cast<uint32_t>(a / b);
}
uint32_t smod32(int32_t a, int32_t b) {
    if (b == 0) return static_cast<uint32_t>(a);
    if (b == -1) return 0;
    return static_cast<uint32_t>(a % b);
}

// 64-bit ALU operation `code` (high nibble) with `offset` selecting the signed / sign-extend
// variants. Returns false for an undefined operation.
bool alu64(uint8_t code, int16_t offset, uint64_t& dst, uint64_t src) {
    switch (code) {
        case op::kAdd: dst += src; return true;
        case op::kSub: dst -= src; return true;
        case op::kMul: dst *= src; return true;
        case op::kDiv:
            if (offset == 1)
                dst = sdiv64(static_cast<int64_t>(dst), static_cast<int64_t>(src));
            else
                dst = src ? dst / src : 0;
            return true;
        case op::kMod:
            if (offset == 1)
                dst = smod64(static_cast<int64_t>(dst), static_cast<int64_t>(src));
            else
                dst = src ? dst % src : dst;
            return true;
        case op::kOr: dst |= src; return true;
        case op::kAnd: dst &= src; return true;
        case op::kXor: dst ^= src; return true;
        case op::kLsh: dst <<= (src & 63); return true;
        case op::kRsh: dst >>= (src & 63); return true;
        case op::kArsh:
            dst = static_cast<uint64_t>(static_cast<int64_t>(dst) >> (src & 63));
            return true;
        case op::kNeg: dst = 0 - dst; return true;
        case op::kMov:
            switch (offset) {
                case 0: dst = src; return true;
                case 8:
                    dst = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int8_t>(src)));
                    return true;
                case 16:
                    dst = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int16_t>(src)));
                    return true;
                case 32:
                    dst = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(src)));
                    return true;
            }
            return false;
    }
    return false;
}

bool alu32(uint8_t code, int16_t offset, uint64_t& dst64, uint32_t src) {
    uint32_t dst = static_cast<uint32_t>(dst64);
    switch (code) {
        case op::kAdd: dst += src; break;
        case op::kSub: dst -= src; break;
        case op::kMul: dst *= src; break;
        case op::kDiv:
            if (offset == 1)
                dst = sdiv32(static_cast<int32_t>(dst), static_cast<int32_t>(src));
            else
                dst = src ? dst / src : 0;
            break;
        case op::kMod:
            if (offset == 1)
                dst = smod32(static_cast<int32_t>(dst), static_cast<int32_t>(src));
            else
                dst = src ? dst % src : dst;
            break;
        case op::kOr: dst |= src; break;
        case op::kAnd: dst &= src; break;
        case op::kXor: dst ^= src; break;
        case op::kLsh: dst <<= (src & 31); break;
        case op::kRsh: dst >>= (src & 31); break;
        case op::kArsh: dst = static_cast<uint32_t>(static_cast<int32_t>(dst) >> (src & 31)); break;
        case op::kNeg: dst = 0 - dst; break;
        case op::kMov:
            switch (offset) {
                case 0: dst = src; break;
                case 8:
                    dst = static_cast<uint32_t>(static_cast<int32_t>(static_cast<int8_t>(src)));
                    break;
                case 16:
                    dst = static_cast<uint32_t>(static_cast<int32_t>(static_cast<int16_t>(src)));
                    break;
                default: return false;
            }
            break;
        default: return false;
    }
    dst64 = dst;  // 32-bit results are zero-extended
    return true;
}

bool byte_swap(bool to_big, bool always, int32_t width, uint64_t& v) {
    const bool swap = always || to_big;  // the host is little-endian
    switch (width) {
        case 16:
            v = swap ? __builtin_bswap16(static_cast<uint16_t>(v)) : static_cast<uint16_t>(v);
            return true;
        case 32:
            v = swap ? __builtin_bswap32(static_cast<uint32_t>(v)) : static_cast<uint32_t>(v);
            return true;
        case 64: v = swap ? __builtin_bswap64(v) : v; return true;
    }
    return false;
}

bool jump_taken(uint8_t code, uint64_t a, uint64_t b, bool is32) {
    if (is32) {
        a = static_cast<uint32_t>(a);
        b = static_cast<uint32_t>(b);
    }
    const int64_t sa = is32 ? static_cast<int32_t>(a) : static_cast<int64_t>(a);
    const int64_t sb = is32 ? static_cast<int32_t>(b) : static_cast<int64_t>(b);
    switch (code) {
        case op::kJeq: return a == b;
        case op::kJne: return a != b;
        case op::kJgt: return a > b;
        case op::kJge: return a >= b;
        case op::kJlt: return a < b;
        case op::kJle: return a <= b;
        case op::kJset: return (a & b) != 0;
        case op::kJsgt: return sa > sb;
        case op::kJsge: return sa >= sb;
        case op::kJslt: return sa < sb;
        case op::kJsle: return sa <= sb;
    }
    return false;
}

template <typename T>
uint64_t atomic_op(uint64_t addr, int32_t imm, uint64_t& src, uint64_t& r0) {
    T* p = reinterpret_cast<T*>(addr);
    const T s = static_cast<T>(src);
    T old = 0;
    switch (imm & ~op::kAtomicFetch) {
        case op::kAdd: old = __atomic_fetch_add(p, s, __ATOMIC_SEQ_CST); break;
        case op::kOr: old = __atomic_fetch_or(p, s, __ATOMIC_SEQ_CST); break;
        case op::kAnd: old = __atomic_fetch_and(p, s, __ATOMIC_SEQ_CST); break;
        case op::kXor: old = __atomic_fetch_xor(p, s, __ATOMIC_SEQ_CST); break;
        case op::kAtomicXchg & ~op::kAtomicFetch:
            old = __atomic_exchange_n(p, s, __ATOMIC_SEQ_CST);
            break;
        case op::kAtomicCmpXchg & ~op::kAtomicFetch: {
            T expected = static_cast<T>(r0);
            __atomic_compare_exchange_n(p, &expected, s, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
            r0 = expected;  // the old value, zero-extended for 32-bit
            return 1;
        }
        default: return 0;
    }
    if (imm & op::kAtomicFetch) src = old;
    return 1;
}

uint64_t invoke_interpreter_callback(ExecEnv* env, uint64_t fn, uint64_t a1, uint64_t a2,
                                     uint64_t a3, uint64_t a4, uint64_t a5) {
    const auto* interp = static_cast<const Interpreter*>(env->engine_state);
    const uint64_t args[5] = {a1, a2, a3, a4, a5};
    return interp->call_at(*env, fn, args);
}

}  // namespace

uint64_t Interpreter::run(ExecEnv& env, uint64_t r1, uint64_t r2) const {
    const uint64_t args[5] = {r1, r2, 0, 0, 0};
    return call_at(env, 0, args);
}

uint64_t Interpreter::call_at(ExecEnv& env, size_t start_pc, const uint64_t args[5]) const {
    // Callbacks and tail calls nest through C++ calls; each gets its own BPF stack.
    EngineScope scope(env, program_.get(), invoke_interpreter_callback,
                      const_cast<Interpreter*>(this));

    struct Frame {
        size_t return_pc;
        uint64_t saved[4];  // r6..r9
    };
    alignas(16) uint8_t stack[kMaxCallDepth * kStackSize];
    Frame frames[kMaxCallDepth];
    int depth = 0;

    const Insn* insns = program_->insns.data();
    const size_t n = program_->insns.size();
    uint64_t reg[kNumRegs] = {};
    for (int i = 0; i < 5; ++i) reg[i + 1] = args[i];
    // Frame d's stack occupies [stack + (kMaxCallDepth-1-d)*512, +512); r10 points at its top.
    reg[10] = reinterpret_cast<uint64_t>(stack + kMaxCallDepth * kStackSize);

    auto fault = [&](const char* why) {
        env.fault = why;
        return uint64_t{0};
    };

    size_t pc = start_pc;
    auto pop_frame = [&] {
        --depth;
        pc = frames[depth].return_pc;
        std::memcpy(&reg[6], frames[depth].saved, sizeof(frames[depth].saved));
        reg[10] += kStackSize;
    };
    while (true) {
        if (pc >= n) return fault("jump out of program");
        const Insn in = insns[pc];
        if (in.dst >= kNumRegs || in.src >= kNumRegs) return fault("invalid register");
        uint64_t& dst = reg[in.dst];
        const uint64_t src_reg = reg[in.src];
        const uint8_t cls = op::class_of(in.opcode);
        const uint8_t code = in.opcode & 0xf0;
        const bool x = (in.opcode & op::kSrcX) != 0;
        switch (cls) {
            case op::kClassAlu64:
                if (code == op::kEnd) {
                    if (!byte_swap(true, true, in.imm, dst)) return fault("invalid bswap width");
                } else if (!alu64(
                               code, in.offset, dst,
                               x ? src_reg : static_cast<uint64_t>(static_cast<int64_t>(in.imm)))) {
                    return fault("invalid ALU64 instruction");
                }
                break;
            case op::kClassAlu:
                if (code == op::kEnd) {
                    if (!byte_swap(x, false, in.imm, dst)) return fault("invalid endianness width");
                } else if (!alu32(code, in.offset, dst,
                                  x ? static_cast<uint32_t>(src_reg)
                                    : static_cast<uint32_t>(in.imm))) {
                    return fault("invalid ALU instruction");
                }
                break;
            case op::kClassJmp:
            case op::kClassJmp32: {
                const bool is32 = cls == op::kClassJmp32;
                if (code == op::kJa) {
                    pc += 1 + (is32 ? in.imm : in.offset);
                    continue;
                }
                if (code == op::kExit) {
                    if (is32) return fault("invalid JMP32 instruction");
                    if (depth == 0) return reg[0];
                    pop_frame();
                    continue;
                }
                if (code == op::kCall) {
                    if (is32) return fault("invalid JMP32 instruction");
                    if (!x && in.src == op::kPseudoCall) {
                        if (depth + 1 >= kMaxCallDepth) return fault("call depth exceeded");
                        frames[depth].return_pc = pc + 1;
                        std::memcpy(frames[depth].saved, &reg[6], sizeof(frames[depth].saved));
                        ++depth;
                        reg[10] -= kStackSize;
                        pc += 1 + in.imm;
                        continue;
                    }
                    HelperFn fn = nullptr;
                    int64_t id = in.imm;
                    if (x) {
                        // callx: the register (dst, or imm in older assemblers) holds a helper id.
                        id = static_cast<int64_t>(
                            reg[in.dst ? in.dst : in.imm]);  // imm in 0..10: check_encoding
                        fn = nullptr;
                    } else if (in.src == 0) {
                        fn = resolved_.helper_at[pc];
                    } else {
                        return fault("unsupported call kind");
                    }
                    if (!x && id == helper_id::kTailCall) {
                        if (env.tail_calls >= kMaxTailCalls || !env.resolve_tail_call) {
                            reg[0] = static_cast<uint64_t>(-ENOENT);
                        } else {
                            const Executable* target =
                                env.resolve_tail_call(env.services, reinterpret_cast<Map*>(reg[2]),
                                                      static_cast<uint32_t>(reg[3]));
                            if (!target) {
                                reg[0] = static_cast<uint64_t>(-ENOENT);
                            } else {
                                // The target replaces the current function: its r0 is what this
                                // frame returns.
                                ++env.tail_calls;
                                reg[0] = target->run(env, reg[1], 0);
                                if (depth == 0) return reg[0];
                                pop_frame();
                                continue;
                            }
                        }
                    } else {
                        if (!fn && x) {
                            if (id != static_cast<int32_t>(id))
                                return fault("callx to invalid helper");
                            const HelperProto* proto = helpers_.find(static_cast<int32_t>(id));
                            fn = proto ? proto->fn : nullptr;
                        }
                        if (!fn) return fault("call to unknown helper");
                        reg[0] = fn(reg[1], reg[2], reg[3], reg[4], reg[5], &env);
                    }
                    // r1-r5 are clobbered by calls; leave them as they are (the verifier forbids
                    // reads).
                    ++pc;
                    continue;
                }
                if (jump_taken(code, dst,
                               x ? src_reg : static_cast<uint64_t>(static_cast<int64_t>(in.imm)),
                               is32))
                    pc += in.offset;
                break;
            }
            case op::kClassLd:
                if (in.opcode != op::kLddw) return fault("unsupported LD instruction");
                if (in.src == op::kPseudoFunc)
                    dst = pc + 1 + in.imm;
                else
                    dst = resolved_.lddw_value[pc];
                pc += 2;
                continue;
            case op::kClassLdx: {
                const uint64_t addr = src_reg + in.offset;
                const uint8_t mode = in.opcode & 0xe0;
                const uint8_t size = in.opcode & 0x18;
                if (mode == op::kModeMem) {
                    switch (size) {
                        case op::kSizeB: dst = read_mem<uint8_t>(addr); break;
                        case op::kSizeH: dst = read_mem<uint16_t>(addr); break;
                        case op::kSizeW: dst = read_mem<uint32_t>(addr); break;
                        case op::kSizeDW: dst = read_mem<uint64_t>(addr); break;
                    }
                } else if (mode == op::kModeMemSx) {
                    switch (size) {
                        case op::kSizeB:
                            dst =
                                static_cast<uint64_t>(static_cast<int64_t>(read_mem<int8_t>(addr)));
                            break;
                        case op::kSizeH:
                            dst = static_cast<uint64_t>(
                                static_cast<int64_t>(read_mem<int16_t>(addr)));
                            break;
                        case op::kSizeW:
                            dst = static_cast<uint64_t>(
                                static_cast<int64_t>(read_mem<int32_t>(addr)));
                            break;
                        default: return fault("invalid LDXSX size");
                    }
                } else {
                    return fault("unsupported LDX mode");
                }
                break;
            }
            case op::kClassSt:
            case op::kClassStx: {
                const uint64_t addr = dst + in.offset;
                const uint8_t mode = in.opcode & 0xe0;
                const uint8_t size = in.opcode & 0x18;
                if (cls == op::kClassStx && mode == op::kModeAtomic) {
                    uint64_t& src = reg[in.src];
                    uint64_t ok =
                        size == op::kSizeDW  ? atomic_op<uint64_t>(addr, in.imm, src, reg[0])
                        : size == op::kSizeW ? atomic_op<uint32_t>(addr, in.imm, src, reg[0])
                                             : 0;
                    if (!ok) return fault("invalid atomic instruction");
                    break;
                }
                if (mode != op::kModeMem) return fault("unsupported store mode");
                const uint64_t v = cls == op::kClassSt
                                       ? static_cast<uint64_t>(static_cast<int64_t>(in.imm))
                                       : src_reg;
                switch (size) {
                    case op::kSizeB: write_mem<uint8_t>(addr, static_cast<uint8_t>(v)); break;
                    case op::kSizeH: write_mem<uint16_t>(addr, static_cast<uint16_t>(v)); break;
                    case op::kSizeW: write_mem<uint32_t>(addr, static_cast<uint32_t>(v)); break;
                    case op::kSizeDW: write_mem<uint64_t>(addr, v); break;
                }
                break;
            }
        }
        ++pc;
    }
}

}  // namespace liveio::ebpf
