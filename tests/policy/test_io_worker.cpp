// The policy I/O worker's Read action against the target's descriptor table: it never takes a
// descriptor number, never consumes a byte of what is not a regular file, never moves a file
// position and leaves no reference to the target's file behind.
#include <fcntl.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/fault_points.h"
#include "child_exit.h"
#include "policy/io_worker.h"
#include "policy_fixture.h"
#include "uring/engine.h"

namespace liveio::policy {
namespace {

using testing::TempFile;

constexpr uint32_t kSeed = 51;

// Records what the worker reports; checks every Read's data against the pattern file.
class RecordingSink : public WorkerSink {
public:
    bool admit(const Action&) override { return true; }
    void dropped(const Action&) override { ++dropped_; }
    void issued(const Action&, uint64_t) override { ++issued_; }
    void completed(const Action& a, uint64_t, int32_t res, std::span<const char> data,
                   uint64_t) override {
        ++completed_;
        if (res < 0) {
            ++errors_;
            return;
        }
        if (static_cast<size_t>(res) != data.size()) ++mismatches_;
        for (size_t i = 0; i < data.size(); ++i)
            if (data[i] != TempFile::pattern(kSeed, static_cast<uint64_t>(a.offset) + i)) {
                ++mismatches_;
                break;
            }
        bytes_ += data.size();
    }
    std::atomic<uint64_t> dropped_{0}, issued_{0}, completed_{0}, errors_{0}, mismatches_{0},
        bytes_{0};
};

Action read_action(int fd, int64_t offset, uint64_t len) {
    Action a;
    a.kind = Action::Kind::Read;
    a.fd = fd;
    a.offset = offset;
    a.len = len;
    return a;
}

Action prefetch_action(int fd, int64_t offset, uint64_t len, bool fill) {
    Action a;
    a.kind = Action::Kind::Prefetch;
    a.fd = fd;
    a.offset = offset;
    a.len = len;
    a.fill = fill;
    return a;
}

// Pages of [offset, offset + len) of the file behind `fd` in the page cache (mincore).
size_t resident_pages(int fd, uint64_t offset, uint64_t len) {
    const long page = ::sysconf(_SC_PAGESIZE);
    void* map = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
    if (map == MAP_FAILED) return 0;
    std::vector<unsigned char> vec((len + page - 1) / page);
    size_t n = 0;
    if (::mincore(map, len, vec.data()) == 0)
        for (unsigned char v : vec) n += v & 1;
    ::munmap(map, len);
    return n;
}

// Drops the file's pages from the page cache (written back first).
void evict(int fd) {
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
}

// Pushes until the queue takes it (bounded): the tests count on every action being queued.
void push(IoWorker& w, const Action& a) {
    for (int i = 0; i < 100000 && !w.push(a); ++i) std::this_thread::yield();
}

// Actions of `make(fd)` on a pipe, a socket and a FIFO holding data: refused before any I/O;
// every byte stays for the target.
void expect_pipe_socket_fifo_keep_their_bytes(IoWorker& w, RecordingSink& sink,
                                              Action (*make)(int fd)) {
    TempFile fifo_file("fifo");
    ASSERT_EQ(::mkfifo(fifo_file.path().c_str(), 0600), 0);
    int p[2], sv[2];
    ASSERT_EQ(::pipe(p), 0);
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    const int fifo = ::open(fifo_file.path().c_str(), O_RDWR);
    ASSERT_GE(fifo, 0);
    ASSERT_EQ(::write(p[1], "pipe", 4), 4);
    ASSERT_EQ(::write(sv[1], "socket", 6), 6);
    ASSERT_EQ(::write(fifo, "fifo!", 5), 5);
    for (int fd : {p[0], sv[0], fifo}) push(w, make(fd));
    w.barrier();
    EXPECT_EQ(sink.dropped_.load(), 3u);
    EXPECT_EQ(w.stats().not_regular, 3u);
    char buf[16];
    EXPECT_EQ(::read(p[0], buf, sizeof buf), 4);
    EXPECT_EQ(::recv(sv[0], buf, sizeof buf, 0), 6);
    EXPECT_EQ(::read(fifo, buf, sizeof buf), 5);
    for (int fd : {p[0], p[1], sv[0], sv[1], fifo}) ::close(fd);
}

// The descriptor of an action of `make(fd, round)` on `path` is swapped for a pipe holding data
// right after the action is queued: whether the worker sees the pipe at its fstat or only in
// the ring's check, the pipe keeps every byte.
void expect_swap_for_a_pipe_loses_no_byte(IoWorker& w, RecordingSink& sink, const std::string& path,
                                          Action (*make)(int fd, int round)) {
    int lost = 0;
    for (int round = 0; round < 300; ++round) {
        const int fd = ::open(path.c_str(), O_RDONLY);
        int p[2];
        ASSERT_EQ(::pipe(p), 0);
        ASSERT_EQ(::write(p[1], "0123456789", 10), 10);
        push(w, make(fd, round));
        if (round % 3 != 0) std::this_thread::yield();  // vary the moment of the swap
        ASSERT_EQ(::dup2(p[0], fd), fd);
        w.barrier();
        char buf[16];
        if (::read(fd, buf, sizeof buf) != 10) ++lost;
        for (int d : {fd, p[0], p[1]}) ::close(d);
    }
    EXPECT_EQ(lost, 0);
    EXPECT_EQ(sink.mismatches_.load(), 0u);
    EXPECT_EQ(sink.completed_.load() + sink.dropped_.load(), 300u);
}

// A worker (io_uring backend unless `fallback`) beside a pattern file "data.bin".
class PolicyIoWorker : public ::testing::Test {
protected:
    void start(uint64_t file_size, bool fallback = false, unsigned direct_file_slots = 0) {
        data.write_pattern(file_size, kSeed);
        IoWorker::Options o;
        o.force_fallback = fallback;
        o.direct_file_slots = direct_file_slots;
        auto started = IoWorker::start(o, sink);
        ASSERT_TRUE(started) << started.error().message;
        w = std::move(started).value();
        if (!fallback && !w->uses_io_uring())
            GTEST_SKIP() << "io_uring unusable here: Reads are dropped";
    }
    int open_data() const { return ::open(data.path().c_str(), O_RDONLY); }

    TempFile data{"data.bin"};
    RecordingSink sink;
    std::unique_ptr<IoWorker> w;  // destroyed first: it reports to `sink`
};

// Starts the worker; a test without io_uring ends here, skipped.
#define START(...)                               \
    ASSERT_NO_FATAL_FAILURE(start(__VA_ARGS__)); \
    if (IsSkipped()) return

// A target thread closes descriptor N and opens a file, over and over, while Reads of other
// descriptors are in flight: POSIX gives it the lowest free number, N, every time.
TEST_F(PolicyIoWorker, ReadsInFlightNeverTakeTheTargetsLowestFreeDescriptor) {
    START(8 << 20);
    TempFile other("other.bin");
    other.write_pattern(4096, 1);
    // N is the lowest free number now: every number below it is open.
    const int n = ::open(other.path().c_str(), O_RDONLY);
    ASSERT_GE(n, 0);
    std::vector<int> readers;
    for (int i = 0; i < 4; ++i) readers.push_back(open_data());
    std::atomic<bool> done{false};
    std::atomic<int> wrong{0}, rounds{0};
    std::thread target([&] {
        int fd = n;
        for (int i = 0; i < 3000; ++i) {
            ::close(fd);
            std::this_thread::yield();  // the worker may run while N is free
            fd = ::open(other.path().c_str(), O_RDONLY);
            if (fd != n) ++wrong;
            if (fd < 0) break;
            ++rounds;
        }
        ::close(fd);
        done.store(true);
    });
    uint64_t pushed = 0;
    for (uint64_t i = 0; !done.load() && i < 200000; ++i) {
        const int64_t offset = static_cast<int64_t>((i * 40961) % ((8 << 20) - 65536));
        push(*w, read_action(readers[i % readers.size()], offset, 4096 + (i % 16) * 4096));
        ++pushed;
    }
    target.join();
    w->barrier();
    EXPECT_EQ(wrong.load(), 0) << "of " << rounds.load() << " opens, expecting " << n;
    EXPECT_EQ(rounds.load(), 3000);
    EXPECT_GT(sink.completed_.load(), 0u);
    EXPECT_EQ(sink.errors_.load(), 0u);
    EXPECT_EQ(sink.mismatches_.load(), 0u);
    EXPECT_EQ(sink.completed_.load() + sink.dropped_.load(), pushed);
    for (int fd : readers) ::close(fd);
}

// A Read of a pipe, socket or FIFO is refused before any I/O and consumes nothing.
TEST_F(PolicyIoWorker, ReadOfAPipeSocketOrFifoConsumesNothing) {
    START(0);
    expect_pipe_socket_fifo_keep_their_bytes(*w, sink,
                                             [](int fd) { return read_action(fd, 0, 4096); });
}

// A /proc file is regular but its reads keep state in the open file description: never read.
TEST_F(PolicyIoWorker, ReadOfAProcFileIsRefused) {
    START(0);
    const int fd = ::open("/proc/self/status", O_RDONLY);
    ASSERT_GE(fd, 0);
    push(*w, read_action(fd, 16, 64));
    w->barrier();
    EXPECT_EQ(sink.dropped_.load(), 1u);
    EXPECT_EQ(w->stats().not_regular, 1u);
    ::close(fd);
}

// A Read whose descriptor becomes a pipe right after it was queued.
TEST_F(PolicyIoWorker, DescriptorSwappedForAPipeUnderAQueuedReadLosesNoByte) {
    START(1 << 20);
    expect_swap_for_a_pipe_loses_no_byte(*w, sink, data.path(), [](int fd, int round) {
        return read_action(fd, (round % 64) * 4096, 65536);
    });
    EXPECT_EQ(sink.errors_.load(), 0u);
}

TEST_F(PolicyIoWorker, ReadLeavesTheSharedFilePositionAlone) {
    START(1 << 20);
    const int fd = open_data();
    ASSERT_EQ(::lseek(fd, 777, SEEK_SET), 777);
    for (int64_t off : {0, 4096, 500000, (1 << 20) - 100}) push(*w, read_action(fd, off, 65536));
    w->barrier();
    EXPECT_EQ(::lseek(fd, 0, SEEK_CUR), 777) << "the file position moved";
    EXPECT_EQ(sink.completed_.load(), 4u);
    EXPECT_EQ(sink.errors_.load(), 0u);
    EXPECT_EQ(sink.mismatches_.load(), 0u);
    EXPECT_EQ(sink.bytes_.load(), 3u * 65536 + 100) << "short read at EOF";
    // The target's next read starts where it left off.
    char c;
    ASSERT_EQ(::read(fd, &c, 1), 1);
    EXPECT_EQ(c, TempFile::pattern(kSeed, 777));
    ::close(fd);
}

// The target's descriptor is O_DIRECT: the worker reads the aligned range around the action's
// and hands on exactly the action's bytes.
TEST_F(PolicyIoWorker, ReadOfAnODirectDescriptorHandsOnTheActionsBytes) {
    START(1 << 20);
    const int fd = ::open(data.path().c_str(), O_RDONLY | O_DIRECT);
    if (fd < 0) GTEST_SKIP() << "O_DIRECT unsupported here: " << std::strerror(errno);
    push(*w, read_action(fd, 1000, 5000));
    push(*w, read_action(fd, (1 << 20) - 300, 4096));
    w->barrier();
    EXPECT_EQ(sink.completed_.load(), 2u);
    EXPECT_EQ(sink.errors_.load(), 0u);
    EXPECT_EQ(sink.mismatches_.load(), 0u);
    EXPECT_EQ(sink.bytes_.load(), 5000u + 300u);
    ::close(fd);
}

// A fill brings exactly its range into the page cache (the kernel may read ahead past it, never
// less), completes with 0 like the advice it replaces, and leaves the file position alone.
TEST_F(PolicyIoWorker, FillReadsItsRangeIntoThePageCacheAndLeavesThePositionAlone) {
    START(8 << 20);
    const int fd = open_data();
    evict(fd);
    if (resident_pages(fd, 0, 8 << 20) != 0) GTEST_SKIP() << "the page cache kept the file";
    ASSERT_EQ(::lseek(fd, 12345, SEEK_SET), 12345);
    push(*w, prefetch_action(fd, 1 << 20, 3 << 20, true));
    // An unaligned range and one running past the end of the file.
    push(*w, prefetch_action(fd, (5 << 20) + 100, 1000, true));
    push(*w, prefetch_action(fd, (8 << 20) - 4096, 1 << 20, true));
    w->barrier();
    EXPECT_EQ(w->stats().prefetch_fills, 3u);
    EXPECT_EQ(w->stats().prefetch_advice, 0u);
    EXPECT_EQ(sink.completed_.load(), 3u);
    EXPECT_EQ(sink.errors_.load(), 0u);
    EXPECT_EQ(sink.bytes_.load(), 0u) << "a fill hands on no data";
    EXPECT_EQ(resident_pages(fd, 1 << 20, 3 << 20), (3u << 20) / 4096);
    EXPECT_EQ(resident_pages(fd, 5 << 20, 4096), 1u);
    EXPECT_EQ(resident_pages(fd, (8 << 20) - 4096, 4096), 1u);
    EXPECT_EQ(::lseek(fd, 0, SEEK_CUR), 12345) << "the file position moved";
    char c;
    ASSERT_EQ(::read(fd, &c, 1), 1);
    EXPECT_EQ(c, TempFile::pattern(kSeed, 12345));
    ::close(fd);
}

// A fill is a read: of a pipe, socket or FIFO it would consume the target's bytes. Refused
// before any I/O, as a Read.
TEST_F(PolicyIoWorker, FillOfAPipeSocketOrFifoConsumesNothing) {
    START(0);
    expect_pipe_socket_fifo_keep_their_bytes(
        *w, sink, [](int fd) { return prefetch_action(fd, 0, 4096, true); });
    EXPECT_EQ(w->stats().prefetch_fills, 0u);
}

// The same for a fill (refused, or turned into advice, which reads nothing).
TEST_F(PolicyIoWorker, DescriptorSwappedForAPipeUnderAQueuedFillLosesNoByte) {
    START(1 << 20);
    expect_swap_for_a_pipe_loses_no_byte(*w, sink, data.path(), [](int fd, int round) {
        return prefetch_action(fd, (round % 64) * 4096, 65536, true);
    });
}

// Without `fill`, longer than a fill reads, or through an O_DIRECT description (a read would
// bypass the page cache), a prefetch is advised.
TEST_F(PolicyIoWorker, PrefetchIsAdvisedWhenAFillCannotFillThePageCache) {
    START(kMaxFillBytes + (1 << 20));
    const int fd = open_data();
    push(*w, prefetch_action(fd, 0, 65536, false));
    push(*w, prefetch_action(fd, 0, kMaxFillBytes + 4096, true));
    const int direct = ::open(data.path().c_str(), O_RDONLY | O_DIRECT);
    if (direct >= 0) push(*w, prefetch_action(direct, 0, 65536, true));
    w->barrier();
    EXPECT_EQ(w->stats().prefetch_fills, 0u);
    EXPECT_EQ(w->stats().prefetch_advice, direct >= 0 ? 3u : 2u);
    EXPECT_EQ(sink.errors_.load(), 0u);
    if (direct >= 0) ::close(direct);
    ::close(fd);
}

// Once a Read has completed the worker holds no reference to the file: the target's close is
// the last one (inotify reports the close of the open file description).
TEST_F(PolicyIoWorker, CompletedReadLeavesNoReferenceToTheFile) {
    START(65536);
    const int in = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    ASSERT_GE(in, 0);
    ASSERT_GE(::inotify_add_watch(in, data.path().c_str(), IN_CLOSE_NOWRITE), 0);
    const int fd = open_data();
    push(*w, read_action(fd, 0, 4096));
    w->barrier();
    EXPECT_EQ(sink.completed_.load(), 1u);
    alignas(inotify_event) char ev[sizeof(inotify_event) + 256];
    errno = 0;
    EXPECT_EQ(::read(in, ev, sizeof ev), -1) << "closed before the target closed it";
    EXPECT_EQ(errno, EAGAIN);
    ::close(fd);
    EXPECT_GT(::read(in, ev, sizeof ev), 0) << "the target's close was not the last reference";
    ::close(in);
}

// The worker closes no descriptor of the file, so the target's POSIX record locks (which any
// close of any descriptor of the file by the process would drop) stay.
TEST_F(PolicyIoWorker, ReadKeepsTheTargetsRecordLocks) {
    START(65536);
    const int fd = ::open(data.path().c_str(), O_RDWR);
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    ASSERT_EQ(::fcntl(fd, F_SETLK, &lock), 0);
    push(*w, read_action(fd, 0, 4096));
    w->barrier();
    EXPECT_EQ(sink.completed_.load(), 1u);
    // Another process sees the lock still held.
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        const int other = ::open(data.path().c_str(), O_RDWR);
        struct flock probe {};
        probe.l_type = F_WRLCK;
        probe.l_whence = SEEK_SET;
        _exit(other >= 0 && ::fcntl(other, F_GETLK, &probe) == 0 && probe.l_type == F_WRLCK ? 0
                                                                                            : 1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the target's lock was dropped";
    ::close(fd);
}

// A ring that fails for good (io_uring_enter keeps failing with ENOMEM past the engine's
// retries) is retired, its actions complete with the error, and a new ring takes over.
TEST_F(PolicyIoWorker, FailedRingIsRetiredAndReplaced) {
    START(1 << 20);
    const int fd = open_data();
    push(*w, read_action(fd, 0, 4096));
    w->barrier();
    ASSERT_EQ(sink.completed_.load(), 1u);
    ASSERT_EQ(sink.errors_.load(), 0u);
    fault::plan().arm(fault::Point::SubmitEnomem, uring::kMaxNomemRetries + 1);
    push(*w, read_action(fd, 4096, 4096));
    w->barrier();
    EXPECT_EQ(fault::plan().armed(fault::Point::SubmitEnomem), 0u);
    EXPECT_EQ(sink.completed_.load(), 2u);
    EXPECT_EQ(sink.errors_.load(), 1u) << "the read pending in the failed ring";
    EXPECT_EQ(w->stats().rings_retired, 1u);
    EXPECT_EQ(w->stats().quarantined_bytes, 0u)
        << "the failed submission held the check, not the read";
    // Until the new ring is due actions are dropped; then they run again (bounded wait).
    uint64_t ok_before = sink.completed_.load() - sink.errors_.load();
    for (int i = 0; i < 2000 && sink.completed_.load() - sink.errors_.load() == ok_before; ++i) {
        push(*w, read_action(fd, 8192, 4096));
        w->barrier();
        if (sink.completed_.load() - sink.errors_.load() == ok_before) ::usleep(1000);
    }
    EXPECT_EQ(sink.completed_.load() - sink.errors_.load(), ok_before + 1);
    EXPECT_EQ(sink.mismatches_.load(), 0u);
    EXPECT_EQ(w->stats().rings_created, 2u);
    EXPECT_EQ(w->stats().ring_down_drops, sink.dropped_.load());
    ::close(fd);
}

// Slots the kernel may allocate for direct descriptors sit after the Reads' own.
TEST_F(PolicyIoWorker, ReadsRunBesideADirectDescriptorRange) {
    START(1 << 20, false, 8);
    const int fd = open_data();
    for (int64_t off : {0, 65536}) push(*w, read_action(fd, off, 4096));
    w->barrier();
    EXPECT_EQ(sink.completed_.load(), 2u);
    EXPECT_EQ(sink.errors_.load(), 0u);
    EXPECT_EQ(sink.mismatches_.load(), 0u);
    EXPECT_EQ(w->stats().reads_unsupported, 0u);
    ::close(fd);
}

// Without io_uring Reads are dropped and counted; prefetches still run.
TEST_F(PolicyIoWorker, FallbackDropsReadsAndTakesNoDescriptor) {
    START(1 << 20, true);
    ASSERT_FALSE(w->uses_io_uring());
    const int fd = open_data();
    push(*w, read_action(fd, 0, 4096));
    Action prefetch = read_action(fd, 0, 65536);
    prefetch.kind = Action::Kind::Prefetch;
    push(*w, prefetch);
    w->barrier();
    EXPECT_EQ(w->stats().reads_unsupported, 1u);
    EXPECT_EQ(sink.dropped_.load(), 1u);
    EXPECT_EQ(sink.completed_.load(), 1u);
    EXPECT_EQ(sink.errors_.load(), 0u);
    ::close(fd);
}

// The target closes every descriptor above 2 (close_range, as before an exec) while the worker
// runs: with a ring without a number and a futex wake-up there is nothing of the worker's to
// close, so Reads keep completing with the right bytes and barrier() and the worker's end
// return. In a child, which keeps the test process's own descriptors out of it; the child
// reports through its exit status.
TEST_F(PolicyIoWorker, TargetClosingAllDescriptorsLeavesTheWorkerWorking) {
    START(1 << 20);
    const bool unnumbered = uring::ring_fd_counts().unnumbered > 0;
    w.reset();
    if (!unnumbered) GTEST_SKIP() << "no ring without a descriptor number on this kernel";
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        RecordingSink own;
        auto started = IoWorker::start(IoWorker::Options{}, own);
        if (!started) ::_exit(10);
        std::unique_ptr<IoWorker> worker = std::move(started).value();
        ::syscall(SYS_close_range, 3u, ~0u, 0u);
        const int fd = ::open(data.path().c_str(), O_RDONLY | O_CLOEXEC);
        for (int i = 0; i < 8; ++i) push(*worker, read_action(fd, 4096 * i, 4096));
        worker->barrier();  // would never return if a wake-up needed a closed descriptor
        const bool ok = own.completed_.load() == 8 && own.mismatches_.load() == 0 &&
                        own.errors_.load() == 0 && own.bytes_.load() == 8 * 4096;
        worker.reset();
        ::_exit(ok ? 0 : 11);
    }
    // Bounded: a hung child is killed after 60 s and fails the test.
    const int status = test_data::exit_status_within(child, 60);
    ASSERT_NE(status, -1) << "the worker hung after the target closed its descriptors";
    EXPECT_EQ(status, 0);
}

}  // namespace
}  // namespace liveio::policy
