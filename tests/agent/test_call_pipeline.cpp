// The agent's call pipeline on this process's own calls, intercepted through the GOT
// mechanism: observers in order around native and redirected calls, a redirector set and
// cleared while threads call, and the per-thread counters exact across threads.
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "agent/call_counters.h"
#include "agent/call_pipeline.h"
#include "hook/dispatcher.h"
#include "hook/interceptor.h"

namespace liveio::agent {
namespace {

// A file of 4 KiB of 'a' opened read-only, removed from the directory at once.
class TempFile {
public:
    TempFile() {
        std::string path = "/tmp/liveio-pipeline-XXXXXX";
        fd_ = ::mkstemp(path.data());
        if (fd_ < 0) return;
        ::unlink(path.c_str());
        const std::string data(4096, 'a');
        if (::pwrite(fd_, data.data(), data.size(), 0) != 4096) {
            ::close(fd_);
            fd_ = -1;
        }
    }
    ~TempFile() {
        if (fd_ >= 0) ::close(fd_);
    }
    int fd() const { return fd_; }

private:
    int fd_ = -1;
};

struct Edge {
    int observer;
    bool exit;
    long nr;
    long result;
    uint64_t word;
};

// Records the edges of pread64 calls (other calls of the process are ignored).
class RecordingObserver final : public CallObserver {
public:
    RecordingObserver(int id, std::vector<Edge>& log, std::mutex& mu)
        : id_(id), log_(log), mu_(mu) {}
    void enter(CallFrame& frame) override { record(frame, false); }
    void exit(CallFrame& frame) override { record(frame, true); }

private:
    void record(const CallFrame& frame, bool exit) {
        if (frame.call.nr != SYS_pread64) return;
        std::lock_guard lock(mu_);
        log_.push_back({id_, exit, frame.call.nr, exit ? frame.result : 0, frame.word});
    }
    int id_;
    std::vector<Edge>& log_;
    std::mutex& mu_;
};

// Performs pread64 itself: fills the buffer with 'r' and returns the requested count, so a
// redirected call is told from a native one by its bytes.
class FillingRedirector final : public Redirector {
public:
    std::atomic<uint64_t> redirected{0};
    bool redirect(CallFrame& frame) override {
        if (frame.call.nr != SYS_pread64) return false;
        auto* buf = reinterpret_cast<char*>(frame.call.args[1]);
        const auto count = static_cast<size_t>(frame.call.args[2]);
        for (size_t i = 0; i < count; ++i) buf[i] = 'r';
        frame.result = static_cast<long>(count);
        frame.word |= 1;
        redirected.fetch_add(1, std::memory_order_relaxed);
        return true;
    }
};

hook::InterceptOptions got_on_this_binary() {
    hook::InterceptOptions o;
    o.mechanism = hook::Mechanism::Got;
    o.objects = {hook::kMainProgram};
    o.functions = {"pread", "pread64"};
    return o;
}

// A pipeline with only the counters, installed on this binary's pread calls.
class CountedPipeline : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_GE(file.fd(), 0);
        auto i = hook::Interceptor::install(got_on_this_binary(), &pipeline);
        ASSERT_TRUE(i.ok()) << i.error().message;
        interceptor = std::move(i).value();
    }
    void uninstall() { ASSERT_TRUE(interceptor->uninstall().ok()); }

    TempFile file;
    CallCounters counters;
    CallPipelineOf<CallCounters> pipeline{counters};
    std::unique_ptr<hook::Interceptor> interceptor;
};

TEST(CallPipeline, ObserversSeeNativeAndRedirectedCallsInOrder) {
    TempFile file;
    ASSERT_GE(file.fd(), 0);
    std::mutex mu;
    std::vector<Edge> log;
    RecordingObserver first(1, log, mu), second(2, log, mu);
    CallPipelineOf<RecordingObserver, RecordingObserver> pipeline(first, second);
    FillingRedirector redirector;
    auto icpt = hook::Interceptor::install(got_on_this_binary(), &pipeline);
    ASSERT_TRUE(icpt.ok()) << icpt.error().message;

    char buf[16] = {};
    ASSERT_EQ(::pread(file.fd(), buf, sizeof buf, 0), 16);
    EXPECT_EQ(buf[0], 'a');
    ASSERT_TRUE(pipeline.set_redirector(&redirector).ok());
    EXPECT_EQ(pipeline.set_redirector(&redirector).error().code, EBUSY);
    ASSERT_EQ(::pread(file.fd(), buf, 8, 0), 8);
    EXPECT_EQ(std::string(buf, 8), "rrrrrrrr");
    pipeline.clear_redirector();
    ASSERT_EQ(::pread(file.fd(), buf, sizeof buf, 0), 16);
    EXPECT_EQ(buf[0], 'a');
    ASSERT_TRUE(icpt.value()->uninstall().ok());

    const uint64_t redirected = CallPipeline::kRedirected | 1;
    const std::vector<std::tuple<int, bool, long, uint64_t>> want = {
        {1, false, 0, 0}, {2, false, 0, 0}, {1, true, 16, 0},         {2, true, 16, 0},
        {1, false, 0, 0}, {2, false, 0, 0}, {1, true, 8, redirected}, {2, true, 8, redirected},
        {1, false, 0, 0}, {2, false, 0, 0}, {1, true, 16, 0},         {2, true, 16, 0},
    };
    ASSERT_EQ(log.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
        SCOPED_TRACE(i);
        EXPECT_EQ(log[i].observer, std::get<0>(want[i]));
        EXPECT_EQ(log[i].exit, std::get<1>(want[i]));
        EXPECT_EQ(log[i].result, std::get<2>(want[i]));
        EXPECT_EQ(log[i].word, std::get<3>(want[i]));
    }
    EXPECT_EQ(redirector.redirected.load(), 1u);
}

// Threads read while the redirector is set and cleared again and again: every read returns
// either the file's bytes or the redirector's, never a mix, and once clear_redirector has
// returned the redirector is never entered again.
TEST_F(CountedPipeline, RedirectorSetAndClearedWhileThreadsCall) {
    constexpr int kThreads = 4;
    constexpr int kReadsPerThread = 20000;
    std::atomic<int> wrong{0};
    std::atomic<bool> done{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&] {
            char buf[64];
            for (int i = 0; i < kReadsPerThread; ++i) {
                if (::pread(file.fd(), buf, sizeof buf, 0) != 64) {
                    wrong.fetch_add(1);
                    continue;
                }
                const char c = buf[0];
                if (c != 'a' && c != 'r') wrong.fetch_add(1);
                for (char b : buf)
                    if (b != c) {
                        wrong.fetch_add(1);
                        break;
                    }
            }
        });
    uint64_t cycles = 0;
    bool entered_after_clear = false;
    std::thread cycler([&] {
        // Bounded: at most 2000 cycles, and never past the readers.
        while (!done.load() && cycles < 2000) {
            auto redirector = std::make_unique<FillingRedirector>();
            if (!pipeline.set_redirector(redirector.get()).ok()) break;
            std::this_thread::yield();
            pipeline.clear_redirector();
            const uint64_t n = redirector->redirected.load();
            std::this_thread::yield();
            entered_after_clear |= redirector->redirected.load() != n;
            redirector.reset();  // destroyed while the readers keep calling
            ++cycles;
        }
    });
    for (auto& t : threads) t.join();
    done = true;
    cycler.join();
    uninstall();

    EXPECT_EQ(wrong.load(), 0);
    EXPECT_FALSE(entered_after_clear);
    EXPECT_GT(cycles, 0u);
    EXPECT_EQ(counters.snapshot()["pread64"]["calls"].get<uint64_t>(),
              uint64_t{kThreads} * kReadsPerThread);
}

// More threads over time than the counters have blocks: the later ones take over the blocks
// of exited threads, and no call is lost.
TEST_F(CountedPipeline, CountersExactAcrossManyShortLivedThreads) {
    constexpr int kWaves = 3;
    constexpr int kThreadsPerWave = CallCounters::kThreadBlocks / 2 + 16;
    constexpr int kReads = 20;
    uint64_t errors_expected = 0;
    for (int wave = 0; wave < kWaves; ++wave) {
        // In batches of 32 live threads (the machine may be small).
        for (int first = 0; first < kThreadsPerWave; first += 32) {
            std::vector<std::thread> threads;
            for (int t = first; t < kThreadsPerWave && t < first + 32; ++t)
                threads.emplace_back([&] {
                    char buf[100];
                    for (int i = 0; i < kReads; ++i) (void)::pread(file.fd(), buf, sizeof buf, 0);
                    (void)::pread(-1, buf, sizeof buf, 0);  // EBADF: one error per thread
                });
            for (auto& t : threads) t.join();
        }
        errors_expected += kThreadsPerWave;
    }
    uninstall();
    const auto snap = counters.snapshot();
    const uint64_t threads = uint64_t{kWaves} * kThreadsPerWave;
    EXPECT_EQ(snap["pread64"]["calls"].get<uint64_t>(), threads * (kReads + 1));
    EXPECT_EQ(snap["pread64"]["bytes"].get<uint64_t>(), threads * kReads * 100);
    EXPECT_EQ(snap["pread64"]["errors"].get<uint64_t>(), errors_expected);
    EXPECT_EQ(counters.total_calls(), snap["total"]["calls"].get<uint64_t>());
}

}  // namespace
}  // namespace liveio::agent
