// A bounded lock-free queue of fixed-size values (Vyukov's array queue): any number of
// producers (target threads at an I/O edge, the I/O thread's completion edge) and consumers,
// no allocation after construction, no blocking: push() fails when full, pop() when empty.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace liveio::policy {

template <typename T>
class ActionQueue {
public:
    // `capacity` is rounded up to a power of two (at least 2).
    explicit ActionQueue(size_t capacity) {
        size_t n = 2;
        while (n < capacity) n <<= 1;
        mask_ = n - 1;
        cells_ = std::make_unique<Cell[]>(n);
        for (size_t i = 0; i < n; ++i) cells_[i].seq.store(i, std::memory_order_relaxed);
    }
    ActionQueue(const ActionQueue&) = delete;
    ActionQueue& operator=(const ActionQueue&) = delete;

    size_t capacity() const { return mask_ + 1; }

    bool push(const T& value) {
        size_t pos = tail_.load(std::memory_order_relaxed);
        for (;;) {
            Cell& cell = cells_[pos & mask_];
            const size_t seq = cell.seq.load(std::memory_order_acquire);
            const auto diff = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos);
            if (diff == 0) {
                if (tail_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
                    cell.value = value;
                    cell.seq.store(pos + 1, std::memory_order_release);
                    return true;
                }
            } else if (diff < 0) {
                return false;  // full
            } else {
                pos = tail_.load(std::memory_order_relaxed);
            }
        }
    }

    bool pop(T& out) {
        size_t pos = head_.load(std::memory_order_relaxed);
        for (;;) {
            Cell& cell = cells_[pos & mask_];
            const size_t seq = cell.seq.load(std::memory_order_acquire);
            const auto diff = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos + 1);
            if (diff == 0) {
                if (head_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
                    out = cell.value;
                    cell.seq.store(pos + mask_ + 1, std::memory_order_release);
                    return true;
                }
            } else if (diff < 0) {
                return false;  // empty
            } else {
                pos = head_.load(std::memory_order_relaxed);
            }
        }
    }

    // Positions taken by producers so far: every value pushed before this call (and any push
    // under way) is among the first pushed() ever popped.
    size_t pushed() const { return tail_.load(std::memory_order_acquire); }
    // A hint: racing producers and consumers may change it immediately.
    bool empty() const {
        return head_.load(std::memory_order_acquire) == tail_.load(std::memory_order_acquire);
    }

private:
    struct Cell {
        std::atomic<size_t> seq{0};
        T value{};
    };
    size_t mask_ = 0;
    std::unique_ptr<Cell[]> cells_;
    alignas(64) std::atomic<size_t> tail_{0};
    alignas(64) std::atomic<size_t> head_{0};
};

}  // namespace liveio::policy
