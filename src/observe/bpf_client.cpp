#include "observe/bpf_client.h"

#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

namespace liveio::observe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Reads j[name] into `out`; an error naming the field when it is missing or mistyped.
template <typename T>
Result<void> read_field(const json& j, const char* name, const char* where, T& out) {
    auto it = j.find(name);
    if (it == j.end())
        return make_error(EPROTO, fmt::format("{}: the agent's reply has no \"{}\"", where, name));
    try {
        out = it->template get<T>();
    } catch (const json::exception&) {
        return make_error(
            EPROTO, fmt::format("{}: \"{}\" in the agent's reply has the wrong type ({})", where,
                                name, it->dump()));
    }
    return {};
}

Result<void> first_error(std::initializer_list<Result<void>> results) {
    for (const auto& r : results)
        if (!r) return r;
    return {};
}

template <typename T>
std::optional<T> optional_field(const json& j, const char* name) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_number_unsigned()) return std::nullopt;
    return it->template get<T>();
}

Result<MapInfo> parse_map(const json& j) {
    if (!j.is_object())
        return make_error(EPROTO, "bpf map description is not an object: " + j.dump());
    MapInfo m;
    if (auto ok =
            first_error({read_field(j, "name", "map", m.name), read_field(j, "type", "map", m.type),
                         read_field(j, "key_size", "map", m.key_size),
                         read_field(j, "value_size", "map", m.value_size),
                         read_field(j, "max_entries", "map", m.max_entries)});
        !ok)
        return ok.error();
    return m;
}

Result<std::vector<MapInfo>> parse_maps(const json& j) {
    auto arr = j.find("maps");
    if (arr == j.end() || !arr->is_array())
        return make_error(EPROTO, "the agent's reply has no \"maps\" array");
    std::vector<MapInfo> out;
    for (const auto& m : *arr) {
        auto parsed = parse_map(m);
        if (!parsed) return parsed.error();
        out.push_back(std::move(parsed).value());
    }
    return out;
}

}  // namespace

Result<ObjectInfo> parse_object(const json& j) {
    if (!j.is_object())
        return make_error(EPROTO, "bpf object description is not an object: " + j.dump());
    ObjectInfo o;
    if (auto ok = first_error({read_field(j, "object", "bpf object", o.id),
                               read_field(j, "name", "bpf object", o.name)});
        !ok)
        return ok.error();
    auto progs = j.find("programs");
    if (progs == j.end() || !progs->is_array())
        return make_error(EPROTO, "bpf object: no \"programs\" array");
    for (const auto& p : *progs) {
        if (!p.is_object())
            return make_error(EPROTO, "bpf program description is not an object: " + p.dump());
        ProgramInfo info;
        if (auto ok = first_error({read_field(p, "name", "bpf program", info.name),
                                   read_field(p, "section", "bpf program", info.section),
                                   read_field(p, "attach", "bpf program", info.attach)});
            !ok)
            return ok.error();
        info.engine = p.value("engine", std::string());
        info.insns = p.value("insns", uint64_t{0});
        info.runs = optional_field<uint64_t>(p, "runs");
        info.run_ns = optional_field<uint64_t>(p, "run_ns");
        o.programs.push_back(std::move(info));
    }
    auto maps = parse_maps(j);
    if (!maps) return maps.error();
    o.maps = std::move(maps).value();
    return o;
}

Result<json> BpfClient::call(const std::string& cmd, json args, int timeout_ms) {
    auto r = client_.call(cmd, std::move(args), timeout_ms);
    if (!r && r.error().code == ENOSYS)
        return make_error(ENOSYS, "the agent in the target has no BPF support (it does not know '" +
                                      cmd + "'; attach a newer agent): " + r.error().message);
    return r;
}

Result<ObjectInfo> BpfClient::load(const std::string& path, const std::string& engine,
                                   const std::vector<std::string>& programs) {
    json args{{"path", path}, {"engine", engine}};
    if (!programs.empty()) args["programs"] = programs;
    auto r = call("bpf.load", std::move(args));
    for (int fd : client_.take_fds()) ::close(fd);  // load passes none; never leak any
    if (!r) return r.error();
    return parse_object(*r);
}

Result<void> BpfClient::unload(uint64_t object) {
    auto r = call("bpf.unload", {{"object", object}});
    for (int fd : client_.take_fds()) ::close(fd);
    if (!r) return r.error();
    return {};
}

Result<std::vector<ObjectInfo>> BpfClient::list() {
    auto r = call("bpf.list", json::object());
    for (int fd : client_.take_fds()) ::close(fd);
    if (!r) return r.error();
    auto objs = r->find("objects");
    if (objs == r->end() || !objs->is_array())
        return make_error(EPROTO, "bpf.list: the reply has no \"objects\" array");
    std::vector<ObjectInfo> out;
    for (const auto& o : *objs) {
        auto parsed = parse_object(o);
        if (!parsed) return parsed.error();
        out.push_back(std::move(parsed).value());
    }
    return out;
}

Result<std::vector<LiveMap>> BpfClient::maps(uint64_t object) {
    auto r = call("bpf.maps", {{"object", object}});
    std::vector<int> fds = client_.take_fds();
    struct Closer {
        std::vector<int>& fds;
        ~Closer() {
            for (int fd : fds) ::close(fd);  // open_shared_map keeps its own duplicate
        }
    } closer{fds};
    if (!r) return r.error();
    auto infos = parse_maps(*r);
    if (!infos) return infos.error();
    if (infos->size() != fds.size())
        return make_error(
            EPROTO, fmt::format("bpf.maps: the agent described {} maps but passed {} descriptors",
                                infos->size(), fds.size()));
    std::vector<LiveMap> out;
    for (size_t i = 0; i < fds.size(); ++i) {
        auto map = ebpf::open_shared_map(fds[i]);
        if (!map)
            return make_error(map.error().code,
                              fmt::format("map '{}': {}", (*infos)[i].name, map.error().message));
        out.push_back({(*infos)[i], std::move(map).value()});
    }
    return out;
}

const LiveMap* find_map(const std::vector<LiveMap>& maps, std::string_view name) {
    for (const auto& m : maps)
        if (m.info.name == name) return &m;
    return nullptr;
}

Result<std::string> builtin_bpf_dir() {
    if (const char* env = std::getenv("LIVEIO_BPF_DIR"); env && *env) {
        if (!fs::is_directory(env))
            return make_error(ENOENT, fmt::format("LIVEIO_BPF_DIR={} is not a directory", env));
        return fs::absolute(env).lexically_normal().string();
    }
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (ec)
        return make_error(ENOENT, "cannot read /proc/self/exe to find the built-in BPF programs");
    const fs::path candidates[] = {exe.parent_path() / "../../bpf",
                                   exe.parent_path() / "../lib/liveio/bpf"};
    for (const auto& dir : candidates)
        if (fs::exists(dir / kIoStatsObject, ec)) return fs::weakly_canonical(dir, ec).string();
    return make_error(ENOENT, fmt::format("cannot find the built-in BPF programs ({}) in {} or {} "
                                          "(set LIVEIO_BPF_DIR)",
                                          kIoStatsObject, candidates[0].lexically_normal().string(),
                                          candidates[1].lexically_normal().string()));
}

Result<std::string> resolve_object_path(const std::string& name_or_path) {
    std::error_code ec;
    const bool looks_like_path =
        name_or_path.find('/') != std::string::npos || fs::exists(name_or_path, ec);
    fs::path path;
    if (looks_like_path) {
        path = fs::absolute(name_or_path).lexically_normal();
    } else {
        auto dir = builtin_bpf_dir();
        if (!dir) return dir.error();
        std::string file = name_or_path;
        if (!file.ends_with(".bpf.o")) file += ".bpf.o";
        path = fs::path(*dir) / file;
        if (!fs::exists(path, ec)) {
            std::string known;
            for (const auto& e : fs::directory_iterator(*dir, ec))
                if (e.path().string().ends_with(".bpf.o"))
                    known += (known.empty() ? "" : ", ") + e.path().filename().string();
            return make_error(ENOENT,
                              fmt::format("no built-in BPF object '{}' in {} (there are: {})",
                                          name_or_path, *dir, known.empty() ? "none" : known));
        }
    }
    if (!fs::is_regular_file(path, ec))
        return make_error(ENOENT, fmt::format("{}: no such file", path.string()));
    if (::access(path.c_str(), R_OK) != 0)
        return make_error(EACCES, fmt::format("{}: not readable", path.string()));
    return path.string();
}

Result<GlobalLocation> find_global(const std::string& object_path, const std::string& symbol) {
    if (elf_version(EV_CURRENT) == EV_NONE) return make_error(EINVAL, "libelf is too old");
    const int fd = ::open(object_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return make_error(errno, fmt::format("{}: {}", object_path, std::strerror(errno)));
    Elf* elf = elf_begin(fd, ELF_C_READ, nullptr);
    struct Closer {
        int fd;
        Elf* elf;
        ~Closer() {
            if (elf) elf_end(elf);
            ::close(fd);
        }
    } closer{fd, elf};
    size_t shstrndx = 0;
    if (!elf || elf_kind(elf) != ELF_K_ELF || elf_getshdrstrndx(elf, &shstrndx) != 0)
        return make_error(EINVAL, fmt::format("{}: not an ELF object", object_path));
    for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn; scn = elf_nextscn(elf, scn)) {
        GElf_Shdr sh;
        if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_SYMTAB || sh.sh_entsize == 0) continue;
        Elf_Data* data = elf_getdata(scn, nullptr);
        if (!data) continue;
        for (size_t i = 0; i < sh.sh_size / sh.sh_entsize; ++i) {
            GElf_Sym sym;
            if (!gelf_getsym(data, static_cast<int>(i), &sym)) continue;
            const char* name = elf_strptr(elf, sh.sh_link, sym.st_name);
            if (!name || symbol != name) continue;
            Elf_Scn* home = elf_getscn(elf, sym.st_shndx);
            GElf_Shdr home_sh;
            if (!home || !gelf_getshdr(home, &home_sh))
                return make_error(EINVAL, fmt::format("{}: symbol '{}' is not in a section",
                                                      object_path, symbol));
            const char* section = elf_strptr(elf, shstrndx, home_sh.sh_name);
            return GlobalLocation{section ? section : "", sym.st_value, sym.st_size};
        }
    }
    return make_error(ENOENT, fmt::format("{}: no global '{}'", object_path, symbol));
}

}  // namespace liveio::observe
