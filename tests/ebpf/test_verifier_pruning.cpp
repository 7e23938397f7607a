// The verifier's state pruning stays cheap on adversarial programs: the comparisons of a
// path's state with stored states are counted (VerifierReport::compared_states) and bounded,
// never timed. Soundness is checked beside: the loops the cheaper pruning handles are still
// accepted or refused as before.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

#include <fmt/format.h>

#include "ebpf/verifier.h"
#include "fuzz/program_input.h"
#include "verifier_corpus.h"

namespace liveio::ebpf {
namespace {

using corpus::check;
using corpus::expect_rejected;
using corpus::make_program;

// Comparisons with explored states either prune the path or count a miss, and a state is
// evicted after 3 misses per hit plus 3: at most 4 per path pruned plus 4 per state stored.
// Comparisons with the states of a path's own ancestors happen only on equal fingerprints,
// allowed here once per stored state.
uint64_t comparison_bound(const VerifierReport& r) {
    return 4 * (r.pruned_paths + r.stored_states) + r.stored_states;
}

std::vector<uint8_t> read_file(const std::filesystem::path& path) {
    std::ifstream f(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// A 192-byte input fuzz.verifier found taking seconds: a loop whose counter (r2, unknown on
// entry, bounded by r1 = 1091) is precise, so each iteration is a new state at each prune point
// and used to be compared with every earlier iteration's (quadratic), twice per input:
//
//   0: r1 = 1091          5: r2 += 1             10: r3 *= r2
//   1: r0 = 1             6: r0 = 1              11: r4 = r1
//   2: if w2 & 2 goto 3   7: if r2 >= r1 goto 15 12: r0 -= r3
//   3: if r1 > 2 goto 8   8: r3 = r1             13: if r0 <= 0 goto 14
//   4: goto 15            9: r3 /= r2            14: if r4 != 0 goto 5
//                                                15: exit
TEST(VerifierPruning, SlowFuzzInputDecidedWithFewComparisons) {
    const auto path = std::filesystem::path(__FILE__).parent_path().parent_path() /
                      "fuzz/corpus/verifier/regression-verifier-loop-precise-counter";
    const std::vector<uint8_t> bytes = read_file(path);
    ASSERT_EQ(bytes.size(), 192u) << path;
    auto input = fuzz::decode_program_input(bytes.data(), bytes.size());
    ASSERT_TRUE(input);
    auto program = fuzz::build_program(*input);
    ASSERT_TRUE(program);
    const HelperTable helpers = HelperTable::standard();

    // The fuzz target's budget: refused as too complex, after few comparisons.
    VerifierOptions fuzz_budget;
    fuzz_budget.max_explored_insns = fuzz::kVerifierBudget;
    auto quick = verify(*program, helpers, fuzz_budget);
    ASSERT_FALSE(quick.ok());
    EXPECT_NE(quick.error().message.find("program too complex"), std::string::npos)
        << quick.error().message;

    // The production budget: the loop ends (r2 reaches r1) and the program is accepted.
    auto full = verify(*program, helpers);
    ASSERT_TRUE(full.ok()) << full.error().message;
    std::cout << fmt::format("explored {}, stored {}, pruned {}, compared {}, evicted {}\n",
                             full->explored_insns, full->stored_states, full->pruned_paths,
                             full->compared_states, full->evicted_states);
    EXPECT_LE(full->compared_states, comparison_bound(*full));
    // Far below one comparison per pair of the ~1000 iterations.
    EXPECT_LT(full->compared_states, 20'000u);
}

// The smallest loop with a precise counter, 20000 iterations: every iteration is a new state
// at the loop head, an ancestor of all later ones. Accepted, with (almost) no full
// comparisons: no earlier iteration has the same fingerprint.
TEST(VerifierPruning, LongLoopComparesFingerprintsNotStates) {
    auto r = check(make_program(R"(
        mov %r0, 0
        add %r0, 1
        jlt %r0, 20000, -2
        exit
    )"));
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_GT(r->explored_insns, 40'000u);  // every iteration was followed
    EXPECT_LT(r->compared_states, 100u);
}

// Data-dependent branches inside a bounded loop (as parity_collatz): the paths of one
// iteration meet at the loop head with states that differ, so explored states accumulate and
// miss; eviction drops those that keep missing while the program is still proven.
TEST(VerifierPruning, ExploredStatesThatKeepMissingAreEvicted) {
    auto r = check(make_program(R"(
        ldxdw %r2, [%r1]
        mov %r3, 0
    loop:
        mov %r4, %r2
        and %r4, 1
        jeq %r4, 0, even
        mul %r2, 3
        add %r2, 1
        ja next
    even:
        rsh %r2, 1
    next:
        add %r3, 1
        jlt %r3, 60, loop
        mov %r0, %r2
        exit
    )"));
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_GT(r->evicted_states, 0u);
    EXPECT_LE(r->compared_states, comparison_bound(*r));
}

// Infinite loops are still found by equality with an ancestor: a counter cycling between two
// values returns to the first state on the third visit of the loop head.
TEST(VerifierPruning, InfiniteLoopThroughTwoStates) {
    expect_rejected(make_program(R"(
        mov %r0, 0
    loop:
        xor %r0, 1
        jeq %r0, 5, out
        ja loop
    out:
        exit
    )"),
                    1, "infinite loop");
}

// Equality is up to a renaming of the scalar ids that link copies, and so is the fingerprint
// that selects the ancestors compared: from the second iteration on, each one links r6 and r7
// under a new id, and the third returns to the second's state.
TEST(VerifierPruning, InfiniteLoopWithRenamedIds) {
    expect_rejected(make_program(R"(
        mov %r6, 3
        mov %r7, 2
    loop:
        jeq %r7, 9, out
        and %r6, 1
        mov %r7, %r6
        ja loop
    out:
        mov %r0, %r6
        exit
    )"),
                    2, "infinite loop");
}

}  // namespace
}  // namespace liveio::ebpf
