// BPF maps with the kernel's semantics, living in shared memory (a memfd) so that another
// process (the liveio CLI) can map the same memory and read it live.
#pragma once

#include <cstdint>
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

struct MapSpec {
    std::string name;
    MapType type = MapType::Array;
    uint32_t key_size = 0;
    uint32_t value_size = 0;
    uint32_t max_entries = 0;
    uint32_t flags = 0;
};

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

    // The shared-memory file descriptor holding this map's memory (header, then data).
    virtual int memfd() const = 0;

protected:
    explicit Map(MapSpec spec) : spec_(std::move(spec)) {}
    MapSpec spec_;
};

// Creates a map in a fresh memfd. Invalid specs (zero sizes, unsupported type, key size
// not 4 for arrays, ...) are rejected with an Error naming the field.
Result<std::shared_ptr<Map>> create_map(const MapSpec& spec);

// Maps the memory of a map created elsewhere (typically in the target process, received
// over a Unix socket with SCM_RIGHTS) for live reading and writing.
Result<std::shared_ptr<Map>> open_shared_map(int memfd);

}  // namespace liveio::ebpf
