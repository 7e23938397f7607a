// How target threads wake a liveio thread that sleeps in its io_uring ring (the I/O worker,
// the AIO bridge): the sleeper keeps a wait armed in its ring beside its ops, so new work and
// completions end the same io_uring_enter.
//
// Where the kernel has IORING_OP_FUTEX_WAIT (Linux 6.7; uring::Features::futex) the armed wait
// is a futex wait on a word of ours and a wake-up is an increment plus FUTEX_WAKE_PRIVATE: no
// descriptor at all, so nothing the target closes (close_range before an exec, a loop over
// /proc/self/fd) can make a wake-up fail and leave a caller waiting for the sleeper forever.
// The wait compares the word when the kernel issues it: an increment before that completes it
// at once (-EAGAIN), one after it is woken. Elsewhere an eventfd, high in the table
// (base/high_fd.h), read by the armed op and written by wake().
#pragma once

#include <linux/futex.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>

#include <atomic>
#include <cstdint>
#include <ctime>

#include "base/high_fd.h"
#include "base/raw_syscall.h"
#include "uring/engine.h"

namespace liveio::policy {

class RingWaker {
public:
    RingWaker() = default;
    RingWaker(const RingWaker&) = delete;
    RingWaker& operator=(const RingWaker&) = delete;
    ~RingWaker() { close_if_same(event_fd_, event_identity_); }

    // Chooses the futex when `engine` can wait on one, else creates the eventfd; 0 or -errno.
    // Before any wake().
    int init(const uring::Engine& engine) {
        futex_ = engine.backend() == uring::BackendKind::Uring && engine.features().futex;
        if (futex_) return 0;
        const long efd = raw_syscall(SYS_eventfd2, 0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (efd < 0) return static_cast<int>(efd);
        event_fd_ = move_high(static_cast<int>(efd));
        event_identity_ = fd_identity(event_fd_);
        return 0;
    }
    bool uses_futex() const { return futex_; }

    // Any thread.
    void wake() {
        if (futex_) {
            word_.fetch_add(1, std::memory_order_seq_cst);
            raw_syscall(SYS_futex, reinterpret_cast<long>(&word_), FUTEX_WAKE_PRIVATE, 1);
        } else if (event_fd_ >= 0) {
            const uint64_t one = 1;
            raw_syscall(SYS_write, event_fd_, reinterpret_cast<long>(&one), sizeof one);
        }
    }

    // The sleeper: the word's value before its last look for work (see wait()).
    uint32_t seen() const { return word_.load(std::memory_order_seq_cst); }
    // The op to keep armed in the ring; its completion (any result) means "look again".
    uring::Op armed_op() {
        if (futex_) return uring::Op::futex_wait(reinterpret_cast<const uint32_t*>(&word_), seen());
        return uring::Op::read(event_fd_, &event_value_, sizeof event_value_);
    }
    // Without a ring: sleeps until a wake-up after `seen` or `timeout` (relative).
    void wait(uint32_t seen, const timespec& timeout) {
        if (futex_) {
            raw_syscall(SYS_futex, reinterpret_cast<long>(&word_), FUTEX_WAIT_PRIVATE, seen,
                        reinterpret_cast<long>(&timeout));
            return;
        }
        pollfd pfd{event_fd_, POLLIN, 0};
        raw_syscall(SYS_ppoll, reinterpret_cast<long>(&pfd), 1, reinterpret_cast<long>(&timeout), 0,
                    0);
        raw_syscall(SYS_read, event_fd_, reinterpret_cast<long>(&event_value_),
                    sizeof event_value_);
    }

private:
    bool futex_ = false;
    std::atomic<uint32_t> word_{0};
    int event_fd_ = -1;
    FdIdentity event_identity_;
    uint64_t event_value_ = 0;
};

}  // namespace liveio::policy
