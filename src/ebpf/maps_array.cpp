// Array, per-CPU array and program array maps.
//
// Values sit at data_offset + index × ncpus × value_stride (+ cpu × value_stride). update()
// and copy_value() serialize through one of kArrayStripes sequence locks (stripe = index mod
// kArrayStripes), so a reader in another process never sees a value half-written by update().
// Programs that write through a lookup() pointer bypass the stripes, as in the kernel.
//
// ProgArray: each slot is a uint32 program id, 0 meaning empty. update(index, &id, BPF_ANY)
// stores it, remove() empties it, lookup() returns the slot's address so the runtime's
// TailCallResolver (exec_env.h) reads the id with one atomic load; copy_value yields the id
// as the kernel's BPF_MAP_LOOKUP_ELEM does for program arrays. Ids are assigned and
// interpreted by whoever owns the program registry.
#include <cerrno>
#include <cstring>

#include "ebpf/map_shm.h"

namespace liveio::ebpf::detail {
namespace {

class ArrayMap final : public Map {
public:
    ArrayMap(const MapSpec& spec, const Layout& layout, ShmRegion region)
        : Map(spec),
          region_(std::move(region)),
          stripes_(region_.base() + layout.index_offset),
          data_(region_.base() + layout.data_offset),
          stride_(layout.value_stride),
          ncpus_(layout.ncpus),
          elem_bytes_(uint64_t{layout.value_stride} * layout.ncpus),
          percpu_(spec.type == MapType::PercpuArray),
          prog_(spec.type == MapType::ProgArray) {}

    void* lookup(const void* key) override {
        const uint32_t i = index_of(key);
        if (i >= spec_.max_entries) return nullptr;
        return percpu_ ? slot(i, current_cpu_slot(ncpus_)) : slot(i, 0);
    }

    long update(const void* key, const void* value, uint64_t flags) override {
        return write(key, value, flags, /*all_cpus=*/false);
    }
    long update_from_user(const void* key, const void* value, uint64_t flags) override {
        return write(key, value, flags, /*all_cpus=*/percpu_);
    }

private:
    long write(const void* key, const void* value, uint64_t flags, bool all_cpus) {
        // Program arrays take BPF_ANY only; the kernel checks flags before the index.
        if (flags > kUpdateExist || (prog_ && flags != kUpdateAny)) return -EINVAL;
        const uint32_t i = index_of(key);
        if (i >= spec_.max_entries) return -E2BIG;
        if (prog_) {
            uint32_t id;
            std::memcpy(&id, value, 4);
            if (id == 0) return -EINVAL;  // 0 marks an empty slot
            __atomic_store_n(reinterpret_cast<uint32_t*>(slot(i, 0)), id, __ATOMIC_RELEASE);
            return 0;
        }
        if (flags == kUpdateNoExist) return -EEXIST;  // every index of an array exists
        uint32_t* seq = stripe(i);
        seq_write_lock(seq);
        if (all_cpus) {
            for (uint32_t cpu = 0; cpu < ncpus_; ++cpu)
                shm_store(slot(i, cpu),
                          static_cast<const uint8_t*>(value) + uint64_t{cpu} * stride_,
                          spec_.value_size);
        } else {
            shm_store(percpu_ ? slot(i, current_cpu_slot(ncpus_)) : slot(i, 0), value,
                      spec_.value_size);
        }
        seq_write_unlock(seq);
        return 0;
    }

public:
    long remove(const void* key) override {
        if (!prog_) return -EINVAL;  // array elements cannot be deleted
        const uint32_t i = index_of(key);
        if (i >= spec_.max_entries) return -E2BIG;
        const uint32_t old =
            __atomic_exchange_n(reinterpret_cast<uint32_t*>(slot(i, 0)), 0u, __ATOMIC_ACQ_REL);
        return old ? 0 : -ENOENT;
    }

    long next_key(const void* key, void* next) override {
        uint32_t n = 0;
        if (key) {
            const uint32_t i = index_of(key);
            if (i < spec_.max_entries) {
                if (i == spec_.max_entries - 1) return -ENOENT;
                n = i + 1;
            }
        }
        std::memcpy(next, &n, 4);
        return 0;
    }

    long copy_value(const void* key, void* out) override {
        const uint32_t i = index_of(key);
        if (i >= spec_.max_entries) return -ENOENT;
        if (prog_) {
            const uint32_t id =
                __atomic_load_n(reinterpret_cast<uint32_t*>(slot(i, 0)), __ATOMIC_ACQUIRE);
            if (!id) return -ENOENT;
            std::memcpy(out, &id, 4);
            return 0;
        }
        const size_t bytes = percpu_ ? elem_bytes_ : spec_.value_size;
        const uint32_t* seq = stripe(i);
        for (;;) {
            const uint32_t s = seq_read_begin(seq);
            shm_load(out, slot(i, 0), bytes);  // atomic words: a racing writer is no data race
            if (!seq_read_retry(seq, s)) return 0;
        }
    }

    int memfd() const override { return region_.fd(); }

private:
    static uint32_t index_of(const void* key) {
        uint32_t i;
        std::memcpy(&i, key, 4);
        return i;
    }
    uint8_t* slot(uint32_t i, uint32_t cpu) const {
        return data_ + i * elem_bytes_ + uint64_t{cpu} * stride_;
    }
    uint32_t* stripe(uint32_t i) const {
        return reinterpret_cast<uint32_t*>(stripes_ + uint64_t{i % kArrayStripes} * 64);
    }

    ShmRegion region_;
    uint8_t* stripes_;
    uint8_t* data_;
    uint32_t stride_;
    uint32_t ncpus_;
    uint64_t elem_bytes_;
    bool percpu_;
    bool prog_;
};

}  // namespace

std::shared_ptr<Map> make_array_map(const MapSpec& spec, const Layout& layout, ShmRegion region,
                                    bool) {
    // A fresh memfd is zero-filled: values start zeroed, program slots empty, stripes unlocked.
    return std::make_shared<ArrayMap>(spec, layout, std::move(region));
}

}  // namespace liveio::ebpf::detail
