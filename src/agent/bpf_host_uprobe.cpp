// uprobe/uretprobe attach points: finding PATH:FUNCTION among the objects loaded in the
// target, then a hook::Uprobe whose callback runs the program on the probed registers.
#include <dlfcn.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <link.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <string>

#include "agent/bpf_host_sections.h"
#include "hook/dispatcher.h"

namespace liveio::agent {
namespace {

std::string real_path(const std::string& path) {
    char buf[PATH_MAX];
    return ::realpath(path.c_str(), buf) ? std::string(buf) : std::string();
}

struct LoadedModule {
    std::string path;
    uintptr_t base = 0;
    bool main = false;
};

// The loaded object `spec` names: its exact or real path, or its file name when `spec` has no
// slash (libc.so.6). The main program matches its path (dl_iterate_phdr names it "").
Result<LoadedModule> find_module(const std::string& spec) {
    struct Search {
        std::string spec, spec_real;
        bool by_name;
        LoadedModule found;
        bool ok = false;
    } s{spec, real_path(spec), spec.find('/') == std::string::npos, {}, false};
    ::dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) -> int {
            auto& s = *static_cast<Search*>(data);
            const bool main = info->dlpi_name == nullptr || info->dlpi_name[0] == '\0';
            const std::string path = main ? real_path("/proc/self/exe") : info->dlpi_name;
            if (path.empty()) return 0;
            const std::string name = path.substr(path.rfind('/') + 1);
            const bool match = path == s.spec || (s.by_name && name == s.spec) ||
                               (!s.spec_real.empty() && real_path(path) == s.spec_real);
            if (!match) return 0;
            s.found = {path, static_cast<uintptr_t>(info->dlpi_addr), main};
            s.ok = true;
            return 1;
        },
        &s);
    if (!s.ok) return make_error(ENOENT, "no object loaded in the target matches '" + spec + "'");
    return s.found;
}

// `function` in the symbol tables of the file (the main program's local functions are in
// .symtab only: dlsym cannot see them).
Result<uintptr_t> symbol_in_file(const LoadedModule& module, const std::string& function) {
    const int fd = ::open(module.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return make_error(errno, "cannot read " + module.path);
    ::elf_version(EV_CURRENT);
    Elf* elf = ::elf_begin(fd, ELF_C_READ, nullptr);
    uintptr_t address = 0;
    for (Elf_Scn* scn = nullptr;
         elf != nullptr && address == 0 && (scn = ::elf_nextscn(elf, scn)) != nullptr;) {
        GElf_Shdr sh;
        if (::gelf_getshdr(scn, &sh) == nullptr ||
            (sh.sh_type != SHT_SYMTAB && sh.sh_type != SHT_DYNSYM))
            continue;
        Elf_Data* data = ::elf_getdata(scn, nullptr);
        const size_t count = sh.sh_entsize ? sh.sh_size / sh.sh_entsize : 0;
        for (size_t i = 0; data != nullptr && i < count; ++i) {
            GElf_Sym sym;
            if (::gelf_getsym(data, static_cast<int>(i), &sym) == nullptr) continue;
            if (GELF_ST_TYPE(sym.st_info) != STT_FUNC || sym.st_value == 0) continue;
            const char* name = ::elf_strptr(elf, sh.sh_link, sym.st_name);
            if (name != nullptr && function == name) {
                address = module.base + sym.st_value;
                break;
            }
        }
    }
    if (elf != nullptr) ::elf_end(elf);
    ::close(fd);
    if (address == 0) return make_error(ENOENT, "no function '" + function + "' in " + module.path);
    return address;
}

}  // namespace

Result<void*> resolve_uprobe_target(const AttachPoint& point) {
    auto module = find_module(point.object);
    if (!module) return module.error();
    void* address = nullptr;
    if (!module->main) {
        // The dynamic symbol table through the loader (resolves IFUNCs to the implementation
        // the process actually calls).
        if (void* handle = ::dlopen(module->path.c_str(), RTLD_NOLOAD | RTLD_LAZY)) {
            address = ::dlsym(handle, point.function.c_str());
            ::dlclose(handle);
        }
    }
    if (address == nullptr) {
        auto a = symbol_in_file(*module, point.function);
        if (!a) return a.error();
        address = reinterpret_cast<void*>(*a);
    }
    return static_cast<char*>(address) + point.offset;
}

}  // namespace liveio::agent
