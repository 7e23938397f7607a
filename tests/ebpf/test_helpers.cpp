// Standard helpers through real BPF programs on both engines: maps, time, identity, CPU,
// random numbers, and the extension mechanism for liveio's own helpers.
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <thread>

#include "helpers_fixture.h"

namespace liveio::ebpf {
namespace {

using test::HelperTest;
using test::s64;

uint64_t now(clockid_t id) {
    timespec ts{};
    clock_gettime(id, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

TEST_P(HelperTest, HashMapLookupUpdateDelete) {
    auto map = test::make_map(MapType::Hash, 4, 8, 16);
    ASSERT_TRUE(map);
    const Executable* exe = load(R"(
        mov %r6, %r1
        stw [%r10-4], 7
        lddw %r1, MAP0
        mov %r2, %r10
        add %r2, -4
        call 1
        stxdw [%r6], %r0
        stdw [%r10-16], 41
        lddw %r1, MAP0
        mov %r2, %r10
        add %r2, -4
        mov %r3, %r10
        add %r3, -16
        mov %r4, 1
        call 2
        stxdw [%r6+8], %r0
        lddw %r1, MAP0
        mov %r2, %r10
        add %r2, -4
        mov %r3, %r10
        add %r3, -16
        mov %r4, 1
        call 2
        stxdw [%r6+16], %r0
        lddw %r1, MAP0
        mov %r2, %r10
        add %r2, -4
        call 1
        jeq %r0, 0, missing
        ldxdw %r1, [%r0]
        add %r1, 1
        stxdw [%r0], %r1
        stxdw [%r6+24], %r1
        mov %r0, 0
        exit
    missing:
        mov %r0, 1
        exit
    )",
                                 {map});
    ASSERT_TRUE(exe);
    uint64_t out[8] = {};
    ASSERT_EQ(run(exe, out), 0u);
    EXPECT_EQ(out[0], 0u) << "lookup of an absent key returns NULL";
    EXPECT_EQ(out[1], 0u) << "BPF_NOEXIST insert";
    EXPECT_EQ(s64(out[2]), -EEXIST) << "BPF_NOEXIST on an existing key";
    EXPECT_EQ(out[3], 42u);
    const uint32_t key = 7;
    uint64_t value = 0;
    ASSERT_EQ(map->copy_value(&key, &value), 0);
    EXPECT_EQ(value, 42u) << "the store through the lookup pointer is in the map";

    const Executable* del = load(R"(
        mov %r6, %r1
        stw [%r10-4], 7
        lddw %r1, MAP0
        mov %r2, %r10
        add %r2, -4
        call 3
        stxdw [%r6], %r0
        lddw %r1, MAP0
        mov %r2, %r10
        add %r2, -4
        call 3
        stxdw [%r6+8], %r0
        mov %r0, 0
        exit
    )",
                                 {map});
    ASSERT_TRUE(del);
    ASSERT_EQ(run(del, out), 0u);
    EXPECT_EQ(out[0], 0u);
    EXPECT_EQ(s64(out[1]), -ENOENT);
    EXPECT_EQ(map->copy_value(&key, &value), -ENOENT);
}

TEST_P(HelperTest, ArrayUpdateIsVisibleToUserspaceAndBoundsChecked) {
    auto map = test::make_map(MapType::Array, 4, 8, 4);
    ASSERT_TRUE(map);
    const Executable* exe = load(R"(
        mov %r6, %r1
        ldxw %r1, [%r6]
        stxw [%r10-4], %r1
        stdw [%r10-16], 0x1234
        lddw %r1, MAP0
        mov %r2, %r10
        add %r2, -4
        mov %r3, %r10
        add %r3, -16
        mov %r4, 0
        call 2
        stxdw [%r6+8], %r0
        mov %r0, 0
        exit
    )",
                                 {map});
    ASSERT_TRUE(exe);
    uint64_t out[8] = {3};
    ASSERT_EQ(run(exe, out), 0u);
    EXPECT_EQ(out[1], 0u);
    const uint32_t key = 3;
    uint64_t value = 0;
    ASSERT_EQ(map->copy_value(&key, &value), 0);
    EXPECT_EQ(value, 0x1234u);
    out[0] = 4;
    ASSERT_EQ(run(exe, out), 0u);
    EXPECT_EQ(s64(out[1]), -E2BIG) << "index past max_entries, as the kernel";
}

TEST_P(HelperTest, ClocksMatchTheSystemClocks) {
    const Executable* exe = load(R"(
        mov %r6, %r1
        call 5
        stxdw [%r6], %r0
        call 125
        stxdw [%r6+8], %r0
        call 160
        stxdw [%r6+16], %r0
        mov %r0, 0
        exit
    )");
    ASSERT_TRUE(exe);
    uint64_t out[8] = {};
    const uint64_t mono0 = now(CLOCK_MONOTONIC), boot0 = now(CLOCK_BOOTTIME),
                   coarse0 = now(CLOCK_MONOTONIC_COARSE);
    ASSERT_EQ(run(exe, out), 0u);
    const uint64_t mono1 = now(CLOCK_MONOTONIC), boot1 = now(CLOCK_BOOTTIME),
                   coarse1 = now(CLOCK_MONOTONIC_COARSE);
    EXPECT_GE(out[0], mono0);
    EXPECT_LE(out[0], mono1);
    EXPECT_GE(out[1], boot0);
    EXPECT_LE(out[1], boot1);
    EXPECT_GE(out[2], coarse0) << "the coarse clock is CLOCK_MONOTONIC_COARSE";
    EXPECT_LE(out[2], coarse1);
    EXPECT_LE(out[2], mono1) << "and never runs ahead of the precise one";
}

const char* kIdentityProgram = R"(
    mov %r6, %r1
    call 14
    stxdw [%r6], %r0
    call 15
    stxdw [%r6+8], %r0
    mov %r0, 0
    exit
)";

TEST_P(HelperTest, PidTgidAndUidGidOfTheCallingThread) {
    const Executable* exe = load(kIdentityProgram);
    ASSERT_TRUE(exe);
    auto check = [&] {
        uint64_t out[8] = {};
        ASSERT_EQ(run(exe, out), 0u);
        EXPECT_EQ(out[0] >> 32, static_cast<uint64_t>(getpid()));
        EXPECT_EQ(out[0] & 0xffffffffu, static_cast<uint64_t>(gettid()));
        EXPECT_EQ(out[1] >> 32, static_cast<uint64_t>(getgid()));
        EXPECT_EQ(out[1] & 0xffffffffu, static_cast<uint64_t>(getuid()));
    };
    check();
    std::thread other(check);  // another thread: same tgid, its own tid
    other.join();
}

TEST_P(HelperTest, CurrentCommIsTheThreadNameTruncatedAndPadded) {
    // 16-byte buffer, then a 4-byte one (truncated), then a 32-byte one prefilled with 0xff
    // (NUL-padded to the full size, as the kernel's strscpy_pad).
    const Executable* exe = load(R"(
        mov %r6, %r1
        mov %r1, %r10
        add %r1, -16
        mov %r2, 16
        call 16
        stxdw [%r6+48], %r0
        ldxdw %r1, [%r10-16]
        stxdw [%r6], %r1
        ldxdw %r1, [%r10-8]
        stxdw [%r6+8], %r1
        stw [%r10-20], -1
        mov %r1, %r10
        add %r1, -20
        mov %r2, 4
        call 16
        ldxw %r1, [%r10-20]
        stxw [%r6+16], %r1
        stdw [%r10-64], -1
        stdw [%r10-56], -1
        stdw [%r10-48], -1
        stdw [%r10-40], -1
        mov %r1, %r10
        add %r1, -64
        mov %r2, 32
        call 16
        ldxdw %r1, [%r10-48]
        stxdw [%r6+24], %r1
        ldxdw %r1, [%r10-40]
        stxdw [%r6+32], %r1
        mov %r0, 0
        exit
    )");
    ASSERT_TRUE(exe);
    std::thread t([&] {
        ASSERT_EQ(pthread_setname_np(pthread_self(), "liveio-comm-abc"),
                  0);  // 15 chars, the maximum
        uint8_t out[64];
        std::memset(out, 0xee, sizeof(out));
        ASSERT_EQ(run(exe, out), 0u);
        uint64_t rc;
        std::memcpy(&rc, out + 48, 8);
        EXPECT_EQ(rc, 0u);
        EXPECT_EQ(std::string(reinterpret_cast<char*>(out), 16),
                  std::string("liveio-comm-abc\0", 16));
        EXPECT_EQ(std::string(reinterpret_cast<char*>(out + 16), 4), std::string("liv\0", 4));
        EXPECT_EQ(std::string(reinterpret_cast<char*>(out + 24), 16), std::string(16, '\0'))
            << "bytes past the name are zeroed up to the buffer size";
    });
    t.join();
}

TEST_P(HelperTest, SmpProcessorIdIsTheCpuTheThreadRunsOn) {
    const Executable* exe = load(R"(
        mov %r6, %r1
        call 8
        stxdw [%r6], %r0
        mov %r0, 0
        exit
    )");
    ASSERT_TRUE(exe);
    cpu_set_t allowed;
    ASSERT_EQ(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
    int checked = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && checked < 8; ++cpu) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        std::thread t([&] {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
            uint64_t out[8] = {};
            ASSERT_EQ(run(exe, out), 0u);
            EXPECT_EQ(out[0], static_cast<uint64_t>(cpu));
        });
        t.join();
        ++checked;
    }
    EXPECT_GT(checked, 0);
}

TEST_P(HelperTest, PrandomGivesDistinct32BitValues) {
    const Executable* exe = load(R"(
        mov %r6, %r1
        call 7
        stxdw [%r6], %r0
        call 7
        stxdw [%r6+8], %r0
        mov %r0, 0
        exit
    )");
    ASSERT_TRUE(exe);
    std::set<uint64_t> seen;
    uint64_t ored = 0, anded = ~0ull;
    for (int i = 0; i < 2000; ++i) {
        uint64_t out[8] = {};
        ASSERT_EQ(run(exe, out), 0u);
        for (int k = 0; k < 2; ++k) {
            ASSERT_LE(out[k], 0xffffffffu);
            seen.insert(out[k]);
            ored |= out[k];
            anded &= out[k];
        }
    }
    // 4000 draws from 2^32 values: a collision has probability ~0.2%; allow a few.
    EXPECT_GE(seen.size(), 3995u);
    EXPECT_EQ(ored, 0xffffffffu) << "every bit is sometimes set";
    EXPECT_EQ(anded, 0u) << "every bit is sometimes clear";

    // Without a Runtime as services the helper still answers (no state to draw from).
    uint64_t out[8] = {};
    ASSERT_EQ(exe->run(out, sizeof(out)), 0u);
    EXPECT_LE(out[0], 0xffffffffu);
    EXPECT_NE(out[0], out[1]);
}

// A liveio helper: r1 * 2 + 1 when the program runs with services, to prove it gets the env.
uint64_t double_it(uint64_t r1, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv* env) {
    return r1 * 2 + (env && env->services ? 1 : 0);
}

HelperProto double_proto() {
    HelperProto p;
    p.name = "liveio_double";
    p.fn = double_it;
    p.args = {ArgType::Scalar, ArgType::None, ArgType::None, ArgType::None, ArgType::None};
    return p;
}

TEST_P(HelperTest, LiveioExtensionHelpersAreCallableByTheirIds) {
    HelperTable table = HelperTable::standard();
    constexpr int32_t kDouble = helper_id::kLiveioBase + 1;
    ASSERT_TRUE(table.extend(kDouble, double_proto()).ok());
    const Executable* exe = load(fmt::format(R"(
        mov %r6, %r1
        ldxdw %r1, [%r6]
        call {}
        stxdw [%r6+8], %r0
        call 14
        stxdw [%r6+16], %r0
        mov %r0, 0
        exit
    )",
                                             kDouble),
                                 {}, &table);
    ASSERT_TRUE(exe);
    uint64_t out[8] = {21};
    ASSERT_EQ(run(exe, out), 0u);
    EXPECT_EQ(out[1], 43u);
    EXPECT_EQ(out[2] >> 32, static_cast<uint64_t>(getpid())) << "standard helpers still there";

    // An id outside the table is refused at load.
    auto p = test::build_program(fmt::format("call {}\nexit\n", helper_id::kLiveioBase + 2));
    ASSERT_TRUE(p.ok());
    auto bad = Executable::load(p.value(), table, GetParam());
    EXPECT_FALSE(bad.ok());
}

TEST(HelperTable, ExtendRefusesKernelIdsDuplicatesAndIncompleteProtos) {
    HelperTable table = HelperTable::standard();
    auto kernel = table.extend(helper_id::kGetCurrentPidTgid, double_proto());
    ASSERT_FALSE(kernel.ok());
    EXPECT_EQ(kernel.error().code, EINVAL);
    EXPECT_NE(kernel.error().message.find("outside liveio's range"), std::string::npos)
        << kernel.error().message;
    EXPECT_EQ(table.find(helper_id::kGetCurrentPidTgid)->name, "get_current_pid_tgid")
        << "not replaced";
    EXPECT_FALSE(table.extend(helper_id::kLiveioBase - 1, double_proto()).ok());
    EXPECT_FALSE(table.extend(helper_id::kLiveioLast + 1, double_proto()).ok());
    EXPECT_FALSE(table.extend(-1, double_proto()).ok());
    ASSERT_TRUE(table.extend(helper_id::kLiveioBase, double_proto()).ok());
    ASSERT_TRUE(table.extend(helper_id::kLiveioLast, double_proto()).ok());
    auto dup = table.extend(helper_id::kLiveioBase, double_proto());
    ASSERT_FALSE(dup.ok());
    EXPECT_EQ(dup.error().code, EEXIST);
    HelperProto nameless = double_proto();
    nameless.name.clear();
    EXPECT_FALSE(table.extend(helper_id::kLiveioBase + 7, nameless).ok());
    HelperProto no_fn = double_proto();
    no_fn.fn = nullptr;
    EXPECT_FALSE(table.extend(helper_id::kLiveioBase + 7, no_fn).ok());
    EXPECT_EQ(table.find(helper_id::kLiveioBase + 7), nullptr);
}

TEST(HelperTable, StandardHasEveryKernelHelperWithItsPrototype) {
    const HelperTable t = HelperTable::standard();
    namespace id = helper_id;
    const std::pair<int32_t, const char*> expected[] = {
        {id::kMapLookupElem, "map_lookup_elem"},
        {id::kMapUpdateElem, "map_update_elem"},
        {id::kMapDeleteElem, "map_delete_elem"},
        {id::kProbeRead, "probe_read"},
        {id::kKtimeGetNs, "ktime_get_ns"},
        {id::kTracePrintk, "trace_printk"},
        {id::kGetPrandomU32, "get_prandom_u32"},
        {id::kGetSmpProcessorId, "get_smp_processor_id"},
        {id::kTailCall, "tail_call"},
        {id::kGetCurrentPidTgid, "get_current_pid_tgid"},
        {id::kGetCurrentUidGid, "get_current_uid_gid"},
        {id::kGetCurrentComm, "get_current_comm"},
        {id::kPerfEventOutput, "perf_event_output"},
        {id::kProbeReadStr, "probe_read_str"},
        {id::kKtimeGetBootNs, "ktime_get_boot_ns"},
        {id::kProbeReadUser, "probe_read_user"},
        {id::kProbeReadUserStr, "probe_read_user_str"},
        {id::kRingbufOutput, "ringbuf_output"},
        {id::kRingbufReserve, "ringbuf_reserve"},
        {id::kRingbufSubmit, "ringbuf_submit"},
        {id::kRingbufDiscard, "ringbuf_discard"},
        {id::kRingbufQuery, "ringbuf_query"},
        {id::kKtimeGetCoarseNs, "ktime_get_coarse_ns"},
        {id::kLoop, "loop"},
    };
    for (const auto& [helper, name] : expected) {
        const HelperProto* p = t.find(helper);
        ASSERT_NE(p, nullptr) << name;
        EXPECT_EQ(p->name, name);
        EXPECT_NE(p->fn, nullptr) << name;
        EXPECT_LT(helper, id::kLiveioBase);
    }
    EXPECT_EQ(t.find(id::kMapLookupElem)->ret, RetType::MapValueOrNull);
    EXPECT_EQ(t.find(id::kRingbufReserve)->ret, RetType::RingbufMemOrNull);
    EXPECT_EQ(t.find(id::kRingbufSubmit)->args[0], ArgType::PtrToRingbufMem);
    EXPECT_EQ(t.find(id::kLoop)->args[1], ArgType::PtrToFunc);
    EXPECT_EQ(t.find(id::kProbeReadUser)->args[0], ArgType::PtrToUninitMem);
    EXPECT_EQ(t.find(id::kGetCurrentComm)->args[1], ArgType::ConstSize);
}

INSTANTIATE_TEST_SUITE_P(Engines, HelperTest, ::testing::Values(Engine::Interpreter, Engine::Jit),
                         [](const auto& info) { return std::string(engine_name(info.param)); });

}  // namespace
}  // namespace liveio::ebpf
