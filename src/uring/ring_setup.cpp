#include "uring/ring_setup.h"

#include <sys/mman.h>

#include "uring/sys.h"

namespace liveio::uring::detail {
namespace {

constexpr size_t kPage = 4096;

size_t round_pages(size_t bytes) { return (bytes + kPage - 1) / kPage * kPage; }

unsigned round_pow2(unsigned v) {
    unsigned p = 1;
    while (p < v) p <<= 1;
    return p;
}

void* map_anonymous(size_t bytes) {
    const long m = sys::call(SYS_mmap, nullptr, bytes, PROT_READ | PROT_WRITE,
                             MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    return m < 0 && m > -4096 ? nullptr : reinterpret_cast<void*>(m);
}

template <typename T>
T* at(void* base, unsigned offset) {
    return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

}  // namespace

int setup_unnumbered(unsigned entries, io_uring_params& p, io_uring& ring, UnnumberedRing& out) {
    // What the kernel's rings_size() needs at most: the io_rings header (well under 1 KiB,
    // cache-line aligned), the CQEs, the SQ array. Both counts are rounded up to powers of two
    // by the kernel as well.
    const unsigned sq = round_pow2(entries);
    const unsigned cq = round_pow2((p.flags & IORING_SETUP_CQSIZE) ? p.cq_entries : 2 * sq);
    UnnumberedRing r;
    r.rings_bytes = round_pages(1024 + size_t{cq} * sizeof(io_uring_cqe) + 64 + size_t{sq} * 4);
    r.sqes_bytes = round_pages(size_t{sq} * sizeof(io_uring_sqe));
    r.rings = map_anonymous(r.rings_bytes);
    r.sqes = r.rings ? map_anonymous(r.sqes_bytes) : nullptr;
    if (r.sqes == nullptr) {
        if (r.rings) sys::call(SYS_munmap, r.rings, r.rings_bytes);
        return -ENOMEM;
    }
    p.flags |= IORING_SETUP_NO_MMAP | IORING_SETUP_REGISTERED_FD_ONLY;
    p.cq_off.resv2 = reinterpret_cast<uint64_t>(r.rings);  // cq_off.user_addr
    p.sq_off.resv2 = reinterpret_cast<uint64_t>(r.sqes);   // sq_off.user_addr
    const auto index = static_cast<int>(sys::call(SYS_io_uring_setup, entries, &p));
    if (index < 0) {
        sys::call(SYS_munmap, r.rings, r.rings_bytes);
        sys::call(SYS_munmap, r.sqes, r.sqes_bytes);
        return index;
    }
    r.index = index;
    r.owner_tid = static_cast<int>(sys::call(SYS_gettid));

    ring = io_uring{};
    io_uring_sq& s = ring.sq;
    io_uring_cq& c = ring.cq;
    const struct {
        unsigned** field;
        unsigned offset;
    } words[] = {
        {&s.khead, p.sq_off.head},
        {&s.ktail, p.sq_off.tail},
        {&s.kring_mask, p.sq_off.ring_mask},
        {&s.kring_entries, p.sq_off.ring_entries},
        {&s.kflags, p.sq_off.flags},
        {&s.kdropped, p.sq_off.dropped},
        {&s.array, p.sq_off.array},
        {&c.khead, p.cq_off.head},
        {&c.ktail, p.cq_off.tail},
        {&c.kring_mask, p.cq_off.ring_mask},
        {&c.kring_entries, p.cq_off.ring_entries},
        {&c.koverflow, p.cq_off.overflow},
    };
    for (const auto& w : words) *w.field = at<unsigned>(r.rings, w.offset);
    if (p.cq_off.flags) c.kflags = at<unsigned>(r.rings, p.cq_off.flags);
    c.cqes = at<io_uring_cqe>(r.rings, p.cq_off.cqes);
    s.sqes = static_cast<io_uring_sqe*>(r.sqes);
    s.ring_sz = c.ring_sz = r.rings_bytes;
    s.ring_ptr = c.ring_ptr = r.rings;
    s.ring_mask = *s.kring_mask;
    s.ring_entries = *s.kring_entries;
    c.ring_mask = *c.kring_mask;
    c.ring_entries = *c.kring_entries;
    // SQ index i is always SQE i (liburing fills the array the same way at setup).
    for (unsigned i = 0; i < s.ring_entries; ++i) s.array[i] = i;
    ring.flags = p.flags;
    ring.ring_fd = -1;  // no number: a stray use fails with EBADF instead of naming a file
    ring.features = p.features;
    ring.enter_ring_fd = index;
    ring.int_flags = kLiburingRegisteredRing;
    out = r;
    return 0;
}

void release_unnumbered(UnnumberedRing& r) {
    if (r.index >= 0 && sys::call(SYS_gettid) == r.owner_tid) {
        io_uring_rsrc_update update{};
        update.offset = static_cast<unsigned>(r.index);
        sys::call(SYS_io_uring_register, r.index,
                  IORING_UNREGISTER_RING_FDS | IORING_REGISTER_USE_REGISTERED_RING, &update, 1);
    }
    // The kernel pinned these pages: unmapping only drops our view; it unpins them when the
    // ring is freed.
    if (r.rings) sys::call(SYS_munmap, r.rings, r.rings_bytes);
    if (r.sqes) sys::call(SYS_munmap, r.sqes, r.sqes_bytes);
    r = UnnumberedRing{};
}

int register_ring(const io_uring& ring, bool unnumbered, unsigned opcode, const void* arg,
                  unsigned nr_args) {
    if (unnumbered)
        return static_cast<int>(sys::call(SYS_io_uring_register, ring.enter_ring_fd,
                                          opcode | IORING_REGISTER_USE_REGISTERED_RING, arg,
                                          nr_args));
    return static_cast<int>(sys::call(SYS_io_uring_register, ring.ring_fd, opcode, arg, nr_args));
}

}  // namespace liveio::uring::detail
