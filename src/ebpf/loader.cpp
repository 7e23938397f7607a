#include "ebpf/loader.h"

#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <unordered_map>

#include <bpf/btf.h>
#include <fmt/format.h>

namespace liveio::ebpf {

namespace {

// ELF relocation types of the BPF target (llvm/BinaryFormat/ELFRelocs/BPF.def).
constexpr uint32_t kRelBpf64_64 = 1;   // lddw: 64-bit immediate
constexpr uint32_t kRelBpf64_32 = 10;  // call: 32-bit immediate
constexpr uint16_t kEmBpf = 247;
constexpr uint8_t kCallOpcode = op::kClassJmp | op::kCall;
// Sizes of kernel context structures named in context_for_section().
constexpr uint32_t kSysEnterCtxSize = 64, kSysExitCtxSize = 24, kRawTpSyscallCtxSize = 16,
                   kPtRegsSize = 168, kLiveioIoCtxSize = 88, kLiveioIoCompleteCtxSize = 64;
constexpr int kMaxBtfChain = 32;
// Object files liveio reads from a path; real BPF objects are far smaller.
constexpr size_t kMaxObjectBytes = size_t{64} << 20;
// Global data lives in one map value; the kernel caps values near KMALLOC_MAX_SIZE (4 MiB on
// x86-64). A larger section (typically a corrupted .bss size) is refused before allocating.
constexpr size_t kMaxDataSection = size_t{4}
                                   << 20;  // typedef/modifier chains longer than this are malformed

struct Section {
    size_t index = 0;
    std::string name;
    GElf_Shdr hdr{};
    const uint8_t* data = nullptr;  // nullptr for NOBITS
    size_t size = 0;
    bool exec() const { return hdr.sh_type == SHT_PROGBITS && (hdr.sh_flags & SHF_EXECINSTR); }
};

struct Symbol {
    std::string name;
    GElf_Sym sym{};
    bool is_section() const { return GELF_ST_TYPE(sym.st_info) == STT_SECTION; }
};

struct Function {
    std::string name;
    size_t section = 0;
    uint32_t start = 0;  // instruction index within the section
    uint32_t count = 0;
};

struct Reloc {
    uint32_t type = 0;
    size_t symbol = 0;
};

struct ElfDeleter {
    void operator()(Elf* e) const { elf_end(e); }
};
struct BtfDeleter {
    void operator()(btf* b) const { btf__free(b); }
};

Error elf_error(const std::string& what) {
    const char* msg = elf_errmsg(-1);
    return make_error(EINVAL, fmt::format("{}: {}", what, msg ? msg : "malformed ELF"));
}

}  // namespace

ContextDescriptor context_for_section(std::string_view s) {
    auto sized = [](uint32_t size) { return ContextDescriptor{size, false}; };
    if (s.starts_with("tracepoint/syscalls/sys_enter_") ||
        s.starts_with("tp/syscalls/sys_enter_") || s == "tracepoint/raw_syscalls/sys_enter" ||
        s == "tp/raw_syscalls/sys_enter")
        return sized(kSysEnterCtxSize);
    if (s.starts_with("tracepoint/syscalls/sys_exit_") || s.starts_with("tp/syscalls/sys_exit_") ||
        s == "tracepoint/raw_syscalls/sys_exit" || s == "tp/raw_syscalls/sys_exit")
        return sized(kSysExitCtxSize);
    if (s == "raw_tracepoint/sys_enter" || s == "raw_tracepoint/sys_exit" ||
        s == "raw_tp/sys_enter" || s == "raw_tp/sys_exit")
        return sized(kRawTpSyscallCtxSize);
    for (std::string_view p : {"uprobe", "uretprobe", "kprobe", "kretprobe", "usdt"})
        if (s == p || s.starts_with(std::string(p) + "/") || s.starts_with(std::string(p) + "."))
            return sized(kPtRegsSize);
    if (s == "liveio/io_enter" || s == "liveio/io_exit") return sized(kLiveioIoCtxSize);
    if (s == "liveio/io_complete") return sized(kLiveioIoCompleteCtxSize);
    return {};
}

// Builds an Object from ELF bytes; every check names the section, symbol or instruction at fault.
class ObjectBuilder {
public:
    ObjectBuilder(std::vector<uint8_t> bytes, const OpenOptions& options)
        : bytes_(std::move(bytes)), options_(options) {}

    Result<Object> build() {
        if (auto r = parse_elf(); !r) return r.error();
        if (auto r = read_license(); !r) return r.error();
        if (auto r = load_btf(); !r) return r.error();
        if (auto r = collect_functions(); !r) return r.error();
        if (auto r = collect_relocations(); !r) return r.error();
        if (auto r = create_data_maps(); !r) return r.error();
        if (auto r = create_btf_maps(); !r) return r.error();
        if (auto r = create_legacy_maps(); !r) return r.error();
        // .text holds subprograms, unless it is all the code there is.
        const bool text_programs =
            std::all_of(functions_.begin(), functions_.end(),
                        [&](const Function& f) { return f.section == text_index_; });
        for (const Function& f : functions_) {
            if (f.section == text_index_ && !text_programs) continue;
            auto p = link_program(f);
            if (!p) return p.error();
            object_.programs_.push_back(std::move(p.value()));
        }
        return std::move(object_);
    }

private:
    // --- ELF ------------------------------------------------------------------------------

    Result<void> parse_elf() {
        if (bytes_.size() < sizeof(Elf64_Ehdr))
            return make_error(
                EINVAL, fmt::format("not an ELF object: {} bytes is shorter than an ELF header",
                                    bytes_.size()));
        if (std::memcmp(bytes_.data(), ELFMAG, SELFMAG) != 0)
            return make_error(EINVAL, "not an ELF object: bad magic");
        if (bytes_[EI_CLASS] != ELFCLASS64)
            return make_error(EINVAL, "ELF object is not 64-bit (ELFCLASS64)");
        if (bytes_[EI_DATA] != ELFDATA2LSB)
            return make_error(EINVAL, "ELF object is not little-endian");
        elf_version(EV_CURRENT);
        elf_.reset(elf_memory(reinterpret_cast<char*>(bytes_.data()), bytes_.size()));
        if (!elf_) return elf_error("ELF object");
        GElf_Ehdr eh;
        if (!gelf_getehdr(elf_.get(), &eh)) return elf_error("ELF header");
        if (eh.e_machine != kEmBpf)
            return make_error(EINVAL,
                              fmt::format("ELF machine is {}, not BPF (247)", eh.e_machine));
        if (eh.e_type != ET_REL)
            return make_error(
                EINVAL,
                fmt::format("ELF type is {}, not a relocatable object (ET_REL)", eh.e_type));
        size_t shstrndx = 0;
        if (elf_getshdrstrndx(elf_.get(), &shstrndx) != 0) return elf_error("section name table");
        size_t count = 0;
        if (elf_getshdrnum(elf_.get(), &count) != 0) return elf_error("section count");
        sections_.resize(count);
        for (Elf_Scn* scn = elf_nextscn(elf_.get(), nullptr); scn;
             scn = elf_nextscn(elf_.get(), scn)) {
            const size_t idx = elf_ndxscn(scn);
            if (idx >= count)
                return make_error(EINVAL, fmt::format("section index {} out of range", idx));
            Section& s = sections_[idx];
            s.index = idx;
            if (!gelf_getshdr(scn, &s.hdr)) return elf_error(fmt::format("section {} header", idx));
            const char* name = elf_strptr(elf_.get(), shstrndx, s.hdr.sh_name);
            if (!name) return elf_error(fmt::format("section {} name", idx));
            s.name = name;
            if (s.hdr.sh_type == SHT_NOBITS) {
                s.size = s.hdr.sh_size;
                continue;
            }
            if (s.hdr.sh_type == SHT_NULL) continue;
            Elf_Data* d = elf_getdata(scn, nullptr);
            if (!d) {
                if (s.hdr.sh_size == 0) continue;
                return elf_error(fmt::format("section '{}' data", s.name));
            }
            if (d->d_size > 0 && !d->d_buf)
                return make_error(EINVAL, fmt::format("section '{}': no data", s.name));
            s.data = static_cast<const uint8_t*>(d->d_buf);
            s.size = d->d_size;
            if (s.hdr.sh_type == SHT_SYMTAB) {
                if (symtab_index_) return make_error(EINVAL, "more than one symbol table");
                symtab_index_ = idx;
                symtab_data_ = d;
            }
            if (s.name == ".text") text_index_ = idx;
        }
        if (!symtab_index_) return make_error(EINVAL, "no symbol table (.symtab)");
        const Section& st = sections_[*symtab_index_];
        const size_t nsyms = symtab_data_->d_size / sizeof(Elf64_Sym);
        symbols_.resize(nsyms);
        for (size_t i = 0; i < nsyms; ++i) {
            if (!gelf_getsym(symtab_data_, static_cast<int>(i), &symbols_[i].sym))
                return elf_error(fmt::format("symbol {}", i));
            const char* name = elf_strptr(elf_.get(), st.hdr.sh_link, symbols_[i].sym.st_name);
            if (!name) return elf_error(fmt::format("symbol {} name", i));
            symbols_[i].name = name;
            const size_t shndx = symbols_[i].sym.st_shndx;
            if (shndx != SHN_UNDEF && shndx < SHN_LORESERVE && shndx >= sections_.size())
                return make_error(EINVAL, fmt::format("symbol '{}': section index {} out of range",
                                                      symbols_[i].name, shndx));
            if (symbols_[i].is_section() && symbols_[i].name.empty() && shndx < sections_.size())
                symbols_[i].name = sections_[shndx].name;
        }
        return {};
    }

    const Section* find_section(std::string_view name) const {
        for (const Section& s : sections_)
            if (s.name == name && s.hdr.sh_type != SHT_NULL) return &s;
        return nullptr;
    }

    Result<void> read_license() {
        const Section* s = find_section("license");
        if (!s) {
            if (!options_.require_license) return {};
            return make_error(EINVAL, "no license section (char LICENSE[] SEC(\"license\"))");
        }
        if (!s->data || s->size == 0) return make_error(EINVAL, "license section is empty");
        const auto* end = static_cast<const uint8_t*>(std::memchr(s->data, 0, s->size));
        if (!end) return make_error(EINVAL, "license is not NUL-terminated");
        object_.license_.assign(reinterpret_cast<const char*>(s->data), end - s->data);
        return {};
    }

    Result<void> load_btf() {
        const Section* s = find_section(".BTF");
        if (!s || !s->data) return {};
        btf* b = btf__new(s->data, static_cast<uint32_t>(s->size));
        if (!b)
            return make_error(
                EINVAL, fmt::format("section .BTF: malformed BTF ({})", std::strerror(errno)));
        btf_.reset(b);
        return {};
    }

    // --- functions and relocations -------------------------------------------------------------

    Result<void> collect_functions() {
        for (const Section& s : sections_) {
            if (!s.exec()) continue;
            if (s.size % sizeof(Insn) != 0)
                return make_error(
                    EINVAL, fmt::format("program section '{}': size {} is not a multiple of 8",
                                        s.name, s.size));
            if (s.size > 0 && !s.data)
                return make_error(EINVAL, fmt::format("program section '{}' has no data", s.name));
            if (s.size / sizeof(Insn) > kMaxInsns)
                return make_error(
                    E2BIG, fmt::format("program section '{}': {} instructions exceed the limit",
                                       s.name, s.size / sizeof(Insn)));
            std::vector<Function> in_section;
            for (const Symbol& sym : symbols_) {
                if (GELF_ST_TYPE(sym.sym.st_info) != STT_FUNC || sym.sym.st_shndx != s.index)
                    continue;
                const uint64_t off = sym.sym.st_value, size = sym.sym.st_size;
                if (off % 8 || size % 8 || size == 0 || off > s.size || size > s.size - off)
                    return make_error(
                        EINVAL,
                        fmt::format(
                            "function '{}': offset {} size {} do not fit section '{}' of {} bytes",
                            sym.name, off, size, s.name, s.size));
                in_section.push_back({sym.name, s.index, static_cast<uint32_t>(off / 8),
                                      static_cast<uint32_t>(size / 8)});
            }
            if (in_section.empty() && s.size > 0)
                return make_error(
                    EINVAL,
                    fmt::format("program section '{}' has code but no function symbol", s.name));
            std::sort(in_section.begin(), in_section.end(),
                      [](auto& a, auto& b) { return a.start < b.start; });
            for (size_t i = 1; i < in_section.size(); ++i)
                if (in_section[i].start < in_section[i - 1].start + in_section[i - 1].count)
                    return make_error(
                        EINVAL, fmt::format("functions '{}' and '{}' overlap in section '{}'",
                                            in_section[i - 1].name, in_section[i].name, s.name));
            functions_.insert(functions_.end(), in_section.begin(), in_section.end());
        }
        return {};
    }

    Result<void> collect_relocations() {
        for (const Section& rs : sections_) {
            if (rs.hdr.sh_type != SHT_REL && rs.hdr.sh_type != SHT_RELA) continue;
            const size_t target = rs.hdr.sh_info;
            if (target >= sections_.size())
                return make_error(
                    EINVAL, fmt::format("relocation section '{}': target section {} out of range",
                                        rs.name, target));
            if (!sections_[target].exec()) continue;  // debug info, BTF.ext: not needed to run
            if (rs.hdr.sh_type == SHT_RELA)
                return make_error(
                    EINVAL,
                    fmt::format("relocation section '{}': RELA relocations are not used by BPF",
                                rs.name));
            if (rs.hdr.sh_link != *symtab_index_)
                return make_error(
                    EINVAL,
                    fmt::format("relocation section '{}' does not use the symbol table", rs.name));
            Elf_Data* d = elf_getdata(elf_getscn(elf_.get(), rs.index), nullptr);
            if (!d) return elf_error(fmt::format("relocation section '{}'", rs.name));
            auto& relocs = relocs_[target];
            const size_t n = d->d_size / sizeof(Elf64_Rel);
            for (size_t i = 0; i < n; ++i) {
                GElf_Rel rel;
                if (!gelf_getrel(d, static_cast<int>(i), &rel))
                    return elf_error(fmt::format("relocation {} of '{}'", i, rs.name));
                const uint64_t off = rel.r_offset;
                const size_t sym = GELF_R_SYM(rel.r_info);
                if (off % 8 || off >= sections_[target].size)
                    return make_error(
                        EINVAL,
                        fmt::format(
                            "relocation {} of '{}': offset {} is not an instruction of '{}'", i,
                            rs.name, off, sections_[target].name));
                if (sym == 0 || sym >= symbols_.size())
                    return make_error(
                        EINVAL,
                        fmt::format("relocation {} of '{}': bad symbol index {}", i, rs.name, sym));
                relocs[static_cast<uint32_t>(off / 8)] =
                    Reloc{static_cast<uint32_t>(GELF_R_TYPE(rel.r_info)), sym};
            }
        }
        return {};
    }

    // --- maps -----------------------------------------------------------------------------------

    Result<size_t> add_map(MapSpec spec, const std::string& section, size_t sec_index,
                           uint64_t offset) {
        auto m = create_map(spec);
        if (!m)
            return make_error(m.error().code,
                              fmt::format("map '{}': {}", spec.name, m.error().message));
        object_.maps_.push_back({spec.name, section, m.value()});
        map_at_[{sec_index, offset}] = object_.maps_.size() - 1;
        return object_.maps_.size() - 1;
    }

    static bool is_data_section(const Section& s) {
        if (s.exec() || (s.hdr.sh_type != SHT_PROGBITS && s.hdr.sh_type != SHT_NOBITS))
            return false;
        for (std::string_view p : {".data", ".rodata", ".bss"})
            if (s.name == p || s.name.starts_with(std::string(p) + ".")) return true;
        return false;
    }

    Result<void> create_data_maps() {
        for (const Section& s : sections_) {
            if (!is_data_section(s) || s.size == 0) continue;
            if (s.size > kMaxDataSection)
                return make_error(
                    E2BIG, fmt::format("data section '{}' of {} bytes exceeds the {} byte limit",
                                       s.name, s.size, kMaxDataSection));
            MapSpec spec{s.name, MapType::Array, 4, static_cast<uint32_t>(s.size), 1, 0};
            auto idx = add_map(spec, s.name, s.index, 0);
            if (!idx) return idx.error();
            data_map_of_section_[s.index] = idx.value();
            if (s.data) {
                const uint32_t zero = 0;
                if (long rc = object_.maps_[idx.value()].map->update(&zero, s.data, kUpdateAny);
                    rc != 0)
                    return make_error(static_cast<int>(-rc),
                                      fmt::format("initializing map '{}' failed ({})", s.name, rc));
            }
        }
        return {};
    }

    // Follows typedefs and type modifiers.
    const btf_type* skip_mods(uint32_t id, uint32_t* out_id = nullptr) const {
        for (int i = 0; i < kMaxBtfChain; ++i) {
            const btf_type* t = btf__type_by_id(btf_.get(), id);
            if (!t) return nullptr;
            switch (btf_kind(t)) {
                case BTF_KIND_TYPEDEF:
                case BTF_KIND_VOLATILE:
                case BTF_KIND_CONST:
                case BTF_KIND_RESTRICT:
                case BTF_KIND_TYPE_TAG: id = t->type; continue;
                default:
                    if (out_id) *out_id = id;
                    return t;
            }
        }
        return nullptr;
    }

    // __uint(name, N) is `int (*name)[N]`: N is the array's element count.
    Result<uint32_t> btf_uint_member(const std::string& map, const std::string& field,
                                     uint32_t type) const {
        const btf_type* p = skip_mods(type);
        const btf_type* a = p && btf_kind(p) == BTF_KIND_PTR ? skip_mods(p->type) : nullptr;
        if (!a || btf_kind(a) != BTF_KIND_ARRAY)
            return make_error(
                EINVAL, fmt::format("map '{}': field '{}' is not __uint(...) (pointer to array)",
                                    map, field));
        return btf_array(a)->nelems;
    }

    // __type(key, T) is `T *key`: the size of T.
    Result<uint32_t> btf_type_member(const std::string& map, const std::string& field,
                                     uint32_t type) const {
        const btf_type* p = skip_mods(type);
        if (!p || btf_kind(p) != BTF_KIND_PTR)
            return make_error(
                EINVAL,
                fmt::format("map '{}': field '{}' is not __type(...) (a pointer)", map, field));
        const long long size = btf__resolve_size(btf_.get(), p->type);
        if (size <= 0 || size > UINT32_MAX)
            return make_error(
                EINVAL,
                fmt::format("map '{}': field '{}' has a type of unknown or zero size", map, field));
        return static_cast<uint32_t>(size);
    }

    Result<void> create_btf_maps() {
        const Section* s = find_section(".maps");
        if (!s || s->size == 0) return {};
        if (!btf_) return make_error(EINVAL, "section .maps needs BTF (compile with -g)");
        const int sec_id = btf__find_by_name_kind(btf_.get(), ".maps", BTF_KIND_DATASEC);
        if (sec_id <= 0)
            return make_error(EINVAL, "BTF has no DATASEC '.maps' describing section .maps");
        const btf_type* sec = btf__type_by_id(btf_.get(), sec_id);
        const btf_var_secinfo* vsi = btf_var_secinfos(sec);
        for (uint16_t i = 0; i < btf_vlen(sec); ++i) {
            const btf_type* var = btf__type_by_id(btf_.get(), vsi[i].type);
            if (!var || btf_kind(var) != BTF_KIND_VAR)
                return make_error(EINVAL, fmt::format("BTF .maps entry {} is not a variable", i));
            const char* vname = btf__name_by_offset(btf_.get(), var->name_off);
            if (!vname || !*vname)
                return make_error(EINVAL, fmt::format("BTF .maps entry {} has no name", i));
            const std::string name = vname;
            // clang leaves DATASEC offsets 0 (libbpf fixes them up from the symbol table):
            // the variable's symbol says where the map is.
            const Symbol* sym = nullptr;
            for (const Symbol& candidate : symbols_)
                if (candidate.sym.st_shndx == s->index && candidate.name == name &&
                    !candidate.is_section())
                    sym = &candidate;
            if (!sym)
                return make_error(EINVAL,
                                  fmt::format("map '{}': no symbol in section .maps", name));
            const uint64_t offset = sym->sym.st_value;
            if (offset >= s->size)
                return make_error(
                    EINVAL, fmt::format("map '{}': offset {} outside section .maps", name, offset));
            const btf_type* def = skip_mods(var->type);
            if (!def || btf_kind(def) != BTF_KIND_STRUCT)
                return make_error(EINVAL,
                                  fmt::format("map '{}': definition is not a struct", name));
            MapSpec spec;
            spec.name = name;
            bool have_type = false;
            std::optional<uint32_t> key_size, value_size;
            const btf_member* m = btf_members(def);
            for (uint16_t j = 0; j < btf_vlen(def); ++j) {
                const char* mname_c = btf__name_by_offset(btf_.get(), m[j].name_off);
                const std::string field = mname_c ? mname_c : "";
                Result<uint32_t> v = uint32_t{0};
                if (field == "type" || field == "max_entries" || field == "map_flags" ||
                    field == "key_size" || field == "value_size" || field == "pinning" ||
                    field == "numa_node" || field == "map_extra")
                    v = btf_uint_member(name, field, m[j].type);
                else if (field == "key" || field == "value")
                    v = btf_type_member(name, field, m[j].type);
                else
                    return make_error(EINVAL,
                                      fmt::format("map '{}': unsupported field '{}'", name, field));
                if (!v) return v.error();
                const uint32_t x = v.value();
                if (field == "type") {
                    spec.type = static_cast<MapType>(x);
                    have_type = true;
                } else if (field == "max_entries") {
                    spec.max_entries = x;
                } else if (field == "map_flags") {
                    spec.flags = x;
                } else if (field == "key_size" || field == "key") {
                    if (key_size && *key_size != x)
                        return make_error(
                            EINVAL, fmt::format("map '{}': key size {} conflicts with {}", name, x,
                                                *key_size));
                    key_size = x;
                } else if (field == "value_size" || field == "value") {
                    if (value_size && *value_size != x)
                        return make_error(
                            EINVAL, fmt::format("map '{}': value size {} conflicts with {}", name,
                                                x, *value_size));
                    value_size = x;
                } else if (field == "pinning" && x != 0) {
                    return make_error(
                        EINVAL,
                        fmt::format("map '{}': pinning is not supported in userspace", name));
                }
            }
            if (!have_type) return make_error(EINVAL, fmt::format("map '{}': no type", name));
            spec.key_size = key_size.value_or(0);
            spec.value_size = value_size.value_or(0);
            if (auto r = check_map_type(spec); !r) return r.error();
            if (auto r = add_map(spec, ".maps", s->index, offset); !r) return r.error();
        }
        return {};
    }

    static Result<void> check_map_type(const MapSpec& spec) {
        switch (spec.type) {
            case MapType::Hash:
            case MapType::Array:
            case MapType::ProgArray:
            case MapType::PerfEventArray:
            case MapType::PercpuHash:
            case MapType::PercpuArray:
            case MapType::LruHash:
            case MapType::LruPercpuHash:
            case MapType::RingBuf: return {};
        }
        return make_error(ENOTSUP, fmt::format("map '{}': unsupported map type {}", spec.name,
                                               static_cast<uint32_t>(spec.type)));
    }

    // struct bpf_map_def { type, key_size, value_size, max_entries, map_flags } in section `maps`.
    Result<void> create_legacy_maps() {
        const Section* s = find_section("maps");
        if (!s || s->size == 0) return {};
        if (!s->data) return make_error(EINVAL, "section maps has no data");
        for (const Symbol& sym : symbols_) {
            if (sym.sym.st_shndx != s->index || sym.is_section() ||
                GELF_ST_TYPE(sym.sym.st_info) == STT_FILE)
                continue;
            const uint64_t off = sym.sym.st_value, size = sym.sym.st_size;
            if (size < 4 * sizeof(uint32_t) || off > s->size || size > s->size - off)
                return make_error(EINVAL, fmt::format("legacy map '{}': definition at offset {} "
                                                      "size {} does not fit section maps",
                                                      sym.name, off, size));
            uint32_t f[5] = {0, 0, 0, 0, 0};
            std::memcpy(f, s->data + off, std::min<uint64_t>(size, sizeof(f)));
            MapSpec spec{sym.name, static_cast<MapType>(f[0]), f[1], f[2], f[3], f[4]};
            if (auto r = check_map_type(spec); !r) return r.error();
            if (auto r = add_map(spec, "maps", s->index, off); !r) return r.error();
        }
        return {};
    }

    // --- linking --------------------------------------------------------------------------------

    const Function* function_at(size_t section, uint64_t insn) const {
        for (const Function& f : functions_)
            if (f.section == section && insn >= f.start && insn < uint64_t{f.start} + f.count)
                return &f;
        return nullptr;
    }

    std::string where(const Function& f, uint32_t i) const {
        return fmt::format("program '{}': insn {} of function '{}' (section '{}')", current_, i,
                           f.name, sections_[f.section].name);
    }

    // The context of a SEC("syscall") program: the struct its first parameter points to.
    ContextDescriptor syscall_context(const std::string& fn) const {
        if (!btf_) return {};
        const int id = btf__find_by_name_kind(btf_.get(), fn.c_str(), BTF_KIND_FUNC);
        const btf_type* func = id > 0 ? btf__type_by_id(btf_.get(), id) : nullptr;
        const btf_type* proto = func ? btf__type_by_id(btf_.get(), func->type) : nullptr;
        if (!proto || btf_kind(proto) != BTF_KIND_FUNC_PROTO || btf_vlen(proto) < 1) return {};
        const btf_type* ptr = skip_mods(btf_params(proto)[0].type);
        if (!ptr || btf_kind(ptr) != BTF_KIND_PTR) return {};
        const long long size = btf__resolve_size(btf_.get(), ptr->type);
        if (size <= 0 || size > UINT16_MAX) return {};
        return ContextDescriptor{static_cast<uint32_t>(size), true};
    }

    Result<std::shared_ptr<const Program>> link_program(const Function& entry) {
        current_ = entry.name;
        auto prog = std::make_shared<Program>();
        prog->name = entry.name;
        prog->section = sections_[entry.section].name;
        prog->license = object_.license_;
        prog->context = prog->section == "syscall" ? syscall_context(entry.name)
                                                   : context_for_section(prog->section);

        struct Placed {
            const Function* fn;
            uint32_t out;
        };
        std::vector<Placed> placed;
        std::unordered_map<size_t, size_t>
            prog_map_index;  // object map index -> Program::maps index
        auto place = [&](const Function* fn) -> Result<uint32_t> {
            for (const Placed& p : placed)
                if (p.fn == fn) return p.out;
            if (prog->insns.size() + fn->count > kMaxInsns)
                return make_error(
                    E2BIG, fmt::format("program '{}': more than {} instructions with subprograms",
                                       entry.name, kMaxInsns));
            const uint32_t out = static_cast<uint32_t>(prog->insns.size());
            // memcpy: section data inside the ELF image need not be aligned for Insn.
            prog->insns.resize(out + fn->count);
            std::memcpy(prog->insns.data() + out,
                        sections_[fn->section].data + size_t{fn->start} * sizeof(Insn),
                        size_t{fn->count} * sizeof(Insn));
            placed.push_back({fn, out});
            return out;
        };
        auto map_index = [&](size_t obj_index) -> int32_t {
            auto [it, fresh] = prog_map_index.try_emplace(obj_index, prog->maps.size());
            if (fresh) prog->maps.push_back(object_.maps_[obj_index].map);
            return static_cast<int32_t>(it->second);
        };
        // A reference from output slot `at` to instruction `target` of `section`: the relative
        // offset the call or lddw must carry, placing the target's function if needed.
        auto relative_to = [&](const Function& f, uint32_t i, size_t section, int64_t target,
                               uint32_t at) -> Result<int32_t> {
            const Function* callee =
                target >= 0 ? function_at(section, static_cast<uint64_t>(target)) : nullptr;
            if (!callee)
                return make_error(
                    EINVAL,
                    fmt::format("{}: target insn {} of section '{}' is not inside a function",
                                where(f, i), target, sections_[section].name));
            auto out = place(callee);
            if (!out) return out.error();
            return static_cast<int32_t>(int64_t{out.value()} + (target - callee->start) -
                                        (int64_t{at} + 1));
        };

        if (auto r = place(&entry); !r) return r.error();
        for (size_t k = 0; k < placed.size(); ++k) {
            const Function& f = *placed[k].fn;
            const uint32_t base = placed[k].out;
            const auto rel_it = relocs_.find(f.section);
            for (uint32_t i = 0; i < f.count; ++i) {
                const uint32_t at = base + i;
                Insn in = prog->insns[at];
                const Reloc* rel = nullptr;
                if (rel_it != relocs_.end()) {
                    auto it = rel_it->second.find(f.start + i);
                    if (it != rel_it->second.end()) rel = &it->second;
                }
                const bool lddw = in.opcode == op::kLddw;
                if (lddw && i + 1 >= f.count)
                    return make_error(
                        EINVAL, fmt::format("{}: lddw is missing its second slot", where(f, i)));
                if (!rel) {
                    if (in.opcode == kCallOpcode && in.src == op::kPseudoCall) {
                        auto imm =
                            relative_to(f, i, f.section, int64_t{f.start} + i + 1 + in.imm, at);
                        if (!imm) return imm.error();
                        prog->insns[at].imm = imm.value();
                    } else if (in.opcode == kCallOpcode && in.src == op::kPseudoKfuncCall) {
                        return make_error(
                            ENOTSUP, fmt::format("{}: kfunc calls are not supported", where(f, i)));
                    } else if (lddw && in.src != 0) {
                        return make_error(
                            EINVAL, fmt::format("{}: lddw with pseudo source {} but no relocation",
                                                where(f, i), int{in.src}));
                    }
                    if (lddw) ++i;
                    continue;
                }
                const Symbol& sym = symbols_[rel->symbol];
                const size_t shndx = sym.sym.st_shndx;
                if (rel->type != kRelBpf64_64 && rel->type != kRelBpf64_32)
                    return make_error(EINVAL,
                                      fmt::format("{}: unsupported relocation type {} against '{}'",
                                                  where(f, i), rel->type, sym.name));
                if (shndx == SHN_UNDEF || shndx >= sections_.size())
                    return make_error(EINVAL,
                                      fmt::format("{}: relocation against undefined symbol '{}' "
                                                  "(extern functions, kfuncs "
                                                  "and kconfig variables are not supported)",
                                                  where(f, i), sym.name));
                const Section& target = sections_[shndx];
                if (in.opcode == kCallOpcode) {
                    if (in.src != op::kPseudoCall)
                        return make_error(
                            EINVAL, fmt::format("{}: call relocation against '{}' on a helper call",
                                                where(f, i), sym.name));
                    if (!target.exec() || sym.sym.st_value % 8)
                        return make_error(EINVAL,
                                          fmt::format("{}: call to '{}', which is not a function",
                                                      where(f, i), sym.name));
                    auto imm = relative_to(
                        f, i, shndx, static_cast<int64_t>(sym.sym.st_value / 8) + in.imm + 1, at);
                    if (!imm) return imm.error();
                    prog->insns[at].imm = imm.value();
                    continue;
                }
                if (!lddw)
                    return make_error(
                        EINVAL,
                        fmt::format(
                            "{}: relocation against '{}' on opcode {:#04x}, not a call or lddw",
                            where(f, i), sym.name, in.opcode));
                // Placing a subprogram grows insns: index afresh after relative_to().
                auto lo = [&]() -> Insn& { return prog->insns[at]; };
                auto hi = [&]() -> Insn& { return prog->insns[at + 1]; };
                const int64_t offset =
                    static_cast<int64_t>(sym.sym.st_value) + (sym.is_section() ? in.imm : 0);
                if (target.exec()) {
                    if (offset % 8)
                        return make_error(
                            EINVAL,
                            fmt::format("{}: address of '{}' is not an instruction boundary",
                                        where(f, i), sym.name));
                    auto imm = relative_to(f, i, shndx, offset / 8, at);
                    if (!imm) return imm.error();
                    lo().src = op::kPseudoFunc;
                    lo().imm = imm.value();
                    hi().imm = 0;
                } else if (auto dm = data_map_of_section_.find(shndx);
                           dm != data_map_of_section_.end()) {
                    if (offset < 0 || static_cast<uint64_t>(offset) >= target.size)
                        return make_error(
                            EINVAL,
                            fmt::format("{}: offset {} of '{}' outside section '{}' of {} bytes",
                                        where(f, i), offset, sym.name, target.name, target.size));
                    lo().src = op::kPseudoMapIdxValue;
                    lo().imm = map_index(dm->second);
                    hi().imm = static_cast<int32_t>(offset);
                } else if (auto mp = map_at_.find({shndx, static_cast<uint64_t>(offset)});
                           mp != map_at_.end()) {
                    lo().src = op::kPseudoMapIdx;
                    lo().imm = map_index(mp->second);
                    hi().imm = 0;
                } else {
                    return make_error(EINVAL, fmt::format("{}: relocation against '{}' in section "
                                                          "'{}', which is not a map, global "
                                                          "data or code",
                                                          where(f, i), sym.name, target.name));
                }
                ++i;
            }
        }
        return std::shared_ptr<const Program>(std::move(prog));
    }

    std::vector<uint8_t> bytes_;  // libelf reads from here; must outlive elf_
    OpenOptions options_;
    std::unique_ptr<Elf, ElfDeleter> elf_;
    std::unique_ptr<btf, BtfDeleter> btf_;
    std::vector<Section> sections_;
    std::vector<Symbol> symbols_;
    std::optional<size_t> symtab_index_;
    Elf_Data* symtab_data_ = nullptr;
    size_t text_index_ = SIZE_MAX;
    std::vector<Function> functions_;
    std::unordered_map<size_t, std::map<uint32_t, Reloc>> relocs_;  // section -> insn -> reloc
    std::map<std::pair<size_t, uint64_t>, size_t> map_at_;          // (section, offset) -> map
    std::unordered_map<size_t, size_t> data_map_of_section_;
    std::string current_;
    Object object_;
};

Result<Object> Object::open(std::span<const uint8_t> bytes, const OpenOptions& options) {
    return ObjectBuilder(std::vector<uint8_t>(bytes.begin(), bytes.end()), options).build();
}

Result<Object> Object::open(const std::string& path, const OpenOptions& options) {
    // The agent opens paths it is sent on its control thread inside the target: a FIFO must
    // not block the open, and only a regular file of bounded size is read (a device such as
    // /dev/zero would otherwise be read until the target runs out of memory).
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return make_error(errno, fmt::format("{}: {}", path, std::strerror(errno)));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        const int err = errno;
        ::close(fd);
        return make_error(err, fmt::format("{}: stat: {}", path, std::strerror(err)));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        return make_error(EINVAL, fmt::format("{}: not a regular file", path));
    }
    std::vector<uint8_t> bytes;
    uint8_t buf[65536];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int err = errno;
            ::close(fd);
            return make_error(err, fmt::format("{}: read: {}", path, std::strerror(err)));
        }
        if (n == 0) break;
        if (bytes.size() + static_cast<size_t>(n) > kMaxObjectBytes) {
            ::close(fd);
            return make_error(EFBIG,
                              fmt::format("{}: larger than {} bytes", path, kMaxObjectBytes));
        }
        bytes.insert(bytes.end(), buf, buf + n);
    }
    ::close(fd);
    auto obj = ObjectBuilder(std::move(bytes), options).build();
    if (!obj) return make_error(obj.error().code, fmt::format("{}: {}", path, obj.error().message));
    return obj;
}

Result<std::shared_ptr<const Program>> Object::program(std::string_view name) const {
    for (const auto& p : programs_)
        if (p->name == name) return p;
    std::shared_ptr<const Program> found;
    for (const auto& p : programs_) {
        if (p->section != name) continue;
        if (found)
            return make_error(
                EINVAL,
                fmt::format("section '{}' holds several programs ('{}', '{}'); name the function",
                            name, found->name, p->name));
        found = p;
    }
    if (!found) return make_error(ENOENT, fmt::format("no program or section named '{}'", name));
    return found;
}

std::shared_ptr<Map> Object::map(std::string_view name) const {
    for (const auto& m : maps_)
        if (m.name == name) return m.map;
    return nullptr;
}

}  // namespace liveio::ebpf
