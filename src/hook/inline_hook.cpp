#include "hook/inline_hook.h"

#include <Zydis/Zydis.h>
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <mutex>

#include <fmt/format.h>

#include "hook/text_patch.h"
#include "hook/world_stop.h"

namespace liveio::hook {

namespace {

constexpr size_t kJmpRel32 = 5;
constexpr size_t kAbsJmpLen = 14;        // ff 25 00000000 <abs64>
constexpr size_t kRelocatedOffset = 16;  // after the entry stub
constexpr size_t kMaxScan = 4096;        // bytes scanned when the symbol size is unknown

size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

void emit_abs_jmp(std::vector<uint8_t>& out, uint64_t to) {
    const uint8_t jmp[6] = {0xff, 0x25, 0, 0, 0, 0};
    out.insert(out.end(), jmp, jmp + 6);
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(to >> (8 * i)));
}

struct Decoder {
    ZydisDecoder d;
    Decoder() { ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64); }
    bool decode(const uint8_t* p, size_t len, ZydisDecodedInstruction& insn) const {
        return ZYAN_SUCCESS(ZydisDecoderDecodeInstruction(&d, nullptr, p, len, &insn));
    }
};

bool has_relative_imm(const ZydisDecodedInstruction& insn) { return insn.raw.imm[0].is_relative; }

bool is_rip_relative_memory(const ZydisDecodedInstruction& insn) {
    return (insn.attributes & ZYDIS_ATTRIB_IS_RELATIVE) && !has_relative_imm(insn) &&
           insn.raw.disp.size == 32;
}

bool ends_flow(const ZydisDecodedInstruction& insn) {
    return insn.meta.category == ZYDIS_CATEGORY_RET ||
           insn.meta.category == ZYDIS_CATEGORY_UNCOND_BR || insn.mnemonic == ZYDIS_MNEMONIC_UD2 ||
           insn.mnemonic == ZYDIS_MNEMONIC_INT3 || insn.mnemonic == ZYDIS_MNEMONIC_HLT;
}

// The function's extent: its symbol size when a symbol starts exactly at `target`.
size_t function_size(void* target) {
    Dl_info info;
    void* entry = nullptr;
    const bool found = dladdr1(target, &info, &entry, RTLD_DL_SYMENT) != 0;
    const auto* sym = static_cast<const ElfW(Sym)*>(entry);
    if (found && sym && info.dli_saddr == target && sym->st_size > 0) return sym->st_size;
    return 0;
}

std::string describe(void* target) {
    Dl_info info;
    if (dladdr(target, &info) && info.dli_sname && info.dli_saddr == target)
        return fmt::format("{} ({})", info.dli_sname, target);
    return fmt::format("{}", target);
}

struct Plan {
    size_t n = 0;                                    // bytes replaced at the target
    bool calls = false;                              // the relocated prologue holds a call
    std::vector<uint8_t> relocated;                  // code for trampoline + kRelocatedOffset
    std::vector<std::pair<uint16_t, uint16_t>> map;  // instruction boundaries: original, relocated
};

// Decodes and relocates the prologue for a trampoline at `tramp`; fails with the reason.
Result<Plan> plan(void* target_ptr, uintptr_t tramp) {
    const auto* target = static_cast<const uint8_t*>(target_ptr);
    const auto start = reinterpret_cast<uintptr_t>(target);
    const Decoder dec;
    const size_t fsize = function_size(target_ptr);
    Plan p;
    const uintptr_t code = tramp + kRelocatedOffset;
    while (p.n < kJmpRel32) {
        ZydisDecodedInstruction insn;
        if (!dec.decode(target + p.n, 15, insn))
            return make_error(EINVAL, fmt::format("{}: undecodable instruction at +{}",
                                                  describe(target_ptr), p.n));
        const size_t len = insn.length;
        if (ends_flow(insn) && insn.meta.category != ZYDIS_CATEGORY_UNCOND_BR &&
            p.n + len < kJmpRel32)
            return make_error(EINVAL, fmt::format("{}: function too short: it ends after {} "
                                                  "bytes, a jump needs {}",
                                                  describe(target_ptr), p.n + len, kJmpRel32));
        if (insn.meta.category == ZYDIS_CATEGORY_UNCOND_BR && p.n + len < kJmpRel32)
            return make_error(EINVAL, fmt::format("{}: function too short: unconditional jump "
                                                  "ends it after {} bytes, a jump needs {}",
                                                  describe(target_ptr), p.n + len, kJmpRel32));
        if (fsize != 0 && p.n + len > fsize)
            return make_error(EINVAL, fmt::format("{}: function too short: {} bytes, a jump "
                                                  "needs {}",
                                                  describe(target_ptr), fsize, kJmpRel32));
        p.map.push_back({static_cast<uint16_t>(p.n), static_cast<uint16_t>(p.relocated.size())});
        const uintptr_t ip = start + p.n;
        const uintptr_t new_ip = code + p.relocated.size();
        if (has_relative_imm(insn)) {
            const uint64_t dest = ip + len + static_cast<uint64_t>(insn.raw.imm[0].value.s);
            const bool jcc8 = insn.opcode_map == ZYDIS_OPCODE_MAP_DEFAULT && insn.opcode >= 0x70 &&
                              insn.opcode <= 0x7f;
            const bool jcc32 = insn.opcode_map == ZYDIS_OPCODE_MAP_0F && insn.opcode >= 0x80 &&
                               insn.opcode <= 0x8f;
            if (insn.mnemonic == ZYDIS_MNEMONIC_JMP) {
                emit_abs_jmp(p.relocated, dest);
            } else if (insn.mnemonic == ZYDIS_MNEMONIC_CALL) {
                p.calls = true;
                // call *[rip+2]; jmp +8; <abs64>: returns onto the short jump over the literal.
                const uint8_t call[8] = {0xff, 0x15, 2, 0, 0, 0, 0xeb, 0x08};
                p.relocated.insert(p.relocated.end(), call, call + 8);
                for (int i = 0; i < 8; ++i)
                    p.relocated.push_back(static_cast<uint8_t>(dest >> (8 * i)));
            } else if (jcc8 || jcc32) {
                // Inverted condition skips the absolute jump taken on the original condition.
                const uint8_t cc = insn.opcode & 0x0f;
                p.relocated.push_back(static_cast<uint8_t>(0x70 | (cc ^ 1)));
                p.relocated.push_back(static_cast<uint8_t>(kAbsJmpLen));
                emit_abs_jmp(p.relocated, dest);
            } else {
                return make_error(EINVAL, fmt::format("{}: relative instruction at +{} cannot be "
                                                      "relocated (loop/jrcxz/xbegin)",
                                                      describe(target_ptr), p.n));
            }
        } else if (is_rip_relative_memory(insn)) {
            const int64_t disp =
                insn.raw.disp.value + static_cast<int64_t>(ip) - static_cast<int64_t>(new_ip);
            if (disp < INT32_MIN || disp > INT32_MAX)
                return make_error(ERANGE, fmt::format("{}: RIP-relative operand at +{} out of "
                                                      "reach from the trampoline",
                                                      describe(target_ptr), p.n));
            const size_t at = p.relocated.size();
            p.relocated.insert(p.relocated.end(), target + p.n, target + p.n + len);
            const auto d32 = static_cast<int32_t>(disp);
            memcpy(&p.relocated[at + insn.raw.disp.offset], &d32, 4);
        } else {
            p.relocated.insert(p.relocated.end(), target + p.n, target + p.n + len);
        }
        p.n += len;
    }
    emit_abs_jmp(p.relocated, start + p.n);

    // No branch anywhere in the function may land inside the bytes we replace.
    const size_t scan = fsize != 0 ? fsize : kMaxScan;
    for (size_t off = 0; off < scan;) {
        ZydisDecodedInstruction insn;
        if (!dec.decode(target + off, std::min<size_t>(15, scan - off), insn)) break;
        if (has_relative_imm(insn)) {
            const uint64_t dest =
                start + off + insn.length + static_cast<uint64_t>(insn.raw.imm[0].value.s);
            if (dest > start && dest < start + p.n)
                return make_error(EINVAL,
                                  fmt::format("{}: the branch at +{} targets +{}, inside "
                                              "the {} bytes the hook replaces",
                                              describe(target_ptr), off, dest - start, p.n));
        }
        off += insn.length;
    }
    return p;
}

// A writable (not executable) mapping of `size` bytes within +-2 GiB of `near` (rel32 reach),
// found by probing hints around it.
uintptr_t allocate_near(uintptr_t near, size_t size) {
    const size_t ps = page_size();
    const uintptr_t base = near & ~(ps - 1);
    constexpr uintptr_t kStep = 1 << 20;
    for (uintptr_t delta = kStep; delta < (1ull << 31) - kStep; delta += kStep) {
        for (int sign : {-1, 1}) {
            if (sign < 0 && base < delta) continue;
            const uintptr_t hint = sign < 0 ? base - delta : base + delta;
            void* p = mmap(reinterpret_cast<void*>(hint), size, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
            if (p != MAP_FAILED) return reinterpret_cast<uintptr_t>(p);
        }
    }
    return 0;
}

bool within_rel32(uintptr_t a, uintptr_t b, size_t margin) {
    const uintptr_t d = a > b ? a - b : b - a;
    return d + margin < (1ull << 31);
}

}  // namespace

struct InlineHooks::Site {
    uintptr_t start = 0;
    uintptr_t tramp = 0;  // entry stub at 0, relocated code at kRelocatedOffset
    uintptr_t replacement = 0;
    Plan plan;
    uint8_t original[32] = {};
    uint8_t patch[32] = {};
};

namespace {

// Room for one trampoline: the entry stub and the relocated prologue (at most 4 instructions
// of up to 15 bytes, each relocated into at most 16 + 14 bytes, then the jump back).
constexpr size_t kTrampolineSlot = 256;
constexpr size_t kChunkSize = 4 * 4096;

// Process-lifetime trampolines (uprobes: a probe record keeps pointing at its trampoline) are
// cached per target and reused when the same target is hooked again with the same
// replacement (identical bytes: nothing is rewritten in executable memory).
std::mutex g_tramp_mutex;
std::map<uintptr_t, uintptr_t>& cached_trampolines() {
    static auto* m = new std::map<uintptr_t, uintptr_t>;  // intentionally immortal
    return *m;
}

struct FixupContext {
    const std::vector<InlineHooks::Site*>* sites;
    bool installing;
};

uintptr_t fixed_ip(const FixupContext* ctx, uintptr_t ip) {
    for (auto* s : *ctx->sites) {
        const uintptr_t code = s->tramp + kRelocatedOffset;
        for (auto [orig, reloc] : s->plan.map) {
            if (ctx->installing && orig != 0 && ip == s->start + orig) return code + reloc;
            if (!ctx->installing && ip == code + reloc) return s->start + orig;
        }
        if (!ctx->installing && ip == code + s->plan.relocated.size() - kAbsJmpLen)
            return s->start + s->plan.n;
        // On its way from the patched jump to the replacement: go there directly.
        if (!ctx->installing && ip == s->tramp) return s->replacement;
    }
    return ip;
}

void fixup_ip(void* raw, ucontext_t* uc) {
    auto& rip = uc->uc_mcontext.gregs[REG_RIP];
    rip = static_cast<greg_t>(
        fixed_ip(static_cast<const FixupContext*>(raw), static_cast<uintptr_t>(rip)));
}

Result<void> patch_all(const std::vector<InlineHooks::Site*>& sites, bool installing) {
    std::vector<std::pair<uintptr_t, size_t>> spans;
    for (auto* s : sites) spans.emplace_back(s->start, s->plan.n);
    // Removal gives restored pages back to their file (see text_patch.h).
    auto pages = TextPages::covering(spans, !installing);
    if (!pages) return pages.error();
    auto stopped = WorldStop::stop();
    if (!stopped) return stopped.error();
    Result<void> result;
    if (pages->open_for_write()) {
        for (auto* s : sites)
            copy_code_bytes(s->start, installing ? s->patch : s->original, s->plan.n);
        pages->close_for_write();
        if (!installing) pages->restore_files();
    } else {
        result = make_error(EACCES, "cannot make code pages writable to patch function entries");
    }
    FixupContext ctx{&sites, installing};
    (*stopped)->resume(fixup_ip, &ctx);
    return result;
}

}  // namespace

Result<void> can_inline_hook(void* target, bool releasable) {
    auto p = plan(target, reinterpret_cast<uintptr_t>(target));
    if (!p) return p.error();
    if (releasable && p->calls)
        return make_error(EINVAL,
                          fmt::format("{}: the hooked prologue makes a call, which would leave "
                                      "a trampoline address on stacks",
                                      describe(target)));
    return {};
}

Result<std::unique_ptr<InlineHooks>> InlineHooks::install(const std::vector<InlineHookSpec>& specs,
                                                          TrampolineLifetime lifetime) {
    auto hooks = prepare(specs, lifetime);
    if (!hooks) return hooks.error();
    if (auto r = (*hooks)->apply(); !r) return r.error();
    return hooks;
}

Result<std::unique_ptr<InlineHooks>> InlineHooks::prepare(const std::vector<InlineHookSpec>& specs,
                                                          TrampolineLifetime lifetime) {
    auto hooks = std::make_unique<InlineHooks>();
    hooks->lifetime_ = lifetime;
    std::lock_guard lock(g_tramp_mutex);
    // New trampolines go into chunks mapped by this call, written while writable and sealed
    // read+execute before anything can jump there.
    auto seal = [&]() -> Result<void> {
        for (const Chunk& c : hooks->chunks_)
            if (mprotect(reinterpret_cast<void*>(c.base), kChunkSize, PROT_READ | PROT_EXEC) != 0)
                return make_error(errno, "cannot make trampolines executable");
        return {};
    };
    for (const auto& spec : specs) {
        if (spec.target == nullptr || spec.replacement == nullptr) {
            (void)seal();
            return make_error(EINVAL, "inline hook needs a target and a replacement");
        }
        const auto start = reinterpret_cast<uintptr_t>(spec.target);
        const auto replacement = reinterpret_cast<uintptr_t>(spec.replacement);
        auto* site = new Site;
        hooks->sites_.push_back(site);
        site->start = start;
        site->replacement = replacement;
        if (lifetime == TrampolineLifetime::Process) {
            auto it = cached_trampolines().find(start);
            if (it != cached_trampolines().end()) {
                auto p = plan(spec.target, it->second);
                if (!p) {
                    (void)seal();
                    return p.error();
                }
                uint64_t stub_target = 0;
                memcpy(&stub_target, reinterpret_cast<const void*>(it->second + 6), 8);
                if (stub_target == replacement &&
                    memcmp(reinterpret_cast<const void*>(it->second + kRelocatedOffset),
                           p->relocated.data(), p->relocated.size()) == 0) {
                    site->tramp = it->second;
                    site->plan = std::move(p).value();
                }
            }
        }
        if (site->tramp == 0) {
            Chunk* chunk = nullptr;
            for (Chunk& c : hooks->chunks_)
                if (c.used + kTrampolineSlot <= kChunkSize &&
                    within_rel32(c.base, start, kChunkSize))
                    chunk = &c;
            if (chunk == nullptr) {
                const uintptr_t base = allocate_near(start, kChunkSize);
                if (base == 0) {
                    (void)seal();
                    return make_error(ENOMEM, fmt::format("{}: no free memory within 2 GiB for a "
                                                          "trampoline",
                                                          describe(spec.target)));
                }
                hooks->chunks_.push_back({base, 0});
                chunk = &hooks->chunks_.back();
            }
            site->tramp = chunk->base + chunk->used;
            chunk->used += kTrampolineSlot;
            auto p = plan(spec.target, site->tramp);
            if (!p) {
                (void)seal();
                return p.error();
            }
            site->plan = std::move(p).value();
            if (lifetime == TrampolineLifetime::Owned && site->plan.calls) {
                (void)seal();
                return make_error(EINVAL, fmt::format("{}: the hooked prologue makes a call: its "
                                                      "trampoline could never be unmapped",
                                                      describe(spec.target)));
            }
            // Trampoline: entry stub to the replacement, then the relocated prologue.
            std::vector<uint8_t> code;
            emit_abs_jmp(code, replacement);
            code.resize(kRelocatedOffset, 0xcc);
            code.insert(code.end(), site->plan.relocated.begin(), site->plan.relocated.end());
            memcpy(reinterpret_cast<void*>(site->tramp), code.data(), code.size());
            if (lifetime == TrampolineLifetime::Process) cached_trampolines()[start] = site->tramp;
        }
        memcpy(site->original, spec.target, site->plan.n);
        const int64_t rel =
            static_cast<int64_t>(site->tramp) - static_cast<int64_t>(start + kJmpRel32);
        site->patch[0] = 0xe9;
        const auto rel32 = static_cast<int32_t>(rel);
        memcpy(site->patch + 1, &rel32, 4);
        memset(site->patch + kJmpRel32, 0xcc, site->plan.n - kJmpRel32);
    }
    if (auto r = seal(); !r) return r.error();
    // Process-lifetime chunks are never unmapped (the cache points into them).
    if (lifetime == TrampolineLifetime::Process) hooks->chunks_.clear();
    return hooks;
}

Result<void> InlineHooks::apply() {
    if (installed_) return {};
    applied_ = true;
    if (auto r = patch_all(sites_, true); !r) {
        (void)patch_all(sites_, false);
        return r;
    }
    installed_ = true;
    return {};
}

Result<void> InlineHooks::remove() {
    if (!installed_) return {};
    auto r = patch_all(sites_, false);
    if (r) installed_ = false;
    return r;
}

void InlineHooks::move_out(ucontext_t* uc) const {
    FixupContext ctx{&sites_, false};
    fixup_ip(&ctx, uc);
}

bool InlineHooks::in_trampolines(uintptr_t ip) const {
    for (const Chunk& c : chunks_)
        if (ip >= c.base && ip < c.base + kChunkSize) return true;
    return false;
}

void InlineHooks::release_trampolines() {
    if (installed_) return;
    for (const Chunk& c : chunks_) munmap(reinterpret_cast<void*>(c.base), kChunkSize);
    chunks_.clear();
}

size_t InlineHooks::trampoline_mappings() const { return chunks_.size(); }

InlineHooks::~InlineHooks() {
    (void)remove();
    // Owned trampolines never patched in are unreachable; released ones are gone; others stay
    // mapped: a thread may still run them.
    if (!applied_) release_trampolines();
    for (auto* s : sites_) delete s;
}

void* InlineHooks::original(size_t i) const {
    return reinterpret_cast<void*>(sites_[i]->tramp + kRelocatedOffset);
}

size_t InlineHooks::patched_length(size_t i) const { return sites_[i]->plan.n; }

}  // namespace liveio::hook
