// Private to the map implementation (maps*.cpp): the shared-memory layout every map uses, the
// primitives that make it safe for many threads and a second process, and the per-type
// constructors create_map / open_shared_map dispatch to.
//
// Memory of one map = one memfd, sealed against shrinking and growing (a reader can never be
// made to fault by a truncation):
//
//   offset 0      MapHeader (one page): magic, version, the MapSpec, the layout below, and the
//                 map-wide mutable words (free list, LRU clock hand, ring-buffer lock/drops)
//   index_offset  arrays: kArrayStripes seqlock words, one per cache line
//                 hashes: nbuckets Bucket {seq, head}
//                 ringbuf: consumer-position page, then producer-position page (as the kernel)
//                 perf event array: one kPerfCtlBytes control block per slot
//   data_offset   arrays: max_entries × value_stride (per-CPU: × ncpus, the CPU slots of one
//                 element adjacent)
//                 hashes: max_entries elements of elem_size bytes
//                 ringbuf: max_entries data bytes, mapped twice back to back
//                 perf event array: max_entries rings of kPerfSlotBytes, each mapped twice
//
// Shared memory holds no pointers: hash chains and the free list link element indices.
// "CPU" for per-CPU maps is sched_getcpu() (a cheap read of glibc's rseq area), folded modulo
// the creator's number of possible CPUs (ncpus, stored in the header).
#pragma once

#include <sched.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "base/result.h"
#include "ebpf/map.h"

namespace liveio::ebpf::detail {

inline constexpr uint64_t kMapMagic = 0x504d4f494556494cull;  // "LIVEIOMP" little-endian
inline constexpr uint32_t kMapVersion = 2;
inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint32_t kNil = 0xffffffffu;
inline constexpr uint32_t kArrayStripes = 64;
inline constexpr uint32_t kMaxKeySize = 512;  // the kernel's MAX_BPF_STACK
inline constexpr uint32_t kMaxValueSize = 1u << 20;
inline constexpr uint32_t kMaxPercpuValueSize = 32768;  // the kernel's PCPU_MIN_UNIT_SIZE
// Map memory is committed at creation (posix_fallocate): bound what one map may take.
inline constexpr uint64_t kMaxMapBytes = 1ull << 30;
inline constexpr size_t kNameCapacity = 64;
// Perf event arrays: one ring of kPerfSlotBytes per slot, behind a control block per slot.
inline constexpr uint64_t kPerfSlotBytes = 64 * 1024;
inline constexpr uint64_t kPerfCtlBytes = 256;
inline constexpr uint32_t kMaxPerfSlots = 1024;

// Kernel map_flags liveio accepts (others are rejected by name).
inline constexpr uint32_t kFlagNoPrealloc = 1, kFlagNoCommonLru = 2, kFlagNumaNode = 4,
                          kFlagRdonly = 8, kFlagWronly = 16, kFlagZeroSeed = 64,
                          kFlagRdonlyProg = 128, kFlagWronlyProg = 256, kFlagMmapable = 1024,
                          kFlagInnerMap = 4096;

// Ring-buffer record header bits, as the kernel's BPF_RINGBUF_{BUSY,DISCARD}_BIT.
inline constexpr uint32_t kRingBusyBit = 1u << 31, kRingDiscardBit = 1u << 30;
inline constexpr uint32_t kRingHeaderSize = 8;

struct alignas(64) MapHeader {
    uint64_t magic;  // written last by the creator (release): openers never see a half-built map
    uint32_t version;
    uint32_t header_size;  // sizeof(MapHeader)
    uint32_t type;         // MapType
    uint32_t key_size;
    uint32_t value_size;
    uint32_t max_entries;
    uint32_t flags;
    uint32_t ncpus;       // CPU slots of per-CPU maps
    uint64_t total_size;  // bytes of the memfd
    uint64_t seed;        // hash seed (0 with BPF_F_ZERO_SEED)
    uint64_t index_offset;
    uint64_t data_offset;
    uint32_t nbuckets;      // hashes
    uint32_t elem_size;     // hashes: bytes per element
    uint32_t value_stride;  // value_size rounded up to 8
    uint32_t reserved0;
    char name[kNameCapacity];
    // Mutable, map-wide; each on its own cache line.
    alignas(64) uint64_t free_head;  // hashes: tagged free-list head (tag << 32 | index + 1)
    alignas(64) uint32_t hash_bump;  // hashes: elements [hash_bump, max_entries) never used yet
    alignas(64) uint64_t lru_hand;   // LRU hashes: clock hand
    alignas(64) uint32_t ring_lock;  // ringbuf: producers' spinlock
    alignas(64) uint64_t ring_dropped;
};
static_assert(sizeof(MapHeader) <= kPageSize);

// The derived geometry of a map; a pure function of (spec, ncpus) so an opener can recompute
// and cross-check what the header claims.
// One mmap of the memfd within a map's address range.
struct Segment {
    uint64_t address_offset;  // from the start of the map's address range
    uint64_t file_offset;
    uint64_t length;
};

struct Layout {
    uint32_t ncpus = 1;
    uint32_t nbuckets = 0;
    uint32_t elem_size = 0;
    uint32_t value_stride = 0;
    uint64_t index_offset = 0;
    uint64_t data_offset = 0;
    uint64_t total_size = 0;
    // How the memfd is mapped: the file once, plus ring data areas a second time right after
    // themselves so that records never wrap.
    uint64_t address_span = 0;
    std::vector<Segment> segments;
};

// Checks a spec (every rejection names the field) and computes its layout.
Result<Layout> plan_layout(const MapSpec& spec, uint32_t ncpus);

// Number of CPU slots of per-CPU maps created by this process: possible CPUs, as libbpf counts.
uint32_t possible_cpus();

// A map's memfd and its mapping. Ring buffers map their data area a second time right after
// the first so that records never wrap.
class ShmRegion {
public:
    ShmRegion() = default;
    ~ShmRegion();
    ShmRegion(ShmRegion&& other) noexcept;
    ShmRegion& operator=(ShmRegion&& other) noexcept;
    ShmRegion(const ShmRegion&) = delete;
    ShmRegion& operator=(const ShmRegion&) = delete;

    // A fresh sealed memfd of layout.total_size bytes, mapped as the layout says.
    static Result<ShmRegion> create(const std::string& name, const Layout& layout);
    // Takes ownership of `fd` and maps it as the layout says.
    static Result<ShmRegion> map_fd(int fd, const Layout& layout);

    int fd() const { return fd_; }
    uint8_t* base() const { return base_; }
    MapHeader* header() const { return reinterpret_cast<MapHeader*>(base_); }

private:
    int fd_ = -1;
    uint8_t* base_ = nullptr;
    size_t mapped_ = 0;
};

// Per-type constructors. `fresh`: initialize the memory (create_map) rather than attach to
// a map another process initialized (open_shared_map).
std::shared_ptr<Map> make_array_map(const MapSpec& spec, const Layout& layout, ShmRegion region,
                                    bool fresh);
std::shared_ptr<Map> make_hash_map(const MapSpec& spec, const Layout& layout, ShmRegion region,
                                   bool fresh);
std::shared_ptr<Map> make_ringbuf(const MapSpec& spec, const Layout& layout, ShmRegion region,
                                  bool fresh);
std::shared_ptr<Map> make_perf_event_array(const MapSpec& spec, const Layout& layout,
                                           ShmRegion region, bool fresh);

// ---- primitives -------------------------------------------------------------------------

inline uint64_t round8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// The calling thread's CPU slot in [0, ncpus).
inline uint32_t current_cpu_slot(uint32_t ncpus) {
    const int cpu = ::sched_getcpu();
    if (cpu < 0) return 0;
    const auto c = static_cast<uint32_t>(cpu);
    return c < ncpus ? c : c % ncpus;
}

// Sequence locks: writers make the word odd while they modify (an exclusive spinlock among
// writers); readers never write, so a reader process that dies or stalls cannot block the
// target. Readers retry when the word changed under them.
inline void seq_write_lock(uint32_t* seq) {
    for (;;) {
        uint32_t v = __atomic_load_n(seq, __ATOMIC_RELAXED);
        if (!(v & 1) && __atomic_compare_exchange_n(seq, &v, v + 1, false, __ATOMIC_ACQUIRE,
                                                    __ATOMIC_RELAXED)) {
            // The odd word before any data store: a reader whose data load sees one of them
            // then sees the odd word in seq_read_retry (its acquire fence pairs with this one).
            __atomic_thread_fence(__ATOMIC_RELEASE);
            return;
        }
        cpu_relax();
    }
}
// Only the holder changes an odd word, so the release needs no locked instruction.
inline void seq_write_unlock(uint32_t* seq) {
    __atomic_store_n(seq, __atomic_load_n(seq, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
}
inline uint32_t seq_read_begin(const uint32_t* seq) {
    for (;;) {
        const uint32_t v = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
        if (!(v & 1)) return v;
        cpu_relax();
    }
}
inline bool seq_read_retry(const uint32_t* seq, uint32_t begin) {
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(seq, __ATOMIC_RELAXED) != begin;
}

// Copies of keys and values that readers take under a sequence lock while a writer may be
// rewriting them: every access to shared memory is a relaxed atomic load or store of a whole
// aligned word, so the race the sequence check resolves is not a data race (undefined
// behavior) in the C++ memory model, and ThreadSanitizer sees atomics, not plain accesses. On
// x86-64 these are the plain moves memcpy would use for short keys and values. The shared side
// is 8-byte aligned and padded to a multiple of 8 bytes (key and value strides are rounded up):
// shm_load and shm_equal read the padding of the last word, shm_store writes it with zeros; the
// private side is touched for exactly `n` bytes.
inline uint64_t shm_word(const uint8_t* shared) {
    return __atomic_load_n(reinterpret_cast<const uint64_t*>(shared), __ATOMIC_RELAXED);
}
inline void shm_load(void* out, const uint8_t* shared, size_t n) {
    auto* d = static_cast<uint8_t*>(out);
    for (; n >= 8; n -= 8, d += 8, shared += 8) {
        const uint64_t w = shm_word(shared);
        std::memcpy(d, &w, 8);
    }
    if (n != 0) {
        const uint64_t w = shm_word(shared);
        std::memcpy(d, &w, n);
    }
}
inline void shm_store(uint8_t* shared, const void* in, size_t n) {
    const auto* s = static_cast<const uint8_t*>(in);
    for (; n >= 8; n -= 8, s += 8, shared += 8) {
        uint64_t w;
        std::memcpy(&w, s, 8);
        __atomic_store_n(reinterpret_cast<uint64_t*>(shared), w, __ATOMIC_RELAXED);
    }
    if (n != 0) {
        uint64_t w = 0;
        std::memcpy(&w, s, n);
        __atomic_store_n(reinterpret_cast<uint64_t*>(shared), w, __ATOMIC_RELAXED);
    }
}
// `n` a multiple of 8.
inline void shm_zero(uint8_t* shared, size_t n) {
    for (size_t i = 0; i < n; i += 8)
        __atomic_store_n(reinterpret_cast<uint64_t*>(shared + i), uint64_t{0}, __ATOMIC_RELAXED);
}
inline bool shm_equal(const uint8_t* shared, const void* in, size_t n) {
    const auto* s = static_cast<const uint8_t*>(in);
    for (; n >= 8; n -= 8, s += 8, shared += 8) {
        uint64_t w;
        std::memcpy(&w, s, 8);
        if (shm_word(shared) != w) return false;
    }
    if (n == 0) return true;
    uint64_t w = 0;
    std::memcpy(&w, s, n);
    const uint64_t low_bytes = (uint64_t{1} << (8 * n)) - 1;  // little-endian: the first n bytes
    return (shm_word(shared) & low_bytes) == w;
}

// Keys: a 64×64→128 multiply-fold per 8-byte chunk (wyhash's mixing step). Cheap for the
// 4- and 8-byte keys BPF programs mostly use, and every input bit reaches the low bits the
// bucket index takes.
inline uint64_t mum(uint64_t a, uint64_t b) {
    const __uint128_t m = static_cast<__uint128_t>(a) * b;
    return static_cast<uint64_t>(m) ^ static_cast<uint64_t>(m >> 64);
}
inline uint64_t hash_key(const void* key, uint32_t size, uint64_t seed) {
    constexpr uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull;
    const auto* p = static_cast<const uint8_t*>(key);
    uint64_t h = seed ^ k0 ^ size;
    if (size == 4) {
        uint32_t v;
        std::memcpy(&v, p, 4);
        return mum(h ^ v, k1);
    }
    uint32_t n = size;
    while (n >= 8) {
        uint64_t v;
        std::memcpy(&v, p, 8);
        h = mum(h ^ v, k1);
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t v = 0;
        std::memcpy(&v, p, n);
        h = mum(h ^ v ^ k0, k1);
    }
    return h;
}

}  // namespace liveio::ebpf::detail
