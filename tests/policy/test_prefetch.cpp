// The `prefetch` policy program (bpf/policies/prefetch.bpf.c) on real files, run as the agent
// runs it at the exit edge of each read(): a stream whose next bytes the page cache already
// holds (the kernel's readahead is ahead of it, or the data is hot) is left to the kernel and
// queues nothing; a stream whose next bytes are not there is prefetched and then kept topped
// up.
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "policy/catalog.h"
#include "policy_fixture.h"

namespace liveio::policy {
namespace {

using testing::file_id_of;
using testing::make_runtime;
using testing::TempFile;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint32_t kStateSkipped = 10;  // prefetch.bpf.c: state[10], ranges found cached

// Pages of [off, off + len) of `fd` in the page cache (cachestat(2), Linux 6.5), or -1.
long cached_pages(int fd, uint64_t off, uint64_t len) {
    struct {
        uint64_t off, len;
    } range{off, len};
    uint64_t stat[5] = {};
    if (::syscall(451, fd, &range, stat, 0) != 0) return -1;
    return static_cast<long>(stat[0]);
}

// The prefetch object switched on in `rt` with the catalog's default knobs.
struct PrefetchPolicy : testing::LoadedPolicy {
    ebpf::Executable* on_read = nullptr;
    Runtime* rt = nullptr;

    static std::unique_ptr<PrefetchPolicy> enable(Runtime& rt) {
        auto p = std::make_unique<PrefetchPolicy>();
        if (!p->load(std::string(LIVEIO_BPF_DIR) + "/policies/prefetch.bpf.o",
                     {"prefetch_on_read"}))
            return nullptr;
        p->on_read = p->exes[0].get();
        p->rt = &rt;
        std::vector<uint64_t> knobs;
        for (const KnobDef& k : find_policy("prefetch").value()->knobs) {
            if (k.index < 0) continue;
            if (knobs.size() <= static_cast<size_t>(k.index)) knobs.resize(k.index + 1);
            knobs[k.index] = k.default_value;
        }
        if (!p->LoadedPolicy::enable(rt, "prefetch", nullptr, std::move(knobs))) return nullptr;
        return p;
    }
    // read(fd, buf, n) by this thread, then what the agent does at its exit edge: the ledger
    // sees the bytes read, then the program runs (a column file).
    ssize_t read_and_exit(int fd, std::string& buf) {
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n > 0)
            rt->observe_read(file_id_of(fd), static_cast<uint64_t>(::lseek(fd, 0, SEEK_CUR) - n),
                             static_cast<uint64_t>(n));
        liveio_io_ctx io = testing::io_exit_ctx(0, fd, buf.size(), n, LIVEIO_CLASS_CH_BIN);
        run(*on_read, io);
        return n;
    }
};

// A column file of `size` bytes written through the page cache and opened; cold: written back
// and dropped from the cache first. Returns the descriptor, or -1 with `skip` saying why the
// page cache is not in the state asked for (or cannot be asked: cachestat is Linux 6.5).
int open_column(const TempFile& f, uint64_t size, bool cold, std::string& skip) {
    f.write_pattern(size, 3);
    const int fd = ::open(f.path().c_str(), O_RDONLY);
    if (fd < 0) {
        ADD_FAILURE() << "open " << f.path();
        return -1;
    }
    if (cold && (::fdatasync(fd) != 0 || ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0))
        ADD_FAILURE() << "cannot drop " << f.path() << " from the page cache";
    const long cached = cached_pages(fd, 0, size);
    if (cached < 0)
        skip = "no cachestat(2) (Linux 6.5): residency is unknown";
    else if (cold && cached > 0)
        skip = "the file stayed in the page cache after DONTNEED";
    else if (!cold && cached < static_cast<long>(size / 4096))
        skip = "the file just written is not all in the page cache (memory pressure)";
    if (skip.empty()) return fd;
    ::close(fd);
    return -1;
}

// The runtime and the policy switched on in it; false (failure recorded) when a part failed.
struct PrefetchOn {
    std::unique_ptr<Runtime> rt = make_runtime();
    std::unique_ptr<PrefetchPolicy> p = rt ? PrefetchPolicy::enable(*rt) : nullptr;
    bool ok() const { return rt && p; }
    const Counters& counters() const { return rt->counters(p->slot); }
};

TEST(PrefetchPolicy, AStreamWhoseNextBytesAreCachedQueuesNothing) {
    TempFile f("UserID.bin");
    std::string skip;
    const int fd = open_column(f, 16 * kMiB, false, skip);
    if (!skip.empty()) GTEST_SKIP() << skip;
    ASSERT_GE(fd, 0);
    PrefetchOn on;
    ASSERT_TRUE(on.ok());
    auto& [rt, p] = on;

    // A whole-buffer scan of a hot file: before, its first read alone queued `depth` bytes.
    std::string buf(kMiB, '\0');
    for (int i = 0; i < 12; ++i) ASSERT_EQ(p->read_and_exit(fd, buf), static_cast<ssize_t>(kMiB));
    rt->worker().barrier();
    const Counters& c = on.counters();
    EXPECT_EQ(Counters::get(c.actions), 0u);
    EXPECT_EQ(Counters::get(c.issued_bytes), 0u);
    EXPECT_EQ(p->u64("state", kStateSkipped), 12u);  // every read: next bytes found cached
    ::close(fd);
}

TEST(PrefetchPolicy, AStreamWhoseNextBytesAreNotCachedIsPrefetchedAndToppedUp) {
    TempFile f("UserID.bin");
    std::string skip;
    const int fd = open_column(f, 32 * kMiB, true, skip);
    if (!skip.empty()) GTEST_SKIP() << skip;
    ASSERT_GE(fd, 0);
    // No kernel readahead on this descriptor: a read brings in only its own pages, so what
    // follows it is in the cache only if the policy prefetched it.
    ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM), 0);
    PrefetchOn on;
    ASSERT_TRUE(on.ok());
    auto& [rt, p] = on;
    const Counters& c = on.counters();

    std::string buf(kMiB, '\0');
    ASSERT_EQ(p->read_and_exit(fd, buf), static_cast<ssize_t>(kMiB));
    rt->worker().barrier();
    EXPECT_EQ(Counters::get(c.actions), 1u);  // [1 MiB, 1 MiB + depth)
    EXPECT_GT(Counters::get(c.issued_bytes), 0u);
    EXPECT_GT(cached_pages(fd, kMiB, kMiB), 0);

    // The stream is the policy's now: later reads find their bytes cached (prefetched), and
    // the window is still topped up ahead of them.
    for (int i = 0; i < 6; ++i) ASSERT_EQ(p->read_and_exit(fd, buf), static_cast<ssize_t>(kMiB));
    rt->worker().barrier();
    EXPECT_GT(Counters::get(c.actions), 1u);
    EXPECT_GT(Counters::get(c.used_bytes), 0u);
    ::close(fd);
}

}  // namespace
}  // namespace liveio::policy
