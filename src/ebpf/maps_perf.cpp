// BPF_MAP_TYPE_PERF_EVENT_ARRAY in userspace: one ring per slot (map_ring.h protocol), each
// with a control block {consumer position, producer position, producers' lock, lost count}
// on its own cache lines, its data area mapped twice so samples never wrap.
#include <cerrno>
#include <cstring>
#include <vector>

#include "ebpf/map_ring.h"

namespace liveio::ebpf::detail {
namespace {

class PerfArray final : public PerfEventArray {
public:
    PerfArray(const MapSpec& spec, const Layout& layout, ShmRegion region)
        : PerfEventArray(spec), region_(std::move(region)), ncpus_(possible_cpus()) {
        rings_.reserve(spec.max_entries);
        for (uint64_t i = 0; i < spec.max_entries; ++i) {
            uint8_t* ctl = region_.base() + layout.index_offset + i * kPerfCtlBytes;
            rings_.emplace_back(
                reinterpret_cast<uint64_t*>(ctl), reinterpret_cast<uint64_t*>(ctl + 64),
                reinterpret_cast<uint32_t*>(ctl + 128), reinterpret_cast<uint64_t*>(ctl + 192),
                region_.base() + layout.data_offset + 2 * i * kPerfSlotBytes, kPerfSlotBytes);
        }
    }

    void* lookup(const void*) override { return nullptr; }
    long update(const void*, const void*, uint64_t) override { return -EINVAL; }
    long remove(const void*) override { return -EINVAL; }
    long copy_value(const void*, void*) override { return -EINVAL; }
    int memfd() const override { return region_.fd(); }

    long next_key(const void* key, void* next) override {
        uint32_t n = 0;
        if (key) {
            uint32_t i;
            std::memcpy(&i, key, 4);
            if (i < spec_.max_entries) {
                if (i == spec_.max_entries - 1) return -ENOENT;
                n = i + 1;
            }
        }
        std::memcpy(next, &n, 4);
        return 0;
    }

    long output(uint64_t flags, const void* data, uint64_t size) override {
        if (flags & ~kCurrentCpu) return -EINVAL;
        const uint64_t slot = flags == kCurrentCpu ? current_cpu_slot(ncpus_) : flags;
        if (slot >= rings_.size()) return -E2BIG;
        return rings_[slot].output(data, size);
    }

    uint64_t lost() const override {
        uint64_t n = 0;
        for (const RingCore& r : rings_) n += r.dropped();
        return n;
    }

    size_t consume(
        const std::function<void(uint32_t slot, const void* data, uint32_t size)>& fn) override {
        size_t n = 0;
        for (uint32_t slot = 0; slot < rings_.size(); ++slot)
            n += rings_[slot].consume([&](const void* d, uint32_t size) { fn(slot, d, size); });
        return n;
    }

private:
    ShmRegion region_;
    uint32_t ncpus_;
    std::vector<RingCore> rings_;
};

}  // namespace

std::shared_ptr<Map> make_perf_event_array(const MapSpec& spec, const Layout& layout,
                                           ShmRegion region, bool) {
    // A fresh memfd is zero-filled: positions 0, locks free, nothing lost.
    return std::make_shared<PerfArray>(spec, layout, std::move(region));
}

}  // namespace liveio::ebpf::detail
