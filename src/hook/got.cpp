// GOT/PLT patching.
//
// Each loaded object (dl_iterate_phdr) is read through its dynamic section: the relocations
// in DT_JMPREL (PLT, JUMP_SLOT) and DT_RELA (GLOB_DAT, function pointers taken by address)
// name their symbol through DT_SYMTAB/DT_STRTAB, so no hash-table lookup is needed: we go from
// relocations to names. A slot inside PT_GNU_RELRO is read-only after startup: the page is
// made writable for the store and its read-only protection restored right after.
//
// Slots are written with a single aligned 8-byte atomic store, so a thread calling through
// the slot concurrently jumps either to the old target or to the wrapper, never to a torn
// pointer. The value found in each slot is recorded and written back on uninstall (for a
// lazily bound object that is its PLT resolver stub, so lazy binding resumes as before).
//
// Wrappers fall back to the libc function found by dlsym(RTLD_DEFAULT), not to the slot's old
// value: under lazy binding the old value is the PLT stub, and calling it would make ld.so
// resolve the symbol and overwrite our slot.
#include "hook/got.h"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "hook/dispatcher.h"
#include "hook/got_hooks.h"

namespace liveio::hook {
namespace {

// Objects never patched by default: liveio's own (its I/O must reach the kernel directly),
// libc (the functions themselves), the dynamic loader and the vDSO.
bool excluded_by_default(std::string_view name, bool is_own) {
    return is_own || name.find("/libc.so") != std::string_view::npos ||
           name.find("ld-linux") != std::string_view::npos ||
           name.find("linux-vdso") != std::string_view::npos || name.starts_with("libc.so");
}

struct ObjectInfo {
    std::string name;
    ElfW(Addr) base;
    const ElfW(Phdr) * phdr;
    ElfW(Half) phnum;
};

bool contains_address(const ObjectInfo& o, uintptr_t addr) {
    for (int i = 0; i < o.phnum; ++i) {
        const auto& ph = o.phdr[i];
        if (ph.p_type == PT_LOAD && addr >= o.base + ph.p_vaddr &&
            addr < o.base + ph.p_vaddr + ph.p_memsz)
            return true;
    }
    return false;
}

std::vector<ObjectInfo> loaded_objects() {
    std::vector<ObjectInfo> out;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) {
            static_cast<std::vector<ObjectInfo>*>(data)->push_back(
                {info->dlpi_name ? info->dlpi_name : "", info->dlpi_addr, info->dlpi_phdr,
                 info->dlpi_phnum});
            return 0;
        },
        &out);
    return out;
}

// glibc rewrites d_ptr entries of loaded objects to absolute addresses; the vDSO and some
// loaders leave them relative to the load base.
uintptr_t dyn_ptr(const ObjectInfo& o, ElfW(Addr) value) {
    return value < o.base ? o.base + value : value;
}

struct Relro {
    uintptr_t start = 0, end = 0;
};

class GotInterceptor final : public Interceptor {
public:
    explicit GotInterceptor(std::vector<GotSlot> slots, std::vector<Relro> relro)
        : slots_(std::move(slots)), relro_(std::move(relro)) {}
    ~GotInterceptor() override { (void)uninstall(); }

    Result<void> patch_all(const std::unordered_map<void**, void*>& new_values) {
        for (auto& s : slots_) {
            if (auto r = store(s.slot, new_values.at(s.slot)); !r) return r;
        }
        return {};
    }

    Result<void> uninstall() override {
        if (!installed_) return {};
        Dispatcher::ScopedInside inside;  // this thread's own I/O is liveio's
        Result<void> first_error;
        for (auto& s : slots_) {
            if (auto r = store(s.slot, s.original_value); !r && first_error) first_error = r;
        }
        installed_ = false;
        // Slots restored: new calls no longer reach the wrappers. Calls still in them, or
        // sleeping in the original function called from them, are waited for or moved out.
        auto drained = drain_libc_hooks(Mechanism::Got);
        if (!drained) return drained.error();
        report_ = *drained;
        return first_error;
    }
    UninstallReport last_uninstall() const override { return report_; }

    uint64_t calls_dispatched() const override {
        return Dispatcher::instance().calls(Mechanism::Got);
    }
    Mechanism mechanism() const override { return Mechanism::Got; }

    const std::vector<GotSlot>& slots() const { return slots_; }
    bool installed_ = true;

private:
    Result<void> store(void** slot, void* value) {
        const auto addr = reinterpret_cast<uintptr_t>(slot);
        bool read_only = false;
        for (auto& r : relro_) read_only |= addr >= r.start && addr < r.end;
        const long page = sysconf(_SC_PAGESIZE);
        void* page_start = reinterpret_cast<void*>(addr & ~static_cast<uintptr_t>(page - 1));
        if (read_only && mprotect(page_start, page, PROT_READ | PROT_WRITE) != 0)
            return make_error(
                errno, "mprotect of GOT page (RELRO) failed: " + std::string(strerror(errno)));
        __atomic_store_n(slot, value, __ATOMIC_SEQ_CST);
        if (read_only && mprotect(page_start, page, PROT_READ) != 0)
            return make_error(errno,
                              "restoring RELRO protection failed: " + std::string(strerror(errno)));
        return {};
    }

    std::vector<GotSlot> slots_;
    std::vector<Relro> relro_;
    UninstallReport report_;
};

}  // namespace

Result<std::unique_ptr<Interceptor>> install_got(const InterceptOptions& options,
                                                 CallHandler* handler) {
    // Which functions, and their wrappers.
    std::unordered_map<std::string_view, const LibcHook*> wanted;
    const auto& hooks = libc_hooks(Mechanism::Got);
    auto find_hook = [&](std::string_view name) -> const LibcHook* {
        for (auto& h : hooks)
            if (name == h.name) return &h;
        return nullptr;
    };
    if (options.functions.empty()) {
        for (auto name : default_hooked_functions()) wanted[name] = find_hook(name);
    } else {
        for (auto& name : options.functions) {
            const LibcHook* h = find_hook(name);
            if (h == nullptr)
                return make_error(EINVAL, "no GOT wrapper for function '" + name + "'");
            wanted[h->name] = h;
        }
    }
    for (auto& [name, hook] : wanted) {
        void* fn = dlsym(RTLD_DEFAULT, hook->name);
        if (fn == nullptr)
            return make_error(ENOENT, std::string("libc function not found: ") + hook->name);
        // Written once and never cleared: a thread that loaded a wrapper address from a slot
        // just before uninstall may still call through it later.
        __atomic_store_n(hook->original, fn, __ATOMIC_RELEASE);
    }

    const auto own_address = reinterpret_cast<uintptr_t>(&install_got);
    std::vector<GotSlot> slots;
    std::vector<Relro> relro;
    std::unordered_map<void**, void*> new_values;
    std::unordered_set<std::string> matched_specs;
    bool first_object = true;
    for (const ObjectInfo& o : loaded_objects()) {
        // dl_iterate_phdr reports the main program first, with an empty name.
        const bool is_main = std::exchange(first_object, false) && o.name.empty();
        const bool own = contains_address(o, own_address);
        if (options.objects.empty()) {
            if (excluded_by_default(o.name, own)) continue;
        } else {
            bool match = false;
            for (auto& spec : options.objects) {
                if ((spec == kMainProgram && is_main) ||
                    (!spec.empty() && !o.name.empty() && o.name.ends_with(spec))) {
                    match = true;
                    matched_specs.insert(spec);
                }
            }
            if (!match) continue;
        }
        const ElfW(Dyn)* dyn = nullptr;
        for (int i = 0; i < o.phnum; ++i) {
            if (o.phdr[i].p_type == PT_DYNAMIC)
                dyn = reinterpret_cast<const ElfW(Dyn)*>(o.base + o.phdr[i].p_vaddr);
            if (o.phdr[i].p_type == PT_GNU_RELRO)
                relro.push_back(
                    {o.base + o.phdr[i].p_vaddr, o.base + o.phdr[i].p_vaddr + o.phdr[i].p_memsz});
        }
        if (dyn == nullptr) continue;
        uintptr_t jmprel = 0, rela = 0, symtab = 0, strtab = 0;
        size_t pltrelsz = 0, relasz = 0, strsz = 0;
        for (const ElfW(Dyn)* d = dyn; d->d_tag != DT_NULL; ++d) {
            switch (d->d_tag) {
                case DT_JMPREL: jmprel = dyn_ptr(o, d->d_un.d_ptr); break;
                case DT_PLTRELSZ: pltrelsz = d->d_un.d_val; break;
                case DT_RELA: rela = dyn_ptr(o, d->d_un.d_ptr); break;
                case DT_RELASZ: relasz = d->d_un.d_val; break;
                case DT_SYMTAB: symtab = dyn_ptr(o, d->d_un.d_ptr); break;
                case DT_STRTAB: strtab = dyn_ptr(o, d->d_un.d_ptr); break;
                case DT_STRSZ: strsz = d->d_un.d_val; break;
            }
        }
        if (symtab == 0 || strtab == 0) continue;
        auto scan = [&](uintptr_t table, size_t size) {
            const auto* r = reinterpret_cast<const ElfW(Rela)*>(table);
            for (size_t i = 0; table != 0 && i < size / sizeof(ElfW(Rela)); ++i) {
                const auto type = ELF64_R_TYPE(r[i].r_info);
                if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT) continue;
                const auto& sym =
                    reinterpret_cast<const ElfW(Sym)*>(symtab)[ELF64_R_SYM(r[i].r_info)];
                if (sym.st_name >= strsz) continue;
                std::string_view name(reinterpret_cast<const char*>(strtab) + sym.st_name);
                auto it = wanted.find(name);
                if (it == wanted.end()) continue;
                void** slot = reinterpret_cast<void**>(o.base + r[i].r_offset);
                if (new_values.count(slot)) continue;
                new_values[slot] = it->second->wrapper;
                slots.push_back(
                    {o.name, std::string(name), slot, __atomic_load_n(slot, __ATOMIC_ACQUIRE)});
            }
        };
        scan(jmprel, pltrelsz);
        scan(rela, relasz);
    }
    for (auto& spec : options.objects)
        if (!matched_specs.count(spec))
            return make_error(ENOENT, "no loaded object matches '" + spec + "'");

    if (auto r = Dispatcher::instance().attach(Mechanism::Got, handler); !r) return r.error();
    // From here every path out goes through uninstall(), which drains the wrappers.
    auto interceptor = std::make_unique<GotInterceptor>(std::move(slots), std::move(relro));
    if (auto r = interceptor->patch_all(new_values); !r) {
        (void)interceptor->uninstall();
        return r.error();
    }
    return std::unique_ptr<Interceptor>(std::move(interceptor));
}

}  // namespace liveio::hook
