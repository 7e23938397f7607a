// Read sections of many threads and the grace periods that wait for them: the "memb" flavor
// of userspace RCU over per-thread slots (base/thread_slots.h).
//
// A reader marks itself in a slot of its own (one cache line per thread, claimed on the
// thread's first section) with plain stores and no locked instruction. A writer first makes
// what it retires unreachable, then runs barrier(): membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)
// executes a full barrier on every CPU running a thread of this process, so every reader
// either saw the writer's change or has its mark visible to the writer (the asymmetric-fence
// pattern). Without membarrier (old kernels, seccomp) readers use sequentially consistent
// stores instead. A thread that finds no slot (more live threads than slots) counts itself in
// a shared counter with locked adds.
//
// Each slot has kChannels independent channels (the dispatcher has one per interception
// mechanism). Two kinds of section, one kind per channel:
//   - flat (enter_flat/exit_flat): never nested on a thread; a store of 1 and a store of 0.
//     Writers wait with wait_until_idle(): until no thread is inside the channel.
//   - counted (enter/exit): nestable, and each outermost one that ends advances the slot's
//     count, so synchronize() waits only for the sections open when it began, even while the
//     same threads keep opening new ones.
//
// Constant-initializable (a function-local `static constinit` works, as hooks may run before
// main) and allocation-free: slots live in the object.
#pragma once

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <time.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "base/raw_syscall.h"
#include "base/thread_slots.h"

namespace liveio {

template <size_t kSlots, size_t kChannels = 1>
class ReadSections {
public:
    struct alignas(64) Slot {
        ThreadSlotOwner owner;
        std::atomic<uint32_t> depth[kChannels]{};  // the owner's open sections per channel
        std::atomic<uint64_t> ended[kChannels]{};  // outermost counted sections the owner ended
    };
    // A thread's cached slot of one ReadSections (zero-initialized thread-local data); `id`
    // tells a cache of an earlier instance from one of this instance.
    struct ThreadCache {
        uint64_t id;
        Slot* slot;
    };

    // For one instance that lives as long as the process: threads may cache a plain Slot*,
    // and writers call register_membarrier() before readers can reach what they retire.
    constexpr ReadSections() = default;
    // For instances that come and go: threads cache a ThreadCache, which enter() checks
    // against this instance's process-wide unique id. Registers for membarrier at once (no
    // reader can be inside a new instance yet).
    struct Transient {};
    explicit ReadSections(Transient) : id_(fresh_id()) { register_membarrier(); }
    ReadSections(const ReadSections&) = delete;
    ReadSections& operator=(const ReadSections&) = delete;
    uint64_t id() const { return id_; }

    // Registers the process for expedited membarrier. Writers call it before any reader can
    // reach what they will retire: a reader that entered with a plain store before the
    // registration would not be covered by barrier(). Permanent and idempotent.
    void register_membarrier() {
        if (membarrier_.load(std::memory_order_relaxed)) return;
        if (raw_syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
            membarrier_.store(true, std::memory_order_seq_cst);
    }

    // ---- readers (always inlined: they run on every hooked call) ----

    // Opens a flat section of `channel`; returns the slot for exit_flat (nullptr: the thread
    // is counted in the shared counter). `cached` is the thread's slot, claimed when null.
    [[gnu::always_inline]] Slot* enter_flat(Slot*& cached, size_t channel) {
        Slot* s = slot_of(cached, channel);
        if (s != nullptr) [[likely]]
            publish(s->depth[channel], 1);
        return s;
    }
    [[gnu::always_inline]] void exit_flat(Slot* s, size_t channel) {
        if (s == nullptr) [[unlikely]] {
            overflow_[channel].fetch_sub(1, std::memory_order_release);
            return;
        }
        s->depth[channel].store(0, std::memory_order_release);
    }

    // Opens a counted section of `channel` (nestable).
    [[gnu::always_inline]] Slot* enter(Slot*& cached, size_t channel = 0) {
        Slot* s = slot_of(cached, channel);
        if (s != nullptr) [[likely]]
            publish(s->depth[channel], s->depth[channel].load(std::memory_order_relaxed) + 1);
        return s;
    }
    [[gnu::always_inline]] Slot* enter(ThreadCache& cache, size_t channel = 0) {
        if (cache.id != id_) [[unlikely]] {
            cache.slot = nullptr;
            cache.id = id_;
        }
        return enter(cache.slot, channel);
    }
    [[gnu::always_inline]] void exit(Slot* s, size_t channel = 0) {
        if (s == nullptr) [[unlikely]] {
            overflow_[channel].fetch_sub(1, std::memory_order_release);
            return;
        }
        std::atomic<uint32_t>& depth = s->depth[channel];
        const uint32_t outer = depth.load(std::memory_order_relaxed) - 1;
        // Only the outermost section's end advances the count: a writer that began while the
        // thread was nested must wait for the outer section, which may hold what it retires.
        // Release: a writer that sees the count advance sees every read of the section done.
        if (outer == 0) {
            std::atomic<uint64_t>& ended = s->ended[channel];
            ended.store(ended.load(std::memory_order_relaxed) + 1, std::memory_order_release);
        }
        depth.store(outer, std::memory_order_release);
    }

    // A counted section of channel 0 for a scope.
    class Section {
    public:
        [[gnu::always_inline]] Section(ReadSections& r, ThreadCache& cache)
            : sections_(r), slot_(r.enter(cache)) {}
        [[gnu::always_inline]] ~Section() { sections_.exit(slot_); }
        Section(const Section&) = delete;
        Section& operator=(const Section&) = delete;

    private:
        ReadSections& sections_;
        Slot* slot_;
    };

    // ---- writers ----

    // After it, every reader either sees what the writer stored before it or has its mark
    // visible to the writer's following loads.
    void barrier() const {
        // After a successful registration the command cannot fail (membarrier(2)).
        if (membarrier_.load(std::memory_order_relaxed))
            (void)raw_syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
        std::atomic_thread_fence(std::memory_order_seq_cst);
    }

    // Threads inside `channel` now (call after barrier()).
    uint64_t inside(size_t channel) const {
        uint64_t n = overflow_[channel].load(std::memory_order_acquire);
        for (const Slot& s : slots_) {
            if (s.owner.tid.load(std::memory_order_acquire) == 0) break;  // claimed in order
            n += s.depth[channel].load(std::memory_order_acquire) != 0;
        }
        return n;
    }
    // barrier(), then returns once no thread is inside `channel`. It needs an instant at
    // which no thread is inside, so it polls often: it yields the CPU between polls.
    void wait_until_idle(size_t channel) const {
        barrier();
        while (inside(channel) != 0) (void)raw_syscall(SYS_sched_yield);
    }
    // barrier(), then returns once every counted section of `channel` that was open when it
    // began has ended.
    void synchronize(size_t channel = 0) const {
        barrier();
        for (const Slot& s : slots_) {
            if (s.owner.tid.load(std::memory_order_acquire) == 0) break;  // claimed in order
            if (s.depth[channel].load(std::memory_order_acquire) == 0) continue;
            const uint64_t ended = s.ended[channel].load(std::memory_order_acquire);
            // The outermost section open now ends with `ended` advancing; later ones see the
            // change.
            while (s.depth[channel].load(std::memory_order_acquire) != 0 &&
                   s.ended[channel].load(std::memory_order_acquire) == ended)
                pause();
        }
        while (overflow_[channel].load(std::memory_order_acquire) != 0) pause();
    }

    // The slot index of a thread's cached slot (stable while the thread lives), or kSlots.
    size_t index_of(const Slot* s) const {
        return s == nullptr ? kSlots : static_cast<size_t>(s - slots_);
    }

private:
    // An id for a Transient instance: never 0 (the id of a zero-initialized ThreadCache),
    // unique within this load of the code, and from a random start, so that a cache that
    // survived an unload and reload of the library holding this code is not taken for one
    // of a new instance.
    static uint64_t fresh_id() {
        static const uint64_t start = [] {
            uint64_t r = 0;
            if (raw_syscall(SYS_getrandom, reinterpret_cast<long>(&r), sizeof r, 0) != sizeof r) {
                timespec ts{};
                (void)raw_syscall(SYS_clock_gettime, CLOCK_MONOTONIC, reinterpret_cast<long>(&ts));
                r = static_cast<uint64_t>(ts.tv_sec) * 1000000000ull +
                    static_cast<uint64_t>(ts.tv_nsec);
            }
            return r;
        }();
        static constinit std::atomic<uint64_t> next{0};
        for (;;) {
            const uint64_t id = start + next.fetch_add(1, std::memory_order_relaxed);
            if (id != 0) return id;
        }
    }
    [[gnu::always_inline]] Slot* slot_of(Slot*& cached, size_t channel) {
        Slot* s = cached;
        if (s == nullptr) [[unlikely]] {
            // A slot is reused only once its exited owner left every channel.
            s = cached = claim_thread_slot(slots_, kSlots, [](const Slot& slot) {
                for (const auto& d : slot.depth)
                    if (d.load(std::memory_order_acquire) != 0) return false;
                return true;
            });
            if (s == nullptr) [[unlikely]] {
                overflow_[channel].fetch_add(1, std::memory_order_seq_cst);
                return nullptr;
            }
        }
        return s;
    }
    [[gnu::always_inline]] void publish(std::atomic<uint32_t>& depth, uint32_t value) const {
        if (membarrier_.load(std::memory_order_relaxed)) {
            depth.store(value, std::memory_order_relaxed);
            std::atomic_signal_fence(std::memory_order_seq_cst);
        } else {
            depth.store(value, std::memory_order_seq_cst);
        }
    }
    // synchronize() waits for sections that may block in a system call, each of which it
    // needs to see end only once: it sleeps between polls.
    static void pause() {
        const timespec ts{0, 50'000};
        (void)raw_syscall(SYS_nanosleep, reinterpret_cast<long>(&ts), 0);
    }

    uint64_t id_ = 0;
    std::atomic<bool> membarrier_{false};
    std::atomic<uint64_t> overflow_[kChannels]{};
    Slot slots_[kSlots];
};

}  // namespace liveio
