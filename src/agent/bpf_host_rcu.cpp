#include "agent/bpf_host_rcu.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <time.h>

#include <random>

#include "hook/dispatcher.h"

namespace liveio::agent {
namespace {

long membarrier(int cmd) { return hook::raw_syscall(SYS_membarrier, cmd, 0, 0); }

void pause_briefly() {
    const timespec ts{0, 50'000};
    ::nanosleep(&ts, nullptr);
}

uint64_t random_id() {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32 | rd()) | 1;  // never 0: 0 is "no registry" in TLS
}

}  // namespace

ReaderRegistry::ReaderRegistry() : id_(random_id()), slots_(new Slot[kSlots]) {
    // Registration is per process and permanent; registering twice is harmless.
    membarrier_ = membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
}

ReaderRegistry::Slot* ReaderRegistry::claim() {
    // An exited owner has no section open.
    return claim_thread_slot(slots_.get(), kSlots, [](const Slot& s) {
        return s.active.load(std::memory_order_acquire) == 0;
    });
}

void ReaderRegistry::synchronize() {
    // After a successful registration the command cannot fail (membarrier(2)).
    if (membarrier_) (void)membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    for (uint32_t i = 0; i < kSlots; ++i) {
        Slot& s = slots_[i];
        if (s.active.load(std::memory_order_acquire) == 0) continue;
        const uint64_t seq = s.seq.load(std::memory_order_acquire);
        // The section open now ends with seq advancing; later sections see the new list.
        while (s.active.load(std::memory_order_acquire) != 0 && s.seq.load(std::memory_order_acquire) == seq)
            pause_briefly();
    }
    while (overflow_.load(std::memory_order_acquire) != 0) pause_briefly();
}

}  // namespace liveio::agent
