// Hash, per-CPU hash, LRU hash and LRU per-CPU hash maps in shared memory.
//
// Concurrency design (threads of the target running BPF programs, plus a reader or writer in
// another process mapping the same memfd):
//  - Buckets are {seq, head}. `seq` is a sequence lock: writers (update/remove/eviction) hold
//    it odd while they relink or rewrite an element of that bucket; readers (lookup, next_key,
//    copy_value) never write shared memory: they walk the chain and retry if `seq` moved. A
//    reader that dies or stalls therefore cannot block the target.
//  - Every word a reader may read while a writer rewrites it (links, hashes, keys, values) is
//    accessed with relaxed atomics on both sides (keys and values word by word: map_shm.h's
//    shm_load/shm_store), so the races the sequence check resolves are not data races.
//  - Elements are preallocated (max_entries of them); chains and the free list link element
//    indices, never pointers, so every process can follow them. Walks are bounded and every
//    index is range-checked, so a walk racing a writer can only retry, never run wild.
//  - Links hold index + 1, so 0 (the memfd's initial contents) means "none": a new map needs
//    no initialization pass, and elements are handed out from a bump counter until the free
//    list has some. Creating a map of a million entries costs what one of a thousand does,
//    and memory is touched only as elements are used.
//  - The free list is a lock-free stack whose head carries a 32-bit tag against ABA.
//  - Updating an existing key rewrites its value in place under the bucket lock: never needs a
//    spare element (no -E2BIG on a full map), and copy_value sees old or new, never a mix.
//    A program holding a lookup() pointer sees writes as they happen, as with the kernel's
//    preallocated hash maps.
//  - LRU: lookups set a reference bit (only when clear, so hot reads do not dirty the line);
//    an insert into a full map runs a clock over the elements, clearing reference bits and
//    evicting the first unreferenced element it finds (second chance, the kernel's LRU is
//    approximate too).
#include <cerrno>
#include <cstring>

#include "ebpf/map_shm.h"

namespace liveio::ebpf::detail {
namespace {

struct Bucket {
    uint32_t seq;
    uint32_t head;  // link: element index + 1, 0 for none
};

struct ElemHeader {
    uint32_t next;    // chain or free-list link (index + 1, 0 for none)
    uint32_t hash;    // low 32 bits of the key's hash
    uint32_t linked;  // 1 while in a bucket chain
    uint32_t ref;     // LRU reference bit
};

// Links are index + 1; 0 (none) maps to kNil and back.
inline uint32_t to_link(uint32_t index) { return index + 1; }
inline uint32_t from_link(uint32_t link) { return link - 1; }

template <typename T>
T load(const T* p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
template <typename T>
void store(T* p, T v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

class HashMap final : public Map {
public:
    HashMap(const MapSpec& spec, const Layout& layout, ShmRegion region, bool fresh)
        : Map(spec),
          region_(std::move(region)),
          hdr_(region_.header()),
          buckets_(reinterpret_cast<Bucket*>(region_.base() + layout.index_offset)),
          elems_(region_.base() + layout.data_offset),
          seed_(hdr_->seed),
          mask_(layout.nbuckets - 1),
          elem_size_(layout.elem_size),
          key_size_(spec.key_size),
          key_stride_(static_cast<uint32_t>(round8(spec.key_size))),
          value_stride_(layout.value_stride),
          ncpus_(layout.ncpus),
          max_(spec.max_entries),
          percpu_(is_percpu(spec.type)),
          lru_(spec.type == MapType::LruHash || spec.type == MapType::LruPercpuHash) {
        (void)fresh;  // zero-filled memory is an empty map (see the links above)
    }

    void* lookup(const void* key) override {
        const uint64_t h = hash_key(key, key_size_, seed_);
        const Bucket& b = buckets_[h & mask_];
        for (;;) {
            const uint32_t s = seq_read_begin(&b.seq);
            const uint32_t i = find(b, key, static_cast<uint32_t>(h));
            if (seq_read_retry(&b.seq, s)) continue;
            if (i == kNil) return nullptr;
            ElemHeader* e = elem(i);
            if (lru_ && !load(&e->ref)) store(&e->ref, 1u);
            return value_of(e) + (percpu_ ? uint64_t{current_cpu_slot(ncpus_)} * value_stride_ : 0);
        }
    }

    long update(const void* key, const void* value, uint64_t flags) override {
        return write(key, value, flags, /*all_cpus=*/false);
    }
    long update_from_user(const void* key, const void* value, uint64_t flags) override {
        return write(key, value, flags, /*all_cpus=*/percpu_);
    }

private:
    long write(const void* key, const void* value, uint64_t flags, bool all_cpus) {
        if (flags > kUpdateExist) return -EINVAL;
        const uint64_t h = hash_key(key, key_size_, seed_);
        Bucket& b = buckets_[h & mask_];
        uint32_t spare = kNil;
        for (;;) {
            seq_write_lock(&b.seq);
            const uint32_t found = find(b, key, static_cast<uint32_t>(h));
            if (found != kNil) {
                long rc = 0;
                if (flags == kUpdateNoExist) {
                    rc = -EEXIST;
                } else {
                    ElemHeader* e = elem(found);
                    store_value(e, value, all_cpus, /*fresh=*/false);
                    if (lru_) store(&e->ref, 1u);
                }
                seq_write_unlock(&b.seq);
                release(spare);
                return rc;
            }
            if (flags == kUpdateExist) {
                seq_write_unlock(&b.seq);
                release(spare);
                return -ENOENT;
            }
            if (spare == kNil) spare = pop_free();
            if (spare == kNil) {
                seq_write_unlock(&b.seq);
                if (!lru_) return -E2BIG;
                // Eviction locks the victim's bucket: never while holding ours.
                spare = evict();
                if (spare == kNil) return -E2BIG;
                continue;
            }
            ElemHeader* e = elem(spare);
            store(&e->hash, static_cast<uint32_t>(h));
            shm_store(key_of(e), key, key_size_);
            store_value(e, value, all_cpus, /*fresh=*/true);
            store(&e->ref, 1u);  // a new key gets its second chance too
            store(&e->linked, 1u);
            store(&e->next, load(&b.head));
            store(&b.head, to_link(spare));
            seq_write_unlock(&b.seq);
            return 0;
        }
    }

    // With the bucket locked. Per-CPU maps: all_cpus takes every slot from `value`
    // (syscall layout); otherwise the calling CPU's slot gets the value and, in a new
    // element, the other slots are zeroed (the kernel's helper path).
    void store_value(ElemHeader* e, const void* value, bool all_cpus, bool fresh) {
        if (!percpu_) {
            shm_store(value_of(e), value, spec_.value_size);
            return;
        }
        if (all_cpus) {
            for (uint32_t cpu = 0; cpu < ncpus_; ++cpu)
                shm_store(value_of(e) + uint64_t{cpu} * value_stride_,
                          static_cast<const uint8_t*>(value) + uint64_t{cpu} * value_stride_,
                          spec_.value_size);
            return;
        }
        if (fresh) shm_zero(value_of(e), uint64_t{ncpus_} * value_stride_);
        shm_store(value_of(e) + uint64_t{current_cpu_slot(ncpus_)} * value_stride_, value,
                  spec_.value_size);
    }

public:
    long remove(const void* key) override {
        const uint64_t h = hash_key(key, key_size_, seed_);
        Bucket& b = buckets_[h & mask_];
        seq_write_lock(&b.seq);
        const uint32_t i = unlink_if(b, [&](uint32_t idx) {
            const ElemHeader* e = elem(idx);
            return load(&e->hash) == static_cast<uint32_t>(h) && key_eq(key_of(e), key);
        });
        seq_write_unlock(&b.seq);
        if (i == kNil) return -ENOENT;
        push_free(i);
        return 0;
    }

    long next_key(const void* key, void* next) override {
        uint8_t tmp[kMaxKeySize];
        uint32_t start = 0;
        if (key) {
            const uint64_t h = hash_key(key, key_size_, seed_);
            const Bucket& b = buckets_[h & mask_];
            for (;;) {
                const uint32_t s = seq_read_begin(&b.seq);
                const uint32_t i = find(b, key, static_cast<uint32_t>(h));
                const uint32_t n = i == kNil ? kNil : from_link(load(&elem(i)->next));
                if (n < max_) shm_load(tmp, key_of(elem(n)), key_size_);
                if (seq_read_retry(&b.seq, s)) continue;
                if (i == kNil) break;  // unknown key: restart from the first (kernel semantics)
                if (n < max_) {
                    std::memcpy(next, tmp, key_size_);
                    return 0;
                }
                start = static_cast<uint32_t>(h & mask_) + 1;
                break;
            }
        }
        for (uint64_t bi = start; bi <= mask_; ++bi) {
            const Bucket& b = buckets_[bi];
            for (;;) {
                const uint32_t s = seq_read_begin(&b.seq);
                const uint32_t head = from_link(load(&b.head));
                if (head < max_) shm_load(tmp, key_of(elem(head)), key_size_);
                if (seq_read_retry(&b.seq, s)) continue;
                if (head < max_) {
                    std::memcpy(next, tmp, key_size_);
                    return 0;
                }
                break;
            }
        }
        return -ENOENT;
    }

    long copy_value(const void* key, void* out) override {
        const uint64_t h = hash_key(key, key_size_, seed_);
        const Bucket& b = buckets_[h & mask_];
        const size_t bytes = percpu_ ? uint64_t{ncpus_} * value_stride_ : spec_.value_size;
        for (;;) {
            const uint32_t s = seq_read_begin(&b.seq);
            const uint32_t i = find(b, key, static_cast<uint32_t>(h));
            if (i != kNil) shm_load(out, value_of(elem(i)), bytes);
            if (seq_read_retry(&b.seq, s)) continue;
            return i == kNil ? -ENOENT : 0;
        }
    }

    int memfd() const override { return region_.fd(); }

private:
    ElemHeader* elem(uint32_t i) const {
        return reinterpret_cast<ElemHeader*>(elems_ + uint64_t{i} * elem_size_);
    }
    uint8_t* key_of(const ElemHeader* e) const {
        return const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(e)) + sizeof(ElemHeader);
    }
    uint8_t* value_of(const ElemHeader* e) const { return key_of(e) + key_stride_; }

    // `stored` may be rewritten meanwhile (callers without the bucket lock validate with the
    // sequence): atomic loads only (map_shm.h).
    bool key_eq(const uint8_t* stored, const void* key) const {
        switch (key_size_) {
            case 4: {
                uint32_t b;
                std::memcpy(&b, key, 4);
                return __atomic_load_n(reinterpret_cast<const uint32_t*>(stored),
                                       __ATOMIC_RELAXED) == b;
            }
            case 8: {
                uint64_t b;
                std::memcpy(&b, key, 8);
                return shm_word(stored) == b;
            }
            default: return shm_equal(stored, key, key_size_);
        }
    }

    // Walks a chain; safe against concurrent writers (bounded, range-checked) — callers
    // without the bucket lock validate the result with the bucket's sequence.
    uint32_t find(const Bucket& b, const void* key, uint32_t h32) const {
        uint32_t i = from_link(load(&b.head));
        for (uint32_t steps = 0; i < max_ && steps < max_; ++steps) {
            const ElemHeader* e = elem(i);
            if (load(&e->hash) == h32 && key_eq(key_of(e), key)) return i;
            i = from_link(load(&e->next));
        }
        return kNil;
    }

    // With the bucket locked: unlinks the first element matching `pred`; returns its index.
    template <typename Pred>
    uint32_t unlink_if(Bucket& b, Pred pred) {
        uint32_t* link = &b.head;
        uint32_t i = from_link(load(link));
        for (uint32_t steps = 0; i < max_ && steps < max_; ++steps) {
            ElemHeader* e = elem(i);
            if (pred(i)) {
                store(link, load(&e->next));
                store(&e->linked, 0u);
                return i;
            }
            link = &e->next;
            i = from_link(load(link));
        }
        return kNil;
    }

    // Free list first, then never-used elements.
    uint32_t pop_free() {
        uint64_t old = __atomic_load_n(&hdr_->free_head, __ATOMIC_ACQUIRE);
        for (;;) {
            const uint32_t i = from_link(static_cast<uint32_t>(old));
            if (i >= max_) break;
            const uint64_t next = (((old >> 32) + 1) << 32) | load(&elem(i)->next);
            if (__atomic_compare_exchange_n(&hdr_->free_head, &old, next, true, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
                return i;
        }
        uint32_t bump = __atomic_load_n(&hdr_->hash_bump, __ATOMIC_RELAXED);
        while (bump < max_)
            if (__atomic_compare_exchange_n(&hdr_->hash_bump, &bump, bump + 1, true,
                                            __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                return bump;
        return kNil;
    }

    void push_free(uint32_t i) {
        uint64_t old = __atomic_load_n(&hdr_->free_head, __ATOMIC_RELAXED);
        for (;;) {
            store(&elem(i)->next, static_cast<uint32_t>(old));
            const uint64_t next = (((old >> 32) + 1) << 32) | to_link(i);
            if (__atomic_compare_exchange_n(&hdr_->free_head, &old, next, true, __ATOMIC_RELEASE,
                                            __ATOMIC_RELAXED))
                return;
        }
    }

    void release(uint32_t spare) {
        if (spare != kNil) push_free(spare);
    }

    // Clock sweep: first pass clears reference bits, and after two full turns anything linked
    // is taken so that a storm of lookups cannot starve an insert.
    uint32_t evict() {
        const uint64_t second_chance = 2ull * max_;
        const uint64_t limit = 4ull * max_ + 64;
        for (uint64_t n = 0; n < limit; ++n) {
            const auto i = static_cast<uint32_t>(
                __atomic_fetch_add(&hdr_->lru_hand, 1, __ATOMIC_RELAXED) % max_);
            ElemHeader* e = elem(i);
            if (!load(&e->linked)) continue;
            if (n < second_chance && load(&e->ref)) {
                store(&e->ref, 0u);
                continue;
            }
            Bucket& b = buckets_[load(&e->hash) & mask_];
            seq_write_lock(&b.seq);
            const uint32_t got = unlink_if(b, [i](uint32_t idx) { return idx == i; });
            seq_write_unlock(&b.seq);
            if (got != kNil) return got;
            // Freed or moved meanwhile: a free element may exist now.
            const uint32_t f = pop_free();
            if (f != kNil) return f;
        }
        return pop_free();
    }

    ShmRegion region_;
    MapHeader* hdr_;
    Bucket* buckets_;
    uint8_t* elems_;
    uint64_t seed_;
    uint64_t mask_;
    uint32_t elem_size_;
    uint32_t key_size_;
    uint32_t key_stride_;
    uint32_t value_stride_;
    uint32_t ncpus_;
    uint32_t max_;
    bool percpu_;
    bool lru_;
};

}  // namespace

std::shared_ptr<Map> make_hash_map(const MapSpec& spec, const Layout& layout, ShmRegion region,
                                   bool fresh) {
    return std::make_shared<HashMap>(spec, layout, std::move(region), fresh);
}

}  // namespace liveio::ebpf::detail
