// Grace periods for the BPF host's attachment lists: hooked calls on any thread read the
// current list without a lock; a writer publishes a new list, then waits until no thread can
// still be reading the old one before freeing it (and the programs only it referenced).
//
// Readers announce themselves in a slot of their own (one cache line per thread, claimed on
// the thread's first call), with plain stores: the writer makes them visible with
// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), which runs a full barrier on every CPU
// executing a thread of this process (the "memb" flavor of userspace RCU). A reader
// therefore costs two stores and no locked instruction. Without membarrier (old kernels,
// seccomp) readers use sequentially consistent stores instead.
//
// A thread that finds every slot taken (more live threads than slots) reclaims the slot of a
// thread that has exited; failing that it shares an overflow counter with atomic adds.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>

#include "base/thread_slots.h"

namespace liveio::agent {

class ReaderRegistry {
public:
    static constexpr uint32_t kSlots = 512;

    ReaderRegistry();
    ReaderRegistry(const ReaderRegistry&) = delete;
    ReaderRegistry& operator=(const ReaderRegistry&) = delete;

    struct alignas(64) Slot {
        ThreadSlotOwner owner;
        std::atomic<uint32_t> active{0};  // nesting depth of the owner's read sections
        std::atomic<uint64_t> seq{0};     // read sections completed by the owner
    };

    // A read section of the calling thread; `tls_slot` is that thread's cached slot (owned by
    // the caller's thread-local state, validated against this registry's `id()`).
    class Section {
    public:
        Section(ReaderRegistry& r, Slot*& tls_slot, uint64_t& tls_registry_id)
            : registry_(r), slot_(r.enter(tls_slot, tls_registry_id)) {}
        ~Section() { registry_.exit(slot_); }
        Section(const Section&) = delete;
        Section& operator=(const Section&) = delete;

    private:
        ReaderRegistry& registry_;
        Slot* slot_;
    };

    // Returns once every read section that began before the call has ended.
    void synchronize();
    // Distinguishes registries (a host re-created after detach gets another id).
    uint64_t id() const { return id_; }

private:
    Slot* enter(Slot*& tls_slot, uint64_t& tls_registry_id) {
        Slot* s = tls_slot;
        if (tls_registry_id != id_ || s == nullptr) [[unlikely]] {
            s = claim();
            tls_slot = s;
            tls_registry_id = id_;
        }
        if (s == nullptr) [[unlikely]] {
            overflow_.fetch_add(1, std::memory_order_seq_cst);
            return nullptr;
        }
        const uint32_t depth = s->active.load(std::memory_order_relaxed);
        if (membarrier_) {
            s->active.store(depth + 1, std::memory_order_relaxed);
            std::atomic_signal_fence(std::memory_order_seq_cst);
        } else {
            s->active.store(depth + 1, std::memory_order_seq_cst);
        }
        return s;
    }
    void exit(Slot* s) {
        if (s == nullptr) [[unlikely]] {
            overflow_.fetch_sub(1, std::memory_order_release);
            return;
        }
        s->seq.store(s->seq.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        s->active.store(s->active.load(std::memory_order_relaxed) - 1, std::memory_order_release);
    }
    Slot* claim();

    const uint64_t id_;
    bool membarrier_ = false;
    std::atomic<uint64_t> overflow_{0};
    std::unique_ptr<Slot[]> slots_;
};

}  // namespace liveio::agent
