// Pointer arithmetic and address leaks: the kernel's rules. Every loader gets the rules for
// pointer arithmetic (only add and sub, 64-bit, a pointer minus a pointer gives a number);
// with allow_pointer_leaks off (the kernel's unprivileged rules) no value the program can
// observe may depend on an address.
#include <gtest/gtest.h>

#include "ebpf/verifier.h"
#include "verifier_corpus.h"

namespace liveio::ebpf {
namespace {

using namespace corpus;

VerifierOptions no_leaks() {
    VerifierOptions o;
    o.allow_pointer_leaks = false;
    return o;
}

// ---- arithmetic every loader is refused --------------------------------------------------

TEST(VerifierPointerAlu, KernelRulesForEveryLoader) {
    expect_all_rejected({
        {"mov %r2, %r10\nmul %r2, 2\nmov %r0, 0\nexit", 1,
         "pointer arithmetic with operator mul prohibited"},
        {"mov %r2, %r10\nlsh %r2, 1\nmov %r0, 0\nexit", 1,
         "pointer arithmetic with operator lsh prohibited"},
        {"mov %r2, 7\ndiv %r2, %r1\nmov %r0, 0\nexit", 1,
         "pointer arithmetic with operator div prohibited"},
        {"and %r1, -8\nmov %r0, 0\nexit", 0, "bitwise operator and on a pointer"},
        {"mov %r2, 1\nxor %r2, %r1\nmov %r0, 0\nexit", 1, "bitwise operator xor on a pointer"},
        {"add32 %r1, 4\nldxb %r0, [%r1]\nexit", 0, "32-bit pointer arithmetic prohibited"},
        // 32-bit subtraction only makes a number (the kernel's rule for privileged loaders).
        {"sub32 %r1, 4\nldxb %r0, [%r1]\nexit", 1, "r1, a scalar, not a pointer"},
        {"mov %r2, 64\nsub %r2, %r1\nmov %r0, 0\nexit", 1,
         "tried to subtract a pointer (r1) from a scalar"},
        {"mov %r2, %r10\nsub %r2, 8\nstdw [%r2], 0\nmov %r0, 0\nexit", 1,
         "subtraction from a stack pointer"},
        {"mov %r2, %r10\nadd %r2, %r1\nmov %r0, 0\nexit", 1, "pointer add pointer prohibited"},
        // A context pointer minus a constant stays a context pointer (here out of bounds).
        {"sub %r1, 8\nldxb %r0, [%r1]\nexit", 1, "out-of-bounds context read"},
    });
}

TEST(VerifierPointerAlu, DistanceWithinOneStackFrameIsExact) {
    // (r10 - 8) - r10 == -8, whatever r10 is: usable as an offset again.
    const char* text = R"(
        mov %r2, %r10
        add %r2, -8
        mov %r3, %r10
        sub %r2, %r3
        mov %r4, %r10
        add %r4, %r2
        stdw [%r4], 0
        ldxdw %r0, [%r10-8]
        exit
    )";
    expect_accepted(make_program(text));
    expect_accepted(make_program(text), no_leaks());
}

// Two values of one map may lie anywhere relative to each other: their distance is an unknown
// number, never the difference of their offsets (the old rule made it 0 here, and r3 a stack
// pointer at offset -8 however far the values lay apart).
TEST(VerifierPointerAlu, DistanceBetweenTwoMapValuesIsUnknown) {
    expect_rejected(
        make_program(lookup(0, 0) + "jeq %r0, 0, +13\nmov %r6, %r0\n" + lookup(0, 1) + R"(
        jeq %r0, 0, +6
        sub %r6, %r0
        mov %r3, %r10
        add %r3, -8
        add %r3, %r6
        stdw [%r3], 0
        mov %r0, 0
        exit
    )"),
        18, "pointer arithmetic escapes its region");
}

TEST(VerifierPointerAlu, PrivilegedLoadersMayTurnPointersIntoNumbers) {
    expect_accepted(make_program("mov %r2, %r10\nneg %r2\nmov %r0, %r2\nexit"));
    expect_accepted(make_program("mov32 %r2, %r1\nmov %r0, %r2\nexit"));
    expect_accepted(make_program("stxdw [%r1], %r10\nmov %r0, 0\nexit", 16, true));
    expect_accepted(make_program("mov %r0, %r10\nsub %r0, %r1\nexit"));
    expect_accepted(make_program("mov %r0, 0\njgt %r1, %r10, +1\nmov %r0, 1\nexit"));
}

// ---- without pointer leaks ------------------------------------------------------------------

TEST(VerifierNoPointerLeaks, EveryWayAnAddressBecomesObservable) {
    expect_all_rejected(
        {
            {"mov %r2, %r10\nneg %r2\nmov %r0, 0\nexit", 1, "neg of r2"},
            {"mov32 %r2, %r1\nmov %r0, 0\nexit", 0, "partial copy of r1"},
            {"sub32 %r1, 4\nmov %r0, 0\nexit", 0, "32-bit pointer arithmetic"},
            {"mov %r0, %r10\nsub %r0, %r1\nexit", 1, "distance between two regions"},
            {"mov %r0, %r10\nexit", 1, "returns r0"},
            {"stxdw [%r1], %r10\nmov %r0, 0\nexit", 0, "stored into the context would expose"},
            {"lddw %r2, " + map_value(2) + "\nstxdw [%r2], %r1\nmov %r0, 0\nexit", 2,
             "stored into the map value"},
            {"stxw [%r10-8], %r1\nmov %r0, 0\nexit", 0, "partial or variable-offset spill"},
            {"stxdw [%r10-8], %r1\nldxw %r0, [%r10-8]\nexit", 1,
             "reading part of the context pointer spilled at stack offset -8"},
            {"stxdw [%r10-8], %r1\nstb [%r10-8], 0\nldxdw %r0, [%r10-8]\nexit", 1,
             "overwriting part of the context"},
            // A helper reading the spill (the key of a lookup) would hash the address.
            {"stxdw [%r10-8], %r1\nlddw %r1, " + map(0) +
                 "\nmov %r2, %r10\nadd %r2, -8\ncall 1\nmov %r0, 0\nexit",
             5, "reading part of the context"},
            {"mov %r0, 0\njgt %r1, %r10, +1\nmov %r0, 1\nexit", 1, "comparison of r1"},
            {"mov %r0, 0\njgt %r1, 4096, +1\nmov %r0, 1\nexit", 1, "with 4096"},
        },
        no_leaks());
}

TEST(VerifierNoPointerLeaks, PointersThatStayPointersAreAccepted) {
    // Spilled and filled whole, overwritten whole: the pointer never becomes a number.
    expect_accepted(make_program(R"(
        stxdw [%r10-8], %r1
        ldxdw %r2, [%r10-8]
        ldxb %r0, [%r2]
        stdw [%r10-8], 0
        ldxw %r0, [%r10-8]
        exit
    )"),
                    no_leaks());
    // Null checks of lookups are comparisons with 0 that every engine answers alike.
    expect_accepted(
        make_program(lookup(0, 0) + "jeq %r0, 0, +1\nldxdw %r0, [%r0]\nmov %r0, 0\nexit"),
        no_leaks());
}

}  // namespace
}  // namespace liveio::ebpf
