// BPF_MAP_TYPE_RINGBUF with the kernel's memory layout: header page, consumer-position page,
// producer-position page, then max_entries data bytes mapped twice back to back. The record
// protocol (map_ring.h) is the kernel's; the producers' spinlock and the drop counter live in
// the header page.
#include <cerrno>

#include "ebpf/map_ring.h"

namespace liveio::ebpf::detail {
namespace {

class RingBuf final : public RingBuffer {
public:
    RingBuf(const MapSpec& spec, const Layout& layout, ShmRegion region)
        : RingBuffer(spec),
          region_(std::move(region)),
          ring_(reinterpret_cast<uint64_t*>(region_.base() + layout.index_offset),
                reinterpret_cast<uint64_t*>(region_.base() + layout.index_offset + kPageSize),
                &region_.header()->ring_lock, &region_.header()->ring_dropped,
                region_.base() + layout.data_offset, spec.max_entries) {}

    void* lookup(const void*) override { return nullptr; }
    long update(const void*, const void*, uint64_t) override { return -EINVAL; }
    long remove(const void*) override { return -EINVAL; }
    long next_key(const void*, void*) override { return -EINVAL; }
    long copy_value(const void*, void*) override { return -EINVAL; }
    int memfd() const override { return region_.fd(); }

    void* reserve(uint64_t size) override { return ring_.reserve(size); }
    void submit(void* record) override { ring_.finish(record, 0); }
    void discard(void* record) override { ring_.finish(record, kRingDiscardBit); }
    long output(const void* data, uint64_t size) override { return ring_.output(data, size); }

    uint64_t query(uint64_t flag) const override {
        const uint64_t cons = ring_.consumer_pos();
        const uint64_t prod = ring_.producer_pos();
        switch (flag) {
            case 0: return prod - cons;   // BPF_RB_AVAIL_DATA
            case 1: return ring_.size();  // BPF_RB_RING_SIZE
            case 2: return cons;          // BPF_RB_CONS_POS
            case 3: return prod;          // BPF_RB_PROD_POS
            default: return 0;
        }
    }

    uint64_t dropped() const override { return ring_.dropped(); }

    size_t consume(const std::function<void(const void* data, uint32_t size)>& fn) override {
        return ring_.consume(fn);
    }

private:
    ShmRegion region_;
    RingCore ring_;
};

}  // namespace

std::shared_ptr<Map> make_ringbuf(const MapSpec& spec, const Layout& layout, ShmRegion region,
                                  bool) {
    // A fresh memfd is zero-filled: positions 0, lock free, nothing dropped.
    return std::make_shared<RingBuf>(spec, layout, std::move(region));
}

}  // namespace liveio::ebpf::detail
