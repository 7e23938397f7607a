#include "hook/uprobe.h"

#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include "hook/dispatcher.h"
#include "hook/inline_hook.h"

static_assert(sizeof(pt_regs) == 168, "the assembly stubs assume the x86-64 uapi pt_regs");

extern "C" {
void liveio_uprobe_entry();
void liveio_uretprobe_return();
}

namespace liveio::hook {
namespace {

// Probe records are reached from generated code and return stubs that may still be pending
// on some thread's stack after detach, so they are never freed: one per probed address,
// reused when that address is probed again.
struct ProbeRecord {
    uintptr_t address;         // read by the assembly stub at offset 0
    void* original = nullptr;  // the inline hook's trampoline
    std::atomic<const UprobeCallback*> callback{nullptr};
    std::atomic<bool> retprobe{false};
    std::atomic<uint64_t> in_flight{0};
    std::atomic<uint64_t> hits{0};
    uint8_t* thunk = nullptr;
};
static_assert(offsetof(ProbeRecord, address) == 0);

std::mutex g_probes_mutex;
std::map<uintptr_t, ProbeRecord*>& probes() {
    static auto* m = new std::map<uintptr_t, ProbeRecord*>;  // immortal, see ProbeRecord
    return *m;
}

struct ShadowFrame {
    ProbeRecord* probe;
    uintptr_t return_address;
    uintptr_t slot;  // stack address of the replaced return address
};
constexpr int kShadowDepth = 256;

// Each thread's shadow stack is a block mapped on its first uretprobe hit, reached through one
// thread_local pointer. The library is loaded with dlopen into running processes, where
// initial-exec TLS (needed so the hooks never call __tls_get_addr, which may malloc) must fit
// glibc's small static TLS surplus: 6 KiB of frames per thread in TLS made dlopen fail with
// "cannot allocate memory in static TLS block". Blocks are never unmapped while the library
// is loaded (a return stub may still be pending on a stack); a thread that exited leaves its
// block to the next thread that needs one, and unloading the library unmaps the idle ones.
struct ShadowStack {
    std::atomic<pid_t> owner{0};
    ShadowStack* next = nullptr;  // in g_shadow_stacks, pushed once, never removed
    int top = 0;
    ShadowFrame frames[kShadowDepth];
};
std::atomic<ShadowStack*> g_shadow_stacks{nullptr};
thread_local ShadowStack* t_shadow = nullptr;

bool thread_alive(pid_t tid) {
    return syscall(SYS_tgkill, getpid(), tid, 0) == 0 || errno != ESRCH;
}

// Called with Dispatcher::inside() false on a probed function's entry: only raw syscalls.
ShadowStack* claim_shadow_stack() {
    const auto self = static_cast<pid_t>(syscall(SYS_gettid));
    const int saved_errno = errno;
    for (ShadowStack* s = g_shadow_stacks.load(std::memory_order_acquire); s != nullptr;
         s = s->next) {
        pid_t owner = s->owner.load(std::memory_order_acquire);
        if (owner != 0 && thread_alive(owner)) continue;
        if (s->owner.compare_exchange_strong(owner, self, std::memory_order_acq_rel)) {
            s->top = 0;
            errno = saved_errno;
            return s;
        }
    }
    errno = saved_errno;
    void* mem = mmap(nullptr, sizeof(ShadowStack), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        errno = saved_errno;
        return nullptr;
    }
    auto* s = new (mem) ShadowStack;
    s->owner.store(self, std::memory_order_relaxed);
    s->next = g_shadow_stacks.load(std::memory_order_relaxed);
    while (!g_shadow_stacks.compare_exchange_weak(s->next, s, std::memory_order_release)) {
    }
    return s;
}

bool any_probe_attached();

// At unload no thread runs library code (the injector checks), so idle blocks can go. At
// process exit with probes still attached other threads may still use theirs: keep them.
struct ShadowStacksReclaim {
    ~ShadowStacksReclaim() {
        if (any_probe_attached()) return;
        for (ShadowStack* s = g_shadow_stacks.exchange(nullptr); s != nullptr;) {
            ShadowStack* next = s->next;
            if (s->top == 0) munmap(s, sizeof(ShadowStack));
            s = next;
        }
    }
} g_shadow_reclaim;

bool any_probe_attached() {
    std::lock_guard lock(g_probes_mutex);
    for (const auto& [address, p] : probes())
        if (p->callback.load(std::memory_order_acquire) != nullptr) return true;
    return false;
}

void run_callback(ProbeRecord* p, pt_regs* regs) {
    p->in_flight.fetch_add(1, std::memory_order_seq_cst);
    if (const UprobeCallback* cb = p->callback.load(std::memory_order_seq_cst)) {
        Dispatcher::ScopedInside inside;
        p->hits.fetch_add(1, std::memory_order_relaxed);
        (*cb)(regs);
    }
    p->in_flight.fetch_sub(1, std::memory_order_release);
}

// A 32-byte thunk: movabs $probe, %r11; jmp *0(%rip); .quad liveio_uprobe_entry.
uint8_t* make_thunk(ProbeRecord* p) {
    void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return nullptr;
    auto* t = static_cast<uint8_t*>(page);
    t[0] = 0x49;
    t[1] = 0xbb;
    const auto probe = reinterpret_cast<uint64_t>(p);
    memcpy(t + 2, &probe, 8);
    const uint8_t jmp[6] = {0xff, 0x25, 0, 0, 0, 0};
    memcpy(t + 10, jmp, 6);
    const auto entry = reinterpret_cast<uint64_t>(&liveio_uprobe_entry);
    memcpy(t + 16, &entry, 8);
    if (mprotect(page, 4096, PROT_READ | PROT_EXEC) != 0) {
        munmap(page, 4096);
        return nullptr;
    }
    return t;
}

class UprobeImpl final : public Uprobe {
public:
    UprobeImpl(ProbeRecord* p, std::unique_ptr<UprobeCallback> cb,
               std::unique_ptr<InlineHooks> hooks)
        : probe_(p), callback_(std::move(cb)), hooks_(std::move(hooks)) {}
    ~UprobeImpl() override { (void)detach(); }
    Result<void> detach() override {
        if (!hooks_) return {};
        if (auto r = hooks_->remove(); !r) return r;
        hooks_.reset();
        probe_->callback.store(nullptr, std::memory_order_seq_cst);
        while (probe_->in_flight.load(std::memory_order_acquire) != 0) sched_yield();
        return {};
    }
    uint64_t hits() const override { return probe_->hits.load(std::memory_order_relaxed); }

private:
    ProbeRecord* probe_;
    std::unique_ptr<UprobeCallback> callback_;
    std::unique_ptr<InlineHooks> hooks_;
};

}  // namespace

extern "C" __attribute__((visibility("hidden"))) uintptr_t liveio_uprobe_on_entry(ProbeRecord* p,
                                                                                  pt_regs* regs) {
    if (!Dispatcher::inside()) {
        if (!p->retprobe.load(std::memory_order_relaxed)) {
            run_callback(p, regs);
        } else if (p->callback.load(std::memory_order_relaxed)) {
            if (t_shadow == nullptr) t_shadow = claim_shadow_stack();
            // Without a shadow stack (mmap failed) or room in it the return goes unobserved.
            if (ShadowStack* st = t_shadow; st != nullptr && st->top < kShadowDepth) {
                auto* slot = reinterpret_cast<uintptr_t*>(regs->rsp);
                st->frames[st->top++] = {p, *slot, regs->rsp};
                *slot = reinterpret_cast<uintptr_t>(&liveio_uretprobe_return);
            }
        }
    }
    return reinterpret_cast<uintptr_t>(p->original);
}

extern "C" __attribute__((visibility("hidden"))) uintptr_t liveio_uretprobe_on_return(
    pt_regs* regs) {
    // The frame whose return address slot sits just below the caller's stack pointer; frames
    // above it were abandoned (cannot happen without unwinding, handled defensively).
    // Only reached through a return address pushed above, so this thread has its stack.
    ShadowStack& st = *t_shadow;
    const uintptr_t slot = regs->rsp - 8;
    while (st.top > 1 && st.frames[st.top - 1].slot < slot) --st.top;
    const ShadowFrame frame = st.frames[--st.top];
    regs->rip = frame.return_address;
    run_callback(frame.probe, regs);
    return frame.return_address;
}

Result<std::unique_ptr<Uprobe>> attach_uprobe(void* function, UprobeCallback callback,
                                              bool retprobe) {
    if (function == nullptr || !callback)
        return make_error(EINVAL, "uprobe needs a function and a callback");
    ProbeRecord* p;
    {
        std::lock_guard lock(g_probes_mutex);
        auto& slot = probes()[reinterpret_cast<uintptr_t>(function)];
        if (slot == nullptr) {
            slot = new ProbeRecord;
            slot->address = reinterpret_cast<uintptr_t>(function);
            slot->thunk = make_thunk(slot);
            if (slot->thunk == nullptr) return make_error(ENOMEM, "cannot map a uprobe thunk");
        }
        p = slot;
        if (p->callback.load() != nullptr)
            return make_error(EBUSY, "function already has a uprobe");
    }
    auto hooks = InlineHooks::prepare({{function, p->thunk}});
    if (!hooks) return hooks.error();
    auto cb = std::make_unique<UprobeCallback>(std::move(callback));
    p->original = (*hooks)->original(0);
    p->retprobe.store(retprobe);
    p->callback.store(cb.get());
    if (auto r = (*hooks)->apply(); !r) {
        p->callback.store(nullptr);
        return r.error();
    }
    return std::unique_ptr<Uprobe>(
        std::make_unique<UprobeImpl>(p, std::move(cb), std::move(hooks).value()));
}

}  // namespace liveio::hook
