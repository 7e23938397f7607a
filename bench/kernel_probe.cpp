#include "kernel_probe.h"

#include <unistd.h>

#include <cstring>
#include <iterator>
#include <vector>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>

namespace liveio::bench {
namespace {

Result<int> load_counting_program(bpf_prog_type type, int map_fd, uint32_t tgid) {
    const bpf_insn insns[] = {
        {BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_current_pid_tgid},
        {BPF_ALU64 | BPF_RSH | BPF_K, BPF_REG_0, 0, 0, 32},
        {BPF_JMP | BPF_JNE | BPF_K, BPF_REG_0, 0, 9, static_cast<int32_t>(tgid)},
        {BPF_ST | BPF_MEM | BPF_W, BPF_REG_10, 0, -4, 0},
        {BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0},
        {BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -4},
        {BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map_fd},
        {0, 0, 0, 0, 0},
        {BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem},
        {BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 2, 0},
        {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, 1},
        {BPF_STX | BPF_ATOMIC | BPF_DW, BPF_REG_0, BPF_REG_1, 0, BPF_ADD},
        {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0},
        {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
    };
    const int fd = bpf_prog_load(type, "liveio_count", "GPL", insns, std::size(insns), nullptr);
    if (fd < 0) return make_error(-fd, fmt::format("bpf_prog_load: {}", strerror(-fd)));
    return fd;
}

}  // namespace

CountingProgram::CountingProgram(bpf_prog_type type) {
    map_fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "liveio_count", 4, 8, 1, nullptr);
    if (map_fd < 0) {
        error = fmt::format("bpf_map_create: {}", strerror(-map_fd));
        map_fd = -1;
        return;
    }
    auto prog = load_counting_program(type, map_fd, static_cast<uint32_t>(getpid()));
    if (!prog)
        error = prog.error().message;
    else
        prog_fd = *prog;
}

CountingProgram::~CountingProgram() {
    if (prog_fd >= 0) close(prog_fd);
    if (map_fd >= 0) close(map_fd);
}

uint64_t CountingProgram::count() const {
    uint32_t key = 0;
    uint64_t value = 0;
    return bpf_map_lookup_elem(map_fd, &key, &value) == 0 ? value : 0;
}

Result<int> attach_raw_tracepoint(const CountingProgram& program, const char* name) {
    if (!program.error.empty()) return make_error(EINVAL, program.error);
    const int link = bpf_raw_tracepoint_open(name, program.prog_fd);
    if (link < 0)
        return make_error(-link,
                          fmt::format("bpf_raw_tracepoint_open({}): {}", name, strerror(-link)));
    return link;
}

namespace {

// Writes `value` into the variable `name` of the object's .rodata, before load.
Result<void> set_rodata_u32(bpf_object* obj, const std::string& name, uint32_t value) {
    bpf_map* rodata = nullptr;
    bpf_map* m;
    bpf_object__for_each_map(m, obj) {
        const std::string map_name = bpf_map__name(m);
        if (map_name.size() >= 7 && map_name.compare(map_name.size() - 7, 7, ".rodata") == 0)
            rodata = m;
    }
    const btf* types = bpf_object__btf(obj);
    if (!rodata || !types) return make_error(ENOENT, "the object has no .rodata with BTF");
    const int sec_id = btf__find_by_name_kind(types, ".rodata", BTF_KIND_DATASEC);
    if (sec_id < 0) return make_error(ENOENT, "no .rodata section in the object's BTF");
    const btf_type* sec = btf__type_by_id(types, sec_id);
    const btf_var_secinfo* vars = btf_var_secinfos(sec);
    size_t size = 0;
    const auto* initial = static_cast<const char*>(bpf_map__initial_value(rodata, &size));
    for (int i = 0; i < btf_vlen(sec); ++i) {
        const btf_type* var = btf__type_by_id(types, vars[i].type);
        if (name != btf__name_by_offset(types, var->name_off)) continue;
        if (vars[i].size != sizeof value || !initial || vars[i].offset + sizeof value > size)
            return make_error(EINVAL, fmt::format("{} is not a 4-byte .rodata variable", name));
        std::vector<char> data(initial, initial + size);
        std::memcpy(data.data() + vars[i].offset, &value, sizeof value);
        if (const int err = bpf_map__set_initial_value(rodata, data.data(), data.size()); err)
            return make_error(-err, fmt::format("setting {}: {}", name, strerror(-err)));
        return {};
    }
    return make_error(ENOENT, fmt::format("no .rodata variable {}", name));
}

}  // namespace

Result<std::unique_ptr<KernelObject>> KernelObject::load(
    const std::string& path, const std::vector<std::pair<std::string, uint32_t>>& u32_globals) {
    std::unique_ptr<KernelObject> k(new KernelObject);
    k->object_ = bpf_object__open_file(path.c_str(), nullptr);
    if (!k->object_) {
        const int err = errno;
        return make_error(err, fmt::format("opening {}: {}", path, strerror(err)));
    }
    for (const auto& [name, value] : u32_globals)
        if (auto r = set_rodata_u32(k->object_, name, value); !r) return r.error();
    if (const int err = bpf_object__load(k->object_); err)
        return make_error(-err,
                          fmt::format("loading {} into the kernel: {}", path, strerror(-err)));
    bpf_program* prog;
    bpf_object__for_each_program(prog, k->object_) {
        bpf_link* link = bpf_program__attach(prog);
        if (!link) {
            const int err = errno;
            return make_error(
                err, fmt::format("attaching {}: {}", bpf_program__name(prog), strerror(err)));
        }
        k->links_.push_back(link);
    }
    return k;
}

KernelObject::~KernelObject() {
    for (bpf_link* link : links_) bpf_link__destroy(link);
    if (object_) bpf_object__close(object_);
}

int KernelObject::map_fd(const std::string& name) const {
    bpf_map* m = bpf_object__find_map_by_name(object_, name.c_str());
    return m ? bpf_map__fd(m) : -1;
}

}  // namespace liveio::bench
