// Ring creation without a descriptor number (engine.h: RingFd::Unnumbered). Not a public header.
//
// IORING_SETUP_REGISTERED_FD_ONLY (Linux 6.5) makes io_uring_setup return an index into the
// calling thread's registered ring table (IORING_REGISTER_RING_FDS) instead of installing a
// descriptor; the kernel requires IORING_SETUP_NO_MMAP with it, as a ring without a
// descriptor cannot be mmap()ed: the caller provides the memory of the rings (SQ/CQ heads,
// tails, CQEs, SQ array: params.cq_off.user_addr) and of the SQEs (params.sq_off.user_addr),
// page-aligned, and the kernel pins it. Every io_uring_enter then passes the index with
// IORING_ENTER_REGISTERED_RING, every io_uring_register the index with
// IORING_REGISTER_USE_REGISTERED_RING (Linux 6.3). The index is the creating thread's: no
// other thread can use the ring, and only that thread can drop it
// (IORING_UNREGISTER_RING_FDS); otherwise it lives until that thread exits.
// liburing 2.3 (Debian 12) knows neither flag: the ring's `io_uring` is filled here the way
// liburing fills it after its own mmap(), and liburing's submit/wait/peek functions then use
// it unchanged (they enter through `enter_ring_fd` with IORING_ENTER_REGISTERED_RING when
// the registered-ring flag of `int_flags` is set).
#pragma once

#include <liburing.h>

#include <cstddef>

namespace liveio::uring::detail {

#ifndef IORING_SETUP_NO_MMAP
#define IORING_SETUP_NO_MMAP (1U << 14)
#endif
#ifndef IORING_SETUP_REGISTERED_FD_ONLY
#define IORING_SETUP_REGISTERED_FD_ONLY (1U << 15)
#endif
#ifndef IORING_REGISTER_USE_REGISTERED_RING
#define IORING_REGISTER_USE_REGISTERED_RING (1U << 31)
#endif

// liburing's private int_flags bit for "enter_ring_fd is a registered index" (INT_FLAG_REG_RING
// in its src/int_flags.h; same value in every release that has the field).
inline constexpr unsigned char kLiburingRegisteredRing = 1;

struct UnnumberedRing {
    int index = -1;  // in the creating thread's registered ring table
    int owner_tid = 0;
    void* rings = nullptr;  // SQ/CQ rings and CQEs
    size_t rings_bytes = 0;
    void* sqes = nullptr;
    size_t sqes_bytes = 0;
};

// Creates the ring described by `p` (flags, cq_entries, sq_thread_idle as for io_uring_setup)
// with NO_MMAP|REGISTERED_FD_ONLY added, and fills `ring` as liburing would. Returns 0, or
// -errno (-EINVAL from a kernel without the flags) with nothing left allocated.
int setup_unnumbered(unsigned entries, io_uring_params& p, io_uring& ring, UnnumberedRing& out);
// Drops the ring (from its creating thread: IORING_UNREGISTER_RING_FDS; from another thread
// the kernel keeps it until the creating thread exits) and frees its memory.
void release_unnumbered(UnnumberedRing& r);
// io_uring_register on a ring: through its registered index when `unnumbered`.
int register_ring(const io_uring& ring, bool unnumbered, unsigned opcode, const void* arg,
                  unsigned nr_args);

}  // namespace liveio::uring::detail
