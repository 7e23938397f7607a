#include "ebpf/verifier.h"

#include <algorithm>
#include <cerrno>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "ebpf/encoding.h"
#include "ebpf/verifier_range.h"
#include "ebpf/verifier_state.h"

namespace liveio::ebpf {
namespace {

using verifier_detail::Byte;
using verifier_detail::Frame;
using verifier_detail::Kind;
using verifier_detail::kind_name;
using verifier_detail::kMaxOrigins;
using verifier_detail::kMaxSlots;
using verifier_detail::Origin;
using verifier_detail::Range;
using verifier_detail::Reference;
using verifier_detail::Reg;
using verifier_detail::StackFrame;
using verifier_detail::State;

// Pointer offsets beyond this are refused at the arithmetic (the kernel's BPF_MAX_VAR_OFF):
// it keeps every offset computation far from overflow.
constexpr int64_t kMaxPtrOffset = int64_t{1} << 29;
// Helper sizes beyond this are refused (no region is that large).
constexpr uint64_t kMaxHelperSize = uint64_t{1} << 29;
// The map flag BPF_F_RDONLY_PROG: the program may only read the map's values.
constexpr uint32_t kMapReadOnlyProg = 1u << 7;

Error reject(uint32_t pc, const std::string& why) {
    return make_error(EACCES, fmt::format("insn {}: {}", pc, why));
}

// The memory a pointer of `kind` points into, for messages.
const char* region_name(Kind kind) {
    switch (kind) {
        case Kind::Ctx: return "context";
        case Kind::Stack: return "stack";
        case Kind::MapValue: return "map value";
        case Kind::RingbufMem: return "ring buffer record";
        default: return kind_name(kind);
    }
}

const char* alu_op_name(uint8_t code) {
    static constexpr const char* names[16] = {"add",  "sub",       "mul", "div", "or",  "and",
                                              "lsh",  "rsh",       "neg", "mod", "xor", "mov",
                                              "arsh", "byte swap", "?",   "?"};
    return names[code >> 4];
}

int access_size(uint8_t opcode) {
    switch (opcode & 0x18) {
        case op::kSizeB: return 1;
        case op::kSizeH: return 2;
        case op::kSizeW: return 4;
        default: return 8;
    }
}

// The range of a value loaded from memory of `size` bytes, sign-extended or not.
Range loaded_range(int size, bool sign_extend) {
    if (size == 8) return Range::unknown();
    const uint64_t bits = static_cast<uint64_t>(size) * 8;
    if (!sign_extend) return Range::unsigned_range(0, (uint64_t{1} << bits) - 1);
    const int64_t half = int64_t{1} << (bits - 1);
    return Range::signed_range(-half, half - 1);
}

// A saved state at a prune point. `branches` counts the paths still being explored below it
// (directly or through later checkpoints); at 0 everything reachable from it is verified
// and it may prune other paths. While above 0 it is an ancestor of the current path (paths
// are explored depth first), and reaching an equal state again means the loop in between
// never ends.
struct Checkpoint {
    State state;  // as saved: its scalars carry the origins they had before the checkpoint
    Checkpoint* parent = nullptr;
    uint32_t index = 0;  // Origin::checkpoint
    uint32_t pc = 0;
    uint32_t branches = 1;
    uint32_t iteration = 0;  // the path's Path::iteration when it was saved
    // Once explored: paths it pruned, and paths it was compared with and did not cover. One
    // that keeps missing is evicted (no longer compared, freed), as the kernel's explored
    // states are.
    uint32_t hits = 0;
    uint32_t misses = 0;
    uint64_t fingerprint = 0;  // verifier_detail::fingerprint(state), once computed
    std::vector<uint8_t> precise = std::vector<uint8_t>(kMaxSlots, 0);  // per slot
};

// The checkpoints stored at one instruction.
struct InsnCheckpoints {
    // Fully explored ones, in the order they completed: compared newest first (depth-first
    // exploration completes the paths that most resemble the next one last).
    std::vector<Checkpoint*> explored;
    // Ancestors of the current path, by fingerprint: only an equal state matters against
    // them, so a loop's iterations are not compared with every earlier iteration.
    std::unordered_multimap<uint64_t, Checkpoint*> open;
    // The open one stored last, not fingerprinted yet: most instructions are never reached
    // again while their checkpoint is open (no loop), and need no fingerprint at all.
    Checkpoint* unhashed = nullptr;
};

// An explored checkpoint is evicted when misses > hits * N + N (the kernel's N). Every
// comparison with an explored checkpoint prunes the path or counts a miss, so the
// comparisons of a whole run stay below (N + 1) * (paths pruned + states stored) whatever
// the program.
constexpr uint32_t kMissesPerHit = 3;

struct Path {
    State state;
    uint32_t pc = 0;
    Checkpoint* parent = nullptr;
    // How many times this path entered a callback again for a helper's next iteration.
    // The helper bounds the iterations, so reaching a point in the state an earlier
    // iteration had there means the iterations converged (nothing new can happen), not an
    // infinite loop; a repeat within one iteration still is one.
    uint32_t iteration = 0;
};

// The frame a helper's callback starts in: r1 = the iteration index, r2 = the context
// argument (bpf_loop's callback_ctx).
Frame callback_frame(uint32_t frame_index, int32_t callsite, int32_t entry, const Reg& arg) {
    Frame callee;
    callee.regs[1] = Reg::scalar(Range::unsigned_range(0, 0xffffffff));
    callee.regs[2] = arg;
    callee.regs[10].kind = Kind::Stack;
    callee.regs[10].frame = frame_index;
    callee.callsite = callsite;
    callee.callback = true;
    callee.callback_entry = entry;
    callee.callback_arg = arg;
    return callee;
}

class Verifier {
public:
    Verifier(const Program& program, const HelperTable& helpers, const VerifierOptions& options)
        : prog_(program), insns_(program.insns), helpers_(helpers), options_(options) {}

    Result<VerifierReport> run();

private:
    Result<void> check_cfg();
    Result<void> explore(Path path);
    // Steps `path` through one instruction. Returns false when the path ended.
    Result<bool> step(Path& path);
    Result<bool> prune_or_checkpoint(Path& path);
    void end_path(Checkpoint* parent);
    Error too_complex() const;
    void fork(const Path& path, State state, uint32_t pc);

    Result<const Reg*> read_reg(const State& s, uint32_t pc, int regno,
                                const char* what = nullptr) const;
    Result<void> alu(State& s, uint32_t pc, const Insn& in);
    Result<void> pointer_alu(State& s, uint32_t pc, const Insn& in, Reg& dst, const Reg& src,
                             uint8_t code);
    Result<bool> cond_jump(Path& path, const Insn& in);
    Result<void> load(State& s, uint32_t pc, const Insn& in);
    Result<void> store(State& s, uint32_t pc, const Insn& in);
    Result<void> atomic(State& s, uint32_t pc, const Insn& in);
    Result<void> lddw(State& s, uint32_t pc, const Insn& in);
    Result<bool> call(Path& path, const Insn& in);
    Result<bool> helper_call(Path& path, int32_t id, const char* via);
    Result<bool> tail_call(Path& path);
    Result<bool> exit(Path& path);

    // Checks that `ptr` (+ insn offset `off`, `size` bytes, all possible variable offsets)
    // lies inside its region and may be read or written; `regno` names it in messages.
    Result<void> check_region(const State& s, uint32_t pc, int regno, const Reg& ptr, int64_t off,
                              uint64_t size, bool write, bool insn_access = true) const;
    Result<void> check_stack_init(const State& s, uint32_t pc, const Reg& ptr, int64_t off,
                                  uint64_t size) const;
    // Without pointer leaks: refuses an access to stack bytes [off, off + size) via `ptr` that
    // would read or keep readable part of a spilled pointer. `whole_slot_ok`: an access of
    // exactly one aligned 8-byte slot at a constant offset moves the pointer as a whole.
    Result<void> check_spilled_pointers(const State& s, uint32_t pc, const Reg& ptr, int64_t off,
                                        uint64_t size, bool write, bool whole_slot_ok) const;
    Result<void> helper_mem(State& s, uint32_t pc, int regno, const Reg& ptr, uint64_t size,
                            bool write, const std::string& what);

    uint32_t new_id() { return ++last_id_; }
    // A decision depends on `reg`'s range: mark the slots it came from precise, back through
    // the checkpoints they in turn came from.
    void need_precise(const Reg& reg);
    void mark_precise(Origin origin);
    // dst's origins become the union of dst's and src's.
    void merge_origins(Reg& dst, const Reg& src);
    void narrow_scalar(State& s, Reg& reg, const Range& r);
    void release(State& s, uint32_t id);

    const Program& prog_;
    const std::vector<Insn>& insns_;
    const HelperTable& helpers_;
    const VerifierOptions& options_;

    std::vector<bool> second_slot_;  // insn is the second half of a lddw
    // Per insn: r0..r9 that some path from it reads before writing (bit r). Registers dead at
    // a prune point are forgotten there, so states differing only in values nobody reads
    // again (the kernel's register liveness) are one state.
    std::vector<uint16_t> live_in_;
    void compute_liveness();
    std::vector<bool> prune_point_;  // insn is a jump target or follows a conditional jump
    // Every checkpoint by Origin::checkpoint; null once evicted. Origins only lead to
    // ancestors of live paths, which are never evicted.
    std::vector<std::unique_ptr<Checkpoint>> all_;
    std::vector<InsnCheckpoints> checkpoints_;  // per insn
    std::vector<uint32_t> stored_at_;           // per insn: checkpoints ever stored there
    uint32_t live_checkpoints_ = 0;             // allocated in all_
    // The last path through `cp` ended: it moves from the open to the explored ones.
    void complete(Checkpoint* cp);
    std::vector<Path> pending_;
    uint32_t last_id_ = 0;
    VerifierReport report_;
};

Result<void> Verifier::check_cfg() {
    const size_t n = insns_.size();
    if (n == 0) return reject(0, "empty program");
    if (n > options_.max_insns)
        return reject(options_.max_insns,
                      fmt::format("program has {} instructions, more than the limit of {}", n,
                                  options_.max_insns));
    if (auto valid = check_encoding(insns_); !valid)
        return make_error(EINVAL, valid.error().message);
    second_slot_.assign(n, false);
    prune_point_.assign(n, false);
    for (size_t pc = 0; pc < n; ++pc) {
        if (insns_[pc].opcode == op::kLddw) second_slot_[++pc] = true;
    }
    auto check_target = [&](size_t pc, int64_t target, const char* what) -> Result<void> {
        if (target < 0 || static_cast<size_t>(target) >= n)
            return reject(
                pc, fmt::format("{} to insn {} outside the program (0..{})", what, target, n - 1));
        if (second_slot_[target])
            return reject(pc, fmt::format("{} to insn {}, the middle of the lddw at insn {}", what,
                                          target, target - 1));
        return {};
    };
    // Functions (the kernel's subprograms): insn 0 and every call target and function
    // reference start one, which ends where the next begins. The JIT emits a prologue at each
    // start, so control may enter a function only by a call: the instruction before a start
    // must end its own function (exit or ja), and no jump may cross into another function.
    std::vector<uint32_t> func_of(n, 0);
    {
        std::vector<bool> starts(n, false);
        starts[0] = true;
        for (size_t pc = 0; pc < n; ++pc) {
            const Insn& in = insns_[pc];
            const bool call = in.opcode == (op::kClassJmp | op::kCall) && in.src == op::kPseudoCall;
            const bool ref = in.opcode == op::kLddw && in.src == op::kPseudoFunc;
            if (call || ref) {
                const int64_t target = static_cast<int64_t>(pc) + 1 + in.imm;
                if (auto r = check_target(pc, target, call ? "call" : "function reference"); !r)
                    return r;
                starts[target] = true;
            }
            if (in.opcode == op::kLddw) ++pc;
        }
        uint32_t current = 0;
        for (size_t pc = 0; pc < n; ++pc) {
            if (starts[pc] && pc > 0) {
                const size_t last = second_slot_[pc - 1] ? pc - 2 : pc - 1;
                const Insn& end = insns_[last];
                const uint8_t cls = op::class_of(end.opcode), code = end.opcode & 0xf0;
                const bool ends = (cls == op::kClassJmp || cls == op::kClassJmp32) &&
                                  (code == op::kExit || code == op::kJa);
                if (!ends)
                    return reject(
                        last, fmt::format(
                                  "execution falls through into the function at insn {} (the last "
                                  "instruction before a function must be exit or ja)",
                                  pc));
                current = static_cast<uint32_t>(pc);
            }
            func_of[pc] = current;
        }
    }
    auto check_jump = [&](size_t pc, int64_t target) -> Result<void> {
        if (auto r = check_target(pc, target, "jump"); !r) return r;
        if (func_of[target] != func_of[pc])
            return reject(
                pc,
                fmt::format(
                    "jump to insn {} leaves the function at insn {} for the function at insn {}",
                    target, func_of[pc], func_of[target]));
        return {};
    };
    for (size_t pc = 0; pc < n; ++pc) {
        const Insn& in = insns_[pc];
        const uint8_t cls = op::class_of(in.opcode), code = in.opcode & 0xf0;
        // Engines resolve every helper call when they load, reachable or not: a call no path
        // reaches must name a helper too, or the verifier would accept what no engine loads.
        if (in.opcode == (op::kClassJmp | op::kCall) && in.src == 0 &&
            in.imm != helper_id::kTailCall) {
            const HelperProto* proto = helpers_.find(in.imm);
            if (!proto || !proto->fn)
                return reject(pc, fmt::format("call to unknown helper {}", in.imm));
        }
        size_t next = pc + 1;
        bool falls_through = true;
        if (in.opcode == op::kLddw && in.src != 0 && in.src != op::kPseudoFunc) {
            // As for helper calls: engines resolve map references when they load, reachable
            // or not, so each is checked here whether a path reaches it or not.
            State scratch;
            scratch.frames.emplace_back();
            if (auto r = lddw(scratch, static_cast<uint32_t>(pc), in); !r) return r;
        }
        if (in.opcode == op::kLddw) {
            if (in.src == op::kPseudoFunc) {
                const int64_t target = static_cast<int64_t>(pc) + 1 + in.imm;
                if (auto r = check_target(pc, target, "function reference"); !r) return r;
                prune_point_[target] = true;  // callbacks are entered again per iteration
            }
            next = pc + 2;
        } else if (cls == op::kClassJmp || cls == op::kClassJmp32) {
            if (code == op::kExit) {
                falls_through = false;
            } else if (code == op::kJa) {
                const int64_t target =
                    static_cast<int64_t>(pc) + 1 + (cls == op::kClassJmp32 ? in.imm : in.offset);
                if (auto r = check_jump(pc, target); !r) return r;
                prune_point_[target] = true;
                falls_through = false;
            } else if (code == op::kCall) {
                if (!(in.opcode & op::kSrcX) && in.src == op::kPseudoCall) {
                    if (auto r = check_target(pc, static_cast<int64_t>(pc) + 1 + in.imm, "call");
                        !r)
                        return r;
                }
            } else {
                const int64_t target = static_cast<int64_t>(pc) + 1 + in.offset;
                if (auto r = check_jump(pc, target); !r) return r;
                prune_point_[target] = true;
                if (pc + 1 < n) prune_point_[pc + 1] = true;
            }
        }
        if (falls_through && next >= n)
            return reject(pc, "execution falls off the end of the program");
        if (in.opcode == op::kLddw) ++pc;
    }
    return {};
}

// Backward dataflow over the instructions of every function at once: a call (helper or
// bpf-to-bpf) reads r1-r5 and writes r0-r5, which is all a caller sees of it; exit reads r0.
void Verifier::compute_liveness() {
    const size_t n = insns_.size();
    constexpr uint16_t kArgs = 0x3e, kCallClobbers = 0x3f, kAll = 0x3ff;
    std::vector<uint16_t> use(n, 0), def(n, 0);
    std::vector<std::array<int64_t, 2>> succ(n, {-1, -1});
    for (size_t pc = 0; pc < n; ++pc) {
        if (second_slot_[pc]) continue;
        const Insn& in = insns_[pc];
        const uint8_t cls = op::class_of(in.opcode), code = in.opcode & 0xf0,
                      mode = in.opcode & 0xe0;
        const bool x = in.opcode & op::kSrcX;
        const uint16_t dst = uint16_t(1u << (in.dst & 15)) & kAll,
                       src = uint16_t(1u << (in.src & 15)) & kAll;
        succ[pc][0] = static_cast<int64_t>(pc) + 1;
        switch (cls) {
            case op::kClassAlu:
            case op::kClassAlu64:
                if (code == op::kMov)
                    use[pc] = x ? src : 0;
                else if (code == op::kNeg || code == op::kEnd)
                    use[pc] = dst;
                else
                    use[pc] = dst | (x ? src : 0);
                def[pc] = dst;
                break;
            case op::kClassLdx:
                use[pc] = src;
                def[pc] = dst;
                break;
            case op::kClassSt: use[pc] = dst; break;
            case op::kClassStx:
                use[pc] = dst | src;
                if (mode == op::kModeAtomic) {
                    if (in.imm == op::kAtomicCmpXchg) {
                        use[pc] |= 1;
                        def[pc] = 1;
                    } else if (in.imm & op::kAtomicFetch)
                        def[pc] = src;
                }
                break;
            case op::kClassLd:
                if (in.opcode == op::kLddw) {
                    def[pc] = dst;
                    succ[pc][0] = static_cast<int64_t>(pc) + 2;
                } else {
                    use[pc] = 1u << 6 | src;
                    def[pc] = kCallClobbers;
                }  // legacy packet loads
                break;
            default:  // jumps
                if (code == op::kExit) {
                    use[pc] = 1;
                    succ[pc][0] = -1;
                } else if (code == op::kCall) {
                    use[pc] = x ? kAll : kArgs;  // callx: the target register too, whichever field
                    def[pc] = kCallClobbers;
                } else if (code == op::kJa) {
                    succ[pc][0] = static_cast<int64_t>(pc) + 1 +
                                  (cls == op::kClassJmp32 ? in.imm : in.offset);
                } else {
                    use[pc] = dst | (x ? src : 0);
                    succ[pc][1] = static_cast<int64_t>(pc) + 1 + in.offset;
                }
        }
    }
    live_in_.assign(n, 0);
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t i = n; i-- > 0;) {
            if (second_slot_[i]) continue;
            uint16_t out = 0;
            for (int64_t t : succ[i])
                if (t >= 0 && static_cast<size_t>(t) < n) out |= live_in_[t];
            const uint16_t in = use[i] | (out & ~def[i]);
            if (in != live_in_[i]) {
                live_in_[i] = in;
                changed = true;
            }
        }
    }
}

Result<VerifierReport> Verifier::run() {
    if (auto r = check_cfg(); !r) return r.error();
    compute_liveness();
    checkpoints_.resize(insns_.size());
    stored_at_.assign(insns_.size(), 0);

    Path entry;
    Frame frame;
    frame.regs[1].kind = Kind::Ctx;
    frame.regs[1].size = prog_.context.size;
    // The engines pass the length given to Executable::run in r2 (vm.h); nothing bounds it.
    frame.regs[2] = Reg::scalar(Range::unknown());
    frame.regs[10].kind = Kind::Stack;
    frame.regs[10].frame = 0;
    entry.state.frames.push_back(std::move(frame));
    pending_.push_back(std::move(entry));
    while (!pending_.empty()) {
        Path path = std::move(pending_.back());
        pending_.pop_back();
        if (auto r = explore(std::move(path)); !r) return r.error();
    }
    return report_;
}

Error Verifier::too_complex() const {
    // Blame the instruction most paths kept returning to: the head of the loop that could not
    // be proven bounded, rather than wherever the budget happened to run out.
    uint32_t busiest = 0;
    for (uint32_t pc = 0; pc < stored_at_.size(); ++pc) {
        if (stored_at_[pc] > stored_at_[busiest]) busiest = pc;
    }
    return reject(
        busiest,
        fmt::format("program too complex: more than {} instructions explored, {} states stored "
                    "here (a loop whose bound cannot be proven?)",
                    options_.max_explored_insns, stored_at_[busiest]));
}

void Verifier::fork(const Path& path, State state, uint32_t pc) {
    if (path.parent) ++path.parent->branches;
    pending_.push_back(Path{std::move(state), pc, path.parent, path.iteration});
}

void Verifier::end_path(Checkpoint* cp) {
    while (cp && --cp->branches == 0) {
        complete(cp);
        cp = cp->parent;
    }
}

void Verifier::complete(Checkpoint* cp) {
    InsnCheckpoints& here = checkpoints_[cp->pc];
    if (here.unhashed == cp) {
        here.unhashed = nullptr;
    } else {
        auto [first, last] = here.open.equal_range(cp->fingerprint);
        for (auto it = first; it != last; ++it) {
            if (it->second == cp) {
                here.open.erase(it);
                break;
            }
        }
    }
    here.explored.push_back(cp);
}

Result<void> Verifier::explore(Path path) {
    while (true) {
        if (++report_.explored_insns > options_.max_explored_insns) return too_complex();
        if (prune_point_[path.pc]) {
            auto go_on = prune_or_checkpoint(path);
            if (!go_on) return go_on.error();
            if (!go_on.value()) return {};
        }
        auto go_on = step(path);
        if (!go_on) return go_on.error();
        if (!go_on.value()) {
            end_path(path.parent);
            return {};
        }
    }
}

Result<bool> Verifier::prune_or_checkpoint(Path& path) {
    for (int r = 0; r < 10; ++r)
        if (!(live_in_[path.pc] >> r & 1)) path.state.cur().regs[r] = Reg{};
    path.state.drop_lone_scalar_ids();
    InsnCheckpoints& here = checkpoints_[path.pc];
    // Ancestors first: a path back in an ancestor's state is an infinite loop whatever else
    // might cover it (or, in a later callback iteration, converged).
    const bool has_open = here.unhashed || !here.open.empty();
    const uint64_t fingerprint = has_open ? verifier_detail::fingerprint(path.state) : 0;
    if (Checkpoint* cp = here.unhashed) {
        cp->fingerprint = verifier_detail::fingerprint(cp->state);
        here.open.emplace(cp->fingerprint, cp);
        here.unhashed = nullptr;
    }
    auto [first, last] = here.open.equal_range(fingerprint);
    for (auto it = first; it != last; ++it) {
        const Checkpoint& cp = *it->second;
        ++report_.compared_states;
        if (!verifier_detail::equal(cp.state, path.state)) continue;
        if (cp.iteration < path.iteration) {
            ++report_.pruned_paths;
            end_path(path.parent);
            return false;
        }
        return reject(path.pc, "infinite loop: the program returns here in the same state");
    }
    for (size_t i = here.explored.size(); i-- > 0;) {
        Checkpoint* cp = here.explored[i];
        ++report_.compared_states;
        if (verifier_detail::covers(cp->state, path.state, cp->precise.data())) {
            // The ranges the old path relied on now bound this path's values too.
            path.state.for_each_slot([&](int slot, Reg& r) {
                if (cp->precise[slot] && r.kind == Kind::Scalar) need_precise(r);
            });
            ++cp->hits;
            ++report_.pruned_paths;
            end_path(path.parent);
            return false;
        }
        if (++cp->misses > cp->hits * kMissesPerHit + kMissesPerHit) {
            here.explored.erase(here.explored.begin() + static_cast<std::ptrdiff_t>(i));
            all_[cp->index].reset();
            --live_checkpoints_;
            ++report_.evicted_states;
        }
    }
    if (live_checkpoints_ >= options_.max_stored_states) return true;
    auto owned = std::make_unique<Checkpoint>();
    Checkpoint* cp = owned.get();
    cp->state = path.state;
    cp->parent = path.parent;
    cp->index = static_cast<uint32_t>(all_.size());
    cp->pc = path.pc;
    cp->iteration = path.iteration;
    path.parent = cp;
    all_.push_back(std::move(owned));
    if (has_open) {
        cp->fingerprint = fingerprint;
        here.open.emplace(fingerprint, cp);
    } else {
        here.unhashed = cp;
    }
    path.state.for_each_slot([&](int slot, Reg& r) {
        if (r.kind != Kind::Scalar) return;
        r.n_origins = 1;
        r.origins[0] = Origin{cp->index, static_cast<uint16_t>(slot)};
    });
    ++live_checkpoints_;
    ++stored_at_[path.pc];
    ++report_.stored_states;
    report_.peak_states = std::max(report_.peak_states, live_checkpoints_);
    return true;
}

Result<const Reg*> Verifier::read_reg(const State& s, uint32_t pc, int regno,
                                      const char* what) const {
    const Reg& reg = s.cur().regs[regno];
    if (!reg.is_init()) {
        if (what) return reject(pc, fmt::format("r{} read before it is written ({})", regno, what));
        return reject(pc, fmt::format("r{} read before it is written", regno));
    }
    return &reg;
}

void Verifier::need_precise(const Reg& reg) {
    for (int i = 0; i < reg.n_origins; ++i) mark_precise(reg.origins[i]);
}

void Verifier::mark_precise(Origin origin) {
    std::vector<Origin> work{origin};
    while (!work.empty()) {
        const Origin o = work.back();
        work.pop_back();
        // Never an evicted one: origins are set when a path stores a checkpoint, so they lead
        // to the path's ancestors, whose branches stay above 0 while it lives.
        Checkpoint& cp = *all_[o.checkpoint];
        if (cp.precise[o.slot]) continue;
        cp.precise[o.slot] = 1;
        if (const Reg* saved = cp.state.at_slot(o.slot); saved && saved->kind == Kind::Scalar) {
            for (int i = 0; i < saved->n_origins; ++i) work.push_back(saved->origins[i]);
        }
    }
}

void Verifier::merge_origins(Reg& dst, const Reg& src) {
    for (int i = 0; i < src.n_origins; ++i) {
        const Origin o = src.origins[i];
        bool known = false;
        for (int j = 0; j < dst.n_origins; ++j) {
            known |= dst.origins[j].checkpoint == o.checkpoint && dst.origins[j].slot == o.slot;
        }
        if (known) continue;
        if (dst.n_origins == kMaxOrigins) {
            // Too many to follow: treat them all as precise now (sound, only less pruning).
            need_precise(dst);
            need_precise(src);
            dst.n_origins = 0;
            return;
        }
        dst.origins[dst.n_origins++] = o;
    }
}

void Verifier::narrow_scalar(State& s, Reg& reg, const Range& r) {
    reg.r = r;
    if (reg.id == 0) return;
    const uint32_t id = reg.id;
    s.for_each_reg([&](Reg& other) {
        if (other.kind == Kind::Scalar && other.id == id) other.r = r;
    });
}

void Verifier::release(State& s, uint32_t id) {
    std::erase_if(s.refs, [&](const Reference& ref) { return ref.id == id; });
    for (Frame& f : s.frames) {
        for (Reg& r : f.regs) {
            if (r.is_pointer() && r.id == id) r = Reg{};
        }
        std::erase_if(f.stack.spills, [&](auto& e) {
            if (!e.second.is_pointer() || e.second.id != id) return false;
            std::fill_n(f.stack.bytes.begin() + e.first * 8, 8, Byte::Misc);
            return true;
        });
    }
}

Result<bool> Verifier::step(Path& path) {
    State& s = path.state;
    const uint32_t pc = path.pc;
    const Insn& in = insns_[pc];
    switch (op::class_of(in.opcode)) {
        case op::kClassAlu:
        case op::kClassAlu64:
            if (auto r = alu(s, pc, in); !r) return r.error();
            break;
        case op::kClassLd:
            if (auto r = lddw(s, pc, in); !r) return r.error();
            path.pc += 2;
            return true;
        case op::kClassLdx:
            if (auto r = load(s, pc, in); !r) return r.error();
            break;
        case op::kClassSt:
        case op::kClassStx:
            if ((in.opcode & 0xe0) == op::kModeAtomic) {
                if (auto r = atomic(s, pc, in); !r) return r.error();
            } else if (auto r = store(s, pc, in); !r) {
                return r.error();
            }
            break;
        case op::kClassJmp:
        case op::kClassJmp32: {
            const uint8_t code = in.opcode & 0xf0;
            if (code == op::kExit) return exit(path);
            if (code == op::kCall) return call(path, in);
            if (code == op::kJa) {
                path.pc += 1 + (op::class_of(in.opcode) == op::kClassJmp32 ? in.imm : in.offset);
                return true;
            }
            return cond_jump(path, in);
        }
    }
    path.pc += 1;
    return true;
}

// ---- ALU -----------------------------------------------------------------------------------

Result<void> Verifier::alu(State& s, uint32_t pc, const Insn& in) {
    const bool is64 = op::class_of(in.opcode) == op::kClassAlu64;
    const uint8_t code = in.opcode & 0xf0;
    const bool x = (in.opcode & op::kSrcX) && code != op::kEnd;
    Reg src = Reg::scalar(Range::constant(static_cast<uint64_t>(static_cast<int64_t>(in.imm))));
    if (x) {
        auto r = read_reg(s, pc, in.src);
        if (!r) return r.error();
        src = *r.value();
    }
    Reg& dst = s.cur().regs[in.dst];
    if (code == op::kMov) {
        if (is64 && in.offset == 0) {
            // A copy: pointers stay pointers, scalars become linked for branch narrowing.
            if (x && src.kind == Kind::Scalar) {
                Reg& orig = s.cur().regs[in.src];
                if (orig.id == 0) orig.id = new_id();
                src.id = orig.id;
            }
            dst = src;
            return {};
        }
        if (src.kind != Kind::Scalar) {
            if (!options_.allow_pointer_leaks)
                return reject(pc, fmt::format("partial copy of r{}, a {}, would expose its address",
                                              in.src, kind_name(src.kind)));
            src = Reg::scalar(Range::unknown());
        }
        // dst's old value does not matter; passing src keeps constants exact.
        Reg result =
            Reg::scalar(verifier_detail::alu_range(in.opcode, in.offset, in.imm, src.r, src.r));
        merge_origins(result, src);
        dst = result;
        return {};
    }
    if (!dst.is_init()) return reject(pc, fmt::format("r{} read before it is written", in.dst));
    if (dst.is_pointer() || src.is_pointer()) return pointer_alu(s, pc, in, dst, src, code);
    Reg result =
        Reg::scalar(verifier_detail::alu_range(in.opcode, in.offset, in.imm, dst.r, src.r));
    merge_origins(result, dst);
    merge_origins(result, src);
    dst = result;
    return {};
}

Result<void> Verifier::pointer_alu(State& s, uint32_t pc, const Insn& in, Reg& dst, const Reg& src,
                                   uint8_t code) {
    (void)s;
    const bool is64 = op::class_of(in.opcode) == op::kClassAlu64;
    const bool leaks = options_.allow_pointer_leaks;
    const char* opname = alu_op_name(code);
    if (code == op::kNeg || code == op::kEnd) {
        // Unary: the result is a number made of the address.
        if (!leaks)
            return reject(pc, fmt::format("{} of r{}, a {}, would expose an address", opname,
                                          in.dst, kind_name(dst.kind)));
        dst = Reg::scalar(is64 ? Range::unknown() : Range::unsigned_range(0, 0xffffffff));
        return {};
    }
    for (const Reg* r : {static_cast<const Reg*>(&dst), &src}) {
        if (r->kind == Kind::MapValueOrNull || r->kind == Kind::RingbufMemOrNull)
            return reject(pc, fmt::format("arithmetic on r{}, a {} (null-check it first)",
                                          r == &dst ? in.dst : in.src, kind_name(r->kind)));
        if (r->kind == Kind::MapPtr || r->kind == Kind::Func)
            return reject(pc, fmt::format("arithmetic on r{}, a {}", r == &dst ? in.dst : in.src,
                                          kind_name(r->kind)));
    }
    if (dst.is_pointer() && src.is_pointer()) {
        // Any operation but subtraction on two pointers yields an arbitrary number.
        if (code != op::kSub)
            return reject(pc, fmt::format("r{} pointer {} pointer prohibited", in.dst, opname));
        // Two pointers into one region (the only context; one stack frame) are a fixed
        // distance apart whatever the region's address. Two map values, even of one map, or
        // two ring buffer records may lie anywhere relative to each other.
        const bool one_region =
            dst.kind == src.kind &&
            (dst.kind == Kind::Ctx || (dst.kind == Kind::Stack && dst.frame == src.frame));
        if (one_region) {
            dst = Reg::scalar(verifier_detail::alu_range(in.opcode, 0, 0, dst.r, src.r));
            return {};
        }
        if (!leaks)
            return reject(
                pc, fmt::format("r{} ({}) minus r{} ({}): the distance between two regions exposes "
                                "their addresses",
                                in.dst, kind_name(dst.kind), in.src, kind_name(src.kind)));
        dst = Reg::scalar(is64 ? Range::unknown() : Range::unsigned_range(0, 0xffffffff));
        return {};
    }
    const bool dst_is_ptr = dst.is_pointer();
    if (!is64) {
        // Truncating a pointer to 32 bits leaves a number, never a pointer.
        if (code == op::kSub && leaks) {
            dst = Reg::scalar(Range::unsigned_range(0, 0xffffffff));
            return {};
        }
        return reject(pc, fmt::format("r{} 32-bit pointer arithmetic prohibited", in.dst));
    }
    switch (code) {
        case op::kAdd: break;
        case op::kSub:
            if (!dst_is_ptr)
                return reject(pc, fmt::format("r{} tried to subtract a pointer (r{}) from a scalar",
                                              in.dst, in.src));
            // As the kernel: stack pointers only move by adding (negative) offsets.
            if (dst.kind == Kind::Stack)
                return reject(
                    pc,
                    fmt::format(
                        "r{} subtraction from a stack pointer prohibited (add a negative offset)",
                        in.dst));
            break;
        case op::kAnd:
        case op::kOr:
        case op::kXor:
            return reject(
                pc, fmt::format("r{} bitwise operator {} on a pointer prohibited", in.dst, opname));
        default:
            return reject(pc, fmt::format("r{} pointer arithmetic with operator {} prohibited",
                                          in.dst, opname));
    }
    const Reg& offset = dst_is_ptr ? src : dst;
    Reg result = dst_is_ptr ? dst : src;
    need_precise(offset);
    result.r = verifier_detail::alu_range(op::kClassAlu64 | code, 0, 0, result.r, offset.r);
    if (result.r.smin < -kMaxPtrOffset || result.r.smax > kMaxPtrOffset)
        return reject(
            pc,
            fmt::format("pointer arithmetic escapes its region: r{} ({}) offset may be anywhere in "
                        "[{}, {}]",
                        in.dst, kind_name(result.kind), result.r.smin, result.r.smax));
    dst = result;
    return {};
}

// ---- jumps ---------------------------------------------------------------------------------

Result<bool> Verifier::cond_jump(Path& path, const Insn& in) {
    State& s = path.state;
    const uint32_t pc = path.pc;
    const bool is32 = op::class_of(in.opcode) == op::kClassJmp32;
    const uint8_t code = in.opcode & 0xf0;
    const bool x = in.opcode & op::kSrcX;
    auto d = read_reg(s, pc, in.dst);
    if (!d) return d.error();
    Reg a = *d.value();
    Reg b = Reg::scalar(Range::constant(static_cast<uint64_t>(static_cast<int64_t>(in.imm))));
    if (x) {
        auto r = read_reg(s, pc, in.src);
        if (!r) return r.error();
        b = *r.value();
    }
    const uint32_t taken_pc = pc + 1 + in.offset, fall_pc = pc + 1;

    if (a.kind == Kind::Scalar && b.kind == Kind::Scalar) {
        Range ta = a.r, tb = b.r, fa = a.r, fb = b.r;
        const bool taken = is32 ? verifier_detail::refine_branch32(code, true, ta, tb)
                                : verifier_detail::refine_branch(code, true, ta, tb);
        const bool fall = is32 ? verifier_detail::refine_branch32(code, false, fa, fb)
                               : verifier_detail::refine_branch(code, false, fa, fb);
        auto apply = [&](State& st, const Range& ra, const Range& rb) {
            narrow_scalar(st, st.cur().regs[in.dst], ra);
            if (x) narrow_scalar(st, st.cur().regs[in.src], rb);
        };
        if (taken && fall) {
            State other = s;
            apply(other, ta, tb);
            fork(path, std::move(other), taken_pc);
            apply(s, fa, fb);
            path.pc = fall_pc;
            return true;
        }
        // Only one outcome is possible: a path with other values could go the other way.
        need_precise(a);
        if (x) need_precise(b);
        if (taken) {
            apply(s, ta, tb);
            path.pc = taken_pc;
        } else {
            apply(s, fa, fb);
            path.pc = fall_pc;
        }
        return true;
    }

    // A pointer against 0: null checks.
    const Reg* ptr = a.is_pointer() ? &a : nullptr;
    const Reg* other = a.is_pointer() ? &b : &a;
    if (!ptr && b.is_pointer()) ptr = &b;
    const bool against_null = ptr && other->kind == Kind::Scalar &&
                              other->r == Range::constant(0) &&
                              (code == op::kJeq || code == op::kJne) && !is32;
    if (against_null) need_precise(*other);
    if (against_null &&
        (ptr->kind == Kind::MapValueOrNull || ptr->kind == Kind::RingbufMemOrNull)) {
        const uint32_t id = ptr->id;
        const bool ringbuf = ptr->kind == Kind::RingbufMemOrNull;
        auto resolve = [&](State& st, bool null) {
            if (null && ringbuf)
                std::erase_if(st.refs, [&](const Reference& r) { return r.id == id; });
            st.for_each_reg([&](Reg& r) {
                if (r.id != id ||
                    (r.kind != Kind::MapValueOrNull && r.kind != Kind::RingbufMemOrNull))
                    return;
                if (null) {
                    r = Reg::scalar(Range::constant(0));
                } else if (r.kind == Kind::MapValueOrNull) {
                    r.kind = Kind::MapValue;
                    r.id = 0;
                } else {
                    r.kind = Kind::RingbufMem;
                }
            });
        };
        State other_state = s;
        const bool null_when_taken = code == op::kJeq;
        resolve(other_state, null_when_taken);
        fork(path, std::move(other_state), taken_pc);
        resolve(s, !null_when_taken);
        path.pc = fall_pc;
        return true;
    }
    if (against_null && ptr->kind != Kind::Ctx) {
        // Stack, map value and record pointers are never null.
        path.pc = code == op::kJne ? taken_pc : fall_pc;
        return true;
    }
    // Other pointer comparisons: both outcomes stay possible, nothing is learned.
    if (!options_.allow_pointer_leaks && !against_null)
        return reject(pc, fmt::format("comparison of r{} ({}) with {} ({}) would expose an address",
                                      in.dst, kind_name(a.kind),
                                      x ? fmt::format("r{}", in.src) : std::to_string(in.imm),
                                      kind_name(b.kind)));
    fork(path, s, taken_pc);
    path.pc = fall_pc;
    return true;
}

// ---- memory --------------------------------------------------------------------------------

Result<void> Verifier::check_region(const State& s, uint32_t pc, int regno, const Reg& ptr,
                                    int64_t off, uint64_t size, bool write,
                                    bool insn_access) const {
    (void)s;
    int64_t region_lo = 0, region_hi = 0;
    const char* region = "";
    switch (ptr.kind) {
        case Kind::Uninit: return reject(pc, fmt::format("r{} read before it is written", regno));
        case Kind::Scalar:
            return reject(pc,
                          fmt::format("memory access through r{}, a scalar, not a pointer", regno));
        case Kind::MapValueOrNull:
        case Kind::RingbufMemOrNull:
            return reject(
                pc, fmt::format("memory access through r{}, a {}: null-check it before use", regno,
                                kind_name(ptr.kind)));
        case Kind::MapPtr:
        case Kind::Func:
            return reject(pc, fmt::format("memory access through r{}, a {}, not memory", regno,
                                          kind_name(ptr.kind)));
        case Kind::Ctx:
            if (write && !prog_.context.writable)
                return reject(pc, fmt::format("write into the read-only context (r{})", regno));
            region = "context";
            region_hi = ptr.size;
            break;
        case Kind::Stack:
            region = "stack";
            region_lo = -kStackSize;
            break;
        case Kind::MapValue: {
            const auto& map = prog_.maps[ptr.map];
            if (write && (map->spec().flags & kMapReadOnlyProg))
                return reject(pc, fmt::format("write into read-only map '{}' (r{})",
                                              map->spec().name, regno));
            region = "map value";
            region_hi = ptr.size;
            break;
        }
        case Kind::RingbufMem:
            region = "ring buffer record";
            region_hi = ptr.size;
            break;
    }
    const int64_t lo = ptr.r.smin + off, hi = ptr.r.smax + off + static_cast<int64_t>(size);
    if (lo < region_lo || hi > region_hi) {
        const std::string at = ptr.r.smin == ptr.r.smax
                                   ? fmt::format("offset {}", lo)
                                   : fmt::format("offsets {}..{}", lo, ptr.r.smax + off);
        return reject(
            pc, fmt::format("out-of-bounds {} {} via r{}: {} size {} outside [{}, {})", region,
                            write ? "write" : "read", regno, at, size, region_lo, region_hi));
    }
    // Instructions access 1, 2, 4 or 8 bytes, naturally aligned on the stack (as the kernel);
    // helpers take byte ranges.
    if (insn_access && ptr.kind == Kind::Stack && ptr.r.is_const() &&
        lo % static_cast<int64_t>(size) != 0)
        return reject(
            pc, fmt::format("misaligned stack access via r{}: offset {} size {}", regno, lo, size));
    return {};
}

Result<void> Verifier::check_spilled_pointers(const State& s, uint32_t pc, const Reg& ptr,
                                              int64_t off, uint64_t size, bool write,
                                              bool whole_slot_ok) const {
    if (options_.allow_pointer_leaks) return {};
    const StackFrame& st = s.frames[ptr.frame].stack;
    const int64_t lo = ptr.r.smin + off + kStackSize,
                  hi = ptr.r.smax + off + static_cast<int64_t>(size) + kStackSize;
    for (const auto& [slot, reg] : st.spills) {
        const int64_t start = int64_t{slot} * 8;
        if (reg.kind == Kind::Scalar || start >= hi || start + 8 <= lo) continue;
        // A write covering the whole slot replaces the pointer; a read or partial write would
        // leave part of it readable as a number.
        const bool covers_slot = ptr.r.is_const() && lo <= start && start + 8 <= hi;
        if ((whole_slot_ok && ptr.r.is_const() && size == 8 && lo == start) ||
            (write && covers_slot))
            continue;
        return reject(
            pc, fmt::format("{} part of the {} spilled at stack offset {} would expose its address",
                            write ? "overwriting" : "reading", kind_name(reg.kind),
                            start - kStackSize));
    }
    return {};
}

Result<void> Verifier::check_stack_init(const State& s, uint32_t pc, const Reg& ptr, int64_t off,
                                        uint64_t size) const {
    const StackFrame& st = s.frames[ptr.frame].stack;
    const int64_t lo = ptr.r.smin + off + kStackSize,
                  hi = ptr.r.smax + off + static_cast<int64_t>(size) + kStackSize;
    for (int64_t i = lo; i < hi; ++i) {
        if (st.bytes[i] == Byte::Uninit)
            return reject(pc,
                          fmt::format("read of uninitialized stack at offset {}", i - kStackSize));
    }
    return {};
}

Result<void> Verifier::load(State& s, uint32_t pc, const Insn& in) {
    auto p = read_reg(s, pc, in.src);
    if (!p) return p.error();
    const Reg ptr = *p.value();
    const int size = access_size(in.opcode);
    const bool sx = (in.opcode & 0xe0) == op::kModeMemSx;
    if (auto r = check_region(s, pc, in.src, ptr, in.offset, size, false); !r) return r;
    Reg value = Reg::scalar(loaded_range(size, sx));
    if (ptr.kind == Kind::Stack) {
        if (auto r = check_stack_init(s, pc, ptr, in.offset, size); !r) return r;
        if (auto r = check_spilled_pointers(s, pc, ptr, in.offset, size, false, true); !r) return r;
        const int64_t idx = ptr.r.smin + in.offset + kStackSize;
        if (ptr.r.is_const() && size == 8 && idx % 8 == 0) {
            if (const Reg* spilled = s.frames[ptr.frame].stack.spill(static_cast<int>(idx / 8)))
                value = *spilled;
        }
    }
    s.cur().regs[in.dst] = value;
    return {};
}

Result<void> Verifier::store(State& s, uint32_t pc, const Insn& in) {
    auto p = read_reg(s, pc, in.dst);
    if (!p) return p.error();
    const Reg ptr = *p.value();
    const int size = access_size(in.opcode);
    Reg value = Reg::scalar(Range::constant(static_cast<uint64_t>(static_cast<int64_t>(in.imm))));
    if (op::class_of(in.opcode) == op::kClassStx) {
        auto v = read_reg(s, pc, in.src);
        if (!v) return v.error();
        value = *v.value();
    }
    if (auto r = check_region(s, pc, in.dst, ptr, in.offset, size, true); !r) return r;
    if (!options_.allow_pointer_leaks && value.is_pointer()) {
        if (ptr.kind != Kind::Stack)
            return reject(pc, fmt::format("r{} ({}) stored into the {} would expose its address",
                                          in.src, kind_name(value.kind), region_name(ptr.kind)));
        if (size != 8 || !ptr.r.is_const())
            return reject(
                pc,
                fmt::format("partial or variable-offset spill of r{} ({}) would expose its address",
                            in.src, kind_name(value.kind)));
    }
    if (ptr.kind != Kind::Stack) return {};
    if (auto r = check_spilled_pointers(s, pc, ptr, in.offset, size, true, true); !r) return r;
    StackFrame& st = s.frames[ptr.frame].stack;
    const int64_t lo = ptr.r.smin + in.offset + kStackSize,
                  hi = ptr.r.smax + in.offset + size + kStackSize;
    if (!ptr.r.is_const()) {
        // Which bytes get written is unknown: none becomes initialized, spills it may hit dissolve.
        st.clobber_spills(static_cast<int>(lo), static_cast<int>(hi));
        return {};
    }
    if (size == 8) {
        st.set_spill(static_cast<int>(lo / 8), value);
    } else {
        st.write_misc(static_cast<int>(lo), static_cast<int>(hi));
    }
    return {};
}

Result<void> Verifier::atomic(State& s, uint32_t pc, const Insn& in) {
    auto p = read_reg(s, pc, in.dst);
    if (!p) return p.error();
    const Reg ptr = *p.value();
    const bool fetch = in.imm & op::kAtomicFetch;
    if (fetch && in.src == 10)
        return reject(pc, "r10 is read-only (atomic fetch writes its source)");
    auto v = read_reg(s, pc, in.src);
    if (!v) return v.error();
    if (v.value()->kind != Kind::Scalar)
        return reject(pc, fmt::format("atomic operation with r{}, a {}, as operand", in.src,
                                      kind_name(v.value()->kind)));
    const int size = access_size(in.opcode);
    if (in.imm == op::kAtomicCmpXchg) {
        auto r0 = read_reg(s, pc, 0, "the value cmpxchg compares with");
        if (!r0) return r0.error();
        if (r0.value()->kind != Kind::Scalar)
            return reject(pc, "cmpxchg compares with r0, which is not a scalar");
    }
    if (auto r = check_region(s, pc, in.dst, ptr, in.offset, size, true); !r) return r;
    if (ptr.kind == Kind::Stack) {
        if (auto r = check_stack_init(s, pc, ptr, in.offset, size); !r) return r;
        if (auto r = check_spilled_pointers(s, pc, ptr, in.offset, size, false, false); !r)
            return r;
        const int64_t lo = ptr.r.smin + in.offset + kStackSize,
                      hi = ptr.r.smax + in.offset + size + kStackSize;
        StackFrame& st = s.frames[ptr.frame].stack;
        if (const Reg* spilled =
                ptr.r.is_const() && size == 8 ? st.spill(static_cast<int>(lo / 8)) : nullptr;
            spilled && spilled->kind != Kind::Scalar) {
            return reject(pc, "atomic operation on a spilled pointer");
        }
        st.write_misc(static_cast<int>(lo), static_cast<int>(hi));
    }
    const Range old = loaded_range(size, false);
    if (in.imm == op::kAtomicCmpXchg)
        s.cur().regs[0] = Reg::scalar(old);
    else if (fetch)
        s.cur().regs[in.src] = Reg::scalar(old);
    return {};
}

Result<void> Verifier::lddw(State& s, uint32_t pc, const Insn& in) {
    Reg& dst = s.cur().regs[in.dst];
    const uint64_t imm64 =
        static_cast<uint32_t>(in.imm) | (uint64_t{static_cast<uint32_t>(insns_[pc + 1].imm)} << 32);
    switch (in.src) {
        case 0: dst = Reg::scalar(Range::constant(imm64)); return {};
        case op::kPseudoFunc:
            dst = Reg{};
            dst.kind = Kind::Func;
            dst.target = static_cast<int32_t>(pc + 1 + in.imm);
            return {};
        default: break;
    }
    if (in.imm < 0 || static_cast<size_t>(in.imm) >= prog_.maps.size() || !prog_.maps[in.imm])
        return reject(
            pc, fmt::format("map index {} out of range ({} maps)", in.imm, prog_.maps.size()));
    const MapSpec& spec = prog_.maps[in.imm]->spec();
    dst = Reg{};
    dst.map = in.imm;
    if (in.src == op::kPseudoMapIdx) {
        dst.kind = Kind::MapPtr;
        return {};
    }
    // A value address fixed at load time exists only for plain arrays (the kernel's
    // map_direct_value_addr): hash values come and go, per-CPU values differ by CPU.
    if (spec.type != MapType::Array || spec.max_entries == 0)
        return reject(pc,
                      fmt::format("direct value access to map '{}', which is not a non-empty array",
                                  spec.name));
    const uint32_t off = static_cast<uint32_t>(insns_[pc + 1].imm);
    if (off >= spec.value_size)
        return reject(pc, fmt::format("offset {} beyond the {}-byte value of map '{}'", off,
                                      spec.value_size, spec.name));
    dst.kind = Kind::MapValue;
    dst.size = spec.value_size;
    dst.r = Range::constant(off);
    return {};
}

// ---- calls ---------------------------------------------------------------------------------

Result<bool> Verifier::call(Path& path, const Insn& in) {
    State& s = path.state;
    const uint32_t pc = path.pc;
    if (in.opcode & op::kSrcX) {
        const int regno = in.dst ? in.dst : in.imm;  // imm in 0..10: check_encoding
        auto r = read_reg(s, pc, regno);
        if (!r) return r.error();
        const Reg& target = *r.value();
        need_precise(target);
        if (target.kind != Kind::Scalar || !target.r.is_const() || target.r.umin > 0x7fffffff)
            return reject(pc,
                          fmt::format("callx through r{}, which is not a known helper id", regno));
        return helper_call(path, static_cast<int32_t>(target.r.umin), "callx");
    }
    if (in.src == 0) return helper_call(path, in.imm, "call");
    // bpf-to-bpf call: a new frame with r1-r5 as arguments.
    if (s.frames.size() >= static_cast<size_t>(kMaxCallDepth))
        return reject(pc, fmt::format("call depth exceeds {} frames", kMaxCallDepth));
    Frame callee;
    for (int i = 1; i <= 5; ++i) callee.regs[i] = s.cur().regs[i];
    callee.regs[10].kind = Kind::Stack;
    callee.regs[10].frame = static_cast<uint32_t>(s.frames.size());
    callee.callsite = static_cast<int32_t>(pc);
    s.frames.push_back(std::move(callee));
    report_.max_call_depth =
        std::max(report_.max_call_depth, static_cast<uint32_t>(s.frames.size()));
    path.pc = pc + 1 + in.imm;
    return true;
}

Result<void> Verifier::helper_mem(State& s, uint32_t pc, int regno, const Reg& ptr, uint64_t size,
                                  bool write, const std::string& what) {
    if (size == 0) return {};
    if (ptr.kind == Kind::Scalar || !ptr.is_init() || ptr.kind == Kind::MapPtr ||
        ptr.kind == Kind::Func || ptr.kind == Kind::MapValueOrNull ||
        ptr.kind == Kind::RingbufMemOrNull) {
        if (!ptr.is_init())
            return reject(pc, fmt::format("r{} read before it is written ({})", regno, what));
        return reject(pc, fmt::format("{} must point to memory, r{} is a {}", what, regno,
                                      kind_name(ptr.kind)));
    }
    if (auto r = check_region(s, pc, regno, ptr, 0, size, write, false); !r) return r;
    if (ptr.kind != Kind::Stack) return {};
    if (auto r = check_spilled_pointers(s, pc, ptr, 0, size, write, false); !r) return r;
    if (!write) return check_stack_init(s, pc, ptr, 0, size);
    StackFrame& st = s.frames[ptr.frame].stack;
    const int64_t lo = ptr.r.smin + kStackSize,
                  hi = ptr.r.smax + static_cast<int64_t>(size) + kStackSize;
    if (ptr.r.is_const())
        st.write_misc(static_cast<int>(lo), static_cast<int>(hi));
    else
        st.clobber_spills(static_cast<int>(lo), static_cast<int>(hi));
    return {};
}

Result<bool> Verifier::helper_call(Path& path, int32_t id, const char* via) {
    State& s = path.state;
    const uint32_t pc = path.pc;
    if (id == helper_id::kTailCall) return tail_call(path);
    const HelperProto* proto = helpers_.find(id);
    if (!proto) return reject(pc, fmt::format("{} to unknown helper {}", via, id));
    const std::string& name = proto->name;

    int map_index = -1;
    int pending_mem = -1;  // argument index of a memory pointer waiting for its size
    int func_arg = -1;
    uint64_t alloc_size = 0;
    uint32_t released = 0;
    for (int i = 0; i < 5; ++i) {
        const ArgType type = proto->args[i];
        if (type == ArgType::None) break;
        const int regno = i + 1;
        const std::string what = fmt::format("argument {} of {}", regno, name);
        auto rr = read_reg(s, pc, regno, what.c_str());
        if (!rr) return rr.error();
        const Reg arg = *rr.value();
        auto expect = [&](bool ok, const char* wanted) -> Result<void> {
            if (ok) return {};
            return reject(pc, fmt::format("{} must be {}, r{} is a {}", what, wanted, regno,
                                          kind_name(arg.kind)));
        };
        switch (type) {
            case ArgType::None:
            case ArgType::Anything: break;
            case ArgType::Scalar:
                if (auto r = expect(arg.kind == Kind::Scalar, "a scalar"); !r) return r.error();
                break;
            case ArgType::ConstSize:
            case ArgType::ConstSizeOrZero: {
                if (auto r = expect(arg.kind == Kind::Scalar, "a size (scalar)"); !r)
                    return r.error();
                need_precise(arg);
                if (type == ArgType::ConstSize && arg.r.umin == 0)
                    return reject(pc, fmt::format("{} is a size that may be 0 (r{} in [{}, {}])",
                                                  what, regno, arg.r.umin, arg.r.umax));
                if (arg.r.umax > kMaxHelperSize)
                    return reject(
                        pc, fmt::format("{} is a size that is not bounded (r{} may be up to {:#x})",
                                        what, regno, arg.r.umax));
                if (pending_mem >= 0) {
                    const bool write = proto->args[pending_mem] == ArgType::PtrToUninitMem;
                    // A variable size initializes only what it surely covers.
                    const uint64_t size = write && !arg.r.is_const() ? arg.r.umin : arg.r.umax;
                    const std::string mem_what =
                        fmt::format("argument {} of {}", pending_mem + 1, name);
                    if (write && size != arg.r.umax) {
                        if (auto r =
                                check_region(s, pc, pending_mem + 1, s.cur().regs[pending_mem + 1],
                                             0, arg.r.umax, true, false);
                            !r)
                            return r.error();
                    }
                    if (auto r = helper_mem(s, pc, pending_mem + 1, s.cur().regs[pending_mem + 1],
                                            size, write, mem_what);
                        !r)
                        return r.error();
                    pending_mem = -1;
                } else {
                    if (proto->ret == RetType::RingbufMemOrNull && !arg.r.is_const())
                        return reject(
                            pc, fmt::format("{} must be a constant size, r{} is in [{}, {}]", what,
                                            regno, arg.r.umin, arg.r.umax));
                    alloc_size = arg.r.umax;
                }
                break;
            }
            case ArgType::PtrToMem:
            case ArgType::PtrToUninitMem:
                if (auto r = expect(
                        arg.is_pointer() && arg.kind != Kind::MapPtr && arg.kind != Kind::Func,
                        "a memory pointer");
                    !r)
                    return r.error();
                pending_mem = i;
                break;
            case ArgType::PtrToMap:
                if (auto r = expect(arg.kind == Kind::MapPtr, "a map"); !r) return r.error();
                map_index = arg.map;
                break;
            case ArgType::PtrToMapKey:
            case ArgType::PtrToMapValue: {
                if (map_index < 0)
                    return reject(pc, fmt::format("{}: no map argument precedes it", what));
                const MapSpec& spec = prog_.maps[map_index]->spec();
                const uint32_t size =
                    type == ArgType::PtrToMapKey ? spec.key_size : spec.value_size;
                if (auto r = helper_mem(s, pc, regno, arg, size, false, what); !r) return r.error();
                break;
            }
            case ArgType::PtrToCtx:
                if (auto r = expect(arg.kind == Kind::Ctx, "the context"); !r) return r.error();
                if (arg.r != Range::constant(0))
                    return reject(pc,
                                  fmt::format("{} must point to the start of the context", what));
                break;
            case ArgType::PtrToFunc:
                if (auto r = expect(arg.kind == Kind::Func, "a function"); !r) return r.error();
                func_arg = i;
                break;
            case ArgType::PtrToRingbufMem:
                if (auto r = expect(arg.kind == Kind::RingbufMem, "a reserved ring buffer record");
                    !r)
                    return r.error();
                if (arg.r != Range::constant(0))
                    return reject(
                        pc, fmt::format("{} must point to the start of the reserved record", what));
                released = arg.id;
                break;
        }
    }
    if (pending_mem >= 0) {
        // A memory argument without a size argument: the helper reads at least a byte.
        if (auto r = helper_mem(s, pc, pending_mem + 1, s.cur().regs[pending_mem + 1], 1,
                                proto->args[pending_mem] == ArgType::PtrToUninitMem,
                                fmt::format("argument {} of {}", pending_mem + 1, name));
            !r)
            return r.error();
    }
    if (released) release(s, released);

    Reg ret = Reg::scalar(Range::unknown());
    switch (proto->ret) {
        case RetType::Integer: break;
        case RetType::Void: ret = Reg{}; break;
        case RetType::MapValueOrNull:
            if (map_index < 0)
                return reject(pc, fmt::format("{} returns a map value but takes no map", name));
            ret = Reg{};
            ret.kind = Kind::MapValueOrNull;
            ret.map = map_index;
            ret.size = prog_.maps[map_index]->spec().value_size;
            ret.id = new_id();
            break;
        case RetType::RingbufMemOrNull:
            ret = Reg{};
            ret.kind = Kind::RingbufMemOrNull;
            ret.size = static_cast<uint32_t>(alloc_size);
            ret.id = new_id();
            s.refs.push_back(Reference{ret.id, pc});
            break;
    }

    if (func_arg >= 0) {
        // The callback runs in a new frame with r1 = an index and r2 = the argument after the
        // function (bpf_loop's callback_ctx). Verified from the caller's state at the call,
        // then entered again from the state each iteration leaves until the entries converge
        // (exit() forks those); the path below covers zero invocations.
        if (s.frames.size() >= static_cast<size_t>(kMaxCallDepth))
            return reject(pc,
                          fmt::format("call depth exceeds {} frames (callback)", kMaxCallDepth));
        State cb = s;
        const int32_t target = s.cur().regs[func_arg + 1].target;
        const Reg arg = func_arg + 1 < 5 ? s.cur().regs[func_arg + 2] : Reg{};
        cb.frames.push_back(callback_frame(static_cast<uint32_t>(cb.frames.size()),
                                           static_cast<int32_t>(pc), target, arg));
        report_.max_call_depth =
            std::max(report_.max_call_depth, static_cast<uint32_t>(cb.frames.size()));
        fork(path, std::move(cb), static_cast<uint32_t>(target));
    }
    Frame& f = s.cur();
    f.regs[0] = ret;
    for (int i = 1; i <= 5; ++i) f.regs[i] = Reg{};
    path.pc = pc + 1;
    return true;
}

Result<bool> Verifier::tail_call(Path& path) {
    State& s = path.state;
    const uint32_t pc = path.pc;
    static const char* const what[] = {"", "argument 1 of tail_call", "argument 2 of tail_call",
                                       "argument 3 of tail_call"};
    for (int regno = 1; regno <= 3; ++regno) {
        if (auto r = read_reg(s, pc, regno, what[regno]); !r) return r.error();
    }
    const Frame& f = s.cur();
    if (f.regs[1].kind != Kind::Ctx)
        return reject(pc, fmt::format("argument 1 of tail_call must be the context, r1 is a {}",
                                      kind_name(f.regs[1].kind)));
    if (f.regs[2].kind != Kind::MapPtr ||
        prog_.maps[f.regs[2].map]->spec().type != MapType::ProgArray)
        return reject(pc, "argument 2 of tail_call must be a program array map");
    if (f.regs[3].kind != Kind::Scalar)
        return reject(pc, fmt::format("argument 3 of tail_call must be a scalar, r3 is a {}",
                                      kind_name(f.regs[3].kind)));
    if (!s.refs.empty())
        return reject(
            pc, fmt::format("tail call while the ring buffer record reserved at insn {} is neither "
                            "submitted nor discarded",
                            s.refs.front().pc));
    // A taken tail call ends this function with the target's r0 (engines pop the frame); the
    // fall-through continues with r0 = an error code.
    Path taken{s, pc, path.parent};
    Frame& tf = taken.state.cur();
    tf.regs[0] = Reg::scalar(Range::unknown());
    for (int i = 1; i <= 5; ++i) tf.regs[i] = Reg{};
    if (path.parent) ++path.parent->branches;
    auto go_on = exit(taken);
    if (!go_on) return go_on.error();
    if (go_on.value())
        pending_.push_back(std::move(taken));
    else
        end_path(taken.parent);

    Frame& cf = s.cur();
    cf.regs[0] = Reg::scalar(Range::unknown());
    for (int i = 1; i <= 5; ++i) cf.regs[i] = Reg{};
    path.pc = pc + 1;
    return true;
}

Result<bool> Verifier::exit(Path& path) {
    State& s = path.state;
    const uint32_t pc = path.pc;
    Frame& f = s.cur();
    if (s.frames.size() == 1) {
        if (!f.regs[0].is_init())
            return reject(pc, "r0 read before it is written (the program's return value)");
        if (!s.refs.empty())
            return reject(
                pc,
                fmt::format("the ring buffer record reserved at insn {} is neither submitted nor "
                            "discarded",
                            s.refs.front().pc));
        if (!options_.allow_pointer_leaks && f.regs[0].is_pointer())
            return reject(
                pc, fmt::format("the program returns r0, a {}, which would expose its address",
                                kind_name(f.regs[0].kind)));
        return false;
    }
    Reg r0 = f.regs[0];
    const uint32_t dying = static_cast<uint32_t>(s.frames.size() - 1);
    if (r0.kind == Kind::Stack && r0.frame == dying)
        return reject(pc, "the function returns a pointer to its own stack");
    const bool callback = f.callback;
    const uint32_t callsite = static_cast<uint32_t>(f.callsite);
    const int32_t callback_entry = f.callback_entry;
    const Reg callback_arg = f.callback_arg;
    if (callback) {
        if (r0.kind != Kind::Scalar) {
            if (!r0.is_init())
                return reject(pc, "r0 read before it is written (the callback's return value)");
            return reject(pc, fmt::format("the callback must return a scalar, r0 is a {}",
                                          kind_name(r0.kind)));
        }
    }
    s.frames.pop_back();
    // Pointers into the dead frame left in callers' stacks are no longer usable: their bytes
    // become numbers, which is a leak unless leaks are allowed.
    for (Frame& caller : s.frames) {
        for (const auto& [slot, r] : caller.stack.spills)
            if (!options_.allow_pointer_leaks && r.kind == Kind::Stack && r.frame == dying)
                return reject(
                    pc,
                    fmt::format("a pointer to the returning function's stack stays in a caller's "
                                "stack (offset {}) and would expose its address",
                                int{slot} * 8 - kStackSize));
        std::erase_if(caller.stack.spills, [&](auto& e) {
            if (e.second.kind != Kind::Stack || e.second.frame != dying) return false;
            std::fill_n(caller.stack.bytes.begin() + e.first * 8, 8, Byte::Misc);
            return true;
        });
    }
    if (callback) {
        // The helper may call it again, now from the state this iteration left. Scalars the
        // callback can reach (spilled in callers' stacks) are widened to unknown, as the
        // kernel widens imprecise scalars across iterations: a counter the callback bumps
        // would otherwise give a new state per iteration and never converge. Their kinds
        // (pointer or scalar) are kept, so a callback that replaces a pointer it dereferences
        // is still caught on the next entry.
        State again = s;
        for (Frame& caller : again.frames)
            for (auto& [slot, r] : caller.stack.spills)
                if (r.kind == Kind::Scalar) r = Reg::scalar(Range::unknown());
        again.frames.push_back(
            callback_frame(dying, static_cast<int32_t>(callsite), callback_entry, callback_arg));
        fork(path, std::move(again), static_cast<uint32_t>(callback_entry));
        ++pending_.back().iteration;
    }
    Frame& caller = s.cur();
    caller.regs[0] = callback ? Reg::scalar(Range::unknown()) : r0;
    for (int i = 1; i <= 5; ++i) caller.regs[i] = Reg{};
    path.pc = callsite + 1;
    return true;
}

}  // namespace

Result<VerifierReport> verify(const Program& program, const HelperTable& helpers,
                              const VerifierOptions& options) {
    Verifier verifier(program, helpers, options);
    return verifier.run();
}

}  // namespace liveio::ebpf
