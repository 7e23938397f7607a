#include "policy/ledger.h"

#include <algorithm>

namespace liveio::policy {

void PrefetchLedger::account(uint8_t slot, uint64_t bytes, Fate fate) {
    pending_[slot].fetch_sub(bytes, std::memory_order_relaxed);
    account_(slot, bytes, fate);
}

void PrefetchLedger::settle(uint64_t file_id, const Range& r) {
    const uint64_t len = r.hi - r.lo;
    uint64_t resident = residency_ ? residency_(r.fd, file_id, r.lo, r.hi) : 0;
    if (resident > len) resident = len;
    if (resident > 0) account(r.slot, resident, Fate::WastedResident);
    if (resident < len) account(r.slot, len - resident, Fate::Wasted);
}

void PrefetchLedger::record(uint8_t slot, uint64_t file_id, int fd, uint64_t offset, uint64_t len) {
    if (len == 0) return;
    std::lock_guard lock(mu_);
    while (count_.load(std::memory_order_relaxed) >= max_ranges_ && !order_.empty()) evict_oldest();
    pending_[slot].fetch_add(len, std::memory_order_relaxed);
    files_[file_id].push_back({offset, offset + len, fd, slot});
    order_.push_back(file_id);
    // Ranges read by the target leave stale entries in order_: rebuild it before it outgrows
    // the ranges it orders.
    if (order_.size() > 4 * max_ranges_) {
        order_.clear();
        for (auto& [file, ranges] : files_)
            for (size_t i = 0; i < ranges.size(); ++i) order_.push_back(file);
    }
    count_.fetch_add(1, std::memory_order_relaxed);
}

void PrefetchLedger::evict_oldest() {
    // The oldest recording names a file; its first range is the oldest one left there (ranges
    // split by observe() keep their place), or the file has fewer ranges than recordings.
    const uint64_t file = order_.front();
    order_.pop_front();
    auto it = files_.find(file);
    if (it == files_.end() || it->second.empty()) return;
    const Range r = it->second.front();
    it->second.erase(it->second.begin());
    if (it->second.empty()) files_.erase(it);
    count_.fetch_sub(1, std::memory_order_relaxed);
    settle(file, r);
}

bool PrefetchLedger::tracks(uint64_t file_id) const {
    if (count_.load(std::memory_order_relaxed) == 0) return false;
    std::lock_guard lock(mu_);
    return files_.count(file_id) != 0;
}

void PrefetchLedger::observe(uint64_t file_id, uint64_t offset, uint64_t bytes) {
    if (bytes == 0 || count_.load(std::memory_order_relaxed) == 0) return;
    const uint64_t lo = offset, hi = offset + bytes;
    std::lock_guard lock(mu_);
    auto it = files_.find(file_id);
    if (it == files_.end()) return;
    std::vector<Range>& ranges = it->second;
    for (size_t i = 0; i < ranges.size();) {
        Range& r = ranges[i];
        const uint64_t a = std::max(r.lo, lo), b = std::min(r.hi, hi);
        if (a >= b) {
            ++i;
            continue;
        }
        account(r.slot, b - a, Fate::Used);
        if (r.lo < a && b < r.hi) {  // the read was inside: keep both sides
            const Range tail{b, r.hi, r.fd, r.slot};
            r.hi = a;
            ranges.insert(ranges.begin() + static_cast<long>(i) + 1, tail);
            count_.fetch_add(1, std::memory_order_relaxed);
            order_.push_back(file_id);
            i += 2;
        } else if (r.lo < a) {
            r.hi = a;
            ++i;
        } else if (b < r.hi) {
            r.lo = b;
            ++i;
        } else {
            ranges.erase(ranges.begin() + static_cast<long>(i));
            count_.fetch_sub(1, std::memory_order_relaxed);
        }
    }
    if (ranges.empty()) files_.erase(it);
}

void PrefetchLedger::forget(uint8_t slot) {
    // Taken out under the lock, measured outside it: target threads observing their reads
    // do not wait for one cachestat per range.
    std::vector<std::pair<uint64_t, Range>> given_up;
    {
        std::lock_guard lock(mu_);
        for (auto it = files_.begin(); it != files_.end();) {
            auto& ranges = it->second;
            for (size_t i = 0; i < ranges.size();) {
                if (ranges[i].slot != slot) {
                    ++i;
                    continue;
                }
                given_up.emplace_back(it->first, ranges[i]);
                ranges.erase(ranges.begin() + static_cast<long>(i));
                count_.fetch_sub(1, std::memory_order_relaxed);
            }
            it = ranges.empty() ? files_.erase(it) : std::next(it);
        }
        if (count_.load(std::memory_order_relaxed) == 0) order_.clear();
    }
    for (const auto& [file, r] : given_up) settle(file, r);
}

}  // namespace liveio::policy
