// Which prefetched ranges the target has read since: the "used" and "wasted" bytes of each
// policy. A prefetch the kernel accepted is recorded per file; a target read of that file
// overlapping it counts the overlap as used and removes it; a range still unread when it is
// evicted (the ledger is bounded) or forgotten (policy off) counts as wasted.
//
// Thread safety: every method from any thread (one mutex; record() runs on the I/O thread,
// observe() on target threads after their read, only for files that have ranges).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace liveio::policy {

class PrefetchLedger {
public:
    // Called with (slot, bytes) for bytes used / wasted.
    using Account = std::function<void(uint8_t slot, uint64_t bytes, bool used)>;

    PrefetchLedger(size_t max_ranges, Account account)
        : max_ranges_(max_ranges), account_(std::move(account)) {}

    void record(uint8_t slot, uint64_t file_id, uint64_t offset, uint64_t len);
    // A target read of [offset, offset + bytes) of `file_id` completed.
    void observe(uint64_t file_id, uint64_t offset, uint64_t bytes);
    // Whether any range of `file_id` is recorded (a hint, lock-free when the ledger is empty).
    bool tracks(uint64_t file_id) const;
    // Counts every range of `slot` as wasted and removes it.
    void forget(uint8_t slot);
    size_t ranges() const { return count_.load(std::memory_order_relaxed); }

private:
    struct Range {
        uint64_t lo, hi;
        uint8_t slot;
    };
    void evict_oldest();  // mu_ held

    const size_t max_ranges_;
    Account account_;
    mutable std::mutex mu_;
    std::unordered_map<uint64_t, std::vector<Range>> files_;
    std::deque<uint64_t> order_;  // file ids in recording order, one entry per range recorded
    std::atomic<size_t> count_{0};
};

}  // namespace liveio::policy
