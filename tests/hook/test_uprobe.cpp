// Userspace uprobes/uretprobes on real functions: registers seen at entry and return.
#include <atomic>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hook/uprobe.h"

extern "C" {
int tricky_rip_load(int);
int tricky_call_prologue(int);
}

namespace liveio::hook {
namespace {

std::string bytes_at(void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

TEST(Uprobe, EntrySeesArgumentsAndMayEditThem) {
    void* fn = reinterpret_cast<void*>(&tricky_rip_load);
    const std::string before = bytes_at(fn, 16);
    std::vector<long> args;
    auto probe = attach_uprobe(
        fn,
        [&](pt_regs* r) {
            args.push_back(static_cast<long>(r->rdi));
            EXPECT_EQ(r->rip, reinterpret_cast<unsigned long>(fn));
            if (r->rdi == 100) r->rdi = 1;  // the function then runs with the edited argument
        },
        false);
    ASSERT_TRUE(probe.ok()) << probe.error().message;
    EXPECT_EQ(tricky_rip_load(2), 42);
    EXPECT_EQ(tricky_rip_load(100), 41);
    EXPECT_EQ(args, (std::vector<long>{2, 100}));
    EXPECT_EQ((*probe)->hits(), 2u);
    ASSERT_TRUE((*probe)->detach().ok());
    EXPECT_EQ(bytes_at(fn, 16), before);
    EXPECT_EQ(tricky_rip_load(100), 140);
}

TEST(Uprobe, ReturnSeesResultAndStackPointer) {
    void* fn = reinterpret_cast<void*>(&tricky_call_prologue);
    std::vector<long> results;
    auto probe = attach_uprobe(
        fn,
        [&](pt_regs* r) {
            results.push_back(static_cast<long>(r->rax));
            r->rax += 1;  // the caller receives the edited return value
        },
        true);
    ASSERT_TRUE(probe.ok()) << probe.error().message;
    EXPECT_EQ(tricky_call_prologue(1), 9);
    EXPECT_EQ(tricky_call_prologue(3), 11);
    EXPECT_EQ(results, (std::vector<long>{8, 10}));
    // A second probe on the same function is refused while the first is attached.
    auto second = attach_uprobe(
        fn, [](pt_regs*) {}, false);
    EXPECT_FALSE(second.ok());
    probe->reset();
    EXPECT_EQ(tricky_call_prologue(3), 10);
    auto again = attach_uprobe(
        fn, [&](pt_regs*) {}, false);
    EXPECT_TRUE(again.ok());
}

TEST(Uprobe, ConcurrentCallersUnderAttachDetach) {
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t)
        threads.emplace_back([&] {
            for (int i = 0; !stop.load(); ++i)
                if (tricky_call_prologue(i) != 7 + i) wrong.fetch_add(1);
        });
    std::atomic<uint64_t> seen{0};
    for (int cycle = 0; cycle < 100; ++cycle) {
        auto probe = attach_uprobe(
            reinterpret_cast<void*>(&tricky_call_prologue), [&](pt_regs*) { seen.fetch_add(1); },
            cycle % 2 == 1);
        ASSERT_TRUE(probe.ok()) << probe.error().message;
        ASSERT_TRUE((*probe)->detach().ok());
    }
    stop = true;
    for (auto& t : threads) t.join();
    EXPECT_EQ(wrong.load(), 0u);
}

}  // namespace
}  // namespace liveio::hook
