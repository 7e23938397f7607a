#include "hook/uprobe.h"

#include <sys/mman.h>
#include <sched.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>

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
    uintptr_t address;  // read by the assembly stub at offset 0
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
thread_local ShadowFrame t_shadow[kShadowDepth];
thread_local int t_shadow_top = 0;

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
    UprobeImpl(ProbeRecord* p, std::unique_ptr<UprobeCallback> cb, std::unique_ptr<InlineHooks> hooks)
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
        } else if (t_shadow_top < kShadowDepth && p->callback.load(std::memory_order_relaxed)) {
            auto* slot = reinterpret_cast<uintptr_t*>(regs->rsp);
            t_shadow[t_shadow_top++] = {p, *slot, regs->rsp};
            *slot = reinterpret_cast<uintptr_t>(&liveio_uretprobe_return);
        }
    }
    return reinterpret_cast<uintptr_t>(p->original);
}

extern "C" __attribute__((visibility("hidden"))) uintptr_t liveio_uretprobe_on_return(pt_regs* regs) {
    // The frame whose return address slot sits just below the caller's stack pointer; frames
    // above it were abandoned (cannot happen without unwinding, handled defensively).
    const uintptr_t slot = regs->rsp - 8;
    while (t_shadow_top > 1 && t_shadow[t_shadow_top - 1].slot < slot) --t_shadow_top;
    const ShadowFrame frame = t_shadow[--t_shadow_top];
    regs->rip = frame.return_address;
    run_callback(frame.probe, regs);
    return frame.return_address;
}

Result<std::unique_ptr<Uprobe>> attach_uprobe(void* function, UprobeCallback callback, bool retprobe) {
    if (function == nullptr || !callback) return make_error(EINVAL, "uprobe needs a function and a callback");
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
        if (p->callback.load() != nullptr) return make_error(EBUSY, "function already has a uprobe");
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
    return std::unique_ptr<Uprobe>(std::make_unique<UprobeImpl>(p, std::move(cb), std::move(hooks).value()));
}

}  // namespace liveio::hook
