// The control-protocol requests of the BPF host (contract: /work/notes/jobs2/protocol-bpf.md).
#include <fcntl.h>
#include <unistd.h>

#include "agent/bpf_host.h"

namespace liveio::agent {
namespace {

using nlohmann::json;

constexpr const char* kRequests[] = {"bpf.load", "bpf.unload", "bpf.list", "bpf.maps", "bpf.log"};

Result<uint32_t> object_id(const json& req) {
    if (!req.contains("object") || !req["object"].is_number_unsigned() ||
        req["object"].get<uint64_t>() > UINT32_MAX)
        return make_error(EINVAL, "expected {\"object\": <id>} with the id bpf.load returned");
    return req["object"].get<uint32_t>();
}

Result<BpfHost::LoadRequest> parse_load(const json& req) {
    BpfHost::LoadRequest r;
    if (!req.contains("path") || !req["path"].is_string())
        return make_error(EINVAL, "bpf.load expects {\"path\": \"/abs/file.bpf.o\"}");
    r.path = req["path"].get<std::string>();
    if (req.contains("engine")) {
        if (!req["engine"].is_string())
            return make_error(EINVAL, "engine must be \"jit\" or \"interp\"");
        const std::string e = req["engine"].get<std::string>();
        if (e == "jit")
            r.engine = ebpf::Engine::Jit;
        else if (e == "interp")
            r.engine = ebpf::Engine::Interpreter;
        else
            return make_error(EINVAL, "unknown engine '" + e + "' (expected jit or interp)");
    }
    if (req.contains("programs") && !req["programs"].is_null()) {
        if (!req["programs"].is_array())
            return make_error(EINVAL, "programs must be an array of program names");
        for (auto& p : req["programs"]) {
            if (!p.is_string())
                return make_error(EINVAL, "programs must be an array of program names");
            r.programs.push_back(p.get<std::string>());
        }
    }
    return r;
}

json program_json(const BpfHost::ProgramInfo& p, bool with_runs) {
    json j = {{"name", p.name},
              {"section", p.section},
              {"attach", p.attach},
              {"engine", ebpf::engine_name(p.engine)},
              {"insns", p.insns}};
    if (with_runs) j["runs"] = p.runs;
    return j;
}

json maps_json(const BpfHost::ObjectInfo& o) {
    json maps = json::array();
    for (const BpfHost::MapInfo& m : o.maps)
        maps.push_back({{"name", m.name},
                        {"type", ebpf::map_type_name(m.type)},
                        {"key_size", m.key_size},
                        {"value_size", m.value_size},
                        {"max_entries", m.max_entries}});
    return maps;
}

// The `bpf.load` reply: {"object": id, "name", "programs": [...], "maps": [...]}; bpf.list
// adds each program's "runs".
json object_json(const BpfHost::ObjectInfo& o, bool with_runs) {
    json programs = json::array();
    for (const BpfHost::ProgramInfo& p : o.programs) programs.push_back(program_json(p, with_runs));
    return {{"object", o.id}, {"name", o.name}, {"programs", programs}, {"maps", maps_json(o)}};
}

// Duplicates for SCM_RIGHTS: the router closes what it sends, the maps keep their own.
Result<std::vector<int>> dup_all(const std::vector<int>& fds) {
    std::vector<int> out;
    for (int fd : fds) {
        const int d = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (d < 0) {
            const int err = errno;
            for (int o : out) ::close(o);
            return make_error(err, "cannot duplicate a map descriptor");
        }
        out.push_back(d);
    }
    return out;
}

}  // namespace

Result<void> BpfHost::register_requests(RequestRouter& router) {
    std::vector<std::pair<const char*, std::pair<std::string, RequestHandler>>> handlers = {
        {"bpf.load",
         {"bpf.load {path, engine?: jit|interp, programs?: [..]}: load, verify and attach a BPF "
          "object",
          [this](const json& req) -> Result<Reply> {
              auto r = parse_load(req);
              if (!r) return r.error();
              auto loaded = load(*r);
              if (!loaded) return loaded.error();
              return Reply{object_json(*loaded, false), {}, {}};
          }}},
        {"bpf.unload",
         {"bpf.unload {object}: detach and free a loaded object",
          [this](const json& req) -> Result<Reply> {
              auto id = object_id(req);
              if (!id) return id.error();
              if (auto r = unload(*id); !r) return r.error();
              return Reply{};
          }}},
        {"bpf.list",
         {"bpf.list: loaded objects, their programs (with run counts) and maps",
          [this](const json&) -> Result<Reply> {
              json objects = json::array();
              for (const ObjectInfo& o : list()) objects.push_back(object_json(o, true));
              return Reply{{{"objects", objects}}, {}, {}};
          }}},
        {"bpf.maps",
         {"bpf.maps {object}: the object's maps, with one memfd per map (SCM_RIGHTS, same order)",
          [this](const json& req) -> Result<Reply> {
              auto id = object_id(req);
              if (!id) return id.error();
              auto maps = this->maps(*id);
              if (!maps) return maps.error();
              std::vector<int> fds;
              for (auto& m : *maps) fds.push_back(m->memfd());
              auto info = describe(*id);  // its maps are in the same order
              if (!info) return info.error();
              auto dups = dup_all(fds);
              if (!dups) return dups.error();
              return Reply{{{"maps", maps_json(*info)}}, std::move(dups).value(), {}};
          }}},
        {"bpf.log",
         {"bpf.log: the trace_printk log of the agent's BPF runtime (a memfd, SCM_RIGHTS)",
          [this](const json&) -> Result<Reply> {
              auto dups = dup_all({runtime_->trace_log().memfd()});
              if (!dups) return dups.error();
              return Reply{
                  {{"dropped", runtime_->trace_log().dropped()}}, std::move(dups).value(), {}};
          }}},
    };
    for (auto& [cmd, entry] : handlers) {
        if (auto r = router.add(cmd, std::move(entry.first), std::move(entry.second)); !r) {
            unregister_requests(router);
            return r;
        }
    }
    return {};
}

void BpfHost::unregister_requests(RequestRouter& router) {
    for (const char* cmd : kRequests) router.remove(cmd);
}

}  // namespace liveio::agent
