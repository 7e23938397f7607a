// The ELF loader on clang-built objects: programs by SEC() and function name, BTF and legacy
// maps, global data, relocation into program.h's linked form, context layouts.
#include <cstring>

#include <gtest/gtest.h>

#include "ebpf/loader.h"
#include "test_loader_objects.h"

namespace liveio::ebpf {
namespace {

using testing::linked_form_violation;
using testing::shipped_object_path;
using testing::test_object_path;

Object open_test(const std::string& name) {
    auto obj = Object::open(test_object_path(name));
    if (!obj) {
        ADD_FAILURE() << obj.error().message;
        return Object{};
    }
    return std::move(obj.value());
}

std::shared_ptr<const Program> get(const Object& obj, const std::string& name) {
    auto p = obj.program(name);
    if (!p) {
        ADD_FAILURE() << p.error().message;
        return nullptr;
    }
    EXPECT_EQ(linked_form_violation(*p.value()), "") << name;
    return p.value();
}

size_t count_lddw(const Program& p, uint8_t src) {
    size_t n = 0;
    for (const Insn& in : p.insns)
        if (in.opcode == op::kLddw && in.src == src) ++n;
    return n;
}

bool references(const Program& p, const std::shared_ptr<Map>& m) {
    for (const auto& x : p.maps)
        if (x == m) return true;
    return false;
}

TEST(Loader, BtfMapsProgramsAndContexts) {
    Object obj = open_test("counters");
    EXPECT_EQ(obj.license(), "GPL");
    ASSERT_EQ(obj.programs().size(), 2u);
    auto totals = obj.map("totals"), hits = obj.map("hits");
    ASSERT_TRUE(totals && hits);
    EXPECT_EQ(totals->spec().type, MapType::Hash);
    EXPECT_EQ(totals->spec().key_size, 4u);
    EXPECT_EQ(totals->spec().value_size, 8u);
    EXPECT_EQ(totals->spec().max_entries, 64u);
    EXPECT_EQ(hits->spec().type, MapType::Array);
    EXPECT_EQ(hits->spec().max_entries, 8u);

    auto count = get(obj, "count");
    ASSERT_TRUE(count);
    EXPECT_EQ(count->section, "syscall");
    EXPECT_EQ(count->license, "GPL");
    EXPECT_EQ(count->context.size, 16u) << "sizeof(struct count_args) from BTF";
    EXPECT_TRUE(count->context.writable);
    EXPECT_EQ(count->maps.size(), 2u);
    EXPECT_TRUE(references(*count, totals) && references(*count, hits));
    EXPECT_GE(count_lddw(*count, op::kPseudoMapIdx), 3u);

    auto by_section = get(obj, "tracepoint/syscalls/sys_enter_write");
    ASSERT_TRUE(by_section);
    EXPECT_EQ(by_section->name, "count_write");
    EXPECT_EQ(by_section->context.size, 64u);
    EXPECT_FALSE(by_section->context.writable);
    ASSERT_EQ(by_section->maps.size(), 1u);
    EXPECT_EQ(by_section->maps[0], totals);
}

TEST(Loader, GlobalDataBecomesArrayMapsWithContents) {
    Object obj = open_test("globals");
    EXPECT_EQ(obj.license(), "Dual BSD/GPL");
    auto rodata = obj.map(".rodata"), data = obj.map(".data"), bss = obj.map(".bss");
    ASSERT_TRUE(rodata && data && bss);
    for (const auto& m : {rodata, data, bss}) {
        EXPECT_EQ(m->spec().type, MapType::Array);
        EXPECT_EQ(m->spec().key_size, 4u);
        EXPECT_EQ(m->spec().max_entries, 1u);
    }
    EXPECT_EQ(rodata->spec().value_size, 8u);  // scale
    EXPECT_EQ(data->spec().value_size, 24u);   // base, history[4]
    EXPECT_EQ(bss->spec().value_size, 16u);    // calls, last_input
    const uint32_t zero = 0;
    auto* ro = static_cast<const uint64_t*>(rodata->lookup(&zero));
    ASSERT_NE(ro, nullptr);
    EXPECT_EQ(ro[0], 3u);
    auto* d = static_cast<const uint8_t*>(data->lookup(&zero));
    ASSERT_NE(d, nullptr);
    uint64_t base = 0;
    uint32_t history[4] = {};
    std::memcpy(&base, d, 8);
    std::memcpy(history, d + 8, 16);
    EXPECT_EQ(base, 1000u);
    EXPECT_EQ(history[0], 1u);
    EXPECT_EQ(history[3], 4u);
    auto* b = static_cast<const uint64_t*>(bss->lookup(&zero));
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b[0] | b[1], 0u);

    auto apply = get(obj, "apply");
    ASSERT_TRUE(apply);
    EXPECT_EQ(apply->context.size, 16u);
    EXPECT_EQ(apply->maps.size(), 3u);
    EXPECT_GE(count_lddw(*apply, op::kPseudoMapIdxValue), 4u);
    // The two .bss variables are reached at offsets 0 and 8 of the same map value.
    bool saw_offset8 = false;
    for (size_t i = 0; i + 1 < apply->insns.size(); ++i) {
        const Insn& in = apply->insns[i];
        if (in.opcode == op::kLddw && in.src == op::kPseudoMapIdxValue &&
            apply->maps[in.imm] == bss && apply->insns[i + 1].imm == 8)
            saw_offset8 = true;
    }
    EXPECT_TRUE(saw_offset8) << "last_input lives at .bss+8";
}

// The index of the first instruction of `p` that calls (or takes the address of) code, and
// where that reference lands.
std::vector<int64_t> call_targets(const Program& p, bool calls) {
    std::vector<int64_t> out;
    for (size_t i = 0; i < p.insns.size(); ++i) {
        const Insn& in = p.insns[i];
        if (calls && in.opcode == (op::kClassJmp | op::kCall) && in.src == op::kPseudoCall)
            out.push_back(i + 1 + in.imm);
        if (!calls && in.opcode == op::kLddw && in.src == op::kPseudoFunc)
            out.push_back(i + 1 + in.imm);
        if (in.opcode == op::kLddw) ++i;
    }
    return out;
}

TEST(Loader, SubprogramsAreAppendedAndCallsRelinked) {
    Object obj = open_test("calls");
    ASSERT_EQ(obj.programs().size(), 2u) << ".text functions are subprograms, not programs";
    auto compute = get(obj, "compute");
    ASSERT_TRUE(compute);
    // compute (10) + sum_squares (20) + square_plus (4) + triple (3).
    EXPECT_EQ(compute->insns.size(), 37u);
    auto targets = call_targets(*compute, true);
    ASSERT_EQ(targets.size(),
              3u);  // compute -> sum_squares, compute -> triple, sum_squares -> square_plus
    for (int64_t t : targets) {
        ASSERT_GE(t, 10);
        ASSERT_LT(t, 37);
    }
    // triple is `r0 = r1; r0 *= 3; exit`.
    const Insn& mul = compute->insns[targets[1] + 1];
    EXPECT_EQ(mul.opcode, op::kClassAlu64 | op::kMul | op::kSrcK);
    EXPECT_EQ(mul.imm, 3);
    // square_plus is `r0 = r1; r0 *= r0; r0 += r2; exit`.
    EXPECT_EQ(compute->insns[targets[2] + 2].opcode, op::kClassAlu64 | op::kAdd | op::kSrcX);

    auto looped = get(obj, "looped");
    ASSERT_TRUE(looped);
    auto fns = call_targets(*looped, false);
    ASSERT_EQ(fns.size(), 1u) << "bpf_loop's callback is taken by address";
    EXPECT_GE(fns[0], 1);
    EXPECT_EQ(looped->insns.back().opcode, op::kClassJmp | op::kExit);

    auto ambiguous = obj.program("syscall");
    ASSERT_FALSE(ambiguous);
    EXPECT_NE(ambiguous.error().message.find("several programs"), std::string::npos)
        << ambiguous.error().message;
    auto missing = obj.program("nope");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, ENOENT);
}

TEST(Loader, RingBufferAndLegacyMaps) {
    Object rb = open_test("ringbuf");
    auto events = rb.map("events");
    ASSERT_TRUE(events);
    EXPECT_EQ(events->spec().type, MapType::RingBuf);
    EXPECT_EQ(events->spec().max_entries, 4096u);
    EXPECT_NE(std::dynamic_pointer_cast<RingBuffer>(events), nullptr);

    Object legacy = open_test("legacy");
    auto by_id = legacy.map("by_id"), seen = legacy.map("seen");
    ASSERT_TRUE(by_id && seen);
    EXPECT_EQ(by_id->spec().type, MapType::Hash);
    EXPECT_EQ(by_id->spec().key_size, 8u);
    EXPECT_EQ(by_id->spec().max_entries, 128u);
    EXPECT_EQ(seen->spec().type, MapType::Array);
    auto on_enter = get(legacy, "raw_tracepoint/sys_enter");
    ASSERT_TRUE(on_enter);
    EXPECT_EQ(on_enter->context.size, 16u);
    EXPECT_EQ(on_enter->maps.size(), 2u);
}

TEST(Loader, ShippedProgramsLoad) {
    for (const char* name : {"syscount", "io_stats", "blocklat"}) {
        auto obj = Object::open(shipped_object_path(name));
        ASSERT_TRUE(obj) << obj.error().message;
        EXPECT_FALSE(obj->programs().empty()) << name;
        for (const auto& p : obj->programs())
            EXPECT_EQ(linked_form_violation(*p), "") << name << ":" << p->name;
    }
    auto syscount = Object::open(shipped_object_path("syscount"));
    ASSERT_TRUE(syscount);
    auto enter = syscount->program("tracepoint/raw_syscalls/sys_enter");
    ASSERT_TRUE(enter) << enter.error().message;
    EXPECT_EQ(enter.value()->context.size, 64u);
    auto io = Object::open(shipped_object_path("io_stats"));
    ASSERT_TRUE(io);
    auto exit_prog = io->program("liveio/io_exit");
    ASSERT_TRUE(exit_prog) << exit_prog.error().message;
    EXPECT_EQ(exit_prog.value()->context.size, 88u);
}

TEST(Loader, ContextTable) {
    EXPECT_EQ(context_for_section("tracepoint/syscalls/sys_enter_openat").size, 64u);
    EXPECT_EQ(context_for_section("tp/syscalls/sys_exit_read").size, 24u);
    EXPECT_EQ(context_for_section("tracepoint/raw_syscalls/sys_exit").size, 24u);
    EXPECT_EQ(context_for_section("raw_tp/sys_exit").size, 16u);
    EXPECT_EQ(context_for_section("uprobe//usr/bin/clickhouse:foo").size, 168u);
    EXPECT_EQ(context_for_section("uretprobe").size, 168u);
    EXPECT_EQ(context_for_section("tracepoint/block/block_rq_issue").size, 0u);
    EXPECT_EQ(context_for_section("xdp").size, 0u);
    EXPECT_FALSE(context_for_section("uprobe").writable);
}

TEST(Loader, UnreadableFile) {
    auto obj = Object::open(std::string("/nonexistent/x.bpf.o"));
    ASSERT_FALSE(obj);
    EXPECT_EQ(obj.error().code, ENOENT);
    EXPECT_NE(obj.error().message.find("/nonexistent/x.bpf.o"), std::string::npos);
}

}  // namespace
}  // namespace liveio::ebpf
