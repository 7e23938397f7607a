// Helper functions callable from BPF programs: the kernel's helper IDs and semantics, plus
// liveio's own helpers in a reserved ID range.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "base/result.h"

namespace liveio::ebpf {

struct ExecEnv;

// Every helper receives BPF r1..r5 and, as a hidden sixth argument, the environment of the
// running program (engines pass it in the sixth SysV argument register, r9 on x86-64, which
// no BPF register uses). Helpers therefore need no globals or thread-locals.
using HelperFn = uint64_t (*)(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5,
                              ExecEnv* env);

// What the verifier must prove about each argument before the call, and what r0 holds after.
enum class ArgType : uint8_t {
    None,             // argument unused
    Anything,         // any initialized scalar or pointer
    Scalar,           // an initialized scalar
    ConstSize,        // scalar size of the preceding memory argument, > 0 and bounded
    ConstSizeOrZero,  // same, may be 0
    PtrToMem,         // readable, initialized memory (stack, map value, ctx region...)
    PtrToUninitMem,   // writable memory the helper fills (stack or map value)
    PtrToMap,         // a map pointer loaded with lddw
    PtrToMapKey,      // memory of the map's key_size, initialized
    PtrToMapValue,    // memory of the map's value_size, initialized
    PtrToCtx,         // the program's context
    PtrToFunc,        // a BPF subprogram (lddw src=kPseudoFunc), e.g. bpf_loop's callback
    PtrToRingbufMem,  // a record returned by bpf_ringbuf_reserve
};
enum class RetType : uint8_t {
    Integer,           // scalar
    Void,              // r0 undefined after the call
    MapValueOrNull,    // must be null-checked before use
    RingbufMemOrNull,  // sized by the constant size argument; must be submitted or discarded
};

struct HelperProto {
    std::string name;
    HelperFn fn = nullptr;
    RetType ret = RetType::Integer;
    std::array<ArgType, 5> args{ArgType::None, ArgType::None, ArgType::None, ArgType::None,
                                ArgType::None};
};

// Kernel helper IDs (enum bpf_func_id) that liveio implements.
namespace helper_id {
inline constexpr int32_t kMapLookupElem = 1, kMapUpdateElem = 2, kMapDeleteElem = 3, kProbeRead = 4,
                         kKtimeGetNs = 5, kTracePrintk = 6, kGetPrandomU32 = 7,
                         kGetSmpProcessorId = 8, kTailCall = 12, kGetCurrentPidTgid = 14,
                         kGetCurrentUidGid = 15, kGetCurrentComm = 16, kPerfEventOutput = 25,
                         kProbeReadStr = 45, kKtimeGetBootNs = 125, kProbeReadUser = 112,
                         kProbeReadKernel = 113, kProbeReadUserStr = 114, kProbeReadKernelStr = 115,
                         kRingbufOutput = 130, kRingbufReserve = 131, kRingbufSubmit = 132,
                         kRingbufDiscard = 133, kRingbufQuery = 134, kKtimeGetCoarseNs = 160,
                         kLoop = 181;
// liveio's own helpers live at and above this ID, far above the kernel's (< 300 today), so
// objects using them fail to load in the kernel with a clear "unknown func" instead of
// calling something else. A BPF C program declares one the way libbpf's headers declare the
// kernel's: `static long (*liveio_x)(void *a) = (void *)0x10001;`.
// Extensions are registered with HelperTable::extend(); each subsystem that adds helpers
// takes the next free block below and names its IDs next to its own code.
inline constexpr int32_t kLiveioBase = 0x10000;
inline constexpr int32_t kLiveioLast = 0x1ffff;  // end of the range extend() accepts
}  // namespace helper_id

// The set of helpers a program may call, by ID. Engines and the verifier consult it.
class HelperTable {
public:
    // The kernel-compatible helpers.
    static HelperTable standard();
    // Registers or replaces a helper; liveio extensions use IDs >= helper_id::kLiveioBase.
    void add(int32_t id, HelperProto proto) { helpers_[id] = std::move(proto); }
    // Registers one of liveio's own helpers: refuses IDs outside
    // [helper_id::kLiveioBase, helper_id::kLiveioLast] (so an extension can never shadow a
    // kernel helper), an ID already registered, and a proto without name or function.
    Result<void> extend(int32_t id, HelperProto proto);
    const HelperProto* find(int32_t id) const {
        auto it = helpers_.find(id);
        return it == helpers_.end() ? nullptr : &it->second;
    }

private:
    std::unordered_map<int32_t, HelperProto> helpers_;
};

}  // namespace liveio::ebpf
