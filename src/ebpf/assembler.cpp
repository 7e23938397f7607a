#include "ebpf/assembler.h"

#include <cerrno>
#include <charconv>
#include <map>
#include <optional>
#include <string>

#include <fmt/format.h>

namespace liveio::ebpf {
namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

// Splits "a, b, c" (after the mnemonic) at commas.
std::vector<std::string_view> split_operands(std::string_view s) {
    std::vector<std::string_view> out;
    s = trim(s);
    if (s.empty()) return out;
    while (true) {
        size_t comma = s.find(',');
        out.push_back(trim(s.substr(0, comma)));
        if (comma == std::string_view::npos) break;
        s.remove_prefix(comma + 1);
    }
    return out;
}

std::optional<int64_t> parse_int(std::string_view s) {
    bool neg = false;
    if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
        neg = s.front() == '-';
        s.remove_prefix(1);
    }
    int base = 10;
    if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s.remove_prefix(2);
    }
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
    return neg ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v);
}

std::optional<uint8_t> parse_reg(std::string_view s) {
    if (s.size() < 3 || s.substr(0, 2) != "%r") return std::nullopt;
    auto v = parse_int(s.substr(2));
    if (!v || *v < 0 || *v > 10 || s[2] == '+' || s[2] == '-') return std::nullopt;
    return static_cast<uint8_t>(*v);
}

// Immediates must fit in 32 bits: decimal as signed, hex also as unsigned (0xffffffff is -1).
std::optional<int32_t> parse_imm32(std::string_view s) {
    auto v = parse_int(s);
    const bool hex =
        s.find("0x") != std::string_view::npos || s.find("0X") != std::string_view::npos;
    if (!v || *v < INT32_MIN || *v > (hex ? static_cast<int64_t>(UINT32_MAX) : INT32_MAX))
        return std::nullopt;
    return static_cast<int32_t>(static_cast<uint32_t>(*v));
}

struct MemOperand {
    uint8_t reg;
    int16_t offset;
};
std::optional<MemOperand> parse_mem(std::string_view s) {
    if (s.size() < 4 || s.front() != '[' || s.back() != ']') return std::nullopt;
    s = s.substr(1, s.size() - 2);
    size_t sign = s.find_first_of("+-");
    auto reg = parse_reg(trim(s.substr(0, sign)));
    if (!reg) return std::nullopt;
    int64_t off = 0;
    if (sign != std::string_view::npos) {
        auto v = parse_int(trim(s.substr(sign)));
        if (!v || *v < INT16_MIN || *v > INT16_MAX) return std::nullopt;
        off = *v;
    }
    return MemOperand{*reg, static_cast<int16_t>(off)};
}

const std::map<std::string_view, uint8_t>& alu_ops() {
    static const std::map<std::string_view, uint8_t> ops = {
        {"add", op::kAdd},   {"sub", op::kSub},  {"mul", op::kMul}, {"div", op::kDiv},
        {"or", op::kOr},     {"and", op::kAnd},  {"lsh", op::kLsh}, {"rsh", op::kRsh},
        {"neg", op::kNeg},   {"mod", op::kMod},  {"xor", op::kXor}, {"mov", op::kMov},
        {"arsh", op::kArsh}, {"sdiv", op::kDiv}, {"smod", op::kMod}};
    return ops;
}
const std::map<std::string_view, uint8_t>& jmp_ops() {
    static const std::map<std::string_view, uint8_t> ops = {
        {"jeq", op::kJeq}, {"jgt", op::kJgt},   {"jge", op::kJge},   {"jset", op::kJset},
        {"jne", op::kJne}, {"jsgt", op::kJsgt}, {"jsge", op::kJsge}, {"jlt", op::kJlt},
        {"jle", op::kJle}, {"jslt", op::kJslt}, {"jsle", op::kJsle}};
    return ops;
}
const std::map<std::string_view, uint8_t>& sizes() {
    static const std::map<std::string_view, uint8_t> s = {
        {"b", op::kSizeB}, {"h", op::kSizeH}, {"w", op::kSizeW}, {"dw", op::kSizeDW}};
    return s;
}

struct Pending {
    size_t pc;
    std::string label;
    bool in_imm;  // ja32 and call local take the target in imm
    int line;
};

class Assembler {
public:
    Result<std::vector<Insn>> run(std::string_view text) {
        int line_no = 0;
        while (!text.empty()) {
            size_t nl = text.find('\n');
            std::string_view line = text.substr(0, nl);
            text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
            ++line_no;
            if (size_t hash = line.find('#'); hash != std::string_view::npos)
                line = line.substr(0, hash);
            line = trim(line);
            if (line.empty()) continue;
            if (line.back() == ':') {
                labels_[std::string(line.substr(0, line.size() - 1))] = insns_.size();
                continue;
            }
            if (auto r = statement(line); !r)
                return make_error(EINVAL, fmt::format("line {}: {}", line_no, r.error().message));
        }
        for (const Pending& p : pending_) {
            auto it = labels_.find(p.label);
            // "exit" as a target means the next exit instruction (bpf_conformance syntax).
            if (it == labels_.end() && p.label == "exit") {
                for (size_t i = p.pc + 1; i < insns_.size(); ++i) {
                    if (insns_[i].opcode == (op::kClassJmp | op::kExit)) {
                        labels_["exit@" + std::to_string(p.pc)] = i;
                        it = labels_.find("exit@" + std::to_string(p.pc));
                        break;
                    }
                }
            }
            if (it == labels_.end())
                return make_error(EINVAL,
                                  fmt::format("line {}: undefined label '{}'", p.line, p.label));
            const int64_t rel = static_cast<int64_t>(it->second) - static_cast<int64_t>(p.pc) - 1;
            if (p.in_imm) {
                insns_[p.pc].imm = static_cast<int32_t>(rel);
            } else {
                if (rel < INT16_MIN || rel > INT16_MAX)
                    return make_error(
                        EINVAL, fmt::format("line {}: jump to '{}' out of range", p.line, p.label));
                insns_[p.pc].offset = static_cast<int16_t>(rel);
            }
        }
        return std::move(insns_);
    }

private:
    Result<void> emit(uint8_t opcode, uint8_t dst = 0, uint8_t src = 0, int16_t off = 0,
                      int32_t imm = 0) {
        push(opcode, dst, src, off, imm);
        return {};
    }
    void push(uint8_t opcode, uint8_t dst = 0, uint8_t src = 0, int16_t off = 0, int32_t imm = 0) {
        insns_.push_back(make_insn(opcode, dst, src, off, imm));
    }

    // A jump target: +N / -N, or a label resolved at the end.
    Result<void> target(std::string_view t, bool in_imm, int line_hint) {
        if (!t.empty() && (t.front() == '+' || t.front() == '-')) {
            auto v = parse_int(t);
            if (!v || (!in_imm && (*v < INT16_MIN || *v > INT16_MAX)))
                return make_error(EINVAL, fmt::format("invalid offset '{}'", t));
            if (in_imm)
                insns_.back().imm = static_cast<int32_t>(*v);
            else
                insns_.back().offset = static_cast<int16_t>(*v);
            return {};
        }
        if (t.empty()) return make_error(EINVAL, "missing jump target");
        pending_.push_back({insns_.size() - 1, std::string(t), in_imm, line_hint});
        return {};
    }

    static Error operand_count(std::string_view mnemonic) {
        return make_error(EINVAL, fmt::format("Invalid number of operands for {}", mnemonic));
    }

    Result<void> statement(std::string_view line) {
        size_t sp = line.find_first_of(" \t");
        std::string_view mnemonic = line.substr(0, sp);
        std::string_view rest = sp == std::string_view::npos ? std::string_view{} : line.substr(sp);
        auto ops = split_operands(rest);
        std::string m(mnemonic);

        if (m == "exit") {
            if (!ops.empty()) return operand_count(m);
            return emit(op::kClassJmp | op::kExit);
        }
        if (m == "lock") return atomic(rest);
        if (m == "call") {
            if (ops.size() != 1) return operand_count(m);
            if (ops[0].substr(0, 6) == "local ") {
                push(op::kClassJmp | op::kCall, 0, op::kPseudoCall);
                return target(trim(ops[0].substr(6)), true, 0);
            }
            if (auto r = parse_reg(ops[0])) return emit(op::kClassJmp | op::kCall | op::kSrcX, *r);
            auto imm = parse_imm32(ops[0]);
            if (!imm) return make_error(EINVAL, fmt::format("invalid helper id '{}'", ops[0]));
            return emit(op::kClassJmp | op::kCall, 0, 0, 0, *imm);
        }
        if (m == "ja" || m == "ja32") {
            if (ops.size() != 1) return operand_count(m);
            push(m == "ja" ? op::kClassJmp : op::kClassJmp32);
            return target(ops[0], m == "ja32", 0);
        }
        if (m == "lddw") {
            if (ops.size() != 2) return operand_count(m);
            auto dst = parse_reg(ops[0]);
            auto v = parse_int(ops[1]);
            if (!dst) return make_error(EINVAL, "Invalid register");
            if (!v) return make_error(EINVAL, fmt::format("invalid immediate '{}'", ops[1]));
            const uint64_t u = static_cast<uint64_t>(*v);
            push(op::kLddw, *dst, 0, 0, static_cast<int32_t>(static_cast<uint32_t>(u)));
            return emit(0, 0, 0, 0, static_cast<int32_t>(static_cast<uint32_t>(u >> 32)));
        }
        // Endianness: le16/be32 (ALU END), bswap16/swap16 (ALU64 END).
        for (std::string_view prefix : {"le", "be", "bswap", "swap"}) {
            if (m.size() > prefix.size() &&
                std::string_view(m).substr(0, prefix.size()) == prefix) {
                auto width = parse_int(std::string_view(m).substr(prefix.size()));
                if (!width || (*width != 16 && *width != 32 && *width != 64)) continue;
                if (ops.size() != 1) return operand_count(m);
                auto dst = parse_reg(ops[0]);
                if (!dst) return make_error(EINVAL, "Invalid register");
                const bool swap = prefix == "bswap" || prefix == "swap";
                const uint8_t opcode =
                    swap ? (op::kClassAlu64 | op::kEnd)
                         : (op::kClassAlu | op::kEnd | (prefix == "be" ? op::kSrcX : op::kSrcK));
                return emit(opcode, *dst, 0, 0, static_cast<int32_t>(*width));
            }
        }
        // movsx<from><to>: movsx864, movsx1632, ...
        if (m.substr(0, 5) == "movsx") {
            static const std::map<std::string_view, std::pair<int16_t, bool>> kinds = {
                {"movsx832", {8, true}},
                {"movsx1632", {16, true}},
                {"movsx864", {8, false}},
                {"movsx1664", {16, false}},
                {"movsx3264", {32, false}}};
            auto it = kinds.find(m);
            if (it == kinds.end())
                return make_error(EINVAL, fmt::format("Invalid mnemonic '{}'", m));
            if (ops.size() != 2) return operand_count(m);
            auto dst = parse_reg(ops[0]);
            auto src = parse_reg(ops[1]);
            if (!dst || !src) return make_error(EINVAL, "Invalid register");
            return emit(
                (it->second.second ? op::kClassAlu : op::kClassAlu64) | op::kMov | op::kSrcX, *dst,
                *src, it->second.first);
        }
        // Loads and stores: ldx<size>, ldxs<size>, st<size>, stx<size>.
        if (m.substr(0, 3) == "ldx") return load(m, ops);
        if (m.substr(0, 2) == "st") return store(m, ops);

        const bool is32 = m.size() > 2 && m.substr(m.size() - 2) == "32";
        std::string base = is32 ? m.substr(0, m.size() - 2) : m;
        if (auto it = alu_ops().find(base); it != alu_ops().end()) {
            const uint8_t cls = is32 ? op::kClassAlu : op::kClassAlu64;
            const int16_t off = (base == "sdiv" || base == "smod") ? 1 : 0;
            if (it->second == op::kNeg) {
                if (ops.size() != 1) return operand_count(m);
                auto dst = parse_reg(ops[0]);
                if (!dst) return make_error(EINVAL, "Invalid register");
                return emit(cls | op::kNeg, *dst);
            }
            if (ops.size() != 2) return operand_count(m);
            auto dst = parse_reg(ops[0]);
            if (!dst) return make_error(EINVAL, "Invalid register");
            if (auto src = parse_reg(ops[1]))
                return emit(cls | it->second | op::kSrcX, *dst, *src, off);
            if (ops[1].substr(0, 1) == "%") return make_error(EINVAL, "Invalid register");
            auto imm = parse_imm32(ops[1]);
            if (!imm) return make_error(EINVAL, fmt::format("invalid immediate '{}'", ops[1]));
            return emit(cls | it->second | op::kSrcK, *dst, 0, off, *imm);
        }
        if (auto it = jmp_ops().find(base); it != jmp_ops().end()) {
            if (ops.size() != 3) return operand_count(m);
            const uint8_t cls = is32 ? op::kClassJmp32 : op::kClassJmp;
            auto dst = parse_reg(ops[0]);
            if (!dst) return make_error(EINVAL, "Invalid register");
            if (auto src = parse_reg(ops[1])) {
                push(cls | it->second | op::kSrcX, *dst, *src);
            } else {
                auto imm = parse_imm32(ops[1]);
                if (!imm) return make_error(EINVAL, fmt::format("invalid immediate '{}'", ops[1]));
                push(cls | it->second | op::kSrcK, *dst, 0, 0, *imm);
            }
            return target(ops[2], false, 0);
        }
        return make_error(EINVAL, fmt::format("Invalid mnemonic '{}'", m));
    }

    Result<void> load(const std::string& m, const std::vector<std::string_view>& ops) {
        std::string_view rest = std::string_view(m).substr(3);
        uint8_t mode = op::kModeMem;
        if (!rest.empty() && rest.front() == 's' && rest != "") {
            // ldxsb/ldxsh/ldxsw are sign-extending; "ldxdw" has no 's' prefix
            if (sizes().count(rest.substr(1))) {
                mode = op::kModeMemSx;
                rest.remove_prefix(1);
            }
        }
        auto size = sizes().find(rest);
        if (size == sizes().end())
            return make_error(EINVAL, fmt::format("Invalid mnemonic '{}'", m));
        if (ops.size() != 2) return operand_count(m);
        auto dst = parse_reg(ops[0]);
        auto mem = parse_mem(ops[1]);
        if (!dst) return make_error(EINVAL, "Invalid register");
        if (!mem) return make_error(EINVAL, fmt::format("invalid memory operand '{}'", ops[1]));
        return emit(op::kClassLdx | mode | size->second, *dst, mem->reg, mem->offset);
    }

    Result<void> store(const std::string& m, const std::vector<std::string_view>& ops) {
        const bool x = m.size() > 3 && m[2] == 'x';
        auto size = sizes().find(std::string_view(m).substr(x ? 3 : 2));
        if (size == sizes().end())
            return make_error(EINVAL, fmt::format("Invalid mnemonic '{}'", m));
        if (ops.size() != 2) return operand_count(m);
        auto mem = parse_mem(ops[0]);
        if (!mem) return make_error(EINVAL, fmt::format("invalid memory operand '{}'", ops[0]));
        if (x) {
            auto src = parse_reg(ops[1]);
            if (!src) return make_error(EINVAL, "Invalid register");
            return emit(op::kClassStx | op::kModeMem | size->second, mem->reg, *src, mem->offset);
        }
        auto imm = parse_imm32(ops[1]);
        if (!imm) return make_error(EINVAL, fmt::format("invalid immediate '{}'", ops[1]));
        return emit(op::kClassSt | op::kModeMem | size->second, mem->reg, 0, mem->offset, *imm);
    }

    // lock [fetch] <op>[32] [%rD+off], %rS
    Result<void> atomic(std::string_view rest) {
        rest = trim(rest);
        bool fetch = false;
        if (rest.substr(0, 6) == "fetch ") {
            fetch = true;
            rest = trim(rest.substr(6));
        }
        size_t sp = rest.find_first_of(" \t");
        if (sp == std::string_view::npos) return operand_count("lock");
        std::string m(rest.substr(0, sp));
        auto ops = split_operands(rest.substr(sp));
        if (ops.size() != 2) return operand_count("lock");
        const bool is32 = m.size() > 2 && m.substr(m.size() - 2) == "32";
        if (is32) m.resize(m.size() - 2);
        int32_t imm;
        if (m == "add")
            imm = op::kAdd;
        else if (m == "or")
            imm = op::kOr;
        else if (m == "and")
            imm = op::kAnd;
        else if (m == "xor")
            imm = op::kXor;
        else if (m == "xchg")
            imm = op::kAtomicXchg;
        else if (m == "cmpxchg")
            imm = op::kAtomicCmpXchg;
        else
            return make_error(EINVAL, fmt::format("Invalid atomic operation '{}'", m));
        if (fetch) imm |= op::kAtomicFetch;
        auto mem = parse_mem(ops[0]);
        auto src = parse_reg(ops[1]);
        if (!mem) return make_error(EINVAL, fmt::format("invalid memory operand '{}'", ops[0]));
        if (!src) return make_error(EINVAL, "Invalid register");
        return emit(op::kClassStx | op::kModeAtomic | (is32 ? op::kSizeW : op::kSizeDW), mem->reg,
                    *src, mem->offset, imm);
    }

    std::vector<Insn> insns_;
    std::map<std::string, size_t> labels_;
    std::vector<Pending> pending_;
};

}  // namespace

Result<std::vector<Insn>> assemble(std::string_view text) {
    Assembler a;
    return a.run(text);
}

}  // namespace liveio::ebpf
