// Maps: spec validation, kernel semantics per type and flag, differential against standard
// containers, many threads, and a second process reading the memfd while this one writes.
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <gtest/gtest.h>

#include <sys/stat.h>

#include "ebpf/map.h"
#include "ebpf/map_shm.h"  // white-box: header offsets to corrupt

namespace liveio::ebpf {
namespace {

std::shared_ptr<Map> make(MapType type, uint32_t key_size, uint32_t value_size,
                          uint32_t max_entries, uint32_t flags = 0, std::string name = "m") {
    auto m = create_map(MapSpec{std::move(name), type, key_size, value_size, max_entries, flags});
    EXPECT_TRUE(m.ok()) << m.error().message;
    return m.ok() ? m.value() : nullptr;
}

struct BadSpec {
    MapSpec spec;
    const char* field;
};

TEST(MapSpec, InvalidSpecsRejectedNamingTheField) {
    const std::vector<BadSpec> cases = {
        {{"a", MapType::Array, 8, 4, 10}, "key_size"},
        {{"a", MapType::Array, 4, 0, 10}, "value_size"},
        {{"a", MapType::Array, 4, 8, 0}, "max_entries"},
        {{"a", MapType::Array, 4, 8, 10, 0x80000}, "flags"},
        {{"a", MapType::PercpuArray, 4, 65536, 10}, "value_size"},
        {{"p", MapType::ProgArray, 4, 8, 10}, "value_size"},
        {{"h", MapType::Hash, 0, 8, 10}, "key_size"},
        {{"h", MapType::Hash, 513, 8, 10}, "key_size"},
        {{"h", MapType::Hash, 4, 0, 10}, "value_size"},
        {{"h", MapType::Hash, 4, 8, 0}, "max_entries"},
        {{"h", MapType::Hash, 4, 8, 10, 1024}, "flags"},
        {{"h", MapType::LruHash, 4, 8, 0x7fffffff}, "max_entries"},
        {{"r", MapType::RingBuf, 4, 0, 4096}, "key_size"},
        {{"r", MapType::RingBuf, 0, 4, 4096}, "value_size"},
        {{"r", MapType::RingBuf, 0, 0, 5000}, "max_entries"},
        {{"r", MapType::RingBuf, 0, 0, 2048}, "max_entries"},
        {{"pe", MapType::PerfEventArray, 8, 4, 2}, "key_size"},
        {{"pe", MapType::PerfEventArray, 4, 8, 2}, "value_size"},
        {{"pe", MapType::PerfEventArray, 4, 4, 5000}, "max_entries"},
        {{"x", static_cast<MapType>(99), 4, 4, 4}, "type"},
        {{std::string(100, 'n'), MapType::Array, 4, 4, 4}, "name"},
        {{"big", MapType::Array, 4, 1 << 20, 1 << 20}, "max_entries"},
        {{"bighash", MapType::Hash, 8, 1 << 20, 2048}, "max_entries"},  // 2 GiB > the 1 GiB limit
    };
    for (const auto& c : cases) {
        auto m = create_map(c.spec);
        ASSERT_FALSE(m.ok()) << "spec for field " << c.field << " accepted";
        EXPECT_NE(m.error().message.find(c.field), std::string::npos)
            << "error '" << m.error().message << "' does not name " << c.field;
        EXPECT_NE(m.error().message.find(c.spec.name.substr(0, 10)), std::string::npos)
            << m.error().message;
    }
}

TEST(MapArray, KernelSemantics) {
    auto m = make(MapType::Array, 4, 12, 5);
    ASSERT_TRUE(m);
    const uint8_t zero[12] = {};
    uint8_t v[12];
    for (uint32_t i = 0; i < 5; ++i) {
        void* p = m->lookup(&i);
        ASSERT_NE(p, nullptr);
        EXPECT_EQ(std::memcmp(p, zero, 12), 0) << "elements start zeroed";
        EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 8, 0u) << "values are 8-byte aligned";
    }
    uint32_t oob = 5;
    EXPECT_EQ(m->lookup(&oob), nullptr);
    std::memset(v, 0xab, sizeof v);
    uint32_t k = 3;
    EXPECT_EQ(m->update(&k, v, kUpdateAny), 0);
    EXPECT_EQ(m->update(&k, v, kUpdateExist), 0);
    EXPECT_EQ(m->update(&k, v, kUpdateNoExist), -EEXIST);
    EXPECT_EQ(m->update(&k, v, 3), -EINVAL);
    EXPECT_EQ(m->update(&oob, v, kUpdateAny), -E2BIG);
    EXPECT_EQ(m->remove(&k), -EINVAL);
    EXPECT_EQ(std::memcmp(m->lookup(&k), v, 12), 0);
    uint8_t out[12] = {};
    EXPECT_EQ(m->copy_value(&k, out), 0);
    EXPECT_EQ(std::memcmp(out, v, 12), 0);
    EXPECT_EQ(m->copy_value(&oob, out), -ENOENT);
    // Writes through the lookup pointer are the map's contents.
    static_cast<uint8_t*>(m->lookup(&k))[0] = 7;
    EXPECT_EQ(m->copy_value(&k, out), 0);
    EXPECT_EQ(out[0], 7);

    std::vector<uint32_t> keys;
    uint32_t next = 99;
    const void* cur = nullptr;
    uint32_t cur_key;
    while (m->next_key(cur, &next) == 0) {
        keys.push_back(next);
        cur_key = next;
        cur = &cur_key;
        ASSERT_LE(keys.size(), 5u);
    }
    EXPECT_EQ(keys, (std::vector<uint32_t>{0, 1, 2, 3, 4}));
    EXPECT_EQ(m->next_key(&oob, &next), 0);
    EXPECT_EQ(next, 0u) << "an out-of-range key restarts iteration";
    ASSERT_GE(m->memfd(), 0);
    // Owner-only: the memfd is passed to the CLI and must not be reopened by others.
    struct stat st;
    ASSERT_EQ(::fstat(m->memfd(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST(MapType, KernelNamesAndUserValueSizes) {
    EXPECT_STREQ(map_type_name(MapType::Hash), "hash");
    EXPECT_STREQ(map_type_name(MapType::PercpuArray), "percpu_array");
    EXPECT_STREQ(map_type_name(MapType::LruPercpuHash), "lru_percpu_hash");
    EXPECT_STREQ(map_type_name(MapType::RingBuf), "ringbuf");
    EXPECT_STREQ(map_type_name(static_cast<MapType>(99)), "unknown");
    EXPECT_TRUE(is_percpu(MapType::PercpuHash));
    EXPECT_FALSE(is_percpu(MapType::LruHash));
    MapSpec spec{"v", MapType::Hash, 4, 12, 8, 0};
    EXPECT_EQ(user_value_size(spec), 12u);
    spec.type = MapType::PercpuHash;
    EXPECT_EQ(user_value_size(spec), 16u * detail::possible_cpus());  // 12 rounded up to 8
}

TEST(MapArray, PercpuSlotsFollowTheCpu) {
    auto m = make(MapType::PercpuArray, 4, 4, 3);
    ASSERT_TRUE(m);
    const long ncpu = sysconf(_SC_NPROCESSORS_CONF);
    std::vector<uint64_t> all(user_value_size(m->spec()) / 8, 0);
    uint32_t k = 1;
    const uint32_t v = 41;
    ASSERT_EQ(m->update(&k, &v, kUpdateAny), 0);
    ASSERT_EQ(m->copy_value(&k, all.data()), 0);
    uint64_t sum = 0;
    int nonzero = 0;
    for (uint64_t x : all) {
        sum += static_cast<uint32_t>(x);
        nonzero += x != 0;
    }
    EXPECT_EQ(sum, 41u);
    EXPECT_EQ(nonzero, 1) << "update writes the calling CPU's slot only";

    // Pin to each CPU in turn: each lookup lands in that CPU's slot.
    cpu_set_t old;
    if (sched_getaffinity(0, sizeof old, &old) != 0 || CPU_COUNT(&old) < 2)
        GTEST_SKIP() << "needs at least two usable CPUs to tell slots apart";
    std::vector<int> cpus;
    for (int c = 0; c < CPU_SETSIZE && static_cast<long>(cpus.size()) < ncpu; ++c)
        if (CPU_ISSET(c, &old)) cpus.push_back(c);
    uint32_t k2 = 2;
    for (int c : cpus) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(c, &one);
        ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
        auto* p = static_cast<uint32_t*>(m->lookup(&k2));
        ASSERT_NE(p, nullptr);
        *p += static_cast<uint32_t>(c) + 100;
    }
    sched_setaffinity(0, sizeof old, &old);
    std::fill(all.begin(), all.end(), 0);
    ASSERT_EQ(m->copy_value(&k2, all.data()), 0);
    for (int c : cpus)
        EXPECT_EQ(static_cast<uint32_t>(all[c]), static_cast<uint32_t>(c) + 100) << "cpu " << c;
}

TEST(MapArray, ProgArraySlotsHoldProgramIds) {
    auto m = make(MapType::ProgArray, 4, 4, 4);
    ASSERT_TRUE(m);
    uint32_t k = 2, id = 17, out = 0, oob = 4, zero = 0;
    EXPECT_EQ(m->copy_value(&k, &out), -ENOENT) << "slots start empty";
    EXPECT_EQ(m->remove(&k), -ENOENT);
    EXPECT_EQ(m->update(&k, &id, kUpdateNoExist), -EINVAL) << "only BPF_ANY, as the kernel";
    EXPECT_EQ(m->update(&k, &zero, kUpdateAny), -EINVAL) << "id 0 marks an empty slot";
    EXPECT_EQ(m->update(&oob, &id, kUpdateAny), -E2BIG);
    EXPECT_EQ(m->update(&oob, &id, kUpdateExist), -EINVAL) << "flags are checked before the index";
    EXPECT_EQ(m->update(&k, &id, kUpdateAny), 0);
    EXPECT_EQ(m->copy_value(&k, &out), 0);
    EXPECT_EQ(out, 17u);
    ASSERT_NE(m->lookup(&k), nullptr);
    EXPECT_EQ(*static_cast<uint32_t*>(m->lookup(&k)), 17u)
        << "the slot the tail-call resolver reads";
    EXPECT_EQ(m->remove(&k), 0);
    EXPECT_EQ(*static_cast<uint32_t*>(m->lookup(&k)), 0u);
    EXPECT_EQ(m->remove(&oob), -E2BIG);
}

// ---- hashes ------------------------------------------------------------------------------

TEST(MapHash, KernelSemanticsPerFlag) {
    for (MapType type :
         {MapType::Hash, MapType::PercpuHash, MapType::LruHash, MapType::LruPercpuHash}) {
        SCOPED_TRACE(static_cast<int>(type));
        auto m = make(type, 8, 8, 4);
        ASSERT_TRUE(m);
        const bool lru = type == MapType::LruHash || type == MapType::LruPercpuHash;
        uint64_t k = 1, v = 100;
        EXPECT_EQ(m->lookup(&k), nullptr);
        EXPECT_EQ(m->update(&k, &v, kUpdateExist), -ENOENT);
        EXPECT_EQ(m->update(&k, &v, 3), -EINVAL);
        EXPECT_EQ(m->update(&k, &v, kUpdateNoExist), 0);
        EXPECT_EQ(m->update(&k, &v, kUpdateNoExist), -EEXIST);
        v = 101;
        EXPECT_EQ(m->update(&k, &v, kUpdateExist), 0);
        ASSERT_NE(m->lookup(&k), nullptr);
        EXPECT_EQ(*static_cast<uint64_t*>(m->lookup(&k)), 101u);
        v = 102;
        EXPECT_EQ(m->update(&k, &v, kUpdateAny), 0);
        EXPECT_EQ(*static_cast<uint64_t*>(m->lookup(&k)), 102u);
        for (uint64_t i = 2; i <= 4; ++i) EXPECT_EQ(m->update(&i, &i, kUpdateAny), 0);
        uint64_t k5 = 5;
        if (lru) {
            EXPECT_EQ(m->update(&k5, &k5, kUpdateAny), 0) << "LRU evicts instead of failing";
            EXPECT_NE(m->lookup(&k5), nullptr);
            int present = 0;
            for (uint64_t i = 1; i <= 5; ++i) present += m->lookup(&i) != nullptr;
            EXPECT_EQ(present, 4);
        } else {
            EXPECT_EQ(m->update(&k5, &k5, kUpdateAny), -E2BIG);
            EXPECT_EQ(m->update(&k5, &k5, kUpdateNoExist), -E2BIG);
            v = 103;
            EXPECT_EQ(m->update(&k, &v, kUpdateAny), 0) << "a full map still updates existing keys";
            EXPECT_EQ(m->update(&k, &v, kUpdateExist), 0);
        }
        uint64_t k9 = 9;
        EXPECT_EQ(m->remove(&k9), -ENOENT);
        uint64_t any_present = 0;
        ASSERT_EQ(m->next_key(nullptr, &any_present), 0);
        EXPECT_EQ(m->remove(&any_present), 0);
        EXPECT_EQ(m->lookup(&any_present), nullptr);
        EXPECT_EQ(m->remove(&any_present), -ENOENT);
        EXPECT_EQ(m->update(&k9, &k9, kUpdateNoExist), 0) << "a removed element is reusable";
    }
}

TEST(MapHash, NextKeyVisitsEveryKeyOnceAndRestartsOnUnknownKey) {
    auto m = make(MapType::Hash, 4, 4, 1000);
    ASSERT_TRUE(m);
    std::set<uint32_t> want;
    for (uint32_t i = 0; i < 700; ++i) {
        const uint32_t k = i * 2654435761u;
        ASSERT_EQ(m->update(&k, &i, kUpdateAny), 0);
        want.insert(k);
    }
    std::multiset<uint32_t> seen;
    uint32_t cur = 0, next = 0;
    long rc = m->next_key(nullptr, &next);
    while (rc == 0) {
        seen.insert(next);
        cur = next;
        rc = m->next_key(&cur, &next);
        ASSERT_LE(seen.size(), 700u);
    }
    EXPECT_EQ(rc, -ENOENT);
    EXPECT_EQ(std::set<uint32_t>(seen.begin(), seen.end()), want);
    EXPECT_EQ(seen.size(), want.size());
    uint32_t first = 0, unknown = 3, from_unknown = 0;
    ASSERT_EQ(m->next_key(nullptr, &first), 0);
    ASSERT_EQ(want.count(unknown), 0u);
    ASSERT_EQ(m->next_key(&unknown, &from_unknown), 0);
    EXPECT_EQ(from_unknown, first);
    auto empty = make(MapType::Hash, 4, 4, 4);
    EXPECT_EQ(empty->next_key(nullptr, &next), -ENOENT);
}

// Random operations on the map and on std::unordered_map agree on every return code and value.
template <size_t KeySize>
void differential(MapType type, uint32_t max_entries, uint64_t seed) {
    using Key = std::array<uint8_t, KeySize>;
    struct KeyHash {
        size_t operator()(const Key& k) const {
            return std::hash<std::string_view>()(
                {reinterpret_cast<const char*>(k.data()), KeySize});
        }
    };
    auto m = make(type, KeySize, 16, max_entries);
    ASSERT_TRUE(m);
    std::unordered_map<Key, std::array<uint64_t, 2>, KeyHash> model;
    std::mt19937_64 rng(seed);
    auto random_key = [&] {
        Key k{};
        const uint64_t x = rng() % (max_entries * 2);  // half the key space fits
        std::memcpy(k.data(), &x, std::min<size_t>(8, KeySize));
        if (KeySize > 8) k[KeySize - 1] = static_cast<uint8_t>(x * 7);
        return k;
    };
    for (int op = 0; op < 40000; ++op) {
        Key k = random_key();
        const int what = static_cast<int>(rng() % 10);
        auto it = model.find(k);
        if (what < 5) {
            const uint64_t flags = rng() % 3;
            std::array<uint64_t, 2> v{rng(), static_cast<uint64_t>(op)};
            long want;
            if (it != model.end())
                want = flags == kUpdateNoExist ? -EEXIST : 0;
            else if (flags == kUpdateExist)
                want = -ENOENT;
            else
                want = model.size() >= max_entries ? -E2BIG : 0;
            ASSERT_EQ(m->update(k.data(), v.data(), flags), want) << "op " << op;
            if (want == 0) model[k] = v;
        } else if (what < 7) {
            ASSERT_EQ(m->remove(k.data()), it == model.end() ? -ENOENT : 0) << "op " << op;
            if (it != model.end()) model.erase(it);
        } else {
            auto* p = static_cast<uint64_t*>(m->lookup(k.data()));
            ASSERT_EQ(p != nullptr, it != model.end()) << "op " << op;
            std::array<uint64_t, 2> got{};
            ASSERT_EQ(m->copy_value(k.data(), got.data()), it == model.end() ? -ENOENT : 0);
            if (p) {
                EXPECT_EQ(p[0], it->second[0]);
                EXPECT_EQ(p[1], it->second[1]);
                EXPECT_EQ(got, it->second);
            }
        }
    }
    // Iteration yields exactly the model's keys.
    std::set<Key> seen;
    Key cur{}, next{};
    long rc = m->next_key(nullptr, next.data());
    while (rc == 0) {
        ASSERT_TRUE(seen.insert(next).second) << "key visited twice";
        cur = next;
        rc = m->next_key(cur.data(), next.data());
    }
    std::set<Key> want;
    for (auto& [k, v] : model) want.insert(k);
    EXPECT_EQ(seen, want);
}

TEST(MapHash, DifferentialAgainstUnorderedMap) {
    differential<4>(MapType::Hash, 257, 1);
    differential<8>(MapType::Hash, 64, 2);
    differential<12>(MapType::Hash, 1000, 3);
    differential<3>(MapType::Hash, 16, 4);
    differential<40>(MapType::Hash, 100, 5);
}

// LRU: against an exact LRU model, the map never holds more than max_entries, never loses a
// key while there is room, holds the latest value of every key it holds, and always holds the
// key just inserted.
TEST(MapHash, LruDifferential) {
    constexpr uint32_t kMax = 64;
    auto m = make(MapType::LruHash, 4, 8, kMax);
    ASSERT_TRUE(m);
    std::map<uint32_t, uint64_t> written;  // last value written per key
    std::mt19937 rng(7);
    uint64_t evictions_seen = 0;
    for (uint64_t op = 1; op < 20000; ++op) {
        const uint32_t k = rng() % 200;
        if (rng() % 4) {
            ASSERT_EQ(m->update(&k, &op, kUpdateAny), 0);
            written[k] = op;
            ASSERT_NE(m->lookup(&k), nullptr);
        } else {
            m->lookup(&k);
        }
        if (op % 500 == 0) {
            uint32_t present = 0;
            for (auto& [key, v] : written) {
                uint64_t got = 0;
                if (m->copy_value(&key, &got) == 0) {
                    ++present;
                    EXPECT_EQ(got, v) << "key " << key;
                }
            }
            EXPECT_LE(present, kMax);
            EXPECT_EQ(present, std::min<size_t>(written.size(), kMax)) << "evicts only when full";
            evictions_seen += written.size() - present;
        }
    }
    EXPECT_GT(evictions_seen, 0u);
}

TEST(MapHash, LruPrefersEvictingUnreferencedKeys) {
    constexpr uint32_t kMax = 32;
    auto m = make(MapType::LruHash, 4, 4, kMax);
    ASSERT_TRUE(m);
    for (uint32_t k = 0; k < kMax; ++k) ASSERT_EQ(m->update(&k, &k, kUpdateAny), 0);
    uint32_t fill = 1000;
    ASSERT_EQ(m->update(&fill, &fill, kUpdateAny), 0);  // the first eviction sweeps every bit clear
    std::vector<uint32_t> touched;
    for (uint32_t k = 0; k < kMax / 2; ++k)
        if (m->lookup(&k)) touched.push_back(k);
    ASSERT_GE(touched.size(), kMax / 2 - 1);
    // At least kMax/2 - 1 keys are unreferenced: that many inserts must evict only those.
    for (uint32_t k = 200; k < 200 + kMax / 2 - 1; ++k) ASSERT_EQ(m->update(&k, &k, kUpdateAny), 0);
    for (uint32_t k : touched)
        EXPECT_NE(m->lookup(&k), nullptr) << "recently used key " << k << " evicted";
}

TEST(MapHash, PercpuValuesPerSlot) {
    auto m = make(MapType::PercpuHash, 4, 4, 8);
    ASSERT_TRUE(m);
    const long ncpu = sysconf(_SC_NPROCESSORS_CONF);
    uint32_t k = 5, v = 9;
    ASSERT_EQ(m->update(&k, &v, kUpdateAny), 0);
    std::vector<uint64_t> all(static_cast<size_t>(ncpu), 0xdead);
    ASSERT_EQ(m->copy_value(&k, all.data()), 0);
    uint64_t sum = 0;
    for (uint64_t x : all) sum += x;
    EXPECT_EQ(sum, 9u) << "the calling CPU's slot holds the value, the others zero";
}

TEST(MapHash, ManyThreadsInsertRemoveAndCount) {
    constexpr int kThreads = 8;
    constexpr uint32_t kPerThread = 500;
    auto m = make(MapType::Hash, 8, 8, kThreads * kPerThread);
    ASSERT_TRUE(m);
    uint64_t shared_key = ~0ull, zero = 0;
    // Room for the shared counter: remove one slot's worth from a thread's range.
    std::atomic<int> failures{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t) {
        ts.emplace_back([&, t] {
            for (int round = 0; round < 20; ++round) {
                for (uint32_t i = 0; i < kPerThread; ++i) {
                    const uint64_t k = (uint64_t(t) << 32) | i;
                    const uint64_t v = k ^ round;
                    if (m->update(&k, &v, kUpdateNoExist) != 0) ++failures;
                }
                for (uint32_t i = 0; i < kPerThread; ++i) {
                    const uint64_t k = (uint64_t(t) << 32) | i;
                    auto* p = static_cast<uint64_t*>(m->lookup(&k));
                    if (!p || *p != (k ^ round)) ++failures;
                    if (round < 19 && m->remove(&k) != 0) ++failures;
                }
            }
        });
    }
    for (auto& t : ts) t.join();
    EXPECT_EQ(failures.load(), 0);
    size_t n = 0;
    uint64_t cur, next;
    for (long rc = m->next_key(nullptr, &next); rc == 0; rc = m->next_key(&cur, &next)) {
        cur = next;
        ++n;
    }
    EXPECT_EQ(n, size_t{kThreads} * kPerThread);
    EXPECT_EQ(m->update(&shared_key, &zero, kUpdateAny), -E2BIG) << "every element accounted for";
}

TEST(MapHash, LruUnderManyThreadsNeverFailsNorLeaksElements) {
    constexpr uint32_t kMax = 128;
    for (MapType type : {MapType::LruHash, MapType::LruPercpuHash}) {
        auto m = make(type, 8, 16, kMax);
        ASSERT_TRUE(m);
        const bool percpu = type == MapType::LruPercpuHash;
        std::atomic<int> failures{0}, inconsistent{0};
        std::vector<std::thread> ts;
        for (int t = 0; t < 4; ++t)
            ts.emplace_back([&, t] {
                std::mt19937_64 rng(t);
                for (int i = 0; i < 40000; ++i) {
                    const uint64_t k = rng() % 1000;
                    const uint64_t v[2] = {k * 3, k * 3};
                    if (rng() % 3) {
                        if (m->update(&k, v, kUpdateAny) != 0) ++failures;
                    } else if (!percpu) {
                        uint64_t got[2];
                        if (m->copy_value(&k, got) == 0 && (got[0] != k * 3 || got[1] != k * 3))
                            ++inconsistent;
                    } else {
                        m->lookup(&k);
                    }
                }
            });
        for (auto& t : ts) t.join();
        EXPECT_EQ(failures.load(), 0) << "an LRU insert failed";
        EXPECT_EQ(inconsistent.load(), 0);
        // Full after many distinct inserts, without deletes: every element must be linked.
        size_t n = 0;
        uint64_t cur, next;
        for (long rc = m->next_key(nullptr, &next); rc == 0 && n <= kMax;
             rc = m->next_key(&cur, &next)) {
            cur = next;
            ++n;
        }
        EXPECT_EQ(n, kMax) << "elements lost (neither linked nor free) or linked twice";
    }
}

TEST(MapHash, ConcurrentAtomicIncrementsThroughLookupAreExact) {
    auto m = make(MapType::Hash, 4, 8, 16);
    ASSERT_TRUE(m);
    for (uint32_t k = 0; k < 16; ++k) {
        uint64_t z = 0;
        ASSERT_EQ(m->update(&k, &z, kUpdateAny), 0);
    }
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&] {
            for (int i = 0; i < 100000; ++i) {
                const uint32_t k = static_cast<uint32_t>(i % 16);
                __atomic_fetch_add(static_cast<uint64_t*>(m->lookup(&k)), 1, __ATOMIC_RELAXED);
            }
        });
    for (auto& t : ts) t.join();
    uint64_t total = 0;
    for (uint32_t k = 0; k < 16; ++k) total += *static_cast<uint64_t*>(m->lookup(&k));
    EXPECT_EQ(total, 400000u);
}

// ---- another process -----------------------------------------------------------------------

// Opens the map as an unrelated process would: through /proc/<creator>/fd/<n>.
Result<std::shared_ptr<Map>> open_from_proc(pid_t pid, int fd) {
    const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
    const int own = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (own < 0) return make_error(errno, "open " + path);
    auto m = open_shared_map(own);
    ::close(own);
    return m;
}

struct Pair {
    uint64_t a, b;
};

// The child reads `reads` times; returns the child's exit status (0: consistent).
template <typename ReadFn>
int run_reader_child(pid_t parent, int fd, ReadFn read_check,
                     const std::function<void()>& write_step) {
    int go[2];
    if (pipe(go) != 0) return -1;
    const pid_t child = fork();
    if (child == 0) {
        close(go[1]);
        char c;
        if (read(go[0], &c, 1) != 1) _exit(90);
        auto m = open_from_proc(parent, fd);
        if (!m) _exit(91);
        _exit(read_check(*m.value()));
    }
    close(go[0]);
    write_step();  // the map has content before the child starts
    (void)!write(go[1], "x", 1);
    close(go[1]);
    int status = 0;
    while (waitpid(child, &status, WNOHANG) == 0) write_step();
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

TEST(MapShared, ChildProcessSeesHashPairsNeverTorn) {
    auto m = make(MapType::Hash, 4, sizeof(Pair), 64);
    ASSERT_TRUE(m);
    uint64_t counter = 0;
    const int rc = run_reader_child(
        getpid(), m->memfd(),
        [](Map& shared) -> int {
            if (shared.spec().type != MapType::Hash || shared.spec().value_size != sizeof(Pair))
                return 2;
            uint64_t last[8] = {};
            // Until it has read a lot and watched the writer make progress many times.
            uint64_t changes = 0;
            for (int i = 0; i < 300000 || changes < 2000; ++i) {
                const uint32_t k = static_cast<uint32_t>(i % 8);
                Pair p{};
                if (shared.copy_value(&k, &p) != 0) return 3;  // keys are never removed
                if (p.a != p.b) return 4;                      // torn
                if (p.a < last[k]) return 5;                   // went back in time
                changes += p.a != last[k];
                last[k] = p.a;
            }
            return 0;
        },
        [&] {
            for (uint32_t k = 0; k < 8; ++k) {
                ++counter;
                Pair p{counter, counter};
                m->update(&k, &p, kUpdateAny);
            }
            // Churn other keys of the same buckets so chains relink under the reader.
            for (uint32_t k = 8; k < 40; ++k) {
                Pair p{k, k};
                if (counter % 2)
                    m->update(&k, &p, kUpdateAny);
                else
                    m->remove(&k);
            }
        });
    EXPECT_EQ(rc, 0)
        << "child: 2 wrong spec, 3 key missing, 4 torn pair, 5 stale value, 9x open failed";
}

TEST(MapShared, ChildProcessSeesArrayPairsNeverTornAndWritesBack) {
    auto m = make(MapType::Array, 4, sizeof(Pair), 4);
    ASSERT_TRUE(m);
    uint64_t counter = 0;
    const int rc = run_reader_child(
        getpid(), m->memfd(),
        [](Map& shared) -> int {
            uint64_t last = 0, changes = 0;
            for (int i = 0; i < 300000 || changes < 2000; ++i) {
                const uint32_t k = static_cast<uint32_t>(i % 3);
                Pair p{};
                if (shared.copy_value(&k, &p) != 0) return 3;
                if (p.a != p.b) return 4;
                changes += p.a != last;
                last = p.a;
            }
            // The reader may write too: the parent sees it.
            const uint32_t k3 = 3;
            const Pair mark{777, 778};
            return shared.update(&k3, &mark, kUpdateAny) == 0 ? 0 : 6;
        },
        [&] {
            for (uint32_t k = 0; k < 3; ++k) {
                ++counter;
                Pair p{counter, counter};
                m->update(&k, &p, kUpdateAny);
            }
        });
    EXPECT_EQ(rc, 0) << "child: 3 copy failed, 4 torn pair, 6 write failed";
    const uint32_t k3 = 3;
    auto* p = static_cast<Pair*>(m->lookup(&k3));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(p->a, 777u);
    EXPECT_EQ(p->b, 778u);
}

TEST(MapShared, OpenRejectsForeignAndUnsealedFds) {
    const int fd = memfd_create("not-a-map", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, 8192), 0);
    auto unsealed = open_shared_map(fd);
    ASSERT_FALSE(unsealed.ok());
    EXPECT_NE(unsealed.error().message.find("sealed"), std::string::npos)
        << unsealed.error().message;
    ASSERT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
    auto foreign = open_shared_map(fd);
    ASSERT_FALSE(foreign.ok());
    EXPECT_NE(foreign.error().message.find("magic"), std::string::npos) << foreign.error().message;
    close(fd);
    EXPECT_FALSE(open_shared_map(-1).ok());
    auto m = make(MapType::Array, 4, 4, 1);
    ASSERT_TRUE(m);
    const std::string path = "/proc/self/fd/" + std::to_string(m->memfd());
    const int ro = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(ro, 0);
    auto read_only = open_shared_map(ro);
    close(ro);
    ASSERT_FALSE(read_only.ok());
    EXPECT_NE(read_only.error().message.find("writing"), std::string::npos)
        << read_only.error().message;
}

TEST(MapShared, OpenedMapSharesSpecAndContents) {
    auto m = make(MapType::LruPercpuHash, 6, 3, 10, 0, "shared_lru");
    ASSERT_TRUE(m);
    auto o = open_shared_map(m->memfd());
    ASSERT_TRUE(o.ok()) << o.error().message;
    auto& other = *o.value();
    EXPECT_EQ(other.spec().name, "shared_lru");
    EXPECT_EQ(other.spec().type, MapType::LruPercpuHash);
    EXPECT_EQ(other.spec().key_size, 6u);
    EXPECT_EQ(other.spec().value_size, 3u);
    EXPECT_EQ(other.spec().max_entries, 10u);
    EXPECT_NE(other.memfd(), m->memfd()) << "the opener owns its own descriptor";
    const uint8_t key[6] = {1, 2, 3, 4, 5, 6};
    const uint8_t val[3] = {9, 8, 7};
    ASSERT_EQ(other.update(key, val, kUpdateNoExist), 0);
    EXPECT_EQ(m->update(key, val, kUpdateNoExist), -EEXIST) << "same table, same hash seed";
    ASSERT_NE(m->lookup(key), nullptr);
}

// ---- corrupted shared memory (another process may scribble on it) ---------------------------

template <typename T>
void poke(int fd, size_t offset, T value) {
    ASSERT_EQ(pwrite(fd, &value, sizeof value, static_cast<off_t>(offset)),
              static_cast<ssize_t>(sizeof value));
}

TEST(MapShared, CorruptHeadersAreRejectedByOpen) {
    using detail::MapHeader;
    struct Corruption {
        const char* what;
        std::function<void(int)> apply;
    };
    const std::vector<Corruption> corruptions = {
        {"magic", [](int fd) { poke<uint64_t>(fd, offsetof(MapHeader, magic), 0x1234); }},
        {"version", [](int fd) { poke<uint32_t>(fd, offsetof(MapHeader, version), 99); }},
        {"spec", [](int fd) { poke<uint32_t>(fd, offsetof(MapHeader, key_size), 0); }},
        {"layout", [](int fd) { poke<uint32_t>(fd, offsetof(MapHeader, max_entries), 1u << 20); }},
        {"layout", [](int fd) { poke<uint32_t>(fd, offsetof(MapHeader, max_entries), 3); }},
        {"layout", [](int fd) { poke<uint32_t>(fd, offsetof(MapHeader, nbuckets), 1u << 30); }},
        {"layout", [](int fd) { poke<uint64_t>(fd, offsetof(MapHeader, data_offset), 1u << 30); }},
        {"type", [](int fd) { poke<uint32_t>(fd, offsetof(MapHeader, type), 4); }},
        {"ncpus", [](int fd) { poke<uint32_t>(fd, offsetof(MapHeader, ncpus), 0); }},
    };
    for (const auto& c : corruptions) {
        auto m = make(MapType::Hash, 8, 8, 100);
        ASSERT_TRUE(m);
        c.apply(m->memfd());
        auto o = open_shared_map(m->memfd());
        EXPECT_FALSE(o.ok()) << "corrupt " << c.what << " accepted";
        if (!o.ok()) {
            EXPECT_FALSE(o.error().message.empty());
        }
    }
}

TEST(MapShared, CorruptHashChainsNeitherCrashNorHang) {
    auto m = make(MapType::Hash, 8, 8, 64);
    ASSERT_TRUE(m);
    for (uint64_t k = 0; k < 50; ++k) ASSERT_EQ(m->update(&k, &k, kUpdateAny), 0);
    detail::MapHeader h;
    ASSERT_EQ(pread(m->memfd(), &h, sizeof h, 0), static_cast<ssize_t>(sizeof h));
    std::mt19937 rng(11);
    // Bucket heads and element links pointing anywhere: out of range, at themselves, in cycles.
    for (uint32_t b = 0; b < h.nbuckets; ++b)
        if (rng() % 2)
            poke<uint32_t>(m->memfd(), h.index_offset + b * 8 + 4, rng() % 3 ? rng() % 64 : rng());
    for (uint32_t e = 0; e < 64; ++e)
        poke<uint32_t>(m->memfd(), h.data_offset + uint64_t{e} * h.elem_size,
                       rng() % 2 ? rng() % 64 : rng());
    poke<uint64_t>(m->memfd(), offsetof(detail::MapHeader, free_head), 0xffffffff00000007ull);
    poke<uint32_t>(m->memfd(), offsetof(detail::MapHeader, hash_bump),
                   3u);  // hands out used elements
    auto o = open_shared_map(m->memfd());
    ASSERT_TRUE(o.ok()) << o.error().message;
    for (auto* map : {m.get(), o.value().get()}) {
        for (uint64_t k = 0; k < 200; ++k) {
            uint64_t v = 0, next = 0;
            map->lookup(&k);
            const long cv = map->copy_value(&k, &v);
            EXPECT_TRUE(cv == 0 || cv == -ENOENT);
            const long up = map->update(&k, &k, kUpdateAny);
            EXPECT_TRUE(up == 0 || up == -E2BIG) << up;
            const long rm = map->remove(&k);
            EXPECT_TRUE(rm == 0 || rm == -ENOENT) << rm;
            const long nk = map->next_key(&k, &next);
            EXPECT_TRUE(nk == 0 || nk == -ENOENT) << nk;
        }
    }
}

TEST(MapShared, CorruptRingPositionsAndHeadersNeitherCrashNorOverrun) {
    auto m = make(MapType::RingBuf, 0, 0, 4096);
    ASSERT_TRUE(m);
    auto* rb = dynamic_cast<RingBuffer*>(m.get());
    ASSERT_NE(rb, nullptr);
    detail::MapHeader h;
    ASSERT_EQ(pread(m->memfd(), &h, sizeof h, 0), static_cast<ssize_t>(sizeof h));
    const uint64_t cons_off = h.index_offset, prod_off = h.index_offset + 4096;
    // A consumer position ahead of the producer: producers drop instead of overwriting.
    poke<uint64_t>(m->memfd(), cons_off, 1ull << 40);
    const char data[16] = {};
    EXPECT_EQ(rb->output(data, sizeof data), -ENOSPC);
    EXPECT_EQ(rb->dropped(), 1u);
    poke<uint64_t>(m->memfd(), cons_off, 0);
    // A record header claiming more than was produced: the consumer stops at it.
    ASSERT_EQ(rb->output(data, sizeof data), 0);
    poke<uint32_t>(m->memfd(), h.data_offset, 4000u);
    size_t calls = 0;
    EXPECT_EQ(rb->consume([&](const void*, uint32_t) { ++calls; }), 0u);
    EXPECT_EQ(calls, 0u);
    // A producer position far beyond the consumer: nothing is read outside the data area.
    poke<uint64_t>(m->memfd(), prod_off, 1ull << 50);
    EXPECT_EQ(rb->consume([&](const void*, uint32_t) { ++calls; }), 0u);
    EXPECT_EQ(calls, 0u);
}

}  // namespace
}  // namespace liveio::ebpf
