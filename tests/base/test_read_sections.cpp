// base/read_sections.h: flat and counted read sections over per-thread slots, the grace
// periods that wait for them, slot reuse after a thread exits, and the shared overflow count.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "base/read_sections.h"

namespace liveio {
namespace {

using Sections = ReadSections<4, 2>;

TEST(ReadSections, FlatSectionsAreCountedPerChannel) {
    auto s = std::make_unique<Sections>(Sections::Transient{});
    Sections::Slot* cached = nullptr;
    Sections::Slot* slot = s->enter_flat(cached, 1);
    ASSERT_NE(slot, nullptr);
    EXPECT_EQ(cached, slot);
    s->barrier();
    EXPECT_EQ(s->inside(0), 0u);
    EXPECT_EQ(s->inside(1), 1u);
    s->exit_flat(slot, 1);
    EXPECT_EQ(s->inside(1), 0u);
    s->wait_until_idle(1);  // returns at once: nobody inside
    EXPECT_EQ(s->index_of(slot), 0u);
    EXPECT_EQ(s->index_of(nullptr), 4u);
}

TEST(ReadSections, CountedSectionsNest) {
    auto s = std::make_unique<Sections>(Sections::Transient{});
    Sections::ThreadCache cache{};
    {
        Sections::Section outer(*s, cache);
        {
            Sections::Section inner(*s, cache);
            EXPECT_EQ(s->inside(0), 1u);
        }
        EXPECT_EQ(s->inside(0), 1u);  // the outer section is still open
    }
    EXPECT_EQ(s->inside(0), 0u);
    s->synchronize();  // nothing open: returns at once
}

void wait_for(const std::atomic<bool>& flag) {
    while (!flag) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

// synchronize() on a thread of its own; `returned` says whether it has returned.
class Synchronizer {
public:
    explicit Synchronizer(Sections& s)
        : thread_([this, &s] {
              s.synchronize();
              returned = true;
          }) {}
    void join() { thread_.join(); }

    std::atomic<bool> returned{false};

private:
    std::thread thread_;
};

TEST(ReadSections, SynchronizeWaitsForTheSectionOpenWhenItBegan) {
    auto s = std::make_unique<Sections>(Sections::Transient{});
    std::atomic<bool> entered{false}, leave{false};
    std::thread reader([&] {
        Sections::ThreadCache cache{};
        Sections::Section section(*s, cache);
        entered = true;
        wait_for(leave);
    });
    wait_for(entered);
    Synchronizer writer(*s);
    // Whatever the timing, synchronize() cannot have returned while the section is open.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_FALSE(writer.returned.load());
    leave = true;
    reader.join();
    writer.join();
    EXPECT_TRUE(writer.returned.load());
}

TEST(ReadSections, SynchronizeWaitsForTheOuterSectionWhenAnInnerOneEnds) {
    auto s = std::make_unique<Sections>(Sections::Transient{});
    std::atomic<bool> nested{false}, end_inner{false}, inner_ended{false}, leave{false};
    std::thread reader([&] {
        Sections::ThreadCache cache{};
        Sections::Section outer(*s, cache);
        {
            Sections::Section inner(*s, cache);
            nested = true;
            wait_for(end_inner);
        }
        inner_ended = true;
        wait_for(leave);
    });
    wait_for(nested);
    Synchronizer writer(*s);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // usually inside its wait now
    end_inner = true;
    wait_for(inner_ended);
    // The outer section, open when synchronize() began, is still open.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_FALSE(writer.returned.load());
    leave = true;
    reader.join();
    writer.join();
    EXPECT_TRUE(writer.returned.load());
}

TEST(ReadSections, ACacheOfAnotherInstanceIsNotUsed) {
    auto a = std::make_unique<Sections>(Sections::Transient{});
    auto b = std::make_unique<Sections>(Sections::Transient{});
    EXPECT_NE(a->id(), b->id());
    EXPECT_NE(a->id(), 0u);
    Sections::ThreadCache cache{};
    Sections::Slot* in_a = a->enter(cache);
    a->exit(in_a);
    Sections::Slot* in_b = b->enter(cache);
    EXPECT_NE(in_a, in_b);
    EXPECT_EQ(b->index_of(in_b), 0u);  // a slot of b, not a's slot reinterpreted
    EXPECT_EQ(b->inside(0), 1u);
    b->exit(in_b);
}

// One slot: a second live thread counts itself in the shared counter; once the slot's owner
// has exited, a later thread takes the slot over.
TEST(ReadSections, OverflowAndReuseOfAnExitedThreadsSlot) {
    auto s = std::make_unique<ReadSections<1>>(ReadSections<1>::Transient{});
    ReadSections<1>::Slot* first = nullptr;
    std::thread([&] {
        ReadSections<1>::Slot* cached = nullptr;
        first = s->enter(cached);
        std::thread([&] {
            ReadSections<1>::Slot* other = nullptr;
            ReadSections<1>::Slot* slot = s->enter(other);
            EXPECT_EQ(slot, nullptr);  // the only slot belongs to a live thread
            EXPECT_EQ(s->inside(0), 2u);
            s->exit(slot);
        }).join();
        EXPECT_EQ(s->inside(0), 1u);
        s->exit(first);
    }).join();
    ASSERT_NE(first, nullptr);
    // The kernel may still list the joined thread for a moment: bounded retries.
    ReadSections<1>::Slot* taken = nullptr;
    for (int i = 0; i < 1000 && taken == nullptr; ++i) {
        ReadSections<1>::Slot* cached = nullptr;
        taken = s->enter(cached);
        s->exit(taken);
        if (taken == nullptr) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_EQ(taken, first);
    EXPECT_EQ(s->inside(0), 0u);
}

// The dispatcher's use: a process-lifetime instance, constant-initialized.
TEST(ReadSections, ConstantInitializable) {
    static constinit Sections sections;
    sections.register_membarrier();
    EXPECT_EQ(sections.id(), 0u);
    Sections::Slot* cached = nullptr;
    Sections::Slot* slot = sections.enter_flat(cached, 1);
    ASSERT_NE(slot, nullptr);
    EXPECT_EQ(sections.inside(1), 1u);
    sections.exit_flat(slot, 1);
    sections.wait_until_idle(1);
    EXPECT_EQ(sections.inside(1), 0u);
}

}  // namespace
}  // namespace liveio
