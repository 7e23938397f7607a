// Kernel parity of map semantics: the same random operations on a liveio map and on a real
// kernel BPF map of the same spec (through libbpf's syscall wrappers) return the same codes
// and leave the same contents. Needs kernel BPF (root or CAP_BPF); skips otherwise.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "ebpf/map.h"

namespace liveio::ebpf {
namespace {

class KernelMap {
public:
    explicit KernelMap(const MapSpec& spec) {
        fd_ = bpf_map_create(static_cast<bpf_map_type>(spec.type), nullptr, spec.key_size,
                             spec.value_size, spec.max_entries, nullptr);
    }
    ~KernelMap() {
        if (fd_ >= 0) close(fd_);
    }
    KernelMap(const KernelMap&) = delete;
    KernelMap& operator=(const KernelMap&) = delete;
    int fd() const { return fd_; }
    // libbpf 1.x returns -errno directly.
    long update(const void* k, const void* v, uint64_t flags) {
        return bpf_map_update_elem(fd_, k, v, flags);
    }
    long lookup(const void* k, void* v) { return bpf_map_lookup_elem(fd_, k, v); }
    long remove(const void* k) { return bpf_map_delete_elem(fd_, k); }
    long next_key(const void* k, void* n) { return bpf_map_get_next_key(fd_, k, n); }

private:
    int fd_ = -1;
};

// Every key reachable through next_key, each once.
template <typename NextFn>
std::set<std::vector<uint8_t>> all_keys(uint32_t key_size, NextFn next) {
    std::set<std::vector<uint8_t>> keys;
    std::vector<uint8_t> cur(key_size), nxt(key_size);
    for (long rc = next(nullptr, nxt.data()); rc == 0; rc = next(cur.data(), nxt.data())) {
        if (!keys.insert(nxt).second) break;  // a repeat would loop forever
        cur = nxt;
    }
    return keys;
}

void differential(const MapSpec& spec, uint32_t key_space, uint64_t seed) {
    SCOPED_TRACE("type " + std::to_string(static_cast<int>(spec.type)) + " key " +
                 std::to_string(spec.key_size));
    KernelMap kmap(spec);
    if (kmap.fd() < 0)
        GTEST_SKIP() << "kernel BPF map creation failed (" << std::strerror(-kmap.fd()) << ")";
    auto created = create_map(spec);
    ASSERT_TRUE(created.ok()) << created.error().message;
    Map& ours = *created.value();
    std::mt19937_64 rng(seed);
    // Syscall values of per-CPU maps hold every possible CPU's value, each rounded up to 8.
    const bool percpu = spec.type == MapType::PercpuHash || spec.type == MapType::PercpuArray ||
                        spec.type == MapType::LruPercpuHash;
    const size_t value_bytes =
        percpu ? static_cast<size_t>(libbpf_num_possible_cpus()) * ((spec.value_size + 7) / 8 * 8)
               : spec.value_size;
    std::vector<uint8_t> key(spec.key_size), value(value_bytes), kv(value_bytes), ov(value_bytes);
    for (int op = 0; op < 20000; ++op) {
        const uint64_t x = rng() % key_space;
        std::memset(key.data(), 0, key.size());
        std::memcpy(key.data(), &x, std::min<size_t>(8, key.size()));
        const int what = static_cast<int>(rng() % 10);
        if (what < 5) {
            // Flags 0..3: BPF_ANY, BPF_NOEXIST, BPF_EXIST and an invalid one (BPF_F_LOCK without a
            // lock).
            const uint64_t flags = rng() % 16 == 0 ? 4 : rng() % 3;
            for (auto& b : value) b = static_cast<uint8_t>(rng());
            ASSERT_EQ(ours.update_from_user(key.data(), value.data(), flags),
                      kmap.update(key.data(), value.data(), flags))
                << "op " << op << " update key " << x << " flags " << flags;
        } else if (what < 7) {
            ASSERT_EQ(ours.remove(key.data()), kmap.remove(key.data()))
                << "op " << op << " delete key " << x;
        } else if (what < 9) {
            const long krc = kmap.lookup(key.data(), kv.data());
            ASSERT_EQ(ours.copy_value(key.data(), ov.data()), krc)
                << "op " << op << " lookup key " << x;
            if (krc == 0) {
                ASSERT_EQ(ov, kv) << "op " << op << " value of key " << x;
            }
        } else {
            std::vector<uint8_t> kn(spec.key_size), on(spec.key_size);
            const long krc = kmap.next_key(key.data(), kn.data());
            const long orc = ours.next_key(key.data(), on.data());
            // Hash orders differ: for a key in the map, whether another follows depends on the
            // order; for a key not in the map both restart at their first key.
            const bool array = spec.type == MapType::Array || spec.type == MapType::PercpuArray;
            const bool comparable = array || kmap.lookup(key.data(), kv.data()) != 0;
            if (comparable) {
                ASSERT_EQ(orc == 0, krc == 0) << "op " << op << " next_key of " << x;
            }
            if (array && krc == 0) {
                ASSERT_EQ(on, kn);
            }
        }
    }
    const auto kernel_keys =
        all_keys(spec.key_size, [&](const void* k, void* n) { return kmap.next_key(k, n); });
    const auto our_keys =
        all_keys(spec.key_size, [&](const void* k, void* n) { return ours.next_key(k, n); });
    EXPECT_EQ(our_keys, kernel_keys);
    for (const auto& k : kernel_keys) {
        ASSERT_EQ(kmap.lookup(k.data(), kv.data()), 0);
        ASSERT_EQ(ours.copy_value(k.data(), ov.data()), 0);
        EXPECT_EQ(ov, kv);
    }
}

TEST(MapKernelParity, HashMatchesTheKernel) {
    differential({"kh4", MapType::Hash, 4, 8, 64}, 100, 1);
    differential({"kh8", MapType::Hash, 8, 12, 16}, 40, 2);
    differential({"kh12", MapType::Hash, 12, 3, 200}, 300, 3);
}

TEST(MapKernelParity, ArrayMatchesTheKernel) {
    differential({"ka", MapType::Array, 4, 16, 50}, 60, 4);  // keys past the end too
}

// While the key space fits with room to spare nothing is evicted, and an LRU map must behave
// exactly as a hash map — in both implementations.
TEST(MapKernelParity, LruMatchesTheKernelBelowCapacity) {
    differential({"klru", MapType::LruHash, 8, 8, 512}, 64, 7);
    differential({"klrupc", MapType::LruPercpuHash, 4, 8, 512}, 64, 8);
}

TEST(MapKernelParity, PercpuMapsMatchTheKernelThroughUserspaceUpdates) {
    differential({"kph", MapType::PercpuHash, 8, 16, 32}, 50, 5);
    differential({"kpa", MapType::PercpuArray, 4, 8, 20}, 25, 6);
}

}  // namespace
}  // namespace liveio::ebpf
