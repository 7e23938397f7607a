#include "policy/runtime.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "base/raw_syscall.h"
#include "ebpf/runtime.h"
#include "ebpf/vm.h"
#include "liveio/policy.h"
#include "policy/file_id.h"
#include "policy/part_prefetch.h"

namespace liveio::policy {
namespace {

// The redirect request of the calling thread: policy slot + 1, 0 for none. Initial-exec: the
// library is part of the dlopen'ed agent (see CMakeLists.txt).
__attribute__((tls_model("initial-exec"))) thread_local uint8_t t_redirect = 0;

// The read whose exit edge runs on this thread (ReadDataScope): its io context and the bytes
// it returned into the caller's buffer.
struct ReadData {
    const void* ctx;
    const char* data;
    size_t len;
};
__attribute__((tls_model("initial-exec"))) thread_local ReadData t_read_data = {nullptr, nullptr,
                                                                                0};

// Most ranges one liveio_prefetch_batch call queues.
constexpr uint32_t kMaxBatch = 64;
constexpr uint64_t kMaxReadAsync = 1u << 20;

Runtime::Slot* calling_slot(ebpf::ExecEnv* env) {
    Runtime* rt = Runtime::active();
    return rt == nullptr || env == nullptr ? nullptr : rt->slot_of(env->program);
}

uint64_t h_prefetch(uint64_t fd, uint64_t offset, uint64_t len, uint64_t, uint64_t,
                    ebpf::ExecEnv* env) {
    Runtime::Slot* slot = calling_slot(env);
    if (slot == nullptr) return static_cast<uint64_t>(-EPERM);
    return static_cast<uint64_t>(Runtime::active()->queue(
        *slot, Action::Kind::Prefetch, static_cast<long>(fd), static_cast<long>(offset), len, 0));
}

uint64_t h_prefetch_batch(uint64_t ranges, uint64_t size, uint64_t, uint64_t, uint64_t,
                          ebpf::ExecEnv* env) {
    Runtime::Slot* slot = calling_slot(env);
    if (slot == nullptr) return static_cast<uint64_t>(-EPERM);
    const auto* r = reinterpret_cast<const liveio_prefetch*>(ranges);
    uint64_t n = size / sizeof(liveio_prefetch);
    if (n == 0) return static_cast<uint64_t>(-EINVAL);
    if (n > kMaxBatch) n = kMaxBatch;
    long queued = 0, last_error = 0;
    for (uint64_t i = 0; i < n; ++i) {
        liveio_prefetch p;
        std::memcpy(&p, r + i, sizeof p);  // the verifier proved `size` readable, not aligned
        const long rc =
            Runtime::active()->queue(*slot, Action::Kind::Prefetch, p.fd, p.offset, p.len, 0);
        if (rc == 0)
            ++queued;
        else
            last_error = rc;
    }
    return static_cast<uint64_t>(queued > 0 ? queued : last_error);
}

uint64_t h_read_async(uint64_t fd, uint64_t offset, uint64_t len, uint64_t cookie, uint64_t,
                      ebpf::ExecEnv* env) {
    Runtime::Slot* slot = calling_slot(env);
    if (slot == nullptr) return static_cast<uint64_t>(-EPERM);
    if (slot->completion.load(std::memory_order_acquire) == nullptr)
        return static_cast<uint64_t>(-ENOENT);
    if (len == 0 || len > kMaxReadAsync) return static_cast<uint64_t>(-EINVAL);
    return static_cast<uint64_t>(Runtime::active()->queue(
        *slot, Action::Kind::Read, static_cast<long>(fd), static_cast<long>(offset), len, cookie));
}

static_assert(LIVEIO_PART_FIRST == kPartFirst && LIVEIO_PART_ALL == kPartAll);

uint64_t h_prefetch_part(uint64_t fd, uint64_t file_id, uint64_t flags, uint64_t, uint64_t,
                         ebpf::ExecEnv* env) {
    Runtime::Slot* slot = calling_slot(env);
    if (slot == nullptr) return static_cast<uint64_t>(-EPERM);
    if (flags > (LIVEIO_PART_FIRST | LIVEIO_PART_ALL)) return static_cast<uint64_t>(-EINVAL);
    // The length is the worker's to find (the part's files); 1 keeps the queue's range check.
    // The flags ride in the offset, the file in the cookie (io_worker.cpp's Part action).
    return static_cast<uint64_t>(Runtime::active()->queue(
        *slot, Action::Kind::Part, static_cast<long>(fd), static_cast<long>(flags), 1, file_id));
}

uint64_t h_redirect(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ebpf::ExecEnv* env) {
    Runtime::Slot* slot = calling_slot(env);
    if (slot == nullptr) return static_cast<uint64_t>(-EPERM);
    if (Runtime::active()->redirector() == nullptr) {
        slot->counters.add(slot->counters.fallbacks);
        return static_cast<uint64_t>(-EOPNOTSUPP);
    }
    t_redirect = static_cast<uint8_t>(slot->index + 1);
    return 0;
}

uint64_t h_file_pos(uint64_t fd, uint64_t, uint64_t, uint64_t, uint64_t, ebpf::ExecEnv*) {
    return static_cast<uint64_t>(
        liveio::raw_syscall(SYS_lseek, static_cast<long>(fd), 0, SEEK_CUR));
}

// cachestat(2) (Linux 6.5): the same number on every architecture; the build's headers may
// predate it.
constexpr long kSysCachestat = 451;
struct CachestatRange {
    uint64_t off;
    uint64_t len;
};
struct Cachestat {
    uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};
constexpr uint64_t kPageSize = 4096;

uint64_t h_cached(uint64_t fd, uint64_t offset, uint64_t len, uint64_t, uint64_t, ebpf::ExecEnv*) {
    const auto off = static_cast<int64_t>(offset);
    if (static_cast<int64_t>(fd) < 0 || off < 0 || len == 0 ||
        len > static_cast<uint64_t>(INT64_MAX - off))
        return static_cast<uint64_t>(-EINVAL);
    CachestatRange range{offset, len};
    Cachestat cs{};
    const long rc =
        liveio::raw_syscall(kSysCachestat, static_cast<long>(fd), reinterpret_cast<long>(&range),
                            reinterpret_cast<long>(&cs), 0);
    if (rc != 0) return static_cast<uint64_t>(rc);
    // Pages the range touches: `len` only when all of them are cached, less otherwise.
    const uint64_t pages = (offset + len - 1) / kPageSize - offset / kPageSize + 1;
    if (cs.nr_cache >= pages) return len;
    const uint64_t bytes = cs.nr_cache * kPageSize;
    return bytes < len ? bytes : len - 1;
}

// Bytes of [lo, hi) of the file `file_id` in the page cache, through `fd` if it still refers
// to that file; 0 otherwise (closed, reused, or no cachestat: Linux before 6.5).
uint64_t resident_bytes(int fd, uint64_t file_id, uint64_t lo, uint64_t hi) {
    if (hi <= lo || file_id == 0 || regular_file_id(fd) != file_id) return 0;
    const uint64_t cached = h_cached(static_cast<uint64_t>(fd), lo, hi - lo, 0, 0, nullptr);
    return static_cast<int64_t>(cached) < 0 ? 0 : cached;
}

uint64_t h_complete_load(uint64_t ctx, uint64_t offset, uint64_t dst, uint64_t len, uint64_t,
                         ebpf::ExecEnv*) {
    Runtime* rt = Runtime::active();
    if (rt == nullptr) return static_cast<uint64_t>(-EINVAL);
    return static_cast<uint64_t>(rt->complete_load(reinterpret_cast<const void*>(ctx), offset,
                                                   reinterpret_cast<void*>(dst), len));
}

uint64_t h_io_load(uint64_t ctx, uint64_t offset, uint64_t dst, uint64_t len, uint64_t,
                   ebpf::ExecEnv* env) {
    const ReadData& r = t_read_data;
    void* out = reinterpret_cast<void*>(dst);
    if (calling_slot(env) == nullptr || r.ctx == nullptr ||
        reinterpret_cast<const void*>(ctx) != r.ctx || offset > r.len || len > r.len - offset) {
        std::memset(out, 0, len);
        return static_cast<uint64_t>(-EINVAL);
    }
    std::memcpy(out, r.data + offset, len);
    return 0;
}

uint64_t h_feedback(uint64_t out, uint64_t size, uint64_t, uint64_t, uint64_t, ebpf::ExecEnv* env) {
    Runtime::Slot* slot = calling_slot(env);
    if (slot == nullptr) {
        std::memset(reinterpret_cast<void*>(out), 0, size);
        return static_cast<uint64_t>(-EPERM);
    }
    Runtime::active()->feedback(*slot, reinterpret_cast<void*>(out), size);
    return 0;
}

uint64_t h_knob(uint64_t index, uint64_t, uint64_t, uint64_t, uint64_t, ebpf::ExecEnv* env) {
    Runtime::Slot* slot = calling_slot(env);
    if (slot == nullptr || index >= kMaxKnobs) return 0;
    return slot->knobs[index].load(std::memory_order_relaxed);
}

}  // namespace

std::atomic<Runtime*> Runtime::active_{nullptr};

ReadDataScope::ReadDataScope(const void* ctx, const void* data, size_t len) {
    t_read_data = {ctx, static_cast<const char*>(data), len};
}

ReadDataScope::~ReadDataScope() { t_read_data = {nullptr, nullptr, 0}; }

struct Runtime::Frame {
    liveio_io_complete_ctx ctx;
    std::span<const char> data;
};

Result<void> Runtime::add_helpers(ebpf::HelperTable& table) {
    using A = ebpf::ArgType;
    using R = ebpf::RetType;
    auto proto = [](const char* name, ebpf::HelperFn fn, std::array<A, 5> args) {
        ebpf::HelperProto p;
        p.name = name;
        p.fn = fn;
        p.ret = R::Integer;
        p.args = args;
        return p;
    };
    const struct {
        int32_t id;
        ebpf::HelperProto proto;
    } helpers[] = {
        {LIVEIO_HELPER_PREFETCH,
         proto("liveio_prefetch", h_prefetch, {A::Scalar, A::Scalar, A::Scalar, A::None, A::None})},
        {LIVEIO_HELPER_PREFETCH_BATCH,
         proto("liveio_prefetch_batch", h_prefetch_batch,
               {A::PtrToMem, A::ConstSize, A::None, A::None, A::None})},
        {LIVEIO_HELPER_READ_ASYNC, proto("liveio_read_async", h_read_async,
                                         {A::Scalar, A::Scalar, A::Scalar, A::Scalar, A::None})},
        {LIVEIO_HELPER_REDIRECT,
         proto("liveio_redirect", h_redirect, {A::None, A::None, A::None, A::None, A::None})},
        {LIVEIO_HELPER_FILE_POS,
         proto("liveio_file_pos", h_file_pos, {A::Scalar, A::None, A::None, A::None, A::None})},
        {LIVEIO_HELPER_COMPLETE_LOAD,
         proto("liveio_complete_load", h_complete_load,
               {A::PtrToCtx, A::Scalar, A::PtrToUninitMem, A::ConstSize, A::None})},
        {LIVEIO_HELPER_FEEDBACK,
         proto("liveio_policy_feedback", h_feedback,
               {A::PtrToUninitMem, A::ConstSize, A::None, A::None, A::None})},
        {LIVEIO_HELPER_KNOB,
         proto("liveio_knob", h_knob, {A::Scalar, A::None, A::None, A::None, A::None})},
        {LIVEIO_HELPER_IO_LOAD,
         proto("liveio_io_load", h_io_load,
               {A::PtrToCtx, A::Scalar, A::PtrToUninitMem, A::ConstSize, A::None})},
        {LIVEIO_HELPER_CACHED,
         proto("liveio_cached", h_cached, {A::Scalar, A::Scalar, A::Scalar, A::None, A::None})},
        {LIVEIO_HELPER_PREFETCH_PART, proto("liveio_prefetch_part", h_prefetch_part,
                                            {A::Scalar, A::Scalar, A::Scalar, A::None, A::None})},
    };
    for (const auto& h : helpers)
        if (auto r = table.extend(h.id, h.proto); !r) return r.error();
    return {};
}

Result<std::unique_ptr<Runtime>> Runtime::create(const Options& options) {
    std::unique_ptr<Runtime> rt(new Runtime(options));
    Runtime* expected = nullptr;
    if (!active_.compare_exchange_strong(expected, rt.get()))
        return make_error(EBUSY, "a policy runtime already runs in this process");
    auto worker = IoWorker::start(options.worker, *rt);
    if (!worker) {
        active_.store(nullptr);
        return worker.error();
    }
    rt->worker_ = std::move(worker).value();
    return rt;
}

Runtime::Runtime(const Options& options)
    : ledger_(
          options.ledger_ranges,
          [this](uint8_t slot, uint64_t bytes, Fate fate) {
              Counters& c = slots_[slot].counters;
              if (fate == Fate::Used) {
                  c.add(c.used_bytes, bytes);
                  return;
              }
              c.add(c.wasted_bytes, bytes);
              if (fate == Fate::WastedResident) c.add(c.wasted_resident_bytes, bytes);
          },
          resident_bytes) {
    for (int i = 0; i < kMaxPolicies; ++i) slots_[i].index = static_cast<uint8_t>(i);
}

Runtime::~Runtime() {
    for (int i = 0; i < kMaxPolicies; ++i)
        if (slots_[i].on.load()) (void)disable(static_cast<uint8_t>(i));
    worker_.reset();
    Runtime* self = this;
    active_.compare_exchange_strong(self, nullptr);
}

Result<uint8_t> Runtime::enable(PolicySpec spec) {
    if (spec.programs.size() > kMaxPolicyPrograms)
        return make_error(E2BIG, "policy '" + spec.name + "' has more than " +
                                     std::to_string(kMaxPolicyPrograms) + " programs");
    if (spec.knobs.size() > kMaxKnobs)
        return make_error(E2BIG, "policy '" + spec.name + "' has more than " +
                                     std::to_string(kMaxKnobs) + " knobs");
    std::lock_guard lock(mu_);
    for (Slot& s : slots_)
        if (s.on.load() && s.name == spec.name)
            return make_error(EEXIST, "policy '" + spec.name + "' is already on");
    for (Slot& s : slots_) {
        if (s.on.load() || !s.name.empty()) continue;
        s.name = spec.name;
        for (size_t i = 0; i < kMaxPolicyPrograms; ++i)
            s.programs[i].store(i < spec.programs.size() ? spec.programs[i] : nullptr,
                                std::memory_order_relaxed);
        for (size_t i = 0; i < kMaxKnobs; ++i)
            s.knobs[i].store(i < spec.knobs.size() ? spec.knobs[i] : 0, std::memory_order_relaxed);
        s.completion.store(spec.completion, std::memory_order_relaxed);
        s.services = spec.services;
        s.counters.~Counters();
        new (&s.counters) Counters();
        s.generation.fetch_add(1, std::memory_order_relaxed);
        s.on.store(true, std::memory_order_release);
        return s.index;
    }
    return make_error(
        ENOSPC, "no free policy slot (" + std::to_string(kMaxPolicies) + " policies at most)");
}

Result<void> Runtime::disable(uint8_t index) {
    if (index >= kMaxPolicies) return make_error(EINVAL, "no policy slot " + std::to_string(index));
    std::lock_guard lock(mu_);
    Slot& s = slots_[index];
    if (!s.on.load()) return make_error(ENOENT, "policy slot " + std::to_string(index) + " is off");
    s.on.store(false, std::memory_order_seq_cst);
    s.generation.fetch_add(1, std::memory_order_seq_cst);
    // A helper that saw the slot on may still be pushing: wait for it (helpers never block,
    // so this is a few instructions), then nothing new of this slot can be queued.
    while (s.queuing.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
    // Everything queued before is now refused by admit(); wait until it has passed the worker
    // and what was in flight has completed (its completion program included).
    worker_->barrier();
    ledger_.forget(index);
    for (auto& p : s.programs) p.store(nullptr, std::memory_order_relaxed);
    s.completion.store(nullptr, std::memory_order_relaxed);
    s.services = nullptr;
    s.name.clear();
    return {};
}

Result<void> Runtime::set_knob(uint8_t index, unsigned knob, uint64_t value) {
    if (index >= kMaxPolicies || !slots_[index].on.load())
        return make_error(ENOENT, "policy slot is off");
    if (knob >= kMaxKnobs)
        return make_error(EINVAL, "knob index " + std::to_string(knob) + " out of range");
    slots_[index].knobs[knob].store(value, std::memory_order_relaxed);
    return {};
}

nlohmann::json Runtime::counters_json(uint8_t slot) const {
    nlohmann::json j = slots_[slot].counters.to_json();
    j["pending_bytes"] = ledger_.pending(slot);
    return j;
}

nlohmann::json Runtime::describe() const {
    std::lock_guard lock(mu_);
    const WorkerStats ws = worker_->stats();
    nlohmann::json policies = nlohmann::json::array();
    for (const Slot& s : slots_) {
        if (!s.on.load()) continue;
        nlohmann::json p = counters_json(s.index);
        p["slot"] = s.index;
        p["name"] = s.name;
        policies.push_back(std::move(p));
    }
    return {{"worker",
             {{"tid", worker_->tid()},
              {"io_uring", worker_->uses_io_uring()},
              {"budget_bytes", worker_->budget()},
              {"bytes_in_flight", worker_->bytes_in_flight()},
              {"submitted", ws.submitted},
              {"completed", ws.completed},
              {"wakeups", ws.wakeups},
              {"budget_drops", ws.budget_drops},
              {"not_regular", ws.not_regular},
              {"reads_unsupported", ws.reads_unsupported},
              {"rings_created", ws.rings_created},
              {"rings_retired", ws.rings_retired},
              {"ring_down_drops", ws.ring_down_drops},
              {"prefetch_fills", ws.prefetch_fills},
              {"prefetch_advice", ws.prefetch_advice},
              {"ledger_ranges", ledger_.ranges()}}},
            {"policies", policies}};
}

bool Runtime::take_redirect(uint8_t& slot) {
    if (t_redirect == 0) return false;
    slot = static_cast<uint8_t>(t_redirect - 1);
    t_redirect = 0;
    return true;
}

Runtime::Slot* Runtime::slot_of(const ebpf::Program* program) {
    if (program == nullptr) return nullptr;
    for (Slot& s : slots_) {
        if (!s.on.load(std::memory_order_acquire)) continue;
        for (auto& p : s.programs) {
            const ebpf::Program* q = p.load(std::memory_order_relaxed);
            if (q == nullptr) break;
            if (q == program) return &s;
        }
    }
    return nullptr;
}

long Runtime::queue(Slot& slot, Action::Kind kind, long fd, long offset, uint64_t len,
                    uint64_t cookie) {
    if (fd < 0 || fd > INT32_MAX || len == 0) return -EINVAL;
    // Announce, then re-check `on` (seq_cst on both sides with disable's store and wait).
    slot.queuing.fetch_add(1, std::memory_order_seq_cst);
    struct Leave {
        std::atomic<uint32_t>& q;
        ~Leave() { q.fetch_sub(1, std::memory_order_seq_cst); }
    } leave{slot.queuing};
    if (!slot.on.load(std::memory_order_seq_cst)) return -EPERM;
    if (offset == -1) {
        offset = liveio::raw_syscall(SYS_lseek, fd, 0, SEEK_CUR);
        if (offset < 0) return offset;
    }
    if (offset < 0) return -EINVAL;
    Action a;
    a.kind = kind;
    a.slot = slot.index;
    a.generation = slot.generation.load(std::memory_order_acquire);
    a.fd = static_cast<int32_t>(fd);
    a.offset = offset;
    a.len = len;
    a.cookie = cookie;
    a.fill = kind == Action::Kind::Prefetch && slot.fill.load(std::memory_order_relaxed);
    Counters& c = slot.counters;
    c.add(c.inflight);
    if (!worker_->push(a)) {
        c.add(c.drops);
        c.inflight.fetch_sub(1, std::memory_order_relaxed);
        return -EAGAIN;
    }
    c.add(c.actions);
    return 0;
}

bool Runtime::admit(const Action& a) {
    const Slot& s = slots_[a.slot];
    return s.on.load(std::memory_order_acquire) &&
           s.generation.load(std::memory_order_acquire) == a.generation;
}

void Runtime::dropped(const Action& a) {
    Counters& c = slots_[a.slot].counters;
    c.add(c.drops);
    c.inflight.fetch_sub(1, std::memory_order_relaxed);
}

void Runtime::issued(const Action& a, uint64_t file_id) {
    Counters& c = slots_[a.slot].counters;
    c.add(c.issued_bytes, a.len);
    ledger_.record(a.slot, file_id, a.fd, static_cast<uint64_t>(a.offset), a.len);
}

void Runtime::completed(const Action& a, uint64_t file_id, int32_t res, std::span<const char> data,
                        uint64_t latency_ns) {
    Slot& s = slots_[a.slot];
    Counters& c = s.counters;
    c.add(c.latency_ns_sum, latency_ns);
    c.add(c.latency_count);
    // Completions run on the one liveio-io thread: a load and a store suffice.
    const uint64_t recent = Counters::get(c.latency_recent_ns);
    c.latency_recent_ns.store(recent == 0 ? latency_ns : recent - recent / 8 + latency_ns / 8,
                              std::memory_order_relaxed);
    // A prefetch names the target's descriptor; the target may close it after the action was
    // checked and before io_uring ran the advice. That is the target's right, not a failure:
    // counted as dropped, like an action the queue could not take.
    if (res == -EBADF && a.kind == Action::Kind::Prefetch)
        c.add(c.drops);
    else if (res < 0)
        c.add(c.errors);
    if (a.kind == Action::Kind::Read && admit(a)) {
        const ebpf::Executable* exe = s.completion.load(std::memory_order_acquire);
        if (exe != nullptr && s.services != nullptr) {
            Frame frame{};
            frame.ctx.size = sizeof frame.ctx;
            frame.ctx.fd = a.fd;
            frame.ctx.offset = a.offset;
            frame.ctx.len = a.len;
            frame.ctx.result = res;
            frame.ctx.cookie = a.cookie;
            frame.ctx.file_id = file_id;
            frame.ctx.data_len = data.size();
            frame.data = data;
            frame_.store(&frame, std::memory_order_release);
            ebpf::ExecEnv env = s.services->make_env();
            exe->run(env, reinterpret_cast<uint64_t>(&frame.ctx), sizeof frame.ctx);
            frame_.store(nullptr, std::memory_order_release);
            c.add(c.completions);
        }
    }
    c.inflight.fetch_sub(1, std::memory_order_relaxed);
}

long Runtime::complete_load(const void* ctx, uint64_t offset, void* dst, uint64_t len) const {
    const Frame* f = frame_.load(std::memory_order_acquire);
    // Only the program running the current completion, on the I/O thread, sees a frame.
    if (f == nullptr || ctx != &f->ctx || offset > f->data.size() ||
        len > f->data.size() - offset) {
        std::memset(dst, 0, len);
        return -EINVAL;
    }
    std::memcpy(dst, f->data.data() + offset, len);
    return 0;
}

void Runtime::feedback(const Slot& slot, void* out, uint64_t size) const {
    const Counters& c = slot.counters;
    liveio_policy_feedback f{};
    f.actions = Counters::get(c.actions);
    f.issued_bytes = Counters::get(c.issued_bytes);
    f.used_bytes = Counters::get(c.used_bytes);
    f.wasted_bytes = Counters::get(c.wasted_bytes);
    f.inflight = Counters::get(c.inflight);
    f.drops = Counters::get(c.drops);
    f.errors = Counters::get(c.errors);
    f.latency_ns_avg = Counters::get(c.latency_recent_ns);
    std::memset(out, 0, size);
    std::memcpy(out, &f, size < sizeof f ? size : sizeof f);
}

}  // namespace liveio::policy
