// Sparse fixed-file tables, slot updates, sync_file_range as a type check and asynchronous
// linked ops: the kernel facts the policy I/O worker's Read action rests on, checked on this
// kernel (and the fallback's emulation of the same API).
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "fixture.h"

namespace liveio::uring::test {
namespace {

class RegisteredFiles : public EngineTest {
protected:
    // Runs `ops` as one asynchronous chain tagged 0, 1, ...; results by tag.
    std::vector<int32_t> run_linked(std::span<const Op> ops) {
        std::vector<uint64_t> tags(ops.size());
        for (size_t i = 0; i < tags.size(); ++i) tags[i] = i;
        std::vector<int32_t> results(ops.size(), 1 << 30);
        EXPECT_EQ(engine->prepare_linked(ops, tags), 0);
        std::vector<Completion> done(8);
        for (size_t got = 0; got < ops.size();) {
            const size_t n = engine->submit_and_reap(done, 1);
            EXPECT_GT(n, 0u);
            if (n == 0) break;
            for (size_t k = 0; k < n; ++k) results.at(done[k].tag) = done[k].res;
            got += n;
        }
        return results;
    }

    int put(unsigned slot, int fd) {
        return engine->register_files_update(slot, std::span<const int>(&fd, 1));
    }
};

TEST_P(RegisteredFiles, SparseSlotsAreFilledAndEmptied) {
    std::vector<char> content;
    const int fd = make_file(65536, &content);
    ASSERT_TRUE(engine->register_files_sparse(4).ok());
    char buf[16];
    EXPECT_EQ(engine->run(Op::read(2, buf, sizeof buf, 100).fixed()), -EBADF) << "empty slot";
    EXPECT_EQ(put(2, fd), 1);
    EXPECT_EQ(engine->run(Op::read(2, buf, sizeof buf, 100).fixed()), 16);
    EXPECT_EQ(0, std::memcmp(buf, content.data() + 100, sizeof buf));
    EXPECT_EQ(put(2, -1), 1);
    EXPECT_EQ(engine->run(Op::read(2, buf, sizeof buf, 100).fixed()), -EBADF) << "emptied";
    EXPECT_EQ(put(4, fd), -EINVAL) << "past the table";
    const int closed = ::dup(fd);
    ::close(closed);
    EXPECT_EQ(put(1, closed), -EBADF) << "a descriptor that is not open";
}

// With nbytes 0 and flags 0 sync_file_range does nothing but check the file's type.
TEST_P(RegisteredFiles, SyncFileRangeFailsWithEspipeOnAnythingButAFile) {
    const int file = make_file(4096);
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    adopt(p[0]);
    adopt(p[1]);
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    adopt(sv[0]);
    adopt(sv[1]);
    const std::string fifo = dir.path + "/fifo";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    const int fifo_fd = adopt(::open(fifo.c_str(), O_RDWR));  // RDWR: no wait for a writer
    const int null = adopt(::open("/dev/null", O_RDONLY));
    const int directory = adopt(::open(dir.path.c_str(), O_RDONLY | O_DIRECTORY));
    const int all[] = {file, p[0], sv[0], fifo_fd, null, directory};
    const int32_t want[] = {0, -ESPIPE, -ESPIPE, -ESPIPE, -ESPIPE, 0};
    ASSERT_TRUE(engine->register_files_sparse(6).ok());
    ASSERT_EQ(engine->register_files_update(0, all), 6);
    for (int i = 0; i < 6; ++i) {
        SCOPED_TRACE(i);
        EXPECT_EQ(engine->run(Op::sync_file_range(all[i], 0, 0, 0)), want[i]);
        EXPECT_EQ(engine->run(Op::sync_file_range(i, 0, 0, 0).fixed()), want[i]);
    }
}

// Which failures cancel a linked op is the kernel's choice per opcode: a failed fadvise does,
// a failed sync_file_range does not (its linked read consumes the pipe). The worker therefore
// checks first and reads after the check's completion.
TEST_P(RegisteredFiles, FailedSyncFileRangeDoesNotCancelALinkedReadButFadviseDoes) {
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    adopt(p[0]);
    adopt(p[1]);
    ASSERT_TRUE(engine->register_files_sparse(1).ok());
    ASSERT_EQ(put(0, p[0]), 1);
    char buf[16];
    ASSERT_EQ(::write(p[1], "pipe-data", 9), 9);
    const Op fadvise[] = {Op::fadvise(0, 0, 0, POSIX_FADV_NORMAL).fixed(),
                          Op::read(0, buf, sizeof buf, 0).fixed()};
    EXPECT_EQ(run_linked(fadvise), (std::vector<int32_t>{-ESPIPE, -ECANCELED}));
    const Op sync[] = {Op::sync_file_range(0, 0, 0, 0).fixed(), Op::read(0, buf, 9).fixed()};
    EXPECT_EQ(run_linked(sync), (std::vector<int32_t>{-ESPIPE, 9}));
    ASSERT_EQ(::write(p[1], "pipe-data", 9), 9);
    const ChainResult chain = engine->run_chain(sync);
    EXPECT_EQ(chain.results, (std::vector<int32_t>{-ESPIPE, 9}));
    EXPECT_EQ(chain.failed_index, -1);
    EXPECT_EQ(engine->inflight(), 0u);
}

TEST_P(RegisteredFiles, CheckedReadAtAnOffsetLeavesTheFilePositionAlone) {
    std::vector<char> content;
    const int fd = make_file(65536, &content);
    ASSERT_EQ(::lseek(fd, 1234, SEEK_SET), 1234);
    ASSERT_TRUE(engine->register_files_sparse(2).ok());
    ASSERT_EQ(put(1, fd), 1);
    std::vector<char> buf(8192);
    const Op ops[] = {Op::sync_file_range(1, 0, 0, 0).fixed(),
                      Op::read(1, buf.data(), 8192, 40000).fixed()};
    EXPECT_EQ(run_linked(ops), (std::vector<int32_t>{0, 8192}));
    EXPECT_EQ(0, std::memcmp(buf.data(), content.data() + 40000, 8192));
    EXPECT_EQ(::lseek(fd, 0, SEEK_CUR), 1234) << "the file position moved";
}

TEST_P(RegisteredFiles, LinkedChainNeedsRoomForAllItsOps) {
    Options o;
    o.max_inflight = 2;
    make_engine(o);
    const int fd = make_file(4096);
    char a[8], b[8];
    const Op one[] = {Op::read(fd, a, 8, 0)};
    const uint64_t t1[] = {7};
    ASSERT_EQ(engine->prepare_linked(one, t1), 0);
    const Op two[] = {Op::read(fd, a, 8, 0), Op::read(fd, b, 8, 8)};
    const uint64_t t2[] = {8, 9};
    EXPECT_EQ(engine->prepare_linked(two, t2), -EBUSY) << "all or nothing";
    const Op three[] = {Op::nop(), Op::nop(), Op::nop()};
    const uint64_t t3[] = {1, 2, 3};
    EXPECT_EQ(engine->prepare_linked(three, t3), -E2BIG);
    std::vector<Completion> done(4);
    EXPECT_EQ(engine->submit_and_reap(done, 1), 1u);
    EXPECT_EQ(done[0].tag, 7u);
    EXPECT_EQ(engine->inflight(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Backends, RegisteredFiles,
                         testing::Values(BackendKind::Uring, BackendKind::Fallback), backend_name);

// What only the kernel does (the fallback records numbers): a slot holds the open file
// description itself, takes no descriptor number and keeps the file open until emptied.
class KernelRegisteredFiles : public RegisteredFiles {};

TEST_P(KernelRegisteredFiles, SlotHoldsTheOpenFileNotItsNumber) {
    std::vector<char> first, second;
    const int a = make_file(8192, &first);
    const int b_source = make_file(8192, &second);
    const int fd = ::dup(a);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(engine->register_files_sparse(1).ok());
    ASSERT_EQ(put(0, fd), 1);
    ASSERT_EQ(::close(fd), 0);
    // The number is free again and the lowest free one: the next descriptor gets it.
    const int reused = ::dup(b_source);
    EXPECT_EQ(reused, fd) << "the slot took a descriptor number";
    char buf[64];
    EXPECT_EQ(engine->run(Op::read(0, buf, sizeof buf, 512).fixed()), 64);
    EXPECT_EQ(0, std::memcmp(buf, first.data() + 512, 64)) << "the slot followed the number";
    ::close(reused);
}

TEST_P(KernelRegisteredFiles, SlotKeepsAPipeOpenUntilEmptied) {
    int p[2];
    ASSERT_EQ(::pipe2(p, O_NONBLOCK), 0);
    adopt(p[0]);
    ASSERT_TRUE(engine->register_files_sparse(1).ok());
    ASSERT_EQ(put(0, p[1]), 1);
    ASSERT_EQ(::close(p[1]), 0);
    char c;
    errno = 0;
    EXPECT_EQ(::read(p[0], &c, 1), -1) << "the slot's write end is still open";
    EXPECT_EQ(errno, EAGAIN);
    ASSERT_EQ(put(0, -1), 1);
    EXPECT_EQ(::read(p[0], &c, 1), 0) << "emptying the slot closed the last write end";
}

INSTANTIATE_TEST_SUITE_P(Kernel, KernelRegisteredFiles, testing::Values(BackendKind::Uring),
                         backend_name);

}  // namespace
}  // namespace liveio::uring::test
