// Private to the map implementation: the ring protocol shared by BPF_MAP_TYPE_RINGBUF and the
// per-slot rings of BPF_MAP_TYPE_PERF_EVENT_ARRAY, on memory another process also maps.
//
// Records start with the kernel's 8-byte ring-buffer header {u32 len with BUSY (bit 31) and
// DISCARD (bit 30), u32 page offset of the record in the data area} and occupy
// round_up(len + 8, 8) bytes. The data area is mapped twice back to back, so a record that
// starts near the end continues in the second mapping and never wraps.
//
// Producers (BPF programs on any thread of the target) reserve under a spinlock, as the
// kernel does: positions only move forward and a record is published BUSY before its bytes
// are written, so the consumer stops at it instead of reading garbage. submit/discard clear
// BUSY with one atomic exchange (release). The consumer (one at a time, any process holding
// the memfd) never takes the lock and writes only the consumer position, so it cannot block
// producers. A reservation that does not fit — the ring is full, or the record is larger than
// the ring could ever hold — is counted in `dropped`: produced == consumed + dropped + discarded.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>

#include "ebpf/map_shm.h"

namespace liveio::ebpf::detail {

class RingCore {
public:
    RingCore() = default;
    RingCore(uint64_t* consumer_pos, uint64_t* producer_pos, uint32_t* lock, uint64_t* dropped,
             uint8_t* data, uint64_t size)
        : cons_(consumer_pos),
          prod_(producer_pos),
          lock_(lock),
          dropped_(dropped),
          data_(data),
          size_(size),
          mask_(size - 1) {}

    void* reserve(uint64_t size) {
        if (size > size_ - kRingHeaderSize) return drop();
        const uint64_t total = round8(size + kRingHeaderSize);
        lock();
        const uint64_t cons = __atomic_load_n(cons_, __ATOMIC_ACQUIRE);
        const uint64_t prod = __atomic_load_n(prod_, __ATOMIC_RELAXED);
        // As the kernel: the data in flight stays below the full size. A garbage consumer
        // position (a misbehaving consumer) makes this huge, i.e. a drop, never an overrun.
        if (prod + total - cons > mask_) {
            unlock();
            return drop();
        }
        uint8_t* rec = data_ + (prod & mask_);
        const auto pg_off = static_cast<uint32_t>((prod & mask_) / kPageSize);
        std::memcpy(rec + 4, &pg_off, 4);
        __atomic_store_n(reinterpret_cast<uint32_t*>(rec),
                         static_cast<uint32_t>(size) | kRingBusyBit, __ATOMIC_RELAXED);
        __atomic_store_n(prod_, prod + total, __ATOMIC_RELEASE);
        unlock();
        return rec + kRingHeaderSize;
    }

    // Clears BUSY (and sets `extra_bits`, e.g. DISCARD) on a record reserve() returned.
    // Pointers that are not records of this ring are ignored rather than written through.
    void finish(void* record, uint32_t extra_bits) {
        auto* rec = static_cast<uint8_t*>(record) - kRingHeaderSize;
        if (rec < data_ || rec >= data_ + size_ || (rec - data_) % 8 != 0) return;
        auto* len = reinterpret_cast<uint32_t*>(rec);
        const uint32_t v = __atomic_load_n(len, __ATOMIC_RELAXED);
        __atomic_exchange_n(len, (v & ~kRingBusyBit) | extra_bits, __ATOMIC_RELEASE);
    }

    long output(const void* data, uint64_t size) {
        void* rec = reserve(size);
        if (!rec) return -ENOSPC;
        std::memcpy(rec, data, size);
        finish(rec, 0);
        return 0;
    }

    template <typename Fn>  // void(const void* data, uint32_t size)
    size_t consume(Fn&& fn) {
        uint64_t cons = __atomic_load_n(cons_, __ATOMIC_RELAXED);
        size_t n = 0;
        for (;;) {
            const uint64_t prod = __atomic_load_n(prod_, __ATOMIC_ACQUIRE);
            const uint64_t avail = prod - cons;
            if (avail == 0 || avail > size_) break;
            const uint8_t* rec = data_ + (cons & mask_);
            const uint32_t len =
                __atomic_load_n(reinterpret_cast<const uint32_t*>(rec), __ATOMIC_ACQUIRE);
            if (len & kRingBusyBit) break;
            const uint32_t size = len & ~(kRingBusyBit | kRingDiscardBit);
            const uint64_t total = round8(uint64_t{size} + kRingHeaderSize);
            if (total > avail) break;  // corrupt header: never read past what was produced
            if (!(len & kRingDiscardBit)) {
                fn(static_cast<const void*>(rec + kRingHeaderSize), size);
                ++n;
            }
            cons += total;
            __atomic_store_n(cons_, cons, __ATOMIC_RELEASE);
        }
        return n;
    }

    uint64_t consumer_pos() const { return __atomic_load_n(cons_, __ATOMIC_ACQUIRE); }
    uint64_t producer_pos() const { return __atomic_load_n(prod_, __ATOMIC_ACQUIRE); }
    uint64_t size() const { return size_; }
    uint64_t dropped() const { return __atomic_load_n(dropped_, __ATOMIC_RELAXED); }

private:
    void* drop() {
        __atomic_fetch_add(dropped_, 1, __ATOMIC_RELAXED);
        return nullptr;
    }
    void lock() {
        for (;;) {
            if (!__atomic_exchange_n(lock_, 1u, __ATOMIC_ACQUIRE)) return;
            while (__atomic_load_n(lock_, __ATOMIC_RELAXED)) cpu_relax();
        }
    }
    void unlock() { __atomic_store_n(lock_, 0u, __ATOMIC_RELEASE); }

    uint64_t* cons_ = nullptr;
    uint64_t* prod_ = nullptr;
    uint32_t* lock_ = nullptr;
    uint64_t* dropped_ = nullptr;
    uint8_t* data_ = nullptr;
    uint64_t size_ = 0;
    uint64_t mask_ = 0;
};

}  // namespace liveio::ebpf::detail
