// The kernel-compatible helpers (HelperTable::standard): kernel IDs, kernel semantics and
// return codes, userspace definitions where the kernel's notion has no direct equivalent:
//  - "CPU" is sched_getcpu(), as the per-CPU maps use it (map.h).
//  - probe_read* read the process's own memory through process_vm_readv, which reports an
//    unmapped or unreadable address as an error instead of faulting, so a bad pointer costs
//    -EFAULT (destination zeroed, as the kernel) and never a crash. The _kernel variants are
//    the same: programs written for raw tracepoints read pt_regs with them, and in the
//    target the only address space is the process's own.
//  - trace_printk writes to the TraceLog of the Runtime (runtime.h) passed as services;
//    get_prandom_u32 draws from the Runtime's per-CPU generators.
#include <sched.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

#include "ebpf/exec_env.h"
#include "ebpf/helpers.h"
#include "ebpf/map.h"
#include "ebpf/program.h"
#include "ebpf/runtime.h"

namespace liveio::ebpf {
namespace {

uint64_t err(int e) { return static_cast<uint64_t>(static_cast<int64_t>(-e)); }
template <typename T>
T* ptr(uint64_t v) {
    return reinterpret_cast<T*>(v);
}

// ---- maps ----

uint64_t map_lookup_elem(uint64_t map, uint64_t key, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    return reinterpret_cast<uint64_t>(ptr<Map>(map)->lookup(ptr<const void>(key)));
}
uint64_t map_update_elem(uint64_t map, uint64_t key, uint64_t value, uint64_t flags, uint64_t,
                         ExecEnv*) {
    return static_cast<uint64_t>(
        ptr<Map>(map)->update(ptr<const void>(key), ptr<const void>(value), flags));
}
uint64_t map_delete_elem(uint64_t map, uint64_t key, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    return static_cast<uint64_t>(ptr<Map>(map)->remove(ptr<const void>(key)));
}

// ---- time, identity ----

uint64_t clock_ns(clockid_t id) {
    timespec ts{};
    clock_gettime(id, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}
uint64_t ktime_get_ns(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    return clock_ns(CLOCK_MONOTONIC);
}
uint64_t ktime_get_boot_ns(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    return clock_ns(CLOCK_BOOTTIME);
}
uint64_t ktime_get_coarse_ns(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    return clock_ns(CLOCK_MONOTONIC_COARSE);
}

uint64_t pid_tgid() {
    return (static_cast<uint64_t>(static_cast<uint32_t>(getpid())) << 32) |
           static_cast<uint32_t>(gettid());
}
uint64_t get_current_pid_tgid(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    return pid_tgid();
}
uint64_t get_current_uid_gid(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    return (static_cast<uint64_t>(getgid()) << 32) | static_cast<uint32_t>(getuid());
}

// As the kernel (strscpy_pad of task->comm): the calling thread's name, truncated to size - 1
// bytes, NUL-terminated and NUL-padded to `size`; 0. The verifier guarantees size > 0; a
// program that skipped it gets -EINVAL for size 0, as the kernel's error path.
uint64_t get_current_comm(uint64_t buf, uint64_t size, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    if (size == 0) return err(EINVAL);
    char comm[17] = {};
    if (prctl(PR_GET_NAME, comm) != 0) {
        std::memset(ptr<void>(buf), 0, size);
        return err(EINVAL);
    }
    const size_t n = std::min<size_t>(std::strlen(comm), size - 1);
    std::memcpy(ptr<void>(buf), comm, n);
    std::memset(ptr<char>(buf) + n, 0, size - n);
    return 0;
}

uint64_t get_smp_processor_id(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    const int cpu = sched_getcpu();
    return cpu < 0 ? 0 : static_cast<uint64_t>(cpu);
}

// The generator state lives in the Runtime (per-CPU slots, see runtime.h). A program run
// without one still gets numbers: the cycle counter mixed with the thread id, which differ
// on every call but are not a statistically sound stream.
uint64_t get_prandom_u32(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv* env) {
    if (Runtime* rt = Runtime::from(env ? env->services : nullptr)) return rt->prandom_u32();
    uint64_t z = __builtin_ia32_rdtsc() ^ (static_cast<uint64_t>(gettid()) << 40);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return static_cast<uint32_t>((z ^ (z >> 31)) >> 32);
}

// ---- fault-safe reads of the process's own memory ----

// Copies `size` bytes from `src` into `dst`; false when any byte is unreadable.
bool safe_copy(void* dst, uint64_t src, size_t size) {
    if (size == 0) return true;
    iovec local{dst, size};
    iovec remote{reinterpret_cast<void*>(src), size};
    const ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    return n == static_cast<ssize_t>(size);
}

// Kernel string-read semantics: copies up to the NUL (included) or size - 1 bytes and a NUL;
// returns the length copied including the NUL. Reads page by page so a string ending just
// before an unmapped page is read in full. On a fault: -EFAULT and dst zeroed.
int64_t safe_read_str(char* dst, size_t size, uint64_t src) {
    if (size == 0) return 0;
    const auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    char bounce[256];
    size_t done = 0;
    while (done < size) {
        const uint64_t addr = src + done;
        if (addr < src) break;  // wrapped around the address space
        const size_t chunk =
            std::min({size - done, sizeof(bounce), static_cast<size_t>(page - addr % page)});
        if (!safe_copy(bounce, addr, chunk)) break;
        if (const void* nul = std::memchr(bounce, 0, chunk)) {
            const size_t n = static_cast<size_t>(static_cast<const char*>(nul) - bounce) + 1;
            std::memcpy(dst + done, bounce, n);
            return static_cast<int64_t>(done + n);
        }
        std::memcpy(dst + done, bounce, chunk);
        done += chunk;
    }
    if (done == size) {  // truncated: the last byte becomes the NUL
        dst[size - 1] = '\0';
        return static_cast<int64_t>(size);
    }
    std::memset(dst, 0, size);
    return -EFAULT;
}

uint64_t probe_read(uint64_t dst, uint64_t size, uint64_t src, uint64_t, uint64_t, ExecEnv*) {
    if (safe_copy(ptr<void>(dst), src, size)) return 0;
    std::memset(ptr<void>(dst), 0, size);
    return err(EFAULT);
}
uint64_t probe_read_str(uint64_t dst, uint64_t size, uint64_t src, uint64_t, uint64_t, ExecEnv*) {
    return static_cast<uint64_t>(safe_read_str(ptr<char>(dst), size, src));
}

// ---- trace_printk ----

// Formats the kernel's bpf_trace_printk subset: %% %c %s %p %px %pK and %d %i %u %x %X with
// l / ll, each optionally with flags [0+- ] and a width; at most three conversions. Returns
// the length of the output (which may exceed `cap`, as snprintf) or a negative errno.
int64_t format_printk(char* out, size_t cap, const char* fmt, size_t fmt_len,
                      const uint64_t args[3]) {
    size_t len = 0;
    auto put = [&](const char* s, size_t n) {
        if (len < cap) std::memcpy(out + len, s, std::min(n, cap - len));
        len += n;
    };
    int used = 0;
    for (size_t i = 0; i < fmt_len; ++i) {
        if (fmt[i] != '%') {
            put(&fmt[i], 1);
            continue;
        }
        if (i + 1 < fmt_len && fmt[i + 1] == '%') {
            put("%", 1);
            ++i;
            continue;
        }
        // Rebuild the conversion for snprintf from the validated pieces only.
        char spec[24] = "%";
        size_t sl = 1;
        size_t j = i + 1;
        while (j < fmt_len && std::strchr("0+- ", fmt[j]) && fmt[j] && sl < 6)
            spec[sl++] = fmt[j++];
        while (j < fmt_len && fmt[j] >= '0' && fmt[j] <= '9' && sl < 10) spec[sl++] = fmt[j++];
        if (j < fmt_len && fmt[j] >= '0' && fmt[j] <= '9') return -EINVAL;  // absurd width
        if (j >= fmt_len) return -EINVAL;
        if (used == 3) return -EINVAL;  // more conversions than arguments
        const uint64_t arg = args[used++];
        char buf[kTracePrintkMax];
        int n = 0;
        const char c = fmt[j];
        if (c == 'c') {
            spec[sl++] = 'c';
            n = std::snprintf(buf, sizeof(buf), spec,
                              static_cast<int>(static_cast<unsigned char>(arg)));
        } else if (c == 's') {
            // Read through the fault-safe path; an unreadable string prints as empty, as the
            // kernel.
            char str[kTracePrintkMax];
            if (safe_read_str(str, sizeof(str), arg) < 0) str[0] = '\0';
            spec[sl++] = 's';
            n = std::snprintf(buf, sizeof(buf), spec, str);
        } else if (c == 'p') {
            if (j + 1 < fmt_len && (fmt[j + 1] == 'x' || fmt[j + 1] == 'K'))
                ++j;
            else if (j + 1 < fmt_len && std::isalnum(static_cast<unsigned char>(fmt[j + 1])))
                return -EINVAL;  // %pB %pI4 ...: extensions we do not implement
            spec[sl++] = '#';
            spec[sl++] = 'l';
            spec[sl++] = 'x';
            n = arg ? std::snprintf(buf, sizeof(buf), spec, static_cast<unsigned long>(arg))
                    : std::snprintf(buf, sizeof(buf), "0x0");
        } else {
            int longs = 0;
            while (j < fmt_len && fmt[j] == 'l' && longs < 2) ++longs, ++j;
            if (j >= fmt_len) return -EINVAL;
            const char conv = fmt[j];
            if (!std::strchr("diuxX", conv) || conv == '\0') return -EINVAL;
            const bool is_signed = conv == 'd' || conv == 'i';
            spec[sl++] = 'l';
            spec[sl++] = 'l';
            spec[sl++] = conv;
            // Without l the argument is an int (the kernel casts it to 32 bits).
            if (longs == 0) {
                n = is_signed ? std::snprintf(buf, sizeof(buf), spec,
                                              static_cast<long long>(static_cast<int32_t>(arg)))
                              : std::snprintf(
                                    buf, sizeof(buf), spec,
                                    static_cast<unsigned long long>(static_cast<uint32_t>(arg)));
            } else {
                n = is_signed ? std::snprintf(buf, sizeof(buf), spec, static_cast<long long>(arg))
                              : std::snprintf(buf, sizeof(buf), spec,
                                              static_cast<unsigned long long>(arg));
            }
        }
        if (n < 0) return -EINVAL;
        put(buf, std::min<size_t>(static_cast<size_t>(n), sizeof(buf) - 1));
        i = j;
    }
    return static_cast<int64_t>(len);
}

uint64_t trace_printk(uint64_t fmt, uint64_t fmt_size, uint64_t a1, uint64_t a2, uint64_t a3,
                      ExecEnv* env) {
    // As the kernel: the format must be NUL-terminated within fmt_size.
    const char* f = ptr<const char>(fmt);
    const void* nul = fmt_size ? std::memchr(f, 0, fmt_size) : nullptr;
    if (!nul) return err(EINVAL);
    Runtime* rt = Runtime::from(env ? env->services : nullptr);
    if (!rt) return err(ENODEV);  // no trace log to write to
    const uint64_t args[3] = {a1, a2, a3};
    char out[kTracePrintkMax];
    const int64_t n = format_printk(out, sizeof(out), f,
                                    static_cast<size_t>(static_cast<const char*>(nul) - f), args);
    if (n < 0) return static_cast<uint64_t>(n);
    const uint64_t id = pid_tgid();
    const long rc = rt->trace_log().write(
        clock_ns(CLOCK_MONOTONIC), static_cast<uint32_t>(id >> 32), static_cast<uint32_t>(id),
        std::string_view(out, std::min<size_t>(static_cast<size_t>(n), sizeof(out))));
    if (rc < 0) return static_cast<uint64_t>(rc);
    return static_cast<uint64_t>(n);
}

// ---- ring buffer, perf event array ----

RingBuffer* as_ringbuf(uint64_t map) {
    Map* m = ptr<Map>(map);
    return m && m->spec().type == MapType::RingBuf ? static_cast<RingBuffer*>(m) : nullptr;
}

constexpr uint64_t kRbNoWakeup = 1, kRbForceWakeup = 2;

uint64_t ringbuf_output(uint64_t map, uint64_t data, uint64_t size, uint64_t flags, uint64_t,
                        ExecEnv*) {
    RingBuffer* rb = as_ringbuf(map);
    if (!rb || (flags & ~(kRbNoWakeup | kRbForceWakeup))) return err(EINVAL);
    return static_cast<uint64_t>(rb->output(ptr<const void>(data), size));
}
uint64_t ringbuf_reserve(uint64_t map, uint64_t size, uint64_t flags, uint64_t, uint64_t,
                         ExecEnv*) {
    RingBuffer* rb = as_ringbuf(map);
    if (!rb || flags != 0) return 0;
    return reinterpret_cast<uint64_t>(rb->reserve(size));
}
// The kernel finds a record's ring from the record header; here the record belongs to one of
// the running program's ring buffers (the verifier ties each reservation to the run that
// made it), and a ring ignores records that are not its own, so each is offered the record.
void ringbuf_finish(uint64_t record, bool discard, ExecEnv* env) {
    if (!record || !env || !env->program) return;
    for (const auto& m : env->program->maps) {
        if (!m || m->spec().type != MapType::RingBuf) continue;
        auto* rb = static_cast<RingBuffer*>(m.get());
        if (discard)
            rb->discard(ptr<void>(record));
        else
            rb->submit(ptr<void>(record));
    }
}
uint64_t ringbuf_submit(uint64_t record, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv* env) {
    ringbuf_finish(record, false, env);
    return 0;
}
uint64_t ringbuf_discard(uint64_t record, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv* env) {
    ringbuf_finish(record, true, env);
    return 0;
}
uint64_t ringbuf_query(uint64_t map, uint64_t flags, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    RingBuffer* rb = as_ringbuf(map);
    return rb ? rb->query(flags) : 0;
}

uint64_t perf_event_output(uint64_t, uint64_t map, uint64_t flags, uint64_t data, uint64_t size,
                           ExecEnv*) {
    Map* m = ptr<Map>(map);
    if (!m || m->spec().type != MapType::PerfEventArray) return err(EINVAL);
    return static_cast<uint64_t>(
        static_cast<PerfEventArray*>(m)->output(flags, ptr<const void>(data), size));
}

// ---- control flow ----

// Engines implement bpf_tail_call inline (it replaces the running frame); this entry only
// gives the verifier the prototype. Reached through callx it cannot replace the caller, so
// it fails as a tail call to an empty slot does.
uint64_t tail_call(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, ExecEnv*) {
    return err(ENOENT);
}

constexpr uint64_t kMaxLoops = 1u << 23;  // the kernel's BPF_MAX_LOOPS

uint64_t loop(uint64_t nr_loops, uint64_t fn, uint64_t ctx, uint64_t flags, uint64_t,
              ExecEnv* env) {
    if (flags != 0) return err(EINVAL);
    if (nr_loops > kMaxLoops) return err(E2BIG);
    if (!env || !env->invoke_callback) return err(EINVAL);
    uint64_t i = 0;
    for (; i < nr_loops; ++i) {
        // Callback returns 0 to continue, 1 to stop (the stopping iteration counts).
        if (env->invoke_callback(env, fn, i, ctx, 0, 0, 0) != 0) return i + 1;
    }
    return i;
}

HelperProto proto(const char* name, HelperFn fn, RetType ret, std::array<ArgType, 5> args = {}) {
    HelperProto p;
    p.name = name;
    p.fn = fn;
    p.ret = ret;
    p.args = args;
    return p;
}

}  // namespace

Result<void> HelperTable::extend(int32_t id, HelperProto proto) {
    if (id < helper_id::kLiveioBase || id > helper_id::kLiveioLast)
        return make_error(
            EINVAL, fmt::format("helper id {:#x} ('{}') is outside liveio's range [{:#x}, {:#x}]",
                                id, proto.name, helper_id::kLiveioBase, helper_id::kLiveioLast));
    if (proto.name.empty() || !proto.fn)
        return make_error(EINVAL, fmt::format("helper id {:#x} needs a name and a function", id));
    if (const HelperProto* old = find(id))
        return make_error(EEXIST,
                          fmt::format("helper id {:#x} ('{}') is already registered as '{}'", id,
                                      proto.name, old->name));
    add(id, std::move(proto));
    return {};
}

HelperTable HelperTable::standard() {
    using A = ArgType;
    using R = RetType;
    namespace id = helper_id;
    HelperTable t;
    t.add(id::kMapLookupElem, proto("map_lookup_elem", map_lookup_elem, R::MapValueOrNull,
                                    {A::PtrToMap, A::PtrToMapKey}));
    t.add(id::kMapUpdateElem, proto("map_update_elem", map_update_elem, R::Integer,
                                    {A::PtrToMap, A::PtrToMapKey, A::PtrToMapValue, A::Scalar}));
    t.add(id::kMapDeleteElem,
          proto("map_delete_elem", map_delete_elem, R::Integer, {A::PtrToMap, A::PtrToMapKey}));

    const std::array<ArgType, 5> read_args{A::PtrToUninitMem, A::ConstSizeOrZero, A::Anything};
    t.add(id::kProbeRead, proto("probe_read", probe_read, R::Integer, read_args));
    t.add(id::kProbeReadUser, proto("probe_read_user", probe_read, R::Integer, read_args));
    t.add(id::kProbeReadStr, proto("probe_read_str", probe_read_str, R::Integer, read_args));
    t.add(id::kProbeReadUserStr,
          proto("probe_read_user_str", probe_read_str, R::Integer, read_args));
    t.add(id::kProbeReadKernel, proto("probe_read_kernel", probe_read, R::Integer, read_args));
    t.add(id::kProbeReadKernelStr,
          proto("probe_read_kernel_str", probe_read_str, R::Integer, read_args));

    t.add(id::kKtimeGetNs, proto("ktime_get_ns", ktime_get_ns, R::Integer));
    t.add(id::kKtimeGetBootNs, proto("ktime_get_boot_ns", ktime_get_boot_ns, R::Integer));
    t.add(id::kKtimeGetCoarseNs, proto("ktime_get_coarse_ns", ktime_get_coarse_ns, R::Integer));
    t.add(id::kGetCurrentPidTgid, proto("get_current_pid_tgid", get_current_pid_tgid, R::Integer));
    t.add(id::kGetCurrentUidGid, proto("get_current_uid_gid", get_current_uid_gid, R::Integer));
    t.add(id::kGetCurrentComm, proto("get_current_comm", get_current_comm, R::Integer,
                                     {A::PtrToUninitMem, A::ConstSize}));
    t.add(id::kGetSmpProcessorId, proto("get_smp_processor_id", get_smp_processor_id, R::Integer));
    t.add(id::kGetPrandomU32, proto("get_prandom_u32", get_prandom_u32, R::Integer));

    // As the kernel, only the format is checked; r3..r5 are read only as the format says.
    t.add(id::kTracePrintk,
          proto("trace_printk", trace_printk, R::Integer, {A::PtrToMem, A::ConstSize}));

    t.add(id::kRingbufOutput, proto("ringbuf_output", ringbuf_output, R::Integer,
                                    {A::PtrToMap, A::PtrToMem, A::ConstSizeOrZero, A::Scalar}));
    // The size is a constant (the verifier sizes the returned record from it); the kernel's
    // ARG_CONST_ALLOC_SIZE_OR_ZERO.
    t.add(id::kRingbufReserve, proto("ringbuf_reserve", ringbuf_reserve, R::RingbufMemOrNull,
                                     {A::PtrToMap, A::ConstSizeOrZero, A::Scalar}));
    t.add(id::kRingbufSubmit,
          proto("ringbuf_submit", ringbuf_submit, R::Void, {A::PtrToRingbufMem, A::Scalar}));
    t.add(id::kRingbufDiscard,
          proto("ringbuf_discard", ringbuf_discard, R::Void, {A::PtrToRingbufMem, A::Scalar}));
    t.add(id::kRingbufQuery,
          proto("ringbuf_query", ringbuf_query, R::Integer, {A::PtrToMap, A::Scalar}));
    t.add(id::kPerfEventOutput,
          proto("perf_event_output", perf_event_output, R::Integer,
                {A::PtrToCtx, A::PtrToMap, A::Scalar, A::PtrToMem, A::ConstSizeOrZero}));

    t.add(id::kTailCall,
          proto("tail_call", tail_call, R::Integer, {A::PtrToCtx, A::PtrToMap, A::Scalar}));
    t.add(id::kLoop,
          proto("loop", loop, R::Integer, {A::Scalar, A::PtrToFunc, A::Anything, A::Scalar}));
    return t;
}

}  // namespace liveio::ebpf
