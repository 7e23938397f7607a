// Which prefetched ranges the target has read since: the "used" and "wasted" bytes of each
// policy. A prefetch the kernel accepted is recorded per file; a target read of that file
// overlapping it counts the overlap as used and removes it; a range still unread when it is
// evicted (the ledger is bounded) or forgotten (policy off) counts as wasted. Until then its
// bytes are pending: at every moment, per policy, every issued byte is exactly one of used,
// wasted or pending.
//
// Wasted bytes are also classified by residency where it can be measured (cachestat(2) on
// the descriptor the prefetch named, if it still refers to the same file): the part still in
// the page cache when the range was given up. Those pages may yet serve a later read, natively;
// the rest was evicted or never arrived.
//
// Thread safety: every method from any thread (one mutex; record() runs on the I/O thread,
// observe() on target threads after their read, only for files that have ranges).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace liveio::policy {

enum class Fate : uint8_t {
    Used,            // read by the target
    Wasted,          // given up unread, not (or not measurably) in the page cache
    WastedResident,  // given up unread, still in the page cache
};

class PrefetchLedger {
public:
    // Called with (slot, bytes, fate) as bytes leave the ledger.
    using Account = std::function<void(uint8_t slot, uint64_t bytes, Fate fate)>;
    // Bytes of [lo, hi) of `file_id` in the page cache, measured through `fd` (0 when `fd` no
    // longer refers to that file or residency cannot be measured).
    using Residency = std::function<uint64_t(int fd, uint64_t file_id, uint64_t lo, uint64_t hi)>;

    PrefetchLedger(size_t max_ranges, Account account, Residency residency = nullptr)
        : max_ranges_(max_ranges), account_(std::move(account)), residency_(std::move(residency)) {}

    // `fd`: the descriptor the prefetch named (for the residency measure of what is wasted).
    void record(uint8_t slot, uint64_t file_id, int fd, uint64_t offset, uint64_t len);
    // A target read of [offset, offset + bytes) of `file_id` completed.
    void observe(uint64_t file_id, uint64_t offset, uint64_t bytes);
    // Whether any range of `file_id` is recorded (a hint, lock-free when the ledger is empty).
    bool tracks(uint64_t file_id) const;
    // Counts every range of `slot` as wasted (classified by residency) and removes it.
    void forget(uint8_t slot);
    size_t ranges() const { return count_.load(std::memory_order_relaxed); }
    // Bytes of `slot` recorded and not yet used or wasted.
    uint64_t pending(uint8_t slot) const { return pending_[slot].load(std::memory_order_relaxed); }

private:
    struct Range {
        uint64_t lo, hi;
        int fd;
        uint8_t slot;
    };
    void evict_oldest();  // mu_ held
    // A range given up unread (removed from files_ by the caller): wasted, by residency.
    void settle(uint64_t file_id, const Range& r);
    void account(uint8_t slot, uint64_t bytes, Fate fate);

    const size_t max_ranges_;
    Account account_;
    Residency residency_;
    mutable std::mutex mu_;
    std::unordered_map<uint64_t, std::vector<Range>> files_;
    std::deque<uint64_t> order_;  // file ids in recording order, one entry per range recorded
    std::atomic<size_t> count_{0};
    std::array<std::atomic<uint64_t>, 256> pending_{};
};

}  // namespace liveio::policy
