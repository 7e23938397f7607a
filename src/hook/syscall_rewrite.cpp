#include "hook/syscall_rewrite.h"

#include <Zydis/Zydis.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "hook/dispatcher.h"
#include "hook/syscall_rewrite_runtime.h"
#include "hook/text_patch.h"
#include "hook/world_stop.h"

namespace liveio::hook {

namespace {

constexpr size_t kPage = 4096;
constexpr uint8_t kCallRax[2] = {0xff, 0xd0};

// Byte by byte, never memcpy: glibc's memmove copies backwards when the source lies less than
// 256 bytes below a page boundary (its 4k-aliasing heuristic compares dst - src), and its
// backward loop ends on the unsigned test `dst < cursor`, which with dst == 0 still holds
// after the cursor wraps below address 0: it stores to 0xffff...ffc0 and faults. Whether that
// happened depended on where malloc put the code (one heap layout in 16). Volatile element
// stores keep the compiler from turning the loop back into a memcpy call, and hide from it
// that the destination is the null address. Only bytes that differ are stored, one at a time:
// when the page already holds a trampoline, a vfork child (another process on this memory,
// which no world stop parks) may be running through it, and each of its jumps must read
// either the old or the new byte. The page must be readable and writable. Reading and writing
// the null address is this function's purpose: UBSan's null check is off for it alone.
__attribute__((no_sanitize("null"))) void write_page_zero(const uint8_t* code, size_t size) {
    volatile uint8_t* volatile page = nullptr;
    for (size_t i = 0; i < size; ++i)
        if (page[i] != code[i]) page[i] = code[i];
}

// --- the stub table -----------------------------------------------------------------------

void write_stub(uint8_t* at, uintptr_t site) {
    const uintptr_t back = site + 2;
    const uint8_t code[8] = {0x0f, 0x05, 0xff, 0x25, 0, 0, 0, 0};  // syscall; jmp *0(%rip)
    memcpy(at, code, sizeof code);
    memcpy(at + 8, &back, sizeof back);
}

}  // namespace

// An executable segment of a loaded object.
struct SyscallRewriter::Segment {
    uintptr_t start;
    size_t size;
    std::string object;
    std::string path;  // file to read symbols from
    uintptr_t bias;    // load bias of the object
};

RewriteStubs& RewriteStubs::instance() {
    static constinit RewriteStubs stubs;
    return stubs;
}

Result<void> RewriteStubs::map_regions() {
    if (slots_ != nullptr) return {};
    void* slots = mmap(nullptr, kSlots * sizeof(Slot), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (slots == MAP_FAILED) return make_error(errno, "cannot map the syscall stub table");
    void* arena = mmap(nullptr, kMaxSites * kStubSize, PROT_READ | PROT_EXEC,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (arena == MAP_FAILED) {
        munmap(slots, kSlots * sizeof(Slot));
        return make_error(errno, "cannot map the syscall stub arena");
    }
    arena_ = static_cast<uint8_t*>(arena);
    __atomic_store_n(&slots_, static_cast<Slot*>(slots), __ATOMIC_RELEASE);
    return {};
}

Result<std::vector<RewriteStubs::Pending>> RewriteStubs::plan(const std::vector<uintptr_t>& sites) {
    if (auto r = map_regions(); !r) return r.error();
    planned_ = used_;
    std::vector<Pending> pending;
    for (uintptr_t site : sites) {
        if (find(site) != 0) continue;
        if (planned_ == kMaxSites)
            return make_error(ENOSPC, fmt::format("more than {} distinct syscall instructions: "
                                                  "stub table full",
                                                  kMaxSites));
        pending.push_back({site, reinterpret_cast<uintptr_t>(arena_ + planned_ * kStubSize)});
        ++planned_;
    }
    return pending;
}

Result<void> RewriteStubs::commit(const std::vector<Pending>& pending) {
    if (pending.empty()) return {};
    const uintptr_t first = pending.front().stub & ~(kPage - 1);
    const uintptr_t end = (pending.back().stub + kStubSize + kPage - 1) & ~(kPage - 1);
    if (raw_syscall(SYS_mprotect, static_cast<long>(first), static_cast<long>(end - first),
                    PROT_READ | PROT_WRITE) != 0)
        return make_error(EACCES, "cannot make the syscall stub arena writable");
    for (const Pending& p : pending) write_stub(reinterpret_cast<uint8_t*>(p.stub), p.site);
    raw_syscall(SYS_mprotect, static_cast<long>(first), static_cast<long>(end - first),
                PROT_READ | PROT_EXEC);
    for (const Pending& p : pending) {
        size_t i = hash(p.site);
        while (slots_[i].site.load(std::memory_order_relaxed) != 0) i = (i + 1) % kSlots;
        slots_[i].stub = p.stub;
        slots_[i].site.store(p.site, std::memory_order_release);
    }
    used_ += pending.size();
    return {};
}

bool RewriteStubs::in_arena(uintptr_t ip) const {
    const auto base = reinterpret_cast<uintptr_t>(arena_);
    return arena_ != nullptr && ip >= base && ip < base + kMaxSites * kStubSize;
}

uintptr_t RewriteStubs::moved_ip(uintptr_t ip) const {
    const auto base = reinterpret_cast<uintptr_t>(arena_);
    const uintptr_t stub = base + (ip - base) / kStubSize * kStubSize;
    uintptr_t back;  // site + 2
    memcpy(&back, reinterpret_cast<const void*>(stub + 8), sizeof back);
    // At the syscall (not made yet, or rewound to be made again): the site's own instruction.
    return ip == stub ? back - 2 : back;
}

void RewriteStubs::release() {
    if (arena_ == nullptr) return;
    Slot* slots = __atomic_exchange_n(&slots_, nullptr, __ATOMIC_ACQ_REL);
    munmap(slots, kSlots * sizeof(Slot));
    munmap(arena_, kMaxSites * kStubSize);
    arena_ = nullptr;
    used_ = planned_ = 0;
}

// --- finding syscall instructions ------------------------------------------------------------

std::vector<uintptr_t> find_syscall_instructions(const uint8_t* code, size_t size,
                                                 uintptr_t runtime_address,
                                                 const std::vector<uintptr_t>& function_starts) {
    ZydisDecoder decoder;
    ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    std::vector<uintptr_t> found;
    auto next_start =
        std::lower_bound(function_starts.begin(), function_starts.end(), runtime_address);
    size_t off = 0;
    while (off < size) {
        const uintptr_t at = runtime_address + off;
        while (next_start != function_starts.end() && *next_start < at) ++next_start;
        ZydisDecodedInstruction insn;
        size_t length = 1;  // undecodable byte: resynchronise at the next one
        if (ZYAN_SUCCESS(
                ZydisDecoderDecodeInstruction(&decoder, nullptr, code + off, size - off, &insn))) {
            length = insn.length;
            // An instruction that would straddle a known function start is a misaligned
            // decode (data or padding before the function): restart at the function.
            if (next_start != function_starts.end() && *next_start > at &&
                *next_start < at + length) {
                off = *next_start - runtime_address;
                continue;
            }
            if ((insn.mnemonic == ZYDIS_MNEMONIC_SYSCALL ||
                 insn.mnemonic == ZYDIS_MNEMONIC_SYSENTER) &&
                insn.length == 2)
                found.push_back(at);
        }
        off += length;
    }
    return found;
}

// The sled must be entered at any byte below kTrampolineEntries and reach the entry fast: 512
// one-byte nops would be executed one by one for read (syscall 0, the longest slide; figures:
// docs/ARCHITECTURE.md, "Measured costs"). Instead it is made of 14-byte units
// `3e x12, eb 3e`: entered at any of the twelve DS prefixes (ignored in 64-bit mode) the
// instruction is a prefixed `jmp .+62`; entered at the displacement byte (3e, a prefix again)
// it becomes a 15-byte prefixed jump of the next unit. Every jump lands on a prefix of a later
// unit (offset 6 into it), so any entry takes at most ~8 jumps. Jumps landing past the units
// meet a `jmp` to one of two tails, chosen by the mode (only those jumps' displacement bytes
// differ between the modes; both tails are always present, so a thread interrupted inside
// either finishes it whatever the mode has become):
// - active: `movabs $entry, %r11; jmp *%r11` (r11 is clobbered by syscall anyway);
// - retired: back to the site, whose original instruction has been restored (below).
namespace {

struct TrampolineLayout {
    size_t units_end;  // the sled units end here
    size_t first_landing, last_landing;
    size_t active;   // movabs $entry, %r11; jmp *%r11
    size_t retired;  // the retired tail
    size_t size;
};

constexpr TrampolineLayout trampoline_layout() {
    constexpr size_t kUnit = 14;
    TrampolineLayout l{};
    // Enough units that the last displacement byte lies past the entries (entering there
    // would continue into a unit that does not exist).
    l.units_end = (kTrampolineEntries / kUnit + 1) * kUnit;
    // Landings: end of an instruction (end of unit k, or k+1 when entered at k's displacement)
    // plus 62: always unit start + 6.
    l.first_landing = l.units_end + 6;
    l.last_landing = l.units_end + 62;
    l.active = (l.last_landing + 2 + 7) & ~size_t{7};
    l.retired = l.active + 16;
    l.size = l.retired + 31;
    return l;
}

// The retired tail, reached only by a thread that was inside the sled when the rewriter was
// uninstalled and stayed away meanwhile (a signal handler interrupted it there and was still
// running while page 0 changed; the world stop fixes only the innermost context). The bytes at
// its return address - 2 are the restored `syscall`/`sysenter`: jump there with the stack and
// every register as the application left them (r11 is clobbered by the syscall anyway). A
// call through a null pointer has no such instruction before its return address: ud2.
constexpr uint8_t kRetiredTail[] = {
    0x41, 0x5b,                                // pop %r11 (the return address)
    0x9c,                                      // pushfq (in the slot the call wrote)
    0x66, 0x41, 0x81, 0x7b, 0xfe, 0x0f, 0x05,  // cmpw $0x050f, -2(%r11): syscall?
    0x74, 0x09,                                // je restored
    0x66, 0x41, 0x81, 0x7b, 0xfe, 0x0f, 0x34,  // cmpw $0x340f, -2(%r11): sysenter?
    0x75, 0x08,                                // jne not_a_site
    0x9d,                                      // restored: popfq
    0x4d, 0x8d, 0x5b, 0xfe,                    // lea -2(%r11), %r11
    0x41, 0xff, 0xe3,                          // jmp *%r11
    0x0f, 0x0b,                                // not_a_site: ud2
};
static_assert(sizeof kRetiredTail <= trampoline_layout().size - trampoline_layout().retired);

}  // namespace

std::vector<uint8_t> trampoline_code(uint64_t entry, TrampolineMode mode) {
    constexpr size_t kUnit = 14;
    constexpr uint8_t kDs = 0x3e;  // also the jump displacement: 62
    constexpr TrampolineLayout l = trampoline_layout();
    std::vector<uint8_t> code(l.size, 0xcc);  // int3 where nothing may execute
    for (size_t u = 0; u * kUnit < l.units_end; ++u) {
        std::fill_n(code.begin() + static_cast<long>(u * kUnit), kUnit - 2, kDs);
        code[u * kUnit + kUnit - 2] = 0xeb;
        code[u * kUnit + kUnit - 1] = kDs;
    }
    const size_t tail = mode == TrampolineMode::Active ? l.active : l.retired;
    for (size_t landing = l.first_landing; landing <= l.last_landing; landing += kUnit) {
        code[landing] = 0xeb;
        code[landing + 1] = static_cast<uint8_t>(tail - (landing + 2));
    }
    const uint8_t movabs_r11[2] = {0x49, 0xbb};
    const uint8_t jmp_r11[3] = {0x41, 0xff, 0xe3};
    memcpy(&code[l.active], movabs_r11, 2);
    memcpy(&code[l.active + 2], &entry, 8);
    memcpy(&code[l.active + 10], jmp_r11, 3);
    memcpy(&code[l.retired], kRetiredTail, sizeof kRetiredTail);
    return code;
}

namespace {

// --- configuration checks and the trampoline -------------------------------------------------

// Page 0 is mapped by the first install and then stays for the life of the process (see
// SyscallRewriter::uninstall); later installs, also by another copy of liveio loaded after
// this one was unloaded, find it there. Its contents change only while the world is stopped.
bool page_zero_holds_trampoline() {
    constexpr size_t kSize = trampoline_layout().size;
    uint8_t current[kSize];
    // Execute-only: read through /proc/self/mem, which reads what the process itself cannot.
    const long fd =
        raw_syscall(SYS_open, reinterpret_cast<long>("/proc/self/mem"), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    const long n = raw_syscall(SYS_pread64, fd, reinterpret_cast<long>(current), kSize, 0);
    raw_syscall(SYS_close, fd);
    if (n != static_cast<long>(kSize)) return false;
    // Either mode, with any entry address.
    const size_t entry_at = trampoline_layout().active + 2;
    for (TrampolineMode mode : {TrampolineMode::Retired, TrampolineMode::Active}) {
        auto code = trampoline_code(0, mode);
        memcpy(&code[entry_at], &current[entry_at], 8);
        if (memcmp(code.data(), current, kSize) == 0) return true;
    }
    return false;
}

Result<void> ensure_trampoline() {
    const auto code =
        trampoline_code(reinterpret_cast<uint64_t>(&liveio_rewrite_entry), TrampolineMode::Retired);
    auto mapped = map_page_zero(code.data(), code.size());
    if (mapped) return {};
    if (mapped.error().code == EEXIST && page_zero_holds_trampoline())
        return {};  // an earlier install's
    return mapped.error();
}

// Puts the trampoline in `mode` on page 0, with the world stopped. The page is writable and not
// executable meanwhile: no thread runs through it (the others are parked, and a vfork child
// cannot exist: its parent thread waits for it killably, so the world stop would not have
// completed). What changes are the landing jumps' displacements and, when taking over another
// copy's page, its entry address.
bool set_trampoline_mode(TrampolineMode mode) {
    const auto code = trampoline_code(reinterpret_cast<uint64_t>(&liveio_rewrite_entry), mode);
    if (raw_syscall(SYS_mprotect, 0, kPage, PROT_READ | PROT_WRITE) != 0) return false;
    write_page_zero(code.data(), code.size());
    return raw_syscall(SYS_mprotect, 0, kPage, PROT_EXEC) == 0;
}

// --- the objects to rewrite ------------------------------------------------------------------

using Segment = SyscallRewriter::Segment;

bool contains(const dl_phdr_info* info, uintptr_t addr) {
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_LOAD) continue;
        const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
        if (addr >= lo && addr < lo + ph.p_memsz) return true;
    }
    return false;
}

// The executable segments to scan: of every loaded object, or of those `objects` names (path
// suffixes or kMainProgram). Never liveio's own object nor the vDSO.
Result<std::vector<Segment>> executable_segments(const std::vector<std::string>& objects) {
    struct Ctx {
        const std::vector<std::string>& objects;
        std::vector<Segment> out;
        std::vector<bool> matched;
        std::string own_name;
        uintptr_t own = reinterpret_cast<uintptr_t>(&liveio_rewrite_entry);
        uintptr_t vdso = getauxval(AT_SYSINFO_EHDR);
    } ctx{objects, {}, std::vector<bool>(objects.size()), {}};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* raw) {
            auto& c = *static_cast<Ctx*>(raw);
            if (c.vdso != 0 && contains(info, c.vdso)) return 0;
            const bool main = info->dlpi_name == nullptr || info->dlpi_name[0] == '\0';
            const std::string name = main ? kMainProgram : info->dlpi_name;
            if (contains(info, c.own)) {  // liveio's own object keeps raw syscalls
                c.own_name = name;
                return 0;
            }
            bool wanted = c.objects.empty();
            for (size_t i = 0; i < c.objects.size(); ++i)
                if (c.objects[i] == name ||
                    (!main && !c.objects[i].empty() && name.ends_with(c.objects[i])))
                    wanted = c.matched[i] = true;
            if (!wanted) return 0;
            const std::string path = main ? "/proc/self/exe" : info->dlpi_name;
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const ElfW(Phdr)& ph = info->dlpi_phdr[i];
                // Execute-only text cannot be read to disassemble it.
                if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X) || !(ph.p_flags & PF_R)) continue;
                const size_t size = std::min(ph.p_memsz, ph.p_filesz);  // beyond filesz: zeros
                if (size == 0) continue;
                c.out.push_back({info->dlpi_addr + ph.p_vaddr, size, name, path, info->dlpi_addr});
            }
            return 0;
        },
        &ctx);
    for (size_t i = 0; i < objects.size(); ++i) {
        if (ctx.matched[i]) continue;
        if (objects[i] == ctx.own_name ||
            (!ctx.own_name.empty() && ctx.own_name.ends_with(objects[i])))
            return make_error(EINVAL, "'" + objects[i] +
                                          "' is liveio's own object, whose syscalls "
                                          "are never rewritten");
        return make_error(ENOENT, "no loaded object matches '" + objects[i] + "'");
    }
    return ctx.out;
}

// Function entry points from the object's symbol tables (.symtab when not stripped, .dynsym),
// as runtime addresses, sorted. Best effort: an unreadable file gives none.
std::vector<uintptr_t> function_starts(const std::string& path, uintptr_t bias) {
    std::vector<uintptr_t> starts;
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return starts;
    const off_t size = lseek(fd, 0, SEEK_END);
    void* map = size > 0 ? mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_PRIVATE, fd, 0)
                         : MAP_FAILED;
    close(fd);
    if (map == MAP_FAILED) return starts;
    const auto* base = static_cast<const uint8_t*>(map);
    const auto* eh = reinterpret_cast<const ElfW(Ehdr)*>(base);
    const auto fsize = static_cast<uint64_t>(size);
    auto in_file = [&](uint64_t off, uint64_t len) { return off <= fsize && len <= fsize - off; };
    if (in_file(0, sizeof *eh) && memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 &&
        eh->e_shentsize == sizeof(ElfW(Shdr)) &&
        in_file(eh->e_shoff, uint64_t{eh->e_shnum} * sizeof(ElfW(Shdr)))) {
        const auto* sh = reinterpret_cast<const ElfW(Shdr)*>(base + eh->e_shoff);
        for (int i = 0; i < eh->e_shnum; ++i) {
            if (sh[i].sh_type != SHT_SYMTAB && sh[i].sh_type != SHT_DYNSYM) continue;
            if (!in_file(sh[i].sh_offset, sh[i].sh_size) || sh[i].sh_entsize != sizeof(ElfW(Sym)))
                continue;
            const auto* sym = reinterpret_cast<const ElfW(Sym)*>(base + sh[i].sh_offset);
            for (size_t k = 0; k < sh[i].sh_size / sizeof(ElfW(Sym)); ++k)
                if (ELF64_ST_TYPE(sym[k].st_info) == STT_FUNC && sym[k].st_shndx != SHN_UNDEF &&
                    sym[k].st_value != 0)
                    starts.push_back(bias + sym[k].st_value);
        }
    }
    munmap(map, static_cast<size_t>(size));
    std::sort(starts.begin(), starts.end());
    starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
    return starts;
}

// Scanning every object costs tens of milliseconds (symbols read from disk, every instruction
// decoded), and text does not change between installs: the sites of each executable segment
// are remembered, keyed by address, size and a hash of its bytes (an object unloaded and
// another loaded at the same place is rescanned). Process-wide, like the stubs; used under
// RewriteStubs::mutex().
class ScanCache {
public:
    static ScanCache& instance() {
        static ScanCache cache;
        return cache;
    }
    const std::vector<uintptr_t>& sites(const Segment& seg) {
        const uint64_t digest = hash_bytes(reinterpret_cast<const uint8_t*>(seg.start), seg.size);
        for (const Entry& e : entries_)
            if (e.start == seg.start && e.size == seg.size && e.digest == digest) return e.sites;
        const auto starts = function_starts(seg.path, seg.bias);
        auto found = find_syscall_instructions(reinterpret_cast<const uint8_t*>(seg.start),
                                               seg.size, seg.start, starts);
        std::erase_if(entries_, [&](const Entry& e) { return e.start == seg.start; });
        entries_.push_back({seg.start, seg.size, digest, std::move(found)});
        return entries_.back().sites;
    }

private:
    struct Entry {
        uintptr_t start;
        size_t size;
        uint64_t digest;
        std::vector<uintptr_t> sites;
    };
    // Text is hashed while it holds the original instructions (before install, after
    // uninstall), so the digest is stable across cycles.
    static uint64_t hash_bytes(const uint8_t* p, size_t n) {
        uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            h = (h ^ w) * 0xff51afd7ed558ccdull;
            h ^= h >> 32;
        }
        for (; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
        return h;
    }
    std::vector<Entry> entries_;
};

// The pages holding `sites` (see text_patch.h); `with_files` for a restore.
Result<TextPages> site_pages(const std::vector<RewrittenSite>& sites, bool with_files) {
    std::vector<std::pair<uintptr_t, size_t>> spans;
    spans.reserve(sites.size());
    for (const RewrittenSite& s : sites) spans.emplace_back(s.address, 2);
    return TextPages::covering(spans, with_files);
}

// Writes `bytes(site)` at every site with raw syscalls and liveio's own stores only (the world
// is stopped; the pages may hold libc's memcpy). False if a page could not be made writable;
// then nothing is changed.
template <typename Bytes>
bool patch_sites(const TextPages& pages, const std::vector<RewrittenSite>& sites, Bytes bytes) {
    if (!pages.open_for_write()) return false;
    for (const RewrittenSite& s : sites) copy_code_bytes(s.address, bytes(s), 2);
    pages.close_for_write();
    return true;
}

// WorldStop gives up when a thread has not stopped after about two seconds. Under load that
// is mostly a thread sleeping uninterruptibly in the kernel, e.g. in a file write throttled
// behind a busy disk (seen: four writers of one ext4 file, seconds in D state) or queued on
// the inode lock behind such a writer. Released in between, it finishes its call and stops
// the next time: retry a few times before reporting the error.
Result<WorldStop*> stop_world() {
    constexpr int kAttempts = 8;
    for (int attempt = 1;; ++attempt) {
        auto stopped = WorldStop::stop();
        if (stopped || stopped.error().code != ETIMEDOUT || attempt == kAttempts) return stopped;
    }
}

class RewriteInterceptor final : public Interceptor {
public:
    explicit RewriteInterceptor(std::unique_ptr<SyscallRewriter> rewriter)
        : rewriter_(std::move(rewriter)) {}
    ~RewriteInterceptor() override { (void)uninstall(); }
    Result<void> uninstall() override { return rewriter_->uninstall(); }
    UninstallReport last_uninstall() const override { return rewriter_->last_uninstall(); }
    uint64_t calls_dispatched() const override {
        return Dispatcher::instance().calls(Mechanism::SyscallRewrite);
    }
    Mechanism mechanism() const override { return Mechanism::SyscallRewrite; }

private:
    std::unique_ptr<SyscallRewriter> rewriter_;
};

}  // namespace

Result<void> map_page_zero(const uint8_t* code, size_t size) {
    if (size > kPage) return make_error(EINVAL, fmt::format("{} bytes do not fit in page 0", size));
    // Raw syscall: glibc's mmap wrapper may already be rewritten by an earlier install in a
    // parent process (fork), and address 0 needs MAP_FIXED_NOREPLACE semantics exactly.
    const long r = raw_syscall(SYS_mmap, 0, kPage, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (r < 0 && r > -4096) {
        if (r == -EEXIST)
            return make_error(EEXIST,
                              "page 0 is already mapped (another syscall rewriter, or "
                              "the program uses it): cannot place the trampoline");
        return make_error(static_cast<int>(-r),
                          fmt::format("cannot map the trampoline at address 0: {}",
                                      strerror(static_cast<int>(-r))));
    }
    if (r != 0) {
        raw_syscall(SYS_munmap, r, kPage);
        return make_error(EPERM,
                          "the kernel placed the trampoline away from address 0 "
                          "(vm.mmap_min_addr must be 0)");
    }
    write_page_zero(code, size);
    // Exec-only where the CPU has protection keys: null-pointer reads still fault there.
    if (raw_syscall(SYS_mprotect, 0, kPage, PROT_EXEC) != 0) {
        raw_syscall(SYS_munmap, 0, kPage);
        return make_error(EACCES, "cannot make the trampoline page executable");
    }
    return {};
}

Result<void> check_mmap_min_addr() {
    std::ifstream in("/proc/sys/vm/mmap_min_addr");
    unsigned long value = 0;
    if (!(in >> value)) return make_error(EIO, "cannot read /proc/sys/vm/mmap_min_addr");
    if (value != 0)
        return make_error(EPERM, fmt::format("syscall rewriting maps its trampoline at address 0 "
                                             "and needs vm.mmap_min_addr=0 (it is {}): run "
                                             "`sysctl -w vm.mmap_min_addr=0` as root",
                                             value));
    return {};
}

// Everything rewriting some segments needs, computed before the world is stopped (it
// allocates and reads files).
struct SyscallRewriter::Batch {
    std::vector<RewrittenSite> sites;
    TextPages pages;
    std::vector<RewriteStubs::Pending> stubs;
};

Result<SyscallRewriter::Batch> SyscallRewriter::prepare(const std::vector<Segment>& segments) {
    Batch batch;
    for (const Segment& seg : segments) {
        for (uintptr_t a : ScanCache::instance().sites(seg)) {
            RewrittenSite s{a, {}, seg.object};
            memcpy(s.original, reinterpret_cast<const void*>(a), 2);
            batch.sites.push_back(std::move(s));
        }
        segments_.push_back({seg.start, seg.size});
    }
    std::sort(batch.sites.begin(), batch.sites.end(),
              [](const RewrittenSite& a, const RewrittenSite& b) { return a.address < b.address; });
    auto pages = site_pages(batch.sites, false);
    if (!pages) return pages.error();
    batch.pages = std::move(pages).value();
    std::vector<uintptr_t> addresses;
    addresses.reserve(batch.sites.size());
    for (const auto& s : batch.sites) addresses.push_back(s.address);
    auto pending = RewriteStubs::instance().plan(addresses);
    if (!pending) return pending.error();
    batch.stubs = std::move(pending).value();
    return batch;
}

// With every other thread stopped: the trampoline made active and the stubs written first (a
// rewritten site must reach the entry, and a rewritten clone its stub, the moment threads
// resume), then the sites.
Result<void> SyscallRewriter::apply(Batch& batch) {
    auto stopped = stop_world();
    if (!stopped) return stopped.error();
    const bool active = set_trampoline_mode(TrampolineMode::Active);
    auto committed = active ? RewriteStubs::instance().commit(batch.stubs) : Result<void>{};
    const bool patched =
        active && committed &&
        patch_sites(batch.pages, batch.sites, [](const RewrittenSite&) { return kCallRax; });
    (*stopped)->resume(nullptr, nullptr);
    if (!active) return make_error(EACCES, "cannot write the trampoline at address 0");
    if (!committed) return committed.error();
    if (!patched)
        return make_error(EACCES,
                          "cannot make code pages writable to rewrite syscall instructions");
    sites_.insert(sites_.end(), batch.sites.begin(), batch.sites.end());
    return {};
}

Result<std::unique_ptr<SyscallRewriter>> SyscallRewriter::install(
    CallHandler* handler, const std::vector<std::string>& objects) {
    if (handler == nullptr) return make_error(EINVAL, "syscall rewriting needs a CallHandler");
    if (auto r = check_mmap_min_addr(); !r) return r.error();
    // This thread's own libc calls during install must not reach the handler half-way.
    Dispatcher::ScopedInside inside;
    std::lock_guard lock(RewriteStubs::instance().mutex());

    std::unique_ptr<SyscallRewriter> self(new SyscallRewriter());
    self->objects_ = objects;
    auto segments = executable_segments(objects);
    if (!segments) return segments.error();
    auto batch = self->prepare(*segments);
    if (!batch) return batch.error();

    // Failures below leave page 0 mapped: retired, it is inert (see uninstall).
    if (auto r = ensure_trampoline(); !r) return r.error();
    if (auto r = Dispatcher::instance().attach(Mechanism::SyscallRewrite, handler); !r)
        return r.error();
    if (auto r = self->apply(*batch); !r) {
        Dispatcher::instance().detach(Mechanism::SyscallRewrite);
        return r.error();
    }
    self->installed_ = true;
    return self;
}

Result<size_t> SyscallRewriter::rewrite_new_objects() {
    if (!installed_) return make_error(EINVAL, "the syscall rewriter is not installed");
    Dispatcher::ScopedInside inside;
    std::lock_guard lock(RewriteStubs::instance().mutex());
    auto segments = executable_segments(objects_);
    if (!segments) return segments.error();
    std::vector<Segment> fresh;
    for (const Segment& seg : *segments)
        if (std::find(segments_.begin(), segments_.end(), std::pair{seg.start, seg.size}) ==
            segments_.end())
            fresh.push_back(seg);
    if (fresh.empty()) return size_t{0};
    auto batch = prepare(fresh);
    if (!batch) return batch.error();
    const size_t added = batch->sites.size();
    if (auto r = apply(*batch); !r) return r.error();
    return added;
}

// Clears the handler and returns once no thread is inside it. Threads between the entry and
// the handler only run liveio code that stays loaded; calls that return by themselves are
// given a moment; threads sleeping in a call the dispatch made for them (counted in flight, or
// uncounted when they entered after the handler was cleared) are evacuated at a world stop
// instead of being waited for, which could be forever (idle threads).
static void drain_dispatched_calls(UninstallReport& report) {
    Dispatcher& d = Dispatcher::instance();
    d.clear_handler(Mechanism::SyscallRewrite);
    const auto started = std::chrono::steady_clock::now();
    const auto give_up = started + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < give_up) {
        for (int i = 0; i < 50 && d.in_flight(Mechanism::SyscallRewrite) != 0; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (!threads_sleep_in_dispatch()) {
            if (d.in_flight(Mechanism::SyscallRewrite) == 0) break;
            continue;  // threads still run handler code: they leave by themselves
        }
        auto stopped = stop_world();
        if (!stopped) break;  // a thread blocks the signal: wait as long as it takes
        ++report.world_stops;
        std::atomic<unsigned> moved{0};
        (*stopped)->resume(evacuate_fixup, &moved);
        report.moved_out += moved.load();
    }
    d.detach(Mechanism::SyscallRewrite);
    report.waited_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
            .count();
}

Result<void> SyscallRewriter::uninstall() {
    if (!installed_) return {};
    Dispatcher::ScopedInside inside;
    std::lock_guard lock(RewriteStubs::instance().mutex());
    report_ = {};
    // Objects unloaded since (dlclose) took their rewritten bytes with them: restore only
    // the sites of segments still loaded.
    auto loaded = executable_segments({});
    if (!loaded) return loaded.error();
    auto still_loaded = [&](uintptr_t address) {
        return std::any_of(loaded->begin(), loaded->end(), [&](const Segment& seg) {
            return address >= seg.start && address < seg.start + seg.size &&
                   std::find(segments_.begin(), segments_.end(), std::pair{seg.start, seg.size}) !=
                       segments_.end();
        });
    };
    std::erase_if(sites_, [&](const RewrittenSite& s) { return !still_loaded(s.address); });
    auto pages = site_pages(sites_, true);
    if (!pages) return pages.error();
    prepare_evacuation();
    auto stopped = stop_world();
    if (!stopped) return stopped.error();
    ++report_.world_stops;
    const bool restored =
        patch_sites(*pages, sites_, [](const RewrittenSite& s) { return s.original; });
    // The text is the file's again: share its pages with the page cache again.
    if (restored) pages->restore_files();
    // A thread parked inside the sled needs no fixup: from here it reaches the retired tail and
    // executes the restored instruction itself. Page 0 stays until release_rewrite_memory has
    // proven that no signal frame returns into it.
    const bool retired = restored && set_trampoline_mode(TrampolineMode::Retired);
    // Threads the stop found sleeping in a call the dispatch made for them leave it now.
    std::atomic<unsigned> moved{0};
    (*stopped)->resume(restored ? evacuate_fixup : nullptr, &moved);
    report_.moved_out += moved.load();
    if (!restored)
        return make_error(EACCES,
                          "cannot make code pages writable to restore syscall instructions");
    installed_ = false;
    drain_dispatched_calls(report_);
    if (!retired)
        return make_error(EACCES,
                          "syscall instructions restored, but the trampoline at address 0 "
                          "could not be retired: it still leads into liveio's code");
    return release_rewrite_memory(report_);
}

SyscallRewriter::~SyscallRewriter() { (void)uninstall(); }

Result<std::unique_ptr<Interceptor>> install_syscall_rewrite(const InterceptOptions& options,
                                                             CallHandler* handler) {
    auto rewriter = SyscallRewriter::install(handler, options.objects);
    if (!rewriter) return rewriter.error();
    return std::unique_ptr<Interceptor>(
        std::make_unique<RewriteInterceptor>(std::move(rewriter).value()));
}

}  // namespace liveio::hook
