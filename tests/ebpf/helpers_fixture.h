// Shared by the helper tests: BPF programs written in the assembler's syntax with two
// placeholders the assembler cannot express, run on one engine with a Runtime as services.
//   MAP<k>    in `lddw %rN, MAP<k>`: a reference to program.maps[k] (kPseudoMapIdx)
//   CALLBACK  in `lddw %rN, CALLBACK`: a reference to the subprogram that starts right after
//             the first `exit` (kPseudoFunc), for bpf_loop
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "ebpf/assembler.h"
#include "ebpf/helpers.h"
#include "ebpf/runtime.h"
#include "ebpf/vm.h"

namespace liveio::ebpf::test {

inline constexpr uint64_t kMapMarker = 0x4c4d415000000000ull;   // "LMAP" << 32, + map index
inline constexpr uint64_t kFuncMarker = 0x4c46554e00000000ull;  // "LFUN" << 32

inline std::string replace_all(std::string text, std::string_view from, const std::string& to) {
    for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
        text.replace(at, from.size(), to);
    return text;
}

// Assembles `text`, resolving the placeholders; the context is `ctx_size` writable bytes.
inline Result<std::shared_ptr<Program>> build_program(std::string text,
                                                      std::vector<std::shared_ptr<Map>> maps = {},
                                                      uint32_t ctx_size = 64) {
    for (size_t k = maps.size(); k-- > 0;)  // MAP10 before MAP1
        text = replace_all(std::move(text), fmt::format("MAP{}", k),
                           fmt::format("{:#x}", kMapMarker + k));
    text = replace_all(std::move(text), "CALLBACK", fmt::format("{:#x}", kFuncMarker));
    auto insns = assemble(text);
    if (!insns) return insns.error();
    auto p = std::make_shared<Program>();
    p->name = "test";
    p->insns = std::move(insns.value());
    p->maps = std::move(maps);
    p->context.size = ctx_size;
    p->context.writable = true;
    size_t first_exit = 0;
    for (size_t i = 0; i < p->insns.size(); ++i) {
        if (p->insns[i].opcode == (op::kClassJmp | op::kExit)) {
            first_exit = i;
            break;
        }
    }
    for (size_t i = 0; i + 1 < p->insns.size(); ++i) {
        Insn& in = p->insns[i];
        if (in.opcode != op::kLddw) continue;
        const uint64_t v = static_cast<uint32_t>(in.imm) |
                           (uint64_t{static_cast<uint32_t>(p->insns[i + 1].imm)} << 32);
        if ((v & ~0xffull) == kMapMarker) {
            in.src = op::kPseudoMapIdx;
            in.imm = static_cast<int32_t>(v & 0xff);
            p->insns[i + 1].imm = 0;
        } else if (v == kFuncMarker) {
            in.src = op::kPseudoFunc;
            in.imm = static_cast<int32_t>(first_exit + 1) - static_cast<int32_t>(i + 1);
            p->insns[i + 1].imm = 0;
        }
        ++i;
    }
    return p;
}

// Lines that store `s` and its NUL (zero-padded to 8 bytes) at [r10 + offset ...]; they
// clobber r1, so save the context first.
inline std::string stack_string(std::string_view s, int offset) {
    std::string bytes(s);
    bytes.resize((s.size() / 8 + 1) * 8, '\0');
    std::string out;
    for (size_t i = 0; i < bytes.size(); i += 8) {
        uint64_t v = 0;
        for (size_t b = 0; b < 8; ++b) v |= uint64_t{static_cast<uint8_t>(bytes[i + b])} << (8 * b);
        out += fmt::format("lddw %r1, {:#x}\nstxdw [%r10{:+}], %r1\n", v,
                           offset + static_cast<int>(i));
    }
    return out;
}

// A test run on each engine with a fresh Runtime.
class HelperTest : public ::testing::TestWithParam<Engine> {
protected:
    void SetUp() override {
        auto rt = Runtime::create();
        ASSERT_TRUE(rt.ok()) << rt.error().message;
        rt_ = std::move(rt.value());
    }

    // Builds and loads with the standard helpers (or `helpers`); failures are test failures.
    const Executable* load(const std::string& text, std::vector<std::shared_ptr<Map>> maps = {},
                           const HelperTable* helpers = nullptr,
                           std::optional<Engine> engine = {}) {
        auto p = build_program(text, std::move(maps));
        EXPECT_TRUE(p.ok()) << p.error().message;
        if (!p.ok()) return nullptr;
        const HelperTable table = helpers ? *helpers : HelperTable::standard();
        auto exe = Executable::load(std::move(p.value()), table, engine.value_or(GetParam()));
        EXPECT_TRUE(exe.ok()) << exe.error().message;
        if (!exe.ok()) return nullptr;
        loaded_.push_back(std::move(exe.value()));
        return loaded_.back().get();
    }

    uint64_t run(const Executable* exe, void* ctx, size_t len = 64) {
        return rt_->run(*exe, ctx, len);
    }

    std::unique_ptr<Runtime> rt_;
    std::vector<std::unique_ptr<Executable>> loaded_;
};

inline std::shared_ptr<Map> make_map(MapType type, uint32_t key, uint32_t value, uint32_t entries) {
    auto m = create_map(MapSpec{"m", type, key, value, entries, 0});
    EXPECT_TRUE(m.ok()) << m.error().message;
    return m.ok() ? m.value() : nullptr;
}

inline int64_t s64(uint64_t v) { return static_cast<int64_t>(v); }

}  // namespace liveio::ebpf::test
