// create_map / open_shared_map: spec validation, layout, the memfd and its header.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include "base/high_fd.h"
#include "ebpf/map.h"
#include "ebpf/map_shm.h"

namespace liveio::ebpf {

const char* map_type_name(MapType type) {
    switch (type) {
        case MapType::Hash: return "hash";
        case MapType::Array: return "array";
        case MapType::ProgArray: return "prog_array";
        case MapType::PerfEventArray: return "perf_event_array";
        case MapType::PercpuHash: return "percpu_hash";
        case MapType::PercpuArray: return "percpu_array";
        case MapType::LruHash: return "lru_hash";
        case MapType::LruPercpuHash: return "lru_percpu_hash";
        case MapType::RingBuf: return "ringbuf";
    }
    return "unknown";
}

bool is_percpu(MapType type) {
    return type == MapType::PercpuArray || type == MapType::PercpuHash ||
           type == MapType::LruPercpuHash;
}

size_t user_value_size(const MapSpec& spec) {
    if (!is_percpu(spec.type)) return spec.value_size;
    return detail::round8(spec.value_size) * detail::possible_cpus();
}

namespace detail {
namespace {

bool is_array(MapType t) {
    return t == MapType::Array || t == MapType::PercpuArray || t == MapType::ProgArray;
}
bool is_hash(MapType t) {
    return t == MapType::Hash || t == MapType::PercpuHash || t == MapType::LruHash ||
           t == MapType::LruPercpuHash;
}
uint64_t page_round(uint64_t n) { return (n + kPageSize - 1) & ~(kPageSize - 1); }

Error spec_error(const MapSpec& spec, int code, const std::string& what) {
    return make_error(code,
                      fmt::format("map '{}' ({}): {}", spec.name, map_type_name(spec.type), what));
}

}  // namespace

uint32_t possible_cpus() {
    // As libbpf's libbpf_num_possible_cpus(): the highest possible CPU id + 1, so per-CPU
    // values have the kernel's layout ("0-3,8-11" -> 12).
    if (FILE* f = ::fopen("/sys/devices/system/cpu/possible", "re")) {
        char buf[256] = {};
        const size_t n = ::fread(buf, 1, sizeof buf - 1, f);
        ::fclose(f);
        long highest = -1;
        for (const char* p = buf; p < buf + n;) {
            char* end = nullptr;
            const long v = std::strtol(p, &end, 10);
            if (end == p) break;
            highest = std::max(highest, v);
            p = end + (*end == '-' || *end == ',' ? 1 : 0);
            if (end == p) break;
        }
        if (highest >= 0 && highest < 65536) return static_cast<uint32_t>(highest + 1);
    }
    const int n = ::get_nprocs_conf();
    return n > 0 ? static_cast<uint32_t>(n) : 1;
}

namespace {

// Everything but the mapping.
Result<Layout> plan_file_layout(const MapSpec& spec, uint32_t ncpus) {
    if (spec.name.size() >= kNameCapacity)
        return spec_error(spec, EINVAL,
                          fmt::format("name longer than {} bytes", kNameCapacity - 1));
    if (spec.name.find('\0') != std::string::npos)
        return spec_error(spec, EINVAL, "name contains a NUL byte");
    if (!is_array(spec.type) && !is_hash(spec.type) && spec.type != MapType::RingBuf &&
        spec.type != MapType::PerfEventArray)
        return make_error(EINVAL,
                          fmt::format("map '{}': type {} ({}) is not supported", spec.name,
                                      static_cast<uint32_t>(spec.type), map_type_name(spec.type)));
    if (spec.max_entries == 0) return spec_error(spec, EINVAL, "max_entries must be > 0");
    if (ncpus == 0) return spec_error(spec, EINVAL, "ncpus must be > 0");

    Layout l;
    l.ncpus = is_percpu(spec.type) ? ncpus : 1;
    const uint32_t value_limit = is_percpu(spec.type) ? kMaxPercpuValueSize : kMaxValueSize;

    if (spec.type == MapType::RingBuf) {
        if (spec.key_size != 0)
            return spec_error(spec, EINVAL,
                              fmt::format("key_size must be 0 (got {})", spec.key_size));
        if (spec.value_size != 0)
            return spec_error(spec, EINVAL,
                              fmt::format("value_size must be 0 (got {})", spec.value_size));
        if ((spec.max_entries & (spec.max_entries - 1)) != 0 || spec.max_entries % kPageSize != 0)
            return spec_error(
                spec, EINVAL,
                fmt::format("max_entries must be a power of two multiple of {} (got {})", kPageSize,
                            spec.max_entries));
        if (spec.flags & ~kFlagNumaNode)
            return spec_error(spec, EINVAL, fmt::format("flags 0x{:x} not supported", spec.flags));
        l.index_offset = kPageSize;  // consumer page, then producer page
        l.data_offset = 3 * kPageSize;
        l.total_size = l.data_offset + spec.max_entries;  // the data area is mapped twice
        if (l.total_size > kMaxMapBytes) return spec_error(spec, E2BIG, "max_entries too large");
        return l;
    }

    if (spec.type == MapType::PerfEventArray) {
        if (spec.key_size != 4)
            return spec_error(spec, EINVAL,
                              fmt::format("key_size must be 4 (got {})", spec.key_size));
        if (spec.value_size != 4)
            return spec_error(spec, EINVAL,
                              fmt::format("value_size must be 4 (got {})", spec.value_size));
        if (spec.max_entries > kMaxPerfSlots)
            return spec_error(
                spec, E2BIG,
                fmt::format("max_entries {} exceeds {}", spec.max_entries, kMaxPerfSlots));
        if (spec.flags & ~kFlagNumaNode)
            return spec_error(spec, EINVAL, fmt::format("flags 0x{:x} not supported", spec.flags));
        l.index_offset = kPageSize;  // one control block per slot
        l.data_offset = l.index_offset + page_round(uint64_t{spec.max_entries} * kPerfCtlBytes);
        l.total_size = l.data_offset + uint64_t{spec.max_entries} * kPerfSlotBytes;
        return l;
    }

    if (spec.value_size == 0) return spec_error(spec, EINVAL, "value_size must be > 0");
    if (spec.value_size > value_limit)
        return spec_error(spec, E2BIG,
                          fmt::format("value_size {} exceeds {}", spec.value_size, value_limit));
    l.value_stride = static_cast<uint32_t>(round8(spec.value_size));

    if (is_array(spec.type)) {
        if (spec.key_size != 4)
            return spec_error(spec, EINVAL,
                              fmt::format("key_size must be 4 (got {})", spec.key_size));
        if (spec.type == MapType::ProgArray && spec.value_size != 4)
            return spec_error(spec, EINVAL,
                              fmt::format("value_size must be 4 (got {})", spec.value_size));
        const uint32_t allowed = kFlagNumaNode | kFlagRdonly | kFlagWronly | kFlagRdonlyProg |
                                 kFlagWronlyProg | kFlagInnerMap |
                                 (spec.type == MapType::Array ? kFlagMmapable : 0);
        if (spec.flags & ~allowed)
            return spec_error(spec, EINVAL,
                              fmt::format("flags 0x{:x} not supported", spec.flags & ~allowed));
        l.index_offset = kPageSize;
        l.data_offset = l.index_offset + page_round(uint64_t{kArrayStripes} * 64);
        const uint64_t data = uint64_t{spec.max_entries} * l.ncpus * l.value_stride;
        if (data > kMaxMapBytes)
            return spec_error(spec, E2BIG, "max_entries x value_size exceeds the 1 GiB map limit");
        l.total_size = page_round(l.data_offset + data);
        return l;
    }

    // Hashes.
    if (spec.key_size == 0) return spec_error(spec, EINVAL, "key_size must be > 0");
    if (spec.key_size > kMaxKeySize)
        return spec_error(spec, E2BIG,
                          fmt::format("key_size {} exceeds {}", spec.key_size, kMaxKeySize));
    if (spec.max_entries > (1u << 30))
        return spec_error(spec, E2BIG,
                          fmt::format("max_entries {} exceeds {}", spec.max_entries, 1u << 30));
    const bool lru = spec.type == MapType::LruHash || spec.type == MapType::LruPercpuHash;
    const uint32_t allowed = kFlagNoPrealloc | kFlagNumaNode | kFlagRdonly | kFlagWronly |
                             kFlagZeroSeed | kFlagRdonlyProg | kFlagWronlyProg | kFlagInnerMap |
                             (lru ? kFlagNoCommonLru : 0);
    if (spec.flags & ~allowed)
        return spec_error(spec, EINVAL,
                          fmt::format("flags 0x{:x} not supported", spec.flags & ~allowed));
    uint32_t nb = 1;
    while (nb < spec.max_entries) nb <<= 1;
    l.nbuckets = nb;
    const uint64_t elem = 16 + round8(spec.key_size) + uint64_t{l.ncpus} * l.value_stride;
    if (elem > (1ull << 31)) return spec_error(spec, E2BIG, "element too large");
    l.elem_size = static_cast<uint32_t>(elem);
    l.index_offset = kPageSize;
    l.data_offset = page_round(l.index_offset + uint64_t{nb} * 8);
    const uint64_t data = uint64_t{spec.max_entries} * elem;
    if (l.data_offset + data > kMaxMapBytes)
        return spec_error(spec, E2BIG, "max_entries x element size exceeds the 1 GiB map limit");
    l.total_size = page_round(l.data_offset + data);
    return l;
}

}  // namespace

Result<Layout> plan_layout(const MapSpec& spec, uint32_t ncpus) {
    auto planned = plan_file_layout(spec, ncpus);
    if (!planned) return planned;
    Layout& l = planned.value();
    l.segments.push_back({0, 0, l.total_size});
    l.address_span = l.total_size;
    if (spec.type == MapType::RingBuf) {
        l.segments.push_back({l.total_size, l.data_offset, spec.max_entries});
        l.address_span += spec.max_entries;
    } else if (spec.type == MapType::PerfEventArray) {
        // Each slot's ring is followed by its own second mapping.
        l.segments[0].length = l.data_offset;
        for (uint64_t i = 0; i < spec.max_entries; ++i) {
            const uint64_t at = l.data_offset + 2 * i * kPerfSlotBytes;
            const uint64_t file = l.data_offset + i * kPerfSlotBytes;
            l.segments.push_back({at, file, kPerfSlotBytes});
            l.segments.push_back({at + kPerfSlotBytes, file, kPerfSlotBytes});
        }
        l.address_span = l.data_offset + 2 * uint64_t{spec.max_entries} * kPerfSlotBytes;
    }
    return planned;
}

// ---- ShmRegion ---------------------------------------------------------------------------

ShmRegion::~ShmRegion() {
    if (base_) ::munmap(base_, mapped_);
    if (fd_ >= 0) ::close(fd_);
}
ShmRegion::ShmRegion(ShmRegion&& o) noexcept : fd_(o.fd_), base_(o.base_), mapped_(o.mapped_) {
    o.fd_ = -1;
    o.base_ = nullptr;
    o.mapped_ = 0;
}
ShmRegion& ShmRegion::operator=(ShmRegion&& o) noexcept {
    if (this != &o) {
        this->~ShmRegion();
        new (this) ShmRegion(std::move(o));
    }
    return *this;
}

Result<ShmRegion> ShmRegion::map_fd(int fd, const Layout& layout) {
    ShmRegion r;
    r.fd_ = fd;
    // Reserve the whole range first so every segment lands where the layout puts it.
    void* base = ::mmap(nullptr, layout.address_span, PROT_NONE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return make_error(errno, fmt::format("mmap of {} bytes failed", layout.address_span));
    r.base_ = static_cast<uint8_t*>(base);
    r.mapped_ = layout.address_span;
    for (const Segment& seg : layout.segments)
        if (::mmap(r.base_ + seg.address_offset, seg.length, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_FIXED, fd, static_cast<off_t>(seg.file_offset)) == MAP_FAILED)
            return make_error(
                errno, fmt::format("mmap of {} bytes at file offset {} of the map memfd failed",
                                   seg.length, seg.file_offset));
    return r;
}

Result<ShmRegion> ShmRegion::create(const std::string& name, const Layout& layout) {
    const uint64_t size = layout.total_size;
    const std::string memfd_name = "liveio-map:" + name;
    const int low = ::memfd_create(memfd_name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (low < 0) return make_error(errno, fmt::format("memfd_create for map '{}' failed", name));
    // Inside a target the lowest free numbers are the target's (base/high_fd.h).
    const int fd = move_high(low);
    // memfds are created 0777; the map is the target owner's (reopening it through /proc needs
    // ptrace access to the target anyway, this also holds for a descriptor passed on).
    if (::fchmod(fd, 0600) != 0) {
        const int e = errno;
        ::close(fd);
        return make_error(e, fmt::format("fchmod 0600 of the memfd of map '{}' failed", name));
    }
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
        const int e = errno;
        ::close(fd);
        return make_error(e, fmt::format("sizing map '{}' to {} bytes failed", name, size));
    }
    // Memory is committed now, as the kernel preallocates map memory: a map that cannot be
    // backed fails here with an error, not later with a fault inside the target.
    if (const int e = ::posix_fallocate(fd, 0, static_cast<off_t>(size)); e != 0) {
        ::close(fd);
        return make_error(e, fmt::format("reserving {} bytes for map '{}' failed", size, name));
    }
    // A process holding the fd can no longer resize it: mappings of it never fault.
    if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        const int e = errno;
        ::close(fd);
        return make_error(e, fmt::format("sealing map '{}' failed", name));
    }
    return map_fd(fd, layout);
}

namespace {

uint64_t fresh_seed(const MapSpec& spec) {
    if (spec.flags & kFlagZeroSeed) return 0;
    uint64_t seed = 0;
    if (::getrandom(&seed, sizeof seed, GRND_NONBLOCK) != sizeof seed)
        seed = static_cast<uint64_t>(::getpid()) * 0x9e3779b97f4a7c15ull ^
               reinterpret_cast<uintptr_t>(&seed);
    return seed;
}

std::shared_ptr<Map> construct(const MapSpec& spec, const Layout& layout, ShmRegion region,
                               bool fresh) {
    switch (spec.type) {
        case MapType::Array:
        case MapType::PercpuArray:
        case MapType::ProgArray: return make_array_map(spec, layout, std::move(region), fresh);
        case MapType::Hash:
        case MapType::PercpuHash:
        case MapType::LruHash:
        case MapType::LruPercpuHash: return make_hash_map(spec, layout, std::move(region), fresh);
        case MapType::RingBuf: return make_ringbuf(spec, layout, std::move(region), fresh);
        case MapType::PerfEventArray:
            return make_perf_event_array(spec, layout, std::move(region), fresh);
    }
    return nullptr;  // plan_layout admits only the types above
}

}  // namespace
}  // namespace detail

using namespace detail;

Result<std::shared_ptr<Map>> create_map(const MapSpec& requested) {
    MapSpec spec = requested;
    // As libbpf: a perf event array without max_entries gets a slot per possible CPU.
    if (spec.type == MapType::PerfEventArray && spec.max_entries == 0)
        spec.max_entries = possible_cpus();
    auto layout = plan_layout(spec, possible_cpus());
    if (!layout) return layout.error();
    auto region = ShmRegion::create(spec.name, *layout);
    if (!region) return region.error();
    MapHeader* h = region->header();
    h->version = kMapVersion;
    h->header_size = sizeof(MapHeader);
    h->type = static_cast<uint32_t>(spec.type);
    h->key_size = spec.key_size;
    h->value_size = spec.value_size;
    h->max_entries = spec.max_entries;
    h->flags = spec.flags;
    h->ncpus = layout->ncpus;
    h->total_size = layout->total_size;
    h->seed = fresh_seed(spec);
    h->index_offset = layout->index_offset;
    h->data_offset = layout->data_offset;
    h->nbuckets = layout->nbuckets;
    h->elem_size = layout->elem_size;
    h->value_stride = layout->value_stride;
    std::memcpy(h->name, spec.name.data(), spec.name.size());
    auto map = construct(spec, *layout, std::move(region.value()), /*fresh=*/true);
    // Published last: an opener that sees the magic sees an initialized map.
    __atomic_store_n(&h->magic, kMapMagic, __ATOMIC_RELEASE);
    return map;
}

Result<std::shared_ptr<Map>> open_shared_map(int memfd) {
    struct stat st {};
    if (::fstat(memfd, &st) != 0)
        return make_error(errno, fmt::format("fd {}: fstat failed", memfd));
    const int mode = ::fcntl(memfd, F_GETFL);
    if (mode < 0 || (mode & O_ACCMODE) != O_RDWR)
        return make_error(EACCES,
                          fmt::format("fd {}: not open for reading and writing (maps are shared "
                                      "read-write: even a reader advances ring positions)",
                                      memfd));
    const int seals = ::fcntl(memfd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return make_error(EINVAL,
                          fmt::format("fd {}: not a sealed liveio map memfd (a truncation could "
                                      "crash readers)",
                                      memfd));
    if (static_cast<uint64_t>(st.st_size) < kPageSize)
        return make_error(EINVAL, fmt::format("fd {}: {} bytes is too small for a map header",
                                              memfd, st.st_size));
    MapHeader hdr;
    if (::pread(memfd, &hdr, sizeof hdr, 0) != static_cast<ssize_t>(sizeof hdr))
        return make_error(EIO, fmt::format("fd {}: reading the map header failed", memfd));
    if (hdr.magic != kMapMagic)
        return make_error(EINVAL, fmt::format("fd {}: bad map magic 0x{:x}", memfd, hdr.magic));
    if (hdr.version != kMapVersion || hdr.header_size != sizeof(MapHeader))
        return make_error(
            EINVAL,
            fmt::format("fd {}: map layout version {} (header {} bytes); this build "
                        "reads version {} ({} bytes)",
                        memfd, hdr.version, hdr.header_size, kMapVersion, sizeof(MapHeader)));
    MapSpec spec;
    spec.name.assign(hdr.name, strnlen(hdr.name, kNameCapacity - 1));
    spec.type = static_cast<MapType>(hdr.type);
    spec.key_size = hdr.key_size;
    spec.value_size = hdr.value_size;
    spec.max_entries = hdr.max_entries;
    spec.flags = hdr.flags;
    auto layout = plan_layout(spec, hdr.ncpus);
    if (!layout)
        return make_error(EINVAL, fmt::format("fd {}: header holds an invalid spec: {}", memfd,
                                              layout.error().message));
    if (layout->total_size != hdr.total_size || layout->index_offset != hdr.index_offset ||
        layout->data_offset != hdr.data_offset || layout->nbuckets != hdr.nbuckets ||
        layout->elem_size != hdr.elem_size || layout->value_stride != hdr.value_stride)
        return make_error(EINVAL,
                          fmt::format("fd {}: map '{}' header layout is inconsistent with its spec",
                                      memfd, spec.name));
    if (static_cast<uint64_t>(st.st_size) != layout->total_size)
        return make_error(EINVAL, fmt::format("fd {}: memfd holds {} bytes, map '{}' needs {}",
                                              memfd, st.st_size, spec.name, layout->total_size));
    const int fd = ::fcntl(memfd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return make_error(errno, fmt::format("fd {}: dup failed", memfd));
    auto region = ShmRegion::map_fd(fd, *layout);
    if (!region) return region.error();
    return construct(spec, *layout, std::move(region.value()), /*fresh=*/false);
}

}  // namespace liveio::ebpf
