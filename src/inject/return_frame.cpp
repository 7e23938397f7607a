// Kernel signal frame for the tracer-less return of an injected call: see return_frame.h.
#include "inject/return_frame.h"

#include <signal.h>
#include <sys/syscall.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace liveio::inject {
namespace {

// x86-64 `struct ucontext` and `struct rt_sigframe` of the kernel (arch/x86/include/asm/
// sigframe.h): rt_sigreturn reads the frame at rsp - 8 (where the handler's return address,
// `pretcode`, was). glibc's `struct sigcontext` has the kernel's layout; the kernel's
// signal mask is one word.
struct KernelUcontext {
    uint64_t uc_flags;
    uint64_t uc_link;
    stack_t uc_stack;
    struct sigcontext uc_mcontext;
    uint64_t uc_sigmask;
};
struct RtSigframe {
    uint64_t pretcode;
    KernelUcontext uc;
    uint8_t info[128];  // siginfo_t: not read by rt_sigreturn; holds the result slot
};
static_assert(sizeof(struct sigcontext) == 256);
static_assert(sizeof(KernelUcontext) == 304);
static_assert(offsetof(RtSigframe, uc) == 8 && sizeof(RtSigframe) == 440);

constexpr uint64_t kUcFpXstate = 0x1, kUcSigcontextSs = 0x2, kUcStrictRestoreSs = 0x4;
constexpr uint32_t kFpXstateMagic1 = 0x46505853, kFpXstateMagic2 = 0x46505845;
constexpr size_t kSwReservedOffset = 464;  // struct _fpx_sw_bytes inside the FXSAVE area
constexpr size_t kXsaveHeaderOffset = 512;
constexpr uint64_t kRedZone = 128;
constexpr long kErestartsys = 512, kErestartnointr = 513, kErestartnohand = 514,
               kErestartRestartblock = 516;

struct FpxSwBytes {
    uint32_t magic1, extended_size;
    uint64_t xfeatures;
    uint32_t xstate_size, padding[7];
};
static_assert(sizeof(FpxSwBytes) == 48);

// `mov %rax,(REG)` encodings for the callee-saved registers.
struct StoreEncoding {
    ReturnGadgets::Base base;
    std::array<uint8_t, 4> bytes;
    size_t size;
};
constexpr std::array<StoreEncoding, 6> kStores = {{
    {ReturnGadgets::Base::rbx, {0x48, 0x89, 0x03}, 3},
    {ReturnGadgets::Base::rbp, {0x48, 0x89, 0x45, 0x00}, 4},
    {ReturnGadgets::Base::r12, {0x49, 0x89, 0x04, 0x24}, 4},
    {ReturnGadgets::Base::r13, {0x49, 0x89, 0x45, 0x00}, 4},
    {ReturnGadgets::Base::r14, {0x49, 0x89, 0x06}, 3},
    {ReturnGadgets::Base::r15, {0x49, 0x89, 0x07}, 3},
}};

// Number of `pop` instructions (callee-saved registers) at `p` followed by `ret`; -1 if the
// bytes are anything else.
int pops_then_ret(const uint8_t* p, const uint8_t* end) {
    int pops = 0;
    while (p < end && pops <= 6) {
        if (*p == 0xc3) return pops;
        if (*p == 0x5b || *p == 0x5d) {
            ++p, ++pops;
        } else if (*p == 0x41 && p + 1 < end && p[1] >= 0x5c && p[1] <= 0x5f) {
            p += 2, ++pops;
        } else {
            return -1;
        }
    }
    return -1;
}

}  // namespace

std::optional<ReturnGadgets> find_return_gadgets(std::span<const uint8_t> code, uint64_t vaddr) {
    static constexpr std::array<uint8_t, 9> kRestoreRt = {0x48, 0xc7, 0xc0, 0x0f, 0x00,
                                                          0x00, 0x00, 0x0f, 0x05};
    ReturnGadgets g;
    bool have_restore = false, have_store = false;
    const uint8_t* begin = code.data();
    const uint8_t* end = begin + code.size();
    if (auto it = std::search(begin, end, kRestoreRt.begin(), kRestoreRt.end()); it != end)
        g.restore_rt = vaddr + (it - begin), have_restore = true;
    for (const uint8_t* p = begin; p < end; ++p) {
        for (const auto& s : kStores) {
            if (static_cast<size_t>(end - p) < s.size + 1 ||
                std::memcmp(p, s.bytes.data(), s.size) != 0)
                continue;
            int pops = pops_then_ret(p + s.size, end);
            if (pops < 0 || (have_store && pops >= g.store_pops)) continue;
            g.store = vaddr + (p - begin), g.store_pops = pops, g.base = s.base;
            have_store = true;
        }
        if (have_store && g.store_pops == 0) break;
    }
    if (!have_restore || !have_store) return std::nullopt;
    return g;
}

user_regs_struct resumed_registers(const user_regs_struct& stopped, bool restart_block_intact) {
    user_regs_struct r = stopped;
    if (static_cast<long>(stopped.orig_rax) >= 0) {
        switch (-static_cast<long>(stopped.rax)) {
            case kErestartsys:
            case kErestartnointr:
            case kErestartnohand: r.rax = stopped.orig_rax, r.rip -= 2; break;
            case kErestartRestartblock:
                r.rax = restart_block_intact ? SYS_restart_syscall : stopped.orig_rax;
                r.rip -= 2;
                break;
            default: break;
        }
    }
    r.orig_rax = ~0ull;
    return r;
}

void set_store_base(user_regs_struct& regs, ReturnGadgets::Base base, uint64_t slot) {
    switch (base) {
        case ReturnGadgets::Base::rbx: regs.rbx = slot; break;
        case ReturnGadgets::Base::rbp: regs.rbp = slot; break;
        case ReturnGadgets::Base::r12: regs.r12 = slot; break;
        case ReturnGadgets::Base::r13: regs.r13 = slot; break;
        case ReturnGadgets::Base::r14: regs.r14 = slot; break;
        case ReturnGadgets::Base::r15: regs.r15 = slot; break;
    }
}

CallFrame build_call_frame(const user_regs_struct& regs, std::span<const uint8_t> xstate,
                           bool xsave, uint64_t sigmask, const ReturnGadgets& gadgets,
                           const std::string& data) {
    CallFrame f;
    const uint64_t top = regs.rsp - kRedZone;
    f.data_addr = (top - data.size() - 1) & ~uint64_t(15);
    const size_t fp_size = xstate.size() + (xsave ? sizeof(uint32_t) : 0);
    const uint64_t fp_addr = (f.data_addr - fp_size) & ~uint64_t(63);  // XRSTOR alignment
    // Stack from entry_sp up: the store gadget's address, one slot per pop, then the frame
    // (whose pretcode is __restore_rt). At function entry rsp must be 8 mod 16.
    const uint64_t slots = 1 + gadgets.store_pops;
    uint64_t frame_addr = (fp_addr - sizeof(RtSigframe)) & ~uint64_t(15);
    if (((frame_addr - 8 * slots) & 15) != 8) frame_addr -= 8;
    f.entry_sp = frame_addr - 8 * slots;
    f.sigreturn_sp = frame_addr + 8;
    f.result_slot = frame_addr + offsetof(RtSigframe, info);
    f.end = top;
    f.bytes.assign(top - f.entry_sp, 0);
    auto put = [&](uint64_t addr, const void* src, size_t n) {
        std::memcpy(f.bytes.data() + (addr - f.entry_sp), src, n);
    };
    put(f.entry_sp, &gadgets.store, 8);  // the pop slots stay zero

    RtSigframe frame{};
    frame.pretcode = gadgets.restore_rt;
    frame.uc.uc_flags = kUcSigcontextSs | kUcStrictRestoreSs | (xsave ? kUcFpXstate : 0);
    // rt_sigreturn installs uc_stack with sigaltstack() and ignores its errors: an invalid
    // mode (neither 0, SS_ONSTACK nor SS_DISABLE) leaves the thread's alternate stack, which
    // ptrace cannot read, as it is.
    frame.uc.uc_stack.ss_flags = SS_ONSTACK | SS_DISABLE;
    const user_regs_struct r = resumed_registers(regs, /*restart_block_intact=*/false);
    auto& sc = frame.uc.uc_mcontext;
    sc.r8 = r.r8, sc.r9 = r.r9, sc.r10 = r.r10, sc.r11 = r.r11, sc.r12 = r.r12, sc.r13 = r.r13;
    sc.r14 = r.r14, sc.r15 = r.r15, sc.rdi = r.rdi, sc.rsi = r.rsi, sc.rbp = r.rbp;
    sc.rbx = r.rbx, sc.rdx = r.rdx, sc.rax = r.rax, sc.rcx = r.rcx, sc.rsp = r.rsp;
    sc.rip = r.rip, sc.eflags = r.eflags;
    sc.cs = static_cast<uint16_t>(r.cs);
    sc.__pad0 = static_cast<uint16_t>(r.ss);
    sc.__fpstate_word = fp_addr;
    frame.uc.uc_sigmask = sigmask;
    put(frame_addr, &frame, sizeof frame);

    std::vector<uint8_t> fp(xstate.begin(), xstate.end());
    if (xsave && fp.size() >= kXsaveHeaderOffset + 8) {
        FpxSwBytes sw;
        std::memcpy(&sw, fp.data() + kSwReservedOffset, sizeof sw);
        // The regset carries the kernel's own signal-frame words; fill them if it did not.
        if (sw.magic1 != kFpXstateMagic1 || sw.xstate_size != fp.size()) {
            sw = FpxSwBytes{};
            sw.magic1 = kFpXstateMagic1;
            sw.xstate_size = static_cast<uint32_t>(fp.size());
            sw.xfeatures = ~uint64_t(0);  // the kernel masks it with what it supports
        }
        sw.extended_size = static_cast<uint32_t>(fp.size() + sizeof(uint32_t));
        std::memcpy(fp.data() + kSwReservedOffset, &sw, sizeof sw);
        fp.resize(fp.size() + sizeof(uint32_t));
        std::memcpy(fp.data() + fp.size() - sizeof(uint32_t), &kFpXstateMagic2,
                    sizeof kFpXstateMagic2);
    } else if (fp.size() >= kSwReservedOffset + sizeof(FpxSwBytes)) {
        std::memset(fp.data() + kSwReservedOffset, 0, sizeof(FpxSwBytes));  // FXSAVE only
    }
    put(fp_addr, fp.data(), fp.size());
    if (!data.empty()) put(f.data_addr, data.data(), data.size());
    return f;
}

}  // namespace liveio::inject
