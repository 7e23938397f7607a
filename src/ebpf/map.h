// BPF maps with the kernel's semantics, living in shared memory (a memfd) so that another
// process (the liveio CLI) can map the same memory and read it live.
//
// What users of these maps can rely on (implementation: maps*.cpp, layout: map_shm.h):
//  - Every method is safe from any number of threads of any process mapping the memfd.
//    Readers (lookup, next_key, copy_value) never write shared memory (except an LRU
//    reference bit), so a stalled or killed reader cannot block the target.
//  - copy_value() never returns a value half-written by update()/update_from_user(); writes
//    made through a pointer lookup() returned are seen as they happen (as in the kernel).
//  - "CPU" of per-CPU maps is sched_getcpu() folded into the slots, and there is one slot per
//    possible CPU (libbpf's libbpf_num_possible_cpus()). A thread can migrate between
//    lookup() and its write: use atomic adds on per-CPU values when exactness matters.
//  - ProgArray slots hold uint32 program ids (0 = empty), assigned by the runtime that owns
//    the programs. update(&index, &id, kUpdateAny) sets a slot, remove(&index) empties it;
//    lookup(&index) returns the slot's address, for the TailCallResolver (exec_env.h) to
//    read with an atomic load; copy_value(&index, &id) reads it from another process.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "base/result.h"

namespace liveio::ebpf {

// Values are the kernel's enum bpf_map_type, so ELF objects built for the kernel load unchanged.
enum class MapType : uint32_t {
    Hash = 1,
    Array = 2,
    ProgArray = 3,
    PerfEventArray = 4,
    PercpuHash = 5,
    PercpuArray = 6,
    LruHash = 9,
    LruPercpuHash = 10,
    RingBuf = 27,
};

// The kernel's name of a map type, as bpftool prints it ("hash", "percpu_array", ...).
const char* map_type_name(MapType type);
// Whether a map type keeps one value per possible CPU.
bool is_percpu(MapType type);

struct MapSpec {
    std::string name;
    MapType type = MapType::Array;
    uint32_t key_size = 0;
    uint32_t value_size = 0;
    uint32_t max_entries = 0;
    uint32_t flags = 0;
};

// Bytes Map::copy_value writes for one element of a map of `spec`, as libbpf sizes the value
// buffer of BPF_MAP_LOOKUP_ELEM: value_size, or for per-CPU maps one value rounded up to 8
// bytes per possible CPU.
size_t user_value_size(const MapSpec& spec);

// Update flags, as the kernel's BPF_ANY / BPF_NOEXIST / BPF_EXIST.
inline constexpr uint64_t kUpdateAny = 0, kUpdateNoExist = 1, kUpdateExist = 2;

// A map. Methods called from BPF programs (lookup/update/remove) follow the kernel's helper
// semantics: return 0 or a negative errno; lookup returns a pointer into map memory (for
// per-CPU maps: the calling CPU slot's value) or nullptr.
class Map {
public:
    virtual ~Map() = default;
    const MapSpec& spec() const { return spec_; }

    virtual void* lookup(const void* key) = 0;
    virtual long update(const void* key, const void* value, uint64_t flags) = 0;
    virtual long remove(const void* key) = 0;
    // Iteration as BPF_MAP_GET_NEXT_KEY: key == nullptr (or absent) yields the first key;
    // returns -ENOENT after the last.
    virtual long next_key(const void* key, void* next_key) = 0;

    // Userspace read of one element, as the BPF_MAP_LOOKUP_ELEM syscall: copies the value
    // into `out` (for per-CPU maps: every CPU slot's value, each rounded up to 8 bytes, in
    // slot order). Returns 0 or -ENOENT.
    virtual long copy_value(const void* key, void* out) = 0;

    // Userspace write of one element, as the BPF_MAP_UPDATE_ELEM syscall: update()'s flags
    // and returns; for per-CPU maps `value` holds every CPU slot's value in copy_value's
    // layout (each rounded up to 8 bytes, in slot order) instead of the calling CPU's only.
    virtual long update_from_user(const void* key, const void* value, uint64_t flags) {
        return update(key, value, flags);
    }

    // The shared-memory file descriptor holding this map's memory (header, then data).
    virtual int memfd() const = 0;

protected:
    explicit Map(MapSpec spec) : spec_(std::move(spec)) {}
    MapSpec spec_;
};

// BPF_MAP_TYPE_RINGBUF (create_map returns one of these for MapType::RingBuf; Map's
// element methods return -EINVAL / nullptr). Producers are BPF programs on any thread of the
// target; the consumer is any process holding the memfd (the CLI). Nothing is lost silently:
// a reserve that does not fit fails and is counted in dropped().
class RingBuffer : public Map {
public:
    // bpf_ringbuf_reserve: `size` bytes of record space, or nullptr when full (a drop).
    virtual void* reserve(uint64_t size) = 0;
    // bpf_ringbuf_submit / bpf_ringbuf_discard on a record returned by reserve().
    virtual void submit(void* record) = 0;
    virtual void discard(void* record) = 0;
    // bpf_ringbuf_output: reserve, copy, submit. 0 or -ENOSPC (counted as a drop).
    virtual long output(const void* data, uint64_t size) = 0;
    // bpf_ringbuf_query: BPF_RB_AVAIL_DATA (0), BPF_RB_RING_SIZE (1), BPF_RB_CONS_POS (2),
    // BPF_RB_PROD_POS (3); 0 for unknown flags.
    virtual uint64_t query(uint64_t flag) const = 0;
    // Records that could not be reserved because the buffer was full.
    virtual uint64_t dropped() const = 0;
    // Consumer side: calls `fn` for every submitted record in order (discarded ones are
    // skipped), stopping at the first record still being written. Returns records consumed.
    virtual size_t consume(const std::function<void(const void* data, uint32_t size)>& fn) = 0;

protected:
    using Map::Map;
};

// BPF_MAP_TYPE_PERF_EVENT_ARRAY (create_map returns one of these for MapType::PerfEventArray).
// In userspace there are no perf events to attach: every slot (key 0..max_entries-1) owns a
// 64 KiB ring in the map's memfd, always enabled, using the ring buffer's record protocol, and
// the consumer receives each sample's raw data with its slot. Map's element methods: lookup
// returns nullptr, update/remove -EINVAL (no perf event fds), next_key iterates the slots,
// copy_value -EINVAL. As with libbpf, max_entries 0 means one slot per possible CPU.
class PerfEventArray : public Map {
public:
    // BPF_F_CURRENT_CPU: the flags value selecting the calling CPU's slot.
    static constexpr uint64_t kCurrentCpu = 0xffffffffull;
    // bpf_perf_event_output: `flags` (low 32 bits) is a slot index or kCurrentCpu. Returns 0,
    // -EINVAL (other flag bits set), -E2BIG (slot >= max_entries) or -ENOSPC (the slot's ring
    // is full: counted in lost()).
    virtual long output(uint64_t flags, const void* data, uint64_t size) = 0;
    // Samples that could not be written, all slots together.
    virtual uint64_t lost() const = 0;
    // Consumer side (one consumer at a time): every submitted sample of every slot, in order
    // within a slot. Returns samples consumed.
    virtual size_t consume(
        const std::function<void(uint32_t slot, const void* data, uint32_t size)>& fn) = 0;

protected:
    using Map::Map;
};

// Creates a map in a fresh memfd. Invalid specs (zero sizes, unsupported type, key size
// not 4 for arrays, ...) are rejected with an Error naming the field.
Result<std::shared_ptr<Map>> create_map(const MapSpec& spec);

// Maps the memory of a map created elsewhere (typically in the target process, received
// over a Unix socket with SCM_RIGHTS) for live reading and writing.
Result<std::shared_ptr<Map>> open_shared_map(int memfd);

}  // namespace liveio::ebpf
