// The CLI's side of the agent's bpf.* requests (the contract in notes: bpf.load, bpf.unload,
// bpf.list, bpf.maps): typed replies, live maps opened from the memfds the agent passes, and
// the built-in programs' location.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/result.h"
#include "control/protocol.h"
#include "ebpf/map.h"

namespace liveio::observe {

struct MapInfo {
    std::string name;
    std::string type;  // kernel name: "hash", "array", "ringbuf", ...
    uint32_t key_size = 0, value_size = 0, max_entries = 0;
};

struct ProgramInfo {
    std::string name, section, attach, engine;
    uint64_t insns = 0;
    std::optional<uint64_t> runs, run_ns;  // bpf.list only
};

struct ObjectInfo {
    uint64_t id = 0;
    std::string name;  // file basename, e.g. "io_stats.bpf.o"
    std::vector<ProgramInfo> programs;
    std::vector<MapInfo> maps;
};

// Parses a bpf.load reply (or one element of bpf.list's "objects"). Missing or mistyped
// fields are errors naming the field.
Result<ObjectInfo> parse_object(const nlohmann::json& j);

struct LiveMap {
    MapInfo info;
    std::shared_ptr<ebpf::Map> map;
};

// Requests to one agent. Errors of the agent are returned with its message verbatim; a
// request the agent does not know (an agent built without BPF support) becomes an error
// saying so.
class BpfClient {
public:
    explicit BpfClient(control::ControlClient& client) : client_(client) {}

    Result<ObjectInfo> load(const std::string& path, const std::string& engine = "jit",
                            const std::vector<std::string>& programs = {});
    Result<void> unload(uint64_t object);
    Result<std::vector<ObjectInfo>> list();
    // The object's maps, mapped live in this process, in the order of the agent's reply.
    Result<std::vector<LiveMap>> maps(uint64_t object);

private:
    Result<nlohmann::json> call(const std::string& cmd, nlohmann::json args,
                                int timeout_ms = 30000);
    control::ControlClient& client_;
};

// The first map named `name`, or nullptr.
const LiveMap* find_map(const std::vector<LiveMap>& maps, std::string_view name);

// Where the built-in programs are: $LIVEIO_BPF_DIR, else <dir of exe>/../../bpf (the build
// tree: <build>/src/cli/liveio), else <dir of exe>/../lib/liveio/bpf; the first that exists.
Result<std::string> builtin_bpf_dir();
// "io_stats" or "io_stats.bpf.o" -> the built-in object's absolute path; any path with a
// slash or an existing file -> its absolute path (it must exist and be readable).
Result<std::string> resolve_object_path(const std::string& name_or_path);

// Where a global variable of a BPF object lives: its data section (the loader makes each of
// .data/.rodata/.bss a one-element array map named after the section) and its offset there.
struct GlobalLocation {
    std::string section;
    uint64_t offset = 0;
    uint64_t size = 0;
};
// Looks `symbol` up in the object file's symbol table.
Result<GlobalLocation> find_global(const std::string& object_path, const std::string& symbol);

// The basename of the built-in statistics object, as bpf.list names it.
inline constexpr const char* kIoStatsObject = "io_stats.bpf.o";
// The basename of the built-in socket statistics object (bpf/net_stats.bpf.c).
inline constexpr const char* kNetStatsObject = "net_stats.bpf.o";

}  // namespace liveio::observe
