// Kernel parity harness: the same clang-built .bpf.o loaded into the kernel with libbpf and
// into liveio's runtime (loader + both engines), run on the same inputs, compared on r0, the
// context the program wrote back, and the full contents of every map.
//
// Kernel side: bpf_object__open_file / bpf_object__load, programs run with
// BPF_PROG_TEST_RUN (SEC("syscall") with a writable ctx that the kernel copies back into
// ctx_in; raw_tracepoint with a read-only ctx of u64 args). Program types whose context the
// kernel rewrites (xdp_md, __sk_buff) are not compared: liveio gives them no readable context
// (loader.h), so packet programs here are SEC("syscall") programs whose ctx holds the packet.
#pragma once

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "base/result.h"
#include "ebpf/loader.h"
#include "ebpf/vm.h"

namespace liveio::ebpf::parity {

// Why kernel BPF programs cannot be loaded and test-run here, or "" when they can: loads the
// smallest SEC("syscall") program (r0 = 0; exit) and runs it once.
inline std::string kernel_bpf_unavailable() {
    const bpf_insn insns[] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_K,
         .dst_reg = BPF_REG_0,
         .src_reg = 0,
         .off = 0,
         .imm = 0},
        {.code = BPF_JMP | BPF_EXIT, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0},
    };
    // Syscall programs are sleepable (libbpf sets the flag for SEC("syscall")).
    LIBBPF_OPTS(bpf_prog_load_opts, load, .prog_flags = BPF_F_SLEEPABLE);
    const int fd = bpf_prog_load(BPF_PROG_TYPE_SYSCALL, "parity_probe", "GPL", insns, 2, &load);
    if (fd < 0)
        return fmt::format(
            "kernel BPF unavailable: loading a BPF_PROG_TYPE_SYSCALL program failed ({}){}",
            std::strerror(-fd), geteuid() != 0 ? "; not root" : "");
    LIBBPF_OPTS(bpf_test_run_opts, opts);
    const int rc = bpf_prog_test_run_opts(fd, &opts);
    close(fd);
    if (rc < 0)
        return fmt::format("kernel BPF_PROG_TEST_RUN of a syscall program failed ({})",
                           std::strerror(-rc));
    return "";
}

// A `const volatile` global of .rodata to set before load, in both runtimes.
struct RodataValue {
    std::string var;
    std::vector<uint8_t> bytes;
};

template <typename T>
RodataValue rodata(std::string var, T value) {
    RodataValue v{std::move(var), std::vector<uint8_t>(sizeof(T))};
    std::memcpy(v.bytes.data(), &value, sizeof(T));
    return v;
}

struct BpfObjectCloser {
    void operator()(bpf_object* o) const { bpf_object__close(o); }
};

// The offset of `var` in the DATASEC `section` of the object's BTF, or an error.
inline Result<uint32_t> datasec_offset(const btf* b, const char* section, const std::string& var,
                                       size_t size) {
    if (!b) return make_error(EINVAL, "object has no BTF");
    const int sec = btf__find_by_name_kind(b, section, BTF_KIND_DATASEC);
    if (sec <= 0) return make_error(ENOENT, fmt::format("no DATASEC {} in BTF", section));
    const btf_type* t = btf__type_by_id(b, sec);
    const btf_var_secinfo* vs = btf_var_secinfos(t);
    for (uint16_t i = 0; i < btf_vlen(t); ++i, ++vs) {
        const btf_type* v = btf__type_by_id(b, vs->type);
        if (var == btf__name_by_offset(b, v->name_off)) {
            if (vs->size != size)
                return make_error(EINVAL,
                                  fmt::format("{} is {} bytes, value has {}", var, vs->size, size));
            return vs->offset;
        }
    }
    return make_error(ENOENT, fmt::format("no variable {} in {}", var, section));
}

// The object loaded into the kernel.
class KernelObject {
public:
    static Result<KernelObject> load(const std::string& path,
                                     const std::vector<RodataValue>& values = {}) {
        KernelObject k;
        k.obj_.reset(bpf_object__open_file(path.c_str(), nullptr));
        if (!k.obj_)
            return make_error(errno,
                              fmt::format("libbpf cannot open {}: {}", path, std::strerror(errno)));
        for (const auto& v : values) {
            bpf_map* rodata = nullptr;
            bpf_map* m;
            bpf_object__for_each_map(m, k.obj_.get()) {
                if (bpf_map__is_internal(m) && std::string(bpf_map__name(m)).ends_with(".rodata"))
                    rodata = m;
            }
            if (!rodata) return make_error(ENOENT, fmt::format("{} has no .rodata map", path));
            auto off =
                datasec_offset(bpf_object__btf(k.obj_.get()), ".rodata", v.var, v.bytes.size());
            if (!off) return off.error();
            size_t size = 0;
            const auto* data = static_cast<const uint8_t*>(bpf_map__initial_value(rodata, &size));
            if (!data || off.value() + v.bytes.size() > size)
                return make_error(EINVAL, "rodata initial value unavailable");
            std::vector<uint8_t> image(data, data + size);
            std::memcpy(image.data() + off.value(), v.bytes.data(), v.bytes.size());
            const int rc = bpf_map__set_initial_value(rodata, image.data(), image.size());
            if (rc < 0) return make_error(-rc, fmt::format("cannot set {} in .rodata", v.var));
        }
        const int rc = bpf_object__load(k.obj_.get());
        if (rc < 0)
            return make_error(
                -rc, fmt::format("the kernel refuses {} ({}); its verifier log is on stderr", path,
                                 std::strerror(-rc)));
        return k;
    }

    bpf_object* get() const { return obj_.get(); }
    int prog_fd(const std::string& name) const {
        bpf_program* p = bpf_object__find_program_by_name(obj_.get(), name.c_str());
        return p ? bpf_program__fd(p) : -1;
    }

private:
    std::unique_ptr<bpf_object, BpfObjectCloser> obj_;
};

// The object opened by liveio's loader, .rodata set as in the kernel.
inline Result<Object> open_ours(const std::string& path, const KernelObject& kernel,
                                const std::vector<RodataValue>& values = {}) {
    auto obj = Object::open(path);
    if (!obj) return obj.error();
    for (const auto& v : values) {
        auto map = obj.value().map(".rodata");
        if (!map)
            return make_error(ENOENT,
                              fmt::format("liveio's loader made no .rodata map for {}", path));
        auto off = datasec_offset(bpf_object__btf(kernel.get()), ".rodata", v.var, v.bytes.size());
        if (!off) return off.error();
        std::vector<uint8_t> value(map->spec().value_size);
        const uint32_t zero = 0;
        if (map->copy_value(&zero, value.data()) != 0)
            return make_error(EIO, "cannot read .rodata");
        std::memcpy(value.data() + off.value(), v.bytes.data(), v.bytes.size());
        if (map->update_from_user(&zero, value.data(), kUpdateAny) != 0)
            return make_error(EIO, "cannot set .rodata");
    }
    return obj;
}

inline bool is_percpu(uint32_t type) {
    return type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_ARRAY ||
           type == BPF_MAP_TYPE_LRU_PERCPU_HASH;
}

inline std::string hex(const std::vector<uint8_t>& bytes) {
    std::string s;
    for (uint8_t b : bytes) s += fmt::format("{:02x}", b);
    return s;
}

// A map's contents as the syscall interface shows them: key -> value. For per-CPU maps the
// value is the sum over CPUs of each 64-bit word: which CPU ran a program differs between
// the kernel and userspace, the totals must not.
using MapContents = std::map<std::vector<uint8_t>, std::vector<uint8_t>>;

inline std::vector<uint8_t> fold_percpu(const std::vector<uint8_t>& all, uint32_t value_size) {
    const size_t stride = (value_size + 7) / 8 * 8;
    std::vector<uint8_t> sum(value_size);
    for (size_t w = 0; w + 8 <= value_size; w += 8) {
        uint64_t total = 0;
        for (size_t cpu = 0; (cpu + 1) * stride <= all.size(); ++cpu) {
            uint64_t x;
            std::memcpy(&x, all.data() + cpu * stride + w, 8);
            total += x;
        }
        std::memcpy(sum.data() + w, &total, 8);
    }
    return sum;
}

template <typename Next, typename Lookup>
Result<MapContents> contents(uint32_t type, uint32_t key_size, uint32_t value_size, Next next,
                             Lookup lookup) {
    const bool percpu = is_percpu(type);
    if (percpu && value_size % 8 != 0)
        return make_error(EINVAL,
                          "per-CPU values compared as 64-bit sums need a size multiple of 8");
    const size_t bytes =
        percpu ? static_cast<size_t>(libbpf_num_possible_cpus()) * ((value_size + 7) / 8 * 8)
               : value_size;
    MapContents out;
    std::vector<uint8_t> cur(key_size), nxt(key_size), value(bytes);
    for (long rc = next(nullptr, nxt.data()); rc == 0; rc = next(cur.data(), nxt.data())) {
        if (out.count(nxt)) return make_error(ELOOP, "next_key revisits key " + hex(nxt));
        const long lrc = lookup(nxt.data(), value.data());
        if (lrc != 0)
            return make_error(static_cast<int>(-lrc),
                              "lookup of listed key " + hex(nxt) + " failed");
        out[nxt] = percpu ? fold_percpu(value, value_size) : value;
        cur = nxt;
    }
    return out;
}

inline Result<MapContents> kernel_contents(const bpf_map* m) {
    const int fd = bpf_map__fd(m);
    return contents(
        bpf_map__type(m), bpf_map__key_size(m), bpf_map__value_size(m),
        [&](const void* k, void* n) -> long { return bpf_map_get_next_key(fd, k, n); },
        [&](const void* k, void* v) -> long { return bpf_map_lookup_elem(fd, k, v); });
}

inline Result<MapContents> our_contents(Map& m) {
    const MapSpec& s = m.spec();
    return contents(
        static_cast<uint32_t>(s.type), s.key_size, s.value_size,
        [&](const void* k, void* n) { return m.next_key(k, n); },
        [&](const void* k, void* v) { return m.copy_value(k, v); });
}

// liveio's name for a kernel map: libbpf names global data maps "<object prefix>.<section>",
// liveio by the section alone.
inline std::string our_map_name(const bpf_map* m) {
    std::string name = bpf_map__name(m);
    if (bpf_map__is_internal(m)) {
        const auto dot = name.find('.');
        if (dot != std::string::npos) return name.substr(dot);
    }
    return name;
}

// "" when every map of the kernel object has the same contents in `ours`, else what differs.
inline std::string map_differences(const KernelObject& kernel, const Object& ours) {
    std::string diff;
    const bpf_map* m;
    bpf_object__for_each_map(m, kernel.get()) {
        const std::string name = our_map_name(m);
        auto mine = ours.map(name);
        if (!mine) {
            diff += fmt::format("map {}: missing in liveio's object\n", name);
            continue;
        }
        const uint32_t type = bpf_map__type(m);
        if (type == BPF_MAP_TYPE_RINGBUF || type == BPF_MAP_TYPE_PERF_EVENT_ARRAY ||
            type == BPF_MAP_TYPE_PROG_ARRAY)
            continue;  // no element contents to compare
        auto k = kernel_contents(m);
        auto o = our_contents(*mine);
        if (!k || !o) {
            diff += fmt::format("map {}: {}\n", name, !k ? k.error().message : o.error().message);
            continue;
        }
        if (k.value() == o.value()) continue;
        for (const auto& [key, value] : k.value()) {
            auto it = o.value().find(key);
            if (it == o.value().end())
                diff += fmt::format("map {} key {}: only in the kernel (value {})\n", name,
                                    hex(key), hex(value));
            else if (it->second != value)
                diff += fmt::format("map {} key {}: kernel {} liveio {}\n", name, hex(key),
                                    hex(value), hex(it->second));
        }
        for (const auto& [key, value] : o.value())
            if (!k.value().count(key))
                diff += fmt::format("map {} key {}: only in liveio (value {})\n", name, hex(key),
                                    hex(value));
    }
    return diff;
}

// Fills a context of the given size for one run.
using InputGenerator = std::function<void(std::mt19937_64& rng, std::vector<uint8_t>& ctx)>;

// A random 64-bit value biased to the edges of arithmetic: zero, one, all ones, sign bits,
// powers of two and their neighbours, small numbers, else uniform.
inline uint64_t edgy(std::mt19937_64& rng) {
    switch (rng() % 8) {
        case 0: {
            static constexpr uint64_t kEdges[] = {0,
                                                  1,
                                                  2,
                                                  3,
                                                  ~0ull,
                                                  ~0ull - 1,
                                                  0x7fffffffffffffffull,
                                                  0x8000000000000000ull,
                                                  0x7fffffff,
                                                  0x80000000,
                                                  0xffffffff,
                                                  0x100000000ull,
                                                  63,
                                                  64,
                                                  31,
                                                  32};
            return kEdges[rng() % std::size(kEdges)];
        }
        case 1: return 1ull << (rng() % 64);
        case 2: return (1ull << (rng() % 64)) - 1;
        case 3: return rng() % 256;
        case 4: return static_cast<uint64_t>(-static_cast<int64_t>(rng() % 256));
        case 5: return static_cast<uint32_t>(rng());
        default: return rng();
    }
}

struct ParityCase {
    std::string object;   // path of the .bpf.o
    std::string program;  // function name
    uint32_t runs = 300;
    uint64_t seed = 1;
    InputGenerator input;
    std::vector<RodataValue> rodata;
    // Compare maps after every this many runs (and after the last).
    uint32_t map_check_every = 50;
};

// Runs the case in the kernel and on both engines; every difference is a test failure that
// names the run, its input, and what differed. Returns false when the case could not run.
bool run_parity(const ParityCase& c, const HelperTable& helpers);

}  // namespace liveio::ebpf::parity
