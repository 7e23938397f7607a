#include "agent/call_counters.h"

#include <sys/mman.h>
#include <sys/syscall.h>

#include <string>

#include "base/raw_syscall.h"
#include "base/syscall_table.h"

namespace liveio::agent {
namespace {

// The calling thread's block of one CallCounters instance (id). Initial-exec and plain data:
// reached from hooked calls in a dlopen'ed library (see bpf_host.cpp).
struct CountersThread {
    uint64_t counters_id;
    CallCounters::Block* block;
};
__attribute__((tls_model("initial-exec"))) thread_local CountersThread t_counters;

// One instruction, so a signal handler interrupting the owner thread cannot lose an add; not
// locked, because only the owner thread writes its block (readers load whole words).
inline void add_own(uint64_t& counter, uint64_t n) {
    asm volatile("addq %1, %0" : "+m"(counter) : "er"(n));
}

uint64_t load(const uint64_t& counter) { return __atomic_load_n(&counter, __ATOMIC_RELAXED); }

std::atomic<uint64_t> g_next_id{1};

}  // namespace

CallCounters::CallCounters()
    : id_(g_next_id.fetch_add(1, std::memory_order_relaxed)),
      threads_(new ThreadBlock[kThreadBlocks]) {}

CallCounters::~CallCounters() {
    for (size_t i = 0; i < kThreadBlocks; ++i)
        if (Block* b = threads_[i].block.load(std::memory_order_relaxed))
            ::munmap(b, sizeof(Block));
}

// Raw syscalls only: runs on a thread's first counted call, possibly inside the allocator.
CallCounters::Block* CallCounters::claim_block() {
    ThreadBlock* t =
        claim_thread_slot(threads_.get(), kThreadBlocks, [](const ThreadBlock&) { return true; });
    if (t == nullptr) return nullptr;
    Block* b = t->block.load(std::memory_order_acquire);
    if (b == nullptr) {
        const long p = raw_syscall(SYS_mmap, 0, sizeof(Block), PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p < 0 && p > -4096) return nullptr;  // counted in the shared block meanwhile
        b = reinterpret_cast<Block*>(p);
        t->block.store(b, std::memory_order_release);
    }
    t_counters = {id_, b};
    return b;
}

void CallCounters::count_shared(long nr, long result) {
    Counter& c = shared_.counters[nr];
    __atomic_fetch_add(&c.calls, 1, __ATOMIC_RELAXED);
    if (result < 0)
        __atomic_fetch_add(&c.errors, 1, __ATOMIC_RELAXED);
    else if (syscall_moves_bytes(nr))
        __atomic_fetch_add(&c.bytes, static_cast<uint64_t>(result), __ATOMIC_RELAXED);
}

void CallCounters::exit(CallFrame& frame) {
    const long nr = frame.call.nr >= 0 && frame.call.nr < kTracked ? frame.call.nr : kTracked;
    const CountersThread& t = t_counters;
    Block* b = t.counters_id == id_ ? t.block : nullptr;
    if (b == nullptr) [[unlikely]] {
        b = claim_block();
        if (b == nullptr) return count_shared(nr, frame.result);
    }
    Counter& c = b->counters[nr];
    add_own(c.calls, 1);
    if (frame.result < 0)
        add_own(c.errors, 1);
    else if (syscall_moves_bytes(nr))
        add_own(c.bytes, static_cast<uint64_t>(frame.result));
}

nlohmann::json CallCounters::snapshot() const {
    Counter sum[kTracked + 1] = {};
    auto add_block = [&](const Block& b) {
        for (int nr = 0; nr <= kTracked; ++nr) {
            sum[nr].calls += load(b.counters[nr].calls);
            sum[nr].bytes += load(b.counters[nr].bytes);
            sum[nr].errors += load(b.counters[nr].errors);
        }
    };
    add_block(shared_);
    for (size_t i = 0; i < kThreadBlocks; ++i)
        if (const Block* b = threads_[i].block.load(std::memory_order_acquire)) add_block(*b);
    nlohmann::json out = nlohmann::json::object();
    uint64_t calls = 0, bytes = 0, errors = 0;
    for (int nr = 0; nr <= kTracked; ++nr) {
        const Counter& c = sum[nr];
        if (c.calls == 0) continue;
        out[nr == kTracked ? "other" : syscall_name(nr)] = {
            {"calls", c.calls}, {"bytes", c.bytes}, {"errors", c.errors}};
        calls += c.calls;
        bytes += c.bytes;
        errors += c.errors;
    }
    out["total"] = {{"calls", calls}, {"bytes", bytes}, {"errors", errors}};
    return out;
}

uint64_t CallCounters::total_calls() const {
    uint64_t calls = 0;
    auto add_block = [&](const Block& b) {
        for (const Counter& c : b.counters) calls += load(c.calls);
    };
    add_block(shared_);
    for (size_t i = 0; i < kThreadBlocks; ++i)
        if (const Block* b = threads_[i].block.load(std::memory_order_acquire)) add_block(*b);
    return calls;
}

}  // namespace liveio::agent
