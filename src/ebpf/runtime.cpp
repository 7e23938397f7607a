#include "ebpf/runtime.h"

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <sched.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "ebpf/vm.h"

namespace liveio::ebpf {
namespace {

struct TraceRecordHeader {
    uint64_t time_ns;
    uint32_t tgid;
    uint32_t tid;
};
static_assert(sizeof(TraceRecordHeader) == 16);

Result<std::shared_ptr<RingBuffer>> as_ring(Result<std::shared_ptr<Map>> map, const char* what) {
    if (!map) return make_error(map.error().code, fmt::format("{}: {}", what, map.error().message));
    auto ring = std::dynamic_pointer_cast<RingBuffer>(map.value());
    if (!ring)
        return make_error(EINVAL, fmt::format("{}: the memfd does not hold a ring buffer", what));
    return ring;
}

}  // namespace

Result<TraceLog> TraceLog::create(uint32_t bytes) {
    const auto page = static_cast<uint32_t>(sysconf(_SC_PAGESIZE));
    if (bytes < page || (bytes & (bytes - 1)) != 0)
        return make_error(
            EINVAL,
            fmt::format("trace log size {} must be a power of two of at least {}", bytes, page));
    MapSpec spec;
    spec.name = "trace_printk";
    spec.type = MapType::RingBuf;
    spec.max_entries = bytes;
    auto ring = as_ring(create_map(spec), "trace log");
    if (!ring) return ring.error();
    return TraceLog(std::move(ring.value()));
}

Result<TraceLog> TraceLog::open(int memfd) {
    auto ring = as_ring(open_shared_map(memfd), "trace log");
    if (!ring) return ring.error();
    return TraceLog(std::move(ring.value()));
}

long TraceLog::write(uint64_t time_ns, uint32_t tgid, uint32_t tid, std::string_view text) {
    if (text.size() > kTracePrintkMax) text = text.substr(0, kTracePrintkMax);
    void* rec = ring_->reserve(sizeof(TraceRecordHeader) + text.size());
    if (!rec) return -ENOSPC;
    const TraceRecordHeader hdr{time_ns, tgid, tid};
    std::memcpy(rec, &hdr, sizeof(hdr));
    std::memcpy(static_cast<uint8_t*>(rec) + sizeof(hdr), text.data(), text.size());
    ring_->submit(rec);
    return 0;
}

size_t TraceLog::read(const std::function<void(const TraceLine&)>& fn) {
    return ring_->consume([&](const void* data, uint32_t size) {
        // Records come from another process's memory: anything shorter than a header is
        // not ours and is skipped rather than read past.
        if (size < sizeof(TraceRecordHeader)) return;
        TraceRecordHeader hdr;
        std::memcpy(&hdr, data, sizeof(hdr));
        TraceLine line;
        line.time_ns = hdr.time_ns;
        line.tgid = hdr.tgid;
        line.tid = hdr.tid;
        line.text =
            std::string_view(static_cast<const char*>(data) + sizeof(hdr), size - sizeof(hdr));
        fn(line);
    });
}

Result<std::unique_ptr<Runtime>> Runtime::create(const Options& options) {
    if (options.max_programs == 0 || options.max_programs > (1u << 20))
        return make_error(EINVAL, fmt::format("max_programs {} must be in 1..{}",
                                              options.max_programs, 1u << 20));
    auto log = TraceLog::create(options.trace_log_bytes);
    if (!log) return log.error();
    return std::unique_ptr<Runtime>(new Runtime(std::move(log.value()), options.max_programs));
}

Runtime::Runtime(TraceLog log, uint32_t max_programs)
    : trace_log_(std::move(log)),
      max_programs_(max_programs),
      programs_(new std::atomic<const Executable*>[max_programs]),
      prandom_(new PrandomSlot[kPrandomSlots]) {
    for (uint32_t i = 0; i < max_programs_; ++i)
        programs_[i].store(nullptr, std::memory_order_relaxed);
    uint64_t seeds[kPrandomSlots];
    if (getrandom(seeds, sizeof(seeds), GRND_NONBLOCK) != static_cast<ssize_t>(sizeof(seeds))) {
        // No entropy yet (early boot): distinct, time-dependent seeds are still distinct streams.
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t x = static_cast<uint64_t>(ts.tv_nsec) ^ (static_cast<uint64_t>(getpid()) << 32);
        for (auto& s : seeds) s = (x += 0x9e3779b97f4a7c15ull) * 0xbf58476d1ce4e5b9ull;
    }
    for (uint32_t i = 0; i < kPrandomSlots; ++i)
        prandom_[i].state.store(seeds[i], std::memory_order_relaxed);
}

uint32_t Runtime::prandom_u32() {
    const int cpu = sched_getcpu();
    PrandomSlot& slot = prandom_[static_cast<uint32_t>(cpu < 0 ? 0 : cpu) % kPrandomSlots];
    // splitmix64: the state is a Weyl counter, so concurrent draws from one slot (a migrated
    // thread) still get distinct states; the output mix makes consecutive states independent.
    constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ull;
    uint64_t z = slot.state.fetch_add(kGamma, std::memory_order_relaxed) + kGamma;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return static_cast<uint32_t>((z ^ (z >> 31)) >> 32);
}

Runtime::~Runtime() = default;

Result<uint32_t> Runtime::add_program(const Executable& exe) {
    std::lock_guard lock(registry_mutex_);
    for (uint32_t i = 0; i < max_programs_; ++i) {
        if (programs_[i].load(std::memory_order_relaxed) == nullptr) {
            programs_[i].store(&exe, std::memory_order_release);
            return i + 1;
        }
    }
    return make_error(ENOSPC, fmt::format("program registry full ({} programs)", max_programs_));
}

void Runtime::remove_program(uint32_t id) {
    if (id == 0 || id > max_programs_) return;
    std::lock_guard lock(registry_mutex_);
    programs_[id - 1].store(nullptr, std::memory_order_release);
}

Result<void> Runtime::set_tail_call(Map& prog_array, uint32_t index, uint32_t id) {
    const MapSpec& spec = prog_array.spec();
    if (spec.type != MapType::ProgArray)
        return make_error(EINVAL, fmt::format("map '{}' is not a program array", spec.name));
    if (index >= spec.max_entries)
        return make_error(E2BIG, fmt::format("index {} out of program array '{}' ({} slots)", index,
                                             spec.name, spec.max_entries));
    if (id == 0) {
        const long rc = prog_array.remove(&index);
        if (rc != 0 && rc != -ENOENT)
            return make_error(static_cast<int>(-rc),
                              fmt::format("clearing slot {} of '{}': {}", index, spec.name,
                                          std::strerror(static_cast<int>(-rc))));
        return {};
    }
    if (id > max_programs_ || programs_[id - 1].load(std::memory_order_acquire) == nullptr)
        return make_error(ENOENT, fmt::format("program id {} is not registered", id));
    const long rc = prog_array.update(&index, &id, kUpdateAny);
    if (rc != 0)
        return make_error(static_cast<int>(-rc),
                          fmt::format("setting slot {} of '{}': {}", index, spec.name,
                                      std::strerror(static_cast<int>(-rc))));
    return {};
}

const Executable* Runtime::resolve_tail_call(void* services, Map* map, uint32_t index) {
    Runtime* rt = from(services);
    if (!rt || !map || map->spec().type != MapType::ProgArray) return nullptr;
    auto* slot = static_cast<uint32_t*>(map->lookup(&index));
    if (!slot) return nullptr;
    // The slot may be rewritten concurrently by set_tail_call (or by another process).
    const uint32_t id = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (id == 0 || id > rt->max_programs_) return nullptr;
    return rt->programs_[id - 1].load(std::memory_order_acquire);
}

uint64_t Runtime::run(const Executable& exe, void* ctx, size_t len) {
    ExecEnv env = make_env();
    return exe.run(env, reinterpret_cast<uint64_t>(ctx), len);
}

}  // namespace liveio::ebpf
