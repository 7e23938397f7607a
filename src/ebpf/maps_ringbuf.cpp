// BPF_MAP_TYPE_RINGBUF with the kernel's memory layout and protocol.
//
// Memory: header page, consumer-position page, producer-position page, then max_entries data
// bytes mapped twice back to back, so a record starting near the end continues in the second
// mapping and never wraps. Each record starts with the kernel's 8-byte header {u32 len with
// BUSY (bit 31) and DISCARD (bit 30), u32 page offset of the record in the data area}, and
// occupies round_up(len + 8, 8) bytes.
//
// Producers (BPF programs on any thread of the target) reserve under a spinlock in the header
// page, as the kernel does: positions only move forward and a record is visible to the consumer
// with BUSY set before its bytes are written, so the consumer stops at it instead of reading
// garbage. submit/discard clear BUSY with one atomic exchange (release), without the lock.
// The consumer (one at a time: the CLI, any process holding the memfd) never takes the lock
// and writes only the consumer position, so it cannot block producers. A reservation that does
// not fit — the buffer is full, or the record is larger than the buffer could ever hold — is
// counted in ring_dropped, so produced == consumed + dropped always holds.
#include <cerrno>
#include <cstring>

#include "ebpf/map_shm.h"

namespace liveio::ebpf::detail {
namespace {

class RingBuf final : public RingBuffer {
public:
    RingBuf(const MapSpec& spec, const Layout& layout, ShmRegion region)
        : RingBuffer(spec),
          region_(std::move(region)),
          hdr_(region_.header()),
          consumer_pos_(reinterpret_cast<uint64_t*>(region_.base() + layout.index_offset)),
          producer_pos_(reinterpret_cast<uint64_t*>(region_.base() + layout.index_offset + kPageSize)),
          data_(region_.base() + layout.data_offset),
          size_(spec.max_entries),
          mask_(uint64_t{spec.max_entries} - 1) {}

    void* lookup(const void*) override { return nullptr; }
    long update(const void*, const void*, uint64_t) override { return -EINVAL; }
    long remove(const void*) override { return -EINVAL; }
    long next_key(const void*, void*) override { return -EINVAL; }
    long copy_value(const void*, void*) override { return -EINVAL; }
    int memfd() const override { return region_.fd(); }

    void* reserve(uint64_t size) override {
        if (size > size_ - kRingHeaderSize) {
            __atomic_fetch_add(&hdr_->ring_dropped, 1, __ATOMIC_RELAXED);
            return nullptr;
        }
        const uint64_t total = round8(size + kRingHeaderSize);
        lock();
        const uint64_t cons = __atomic_load_n(consumer_pos_, __ATOMIC_ACQUIRE);
        const uint64_t prod = __atomic_load_n(producer_pos_, __ATOMIC_RELAXED);
        // As the kernel: the data in flight never reaches the full size (a garbage consumer
        // position from a misbehaving consumer makes this huge, i.e. a drop, never an overrun).
        if (prod + total - cons > mask_) {
            unlock();
            __atomic_fetch_add(&hdr_->ring_dropped, 1, __ATOMIC_RELAXED);
            return nullptr;
        }
        uint8_t* rec = data_ + (prod & mask_);
        const uint32_t pg_off = static_cast<uint32_t>((prod & mask_) / kPageSize);
        std::memcpy(rec + 4, &pg_off, 4);
        __atomic_store_n(reinterpret_cast<uint32_t*>(rec), static_cast<uint32_t>(size) | kRingBusyBit,
                         __ATOMIC_RELAXED);
        __atomic_store_n(producer_pos_, prod + total, __ATOMIC_RELEASE);
        unlock();
        return rec + kRingHeaderSize;
    }

    void submit(void* record) override { finish(record, 0); }
    void discard(void* record) override { finish(record, kRingDiscardBit); }

    long output(const void* data, uint64_t size) override {
        void* rec = reserve(size);
        if (!rec) return -ENOSPC;
        std::memcpy(rec, data, size);
        submit(rec);
        return 0;
    }

    uint64_t query(uint64_t flag) const override {
        const uint64_t cons = __atomic_load_n(consumer_pos_, __ATOMIC_ACQUIRE);
        const uint64_t prod = __atomic_load_n(producer_pos_, __ATOMIC_ACQUIRE);
        switch (flag) {
        case 0: return prod - cons;
        case 1: return size_;
        case 2: return cons;
        case 3: return prod;
        default: return 0;
        }
    }

    uint64_t dropped() const override { return __atomic_load_n(&hdr_->ring_dropped, __ATOMIC_RELAXED); }

    size_t consume(const std::function<void(const void* data, uint32_t size)>& fn) override {
        uint64_t cons = __atomic_load_n(consumer_pos_, __ATOMIC_RELAXED);
        size_t n = 0;
        for (;;) {
            const uint64_t prod = __atomic_load_n(producer_pos_, __ATOMIC_ACQUIRE);
            const uint64_t avail = prod - cons;
            if (avail == 0 || avail > size_) break;
            const uint8_t* rec = data_ + (cons & mask_);
            const uint32_t len = __atomic_load_n(reinterpret_cast<const uint32_t*>(rec), __ATOMIC_ACQUIRE);
            if (len & kRingBusyBit) break;
            const uint32_t size = len & ~(kRingBusyBit | kRingDiscardBit);
            const uint64_t total = round8(uint64_t{size} + kRingHeaderSize);
            if (total > avail) break;  // corrupt header: never read past what was produced
            if (!(len & kRingDiscardBit)) {
                fn(rec + kRingHeaderSize, size);
                ++n;
            }
            cons += total;
            __atomic_store_n(consumer_pos_, cons, __ATOMIC_RELEASE);
        }
        return n;
    }

private:
    void lock() {
        for (;;) {
            if (!__atomic_exchange_n(&hdr_->ring_lock, 1u, __ATOMIC_ACQUIRE)) return;
            while (__atomic_load_n(&hdr_->ring_lock, __ATOMIC_RELAXED)) cpu_relax();
        }
    }
    void unlock() { __atomic_store_n(&hdr_->ring_lock, 0u, __ATOMIC_RELEASE); }

    void finish(void* record, uint32_t extra_bits) {
        auto* rec = static_cast<uint8_t*>(record) - kRingHeaderSize;
        // Only records of this buffer: a stray pointer must not corrupt other memory.
        if (rec < data_ || rec >= data_ + size_ || (rec - data_) % 8 != 0) return;
        auto* len = reinterpret_cast<uint32_t*>(rec);
        const uint32_t v = __atomic_load_n(len, __ATOMIC_RELAXED);
        __atomic_exchange_n(len, (v & ~kRingBusyBit) | extra_bits, __ATOMIC_RELEASE);
    }

    ShmRegion region_;
    MapHeader* hdr_;
    uint64_t* consumer_pos_;
    uint64_t* producer_pos_;
    uint8_t* data_;
    uint64_t size_;
    uint64_t mask_;
};

}  // namespace

std::shared_ptr<Map> make_ringbuf(const MapSpec& spec, const Layout& layout, ShmRegion region, bool) {
    // A fresh memfd is zero-filled: positions 0, lock free, nothing dropped.
    return std::make_shared<RingBuf>(spec, layout, std::move(region));
}

}  // namespace liveio::ebpf::detail
