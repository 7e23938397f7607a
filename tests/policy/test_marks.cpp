// The `marks` policy program (bpf/policies/marks.bpf.c) on real files laid out like a
// ClickHouse 18.16 part (column.bin + column.mrk, 16-byte marks), driven through the call
// sequence a ClickHouse point lookup makes (measured with strace, docs/POLICIES.md): per
// column read the whole .mrk, open the .bin; then per column lseek to a mark and read the
// granule range. The programs run as the agent runs them at the I/O edges.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "policy_fixture.h"

namespace liveio::policy {
namespace {

using testing::file_id_of;
using testing::make_runtime;

struct Mark {
    uint64_t compressed, decompressed;
};

// A column of `granules` granules of `granule_bytes` decompressed bytes each, in compressed
// blocks of `block_bytes` decompressed / `block_file_bytes` compressed bytes: a granule starts
// inside a block whenever block_bytes is not a multiple of granule_bytes.
struct Column {
    std::string name;
    uint64_t granule_bytes, block_bytes, block_file_bytes;
    std::vector<Mark> marks;
    uint64_t file_size = 0;
    int bin = -1;

    void layout(uint64_t granules) {
        marks.clear();
        for (uint64_t g = 0; g < granules; ++g) {
            const uint64_t at = g * granule_bytes;
            marks.push_back({at / block_bytes * block_file_bytes, at % block_bytes});
        }
        file_size = (granules * granule_bytes + block_bytes - 1) / block_bytes * block_file_bytes;
    }
    // The bytes ClickHouse 18.16 reads for granules [first, end) (MergeTreeReader::Stream):
    // from the first granule's block up to the block where granule `end` starts, that block
    // included when the granule starts inside it.
    std::pair<uint64_t, uint64_t> range(uint64_t first, uint64_t end) const {
        uint64_t right = end;
        if (right < marks.size() && marks[right].decompressed > 0)
            while (right < marks.size() && marks[right].compressed == marks[end].compressed)
                ++right;
        const uint64_t hi = right >= marks.size() ? file_size : marks[right].compressed;
        return {marks[first].compressed, hi};
    }
};

class PartDir {
public:
    // A new directory in `parent` (a table's directory holding parts).
    explicit PartDir(const std::string& parent = "/tmp") {
        std::string tmpl = parent + "/liveio-marks-XXXXXX";
        dir_ = ::mkdtemp(tmpl.data());
    }
    const std::string& path() const { return dir_; }
    ~PartDir() {
        for (const std::string& f : files_) ::unlink(f.c_str());
        ::rmdir(dir_.c_str());
    }
    std::string write(const std::string& name, const std::string& bytes) {
        const std::string path = dir_ + "/" + name;
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        EXPECT_GE(fd, 0);
        EXPECT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
        ::close(fd);
        files_.push_back(path);
        return path;
    }

private:
    std::string dir_;
    std::vector<std::string> files_;
};

struct MarksPolicy : testing::LoadedPolicy {
    ebpf::Executable* enter = nullptr;
    ebpf::Executable* exit = nullptr;

    // Knobs by index: max_kb, unread_max, guess_kb (0: no guess).
    static std::unique_ptr<MarksPolicy> enable(Runtime& rt, std::vector<uint64_t> knobs = {1024}) {
        auto mp = std::make_unique<MarksPolicy>();
        if (!mp->load(std::string(LIVEIO_BPF_DIR) + "/policies/marks.bpf.o",
                      {"marks_enter", "marks_exit"}))
            return nullptr;
        mp->enter = mp->exes[0].get();
        mp->exit = mp->exes[1].get();
        if (!mp->LoadedPolicy::enable(rt, "marks", nullptr, std::move(knobs))) return nullptr;
        return mp;
    }

    liveio_io_ctx ctx(long nr, int fd, uint64_t count, int64_t result, uint32_t file_class) const {
        return testing::io_exit_ctx(nr, fd, count, result, file_class);
    }
    // ClickHouse's reader construction for one column: the whole .mrk read (mark-cache miss),
    // then the .bin opened. Returns the .bin descriptor.
    int open_column(const std::string& mrk_path, const std::string& bin_path, bool read_marks) {
        if (read_marks) {
            const int mfd = ::open(mrk_path.c_str(), O_RDONLY);
            EXPECT_GE(mfd, 0);
            struct stat st {};
            ::fstat(mfd, &st);
            std::string buf(static_cast<size_t>(st.st_size), '\0');
            const ssize_t got = ::read(mfd, buf.data(), buf.size());
            EXPECT_EQ(got, st.st_size);
            const std::string before = buf;
            liveio_io_ctx io = ctx(0, mfd, buf.size(), got, LIVEIO_CLASS_CH_MRK);
            {
                ReadDataScope data(&io, buf.data(), static_cast<size_t>(got));
                run(*exit, io);
            }
            EXPECT_EQ(buf, before) << "the program changed bytes the target read";
            ::close(mfd);
        }
        const int fd = ::open(bin_path.c_str(), O_RDONLY);
        EXPECT_GE(fd, 0);
        liveio_io_ctx io = ctx(2, fd, 0, fd, LIVEIO_CLASS_CH_BIN);
        io.fd = fd;
        run(*exit, io);
        return fd;
    }
    // The enter edge of a column read of `count` bytes after lseek to `offset`.
    void read_enter(int fd, uint64_t offset, uint64_t count) {
        EXPECT_EQ(::lseek(fd, static_cast<off_t>(offset), SEEK_SET), static_cast<off_t>(offset));
        liveio_io_ctx io = ctx(0, fd, count, 0, LIVEIO_CLASS_CH_BIN);
        run(*enter, io);
    }
    uint64_t state(uint32_t i) { return u64("state", i); }
};

std::string mark_file(const Column& c) {
    std::string out;
    for (const Mark& m : c.marks) {
        out.append(reinterpret_cast<const char*>(&m.compressed), 8);
        out.append(reinterpret_cast<const char*>(&m.decompressed), 8);
    }
    return out;
}

std::string pattern(uint64_t size, uint32_t seed) {
    std::string s(size, '\0');
    for (uint64_t i = 0; i < size; ++i) s[i] = testing::TempFile::pattern(seed, i);
    return s;
}

struct Part {
    PartDir dir;
    std::vector<Column> columns;
    std::vector<std::string> mrk, bin;

    explicit Part(uint64_t granules, const std::string& table = "/tmp") : dir(table) {
        // A granule per block, three per block, blocks cutting granules, one block for many.
        columns = {{"WatchID", 65536, 65536, 30000},
                   {"URL", 40000, 100000, 41000},
                   {"EventDate", 16384, 49152, 700},
                   {"Title", 50000, 65536, 25000}};
        uint32_t seed = 1;
        for (Column& c : columns) {
            c.layout(granules);
            mrk.push_back(dir.write(c.name + ".mrk", mark_file(c)));
            bin.push_back(dir.write(c.name + ".bin", pattern(c.file_size, seed++)));
        }
    }
};

// A runtime with the marks policy on, and a part's columns opened the way ClickHouse's reader
// opens them.
struct Session {
    std::unique_ptr<Runtime> rt;
    std::unique_ptr<MarksPolicy> mp;

    // Switches the policy on; with `part`, opens its columns (reading the marks). `history`:
    // the Part actions' history of readers, kept beyond the runtime (null: its own).
    bool start(Part* part = nullptr, std::vector<uint64_t> knobs = {1024},
               PartHistory* history = nullptr) {
        rt = make_runtime(uint64_t{64} << 20, history);
        mp = rt ? MarksPolicy::enable(*rt, std::move(knobs)) : nullptr;
        if (mp && part) open(*part, true);
        return mp != nullptr;
    }
    void open(Part& part, bool read_marks) {
        for (size_t i = 0; i < part.columns.size(); ++i)
            part.columns[i].bin = mp->open_column(part.mrk[i], part.bin[i], read_marks);
    }
    // Opens the part's columns in `order` (reading the marks): the first read is the leader's.
    void open(Part& part, const std::vector<size_t>& order) {
        for (size_t i : order)
            part.columns[i].bin = mp->open_column(part.mrk[i], part.bin[i], true);
    }
    // Column `i`'s read of granules [first, end) as 18.16 makes it: the seek to the first
    // granule's block, the enter edge, the read itself (bytes checked) and the ledger's look
    // at it. Returns the bytes read.
    uint64_t read_column(Part& part, size_t i, uint64_t first, uint64_t end) {
        const Column& c = part.columns[i];
        const auto [a, b] = c.range(first, end);
        mp->read_enter(c.bin, a, b - a);
        std::string buf(b - a, '\0');
        EXPECT_EQ(::read(c.bin, buf.data(), buf.size()), static_cast<ssize_t>(buf.size()));
        EXPECT_EQ(buf, pattern(c.file_size, static_cast<uint32_t>(i + 1)).substr(a, b - a))
            << c.name;
        rt->observe_read(file_id_of(c.bin), a, b - a);
        return b - a;
    }
    // The first column's read of granules [first, end): the seek to its mark, the exact range.
    void read_first(Part& part, uint64_t first, uint64_t end) {
        const auto [lo, hi] = part.columns[0].range(first, end);
        mp->read_enter(part.columns[0].bin, lo, hi - lo);
    }
    static void close(Part& part) {
        for (Column& c : part.columns)
            if (c.bin >= 0) ::close(c.bin);
    }
};

// The policy's ranges as the runtime recorded them: what the target's reads of exactly the
// ranges ClickHouse reads find prefetched (used), and what is left (wasted when switched off).
struct Outcome {
    uint64_t issued, used, wasted, ranges;
};

Outcome lookup(Part& part, uint64_t first, uint64_t end) {
    Session s;
    if (!s.start(&part)) return {};
    auto& [rt, mp] = s;
    s.read_first(part, first, end);
    rt->worker().barrier();
    // The target reads every other column's range natively: the bytes are the file's.
    uint64_t expected = 0;
    for (size_t i = 1; i < part.columns.size(); ++i) {
        const Column& c = part.columns[i];
        const auto [a, b] = c.range(first, end);
        std::string buf(b - a, '\0');
        EXPECT_EQ(::pread(c.bin, buf.data(), buf.size(), static_cast<off_t>(a)),
                  static_cast<ssize_t>(buf.size()));
        EXPECT_EQ(buf, pattern(c.file_size, static_cast<uint32_t>(i + 1)).substr(a, b - a))
            << c.name;
        rt->observe_read(file_id_of(c.bin), a, b - a);
        expected += b - a;
    }
    const Counters& k = rt->counters(mp->slot);
    Outcome o{Counters::get(k.issued_bytes), Counters::get(k.used_bytes), 0, mp->state(2)};
    EXPECT_EQ(Counters::get(k.errors), 0u);
    EXPECT_TRUE(rt->disable(mp->slot));
    o.wasted = Counters::get(k.wasted_bytes);
    EXPECT_EQ(o.used + o.wasted, o.issued);
    EXPECT_EQ(o.used, expected) << "every byte the other columns read was prefetched";
    Session::close(part);
    return o;
}

TEST(MarksPolicy, VerifiesWithThePolicyHelpers) {
    auto rt = make_runtime();
    ASSERT_TRUE(rt);
    ASSERT_TRUE(MarksPolicy::enable(*rt));
}

TEST(MarksPolicy, FirstColumnReadPrefetchesTheSameGranulesOfEveryOtherColumn) {
    Part part(300);
    for (auto [first, end] :
         {std::pair<uint64_t, uint64_t>{17, 18}, {0, 1}, {120, 123}, {299, 300}, {64, 80}}) {
        SCOPED_TRACE("granules " + std::to_string(first) + ".." + std::to_string(end));
        const Outcome o = lookup(part, first, end);
        EXPECT_EQ(o.ranges, 3u);  // one per other column
        EXPECT_GT(o.used, 0u);
        EXPECT_EQ(o.wasted, 0u);
    }
}

TEST(MarksPolicy, MarksKeptFromAnEarlierQueryServeAMarkCacheHit) {
    Part part(200);
    Session s;
    // First query: mark-cache miss, every .mrk read whole before its .bin is opened.
    ASSERT_TRUE(s.start(&part));
    auto& [rt, mp] = s;
    s.read_first(part, 5, 6);
    Session::close(part);
    // Second query: mark-cache hit, the .bin files are opened without reading the marks.
    s.open(part, false);
    s.read_first(part, 150, 152);
    rt->worker().barrier();
    EXPECT_EQ(mp->state(1), 2u);  // two batches
    EXPECT_EQ(mp->state(2), 6u);  // of three ranges each
    Session::close(part);
}

TEST(MarksPolicy, ContinuingScanAndReadsOffAMarkIssueNothing) {
    Part part(100);
    Session s;
    ASSERT_TRUE(s.start(&part));
    auto& [rt, mp] = s;
    const int lead = part.columns[0].bin;
    mp->read_enter(lead, part.columns[0].marks[10].compressed + 5, 1000);       // not a mark
    mp->read_enter(lead, part.columns[0].marks[20].compressed, 30000);          // a mark: a batch
    mp->read_enter(lead, part.columns[0].marks[20].compressed + 30000, 30000);  // continuing
    rt->worker().barrier();
    EXPECT_EQ(mp->state(1), 1u);
    // A column read that is not the group's first column's triggers nothing either.
    mp->read_enter(part.columns[2].bin, part.columns[2].marks[40].compressed, 700);
    rt->worker().barrier();
    EXPECT_EQ(mp->state(1), 1u);
    Session::close(part);
}

TEST(MarksPolicy, ColumnsOfAnotherPartAreNotPrefetchedAtThisPartsGranule) {
    Part a(100), b(150);
    Session s;
    ASSERT_TRUE(s.start());
    auto& [rt, mp] = s;
    // One reader's opens spanning two parts (different granule counts).
    std::vector<int> fds;
    for (size_t i = 0; i < 2; ++i) fds.push_back(mp->open_column(a.mrk[i], a.bin[i], true));
    for (size_t i = 0; i < 2; ++i) fds.push_back(mp->open_column(b.mrk[i], b.bin[i], true));
    mp->read_enter(fds[0], a.columns[0].marks[50].compressed, 65536);
    rt->worker().barrier();
    EXPECT_EQ(mp->state(2), 1u);  // a's second column only
    for (int fd : fds) ::close(fd);
}

TEST(MarksPolicy, AColumnReadNamingABlockOfSeveralGranulesLeavesTheBatchToOneNamingGranules) {
    // EventDate (three granules per block) is read first, as 18.16's PREWHERE reads a key
    // column first: its read names its block, not granule 4, so the batch waits for WatchID
    // (a granule per block), and covers the columns not read yet, granule 4 only.
    Part part(120);
    Session s;
    ASSERT_TRUE(s.start());
    auto& [rt, mp] = s;
    s.open(part, {2, 0, 1, 3});
    uint64_t others = 0;
    s.read_column(part, 2, 4, 5);
    rt->worker().barrier();
    EXPECT_EQ(mp->state(1), 0u) << "a batch from a read that cannot name its granules";
    EXPECT_EQ(mp->state(4), 1u);
    s.read_column(part, 0, 4, 5);
    rt->worker().barrier();
    EXPECT_EQ(mp->state(1), 1u);
    EXPECT_EQ(mp->state(2), 2u);  // URL and Title
    others += s.read_column(part, 1, 4, 5);
    others += s.read_column(part, 3, 4, 5);
    const Counters& k = rt->counters(mp->slot);
    EXPECT_EQ(Counters::get(k.used_bytes), others);
    ASSERT_TRUE(rt->disable(mp->slot));
    EXPECT_EQ(Counters::get(k.wasted_bytes), 0u) << "granules batched that the columns never read";
    EXPECT_EQ(Counters::get(k.issued_bytes), others);
    Session::close(part);
}

TEST(MarksPolicy, AReadNamingABlockBatchesAtOnceOnlyTheColumnsCheapForAllItsGranules) {
    // guess_kb 80: for EventDate's block (granules 3..5) Title's bytes are 75000, URL's 82000,
    // WatchID's 90000. Title is batched at the EventDate read, URL at WatchID's (granule 4).
    Part part(120);
    Session s;
    ASSERT_TRUE(s.start(nullptr, {1024, 0, 80}));
    auto& [rt, mp] = s;
    s.open(part, {2, 0, 1, 3});
    s.read_column(part, 2, 4, 5);
    rt->worker().barrier();
    EXPECT_EQ(mp->state(1), 1u);
    EXPECT_EQ(mp->state(2), 1u);  // Title, granules 3..5
    s.read_column(part, 0, 4, 5);
    rt->worker().barrier();
    EXPECT_EQ(mp->state(1), 2u);
    EXPECT_EQ(mp->state(2), 2u);  // URL, granule 4
    const uint64_t url = s.read_column(part, 1, 4, 5);
    const uint64_t title = s.read_column(part, 3, 4, 5);
    const Counters& k = rt->counters(mp->slot);
    EXPECT_EQ(Counters::get(k.used_bytes), url + title);
    ASSERT_TRUE(rt->disable(mp->slot));
    const auto [lo, hi] = part.columns[3].range(3, 6);
    EXPECT_EQ(Counters::get(k.issued_bytes), url + (hi - lo));
    EXPECT_EQ(Counters::get(k.wasted_bytes), hi - lo - title);
    Session::close(part);
}

TEST(MarksPolicy, AColumnWhoseBatchedRangesGoUnreadLeavesTheBatchUntilItIsReadAgain) {
    // Title's granules are batched at every lookup but not read (a column the reader skips),
    // until the fourth lookup.
    const uint64_t granules[] = {10, 20, 30, 40, 50};
    std::vector<uint64_t> ranges, left_out;
    Part part(120);
    Session s;
    ASSERT_TRUE(s.start(&part));
    auto& [rt, mp] = s;
    for (size_t r = 0; r < std::size(granules); ++r) {
        const uint64_t g = granules[r];
        s.read_column(part, 0, g, g + 1);
        rt->worker().barrier();
        ranges.push_back(mp->state(2));
        left_out.push_back(mp->state(3));
        s.read_column(part, 1, g, g + 1);
        s.read_column(part, 2, g, g + 1);
        if (r == 2) s.read_column(part, 3, g, g + 1);  // read while left out: it comes back
    }
    // Batched: 3, 3 (Title unread once, twice), 2 (left out), 3 (read in the last round), 3.
    EXPECT_EQ(ranges, (std::vector<uint64_t>{3, 6, 8, 11, 14}));
    EXPECT_EQ(left_out, (std::vector<uint64_t>{0, 0, 1, 1, 1}));
    const Counters& k = rt->counters(mp->slot);
    EXPECT_EQ(Counters::get(k.errors), 0u);
    ASSERT_TRUE(rt->disable(mp->slot));
    const Column& title = part.columns[3];
    uint64_t unread = 0;
    for (uint64_t g : {10, 20, 40, 50}) {
        const auto [a, b] = title.range(g, g + 1);
        unread += b - a;
    }
    EXPECT_EQ(Counters::get(k.wasted_bytes), unread) << "only Title's unread granules are wasted";
    Session::close(part);
}

// The open of a .mrk at a mark-cache miss, as the agent's exit edge shows it to the program.
void open_marks_exit(MarksPolicy& mp, int fd) {
    liveio_io_ctx io = mp.ctx(257, fd, 0, fd, LIVEIO_CLASS_CH_MRK);
    mp.run(*mp.exit, io);
}

uint64_t size_of(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return static_cast<uint64_t>(st.st_size);
}

// A table directory holding parts (removed with them), each part with its manifest.
class TableDir {
public:
    TableDir() {
        char tmpl[] = "/tmp/liveio-table-XXXXXX";
        dir_ = ::mkdtemp(tmpl);
    }
    ~TableDir() {
        parts.clear();
        ::rmdir(dir_.c_str());
    }
    Part& add(uint64_t granules) {
        parts.push_back(std::make_unique<Part>(granules, dir_));
        Part& p = *parts.back();
        p.dir.write("columns.txt",
                    "columns format version: 1\n5 columns:\n`WatchID` Int64\n`URL` String\n"
                    "`EventDate` Date\n`Title` String\n`Missing` UInt8\n");
        return p;
    }
    std::vector<std::unique_ptr<Part>> parts;

private:
    std::string dir_;
};

// A part reader being built on a mark-cache miss, as the agent shows it to the program: each
// column's .mrk opened (and kept open: the test reads it later); finish() is the reader's
// first data read, after which the thread's next .mrk open begins another reader.
struct Reader {
    MarksPolicy& mp;
    Runtime& rt;
    Part& part;
    std::vector<int> fds;

    void open(size_t column) {
        const int fd = ::open(part.mrk[column].c_str(), O_RDONLY);
        ASSERT_GE(fd, 0);
        fds.push_back(fd);
        open_marks_exit(mp, fd);
        rt.worker().barrier();
    }
    // The target's read of column `column`'s .mrk: the ledger's look at it.
    void read_marks(size_t column) {
        const std::string bytes = mark_file(part.columns[column]);
        const int fd = ::open(part.mrk[column].c_str(), O_RDONLY);
        ASSERT_GE(fd, 0);
        std::string buf(bytes.size(), '\0');
        EXPECT_EQ(::read(fd, buf.data(), buf.size()), static_cast<ssize_t>(buf.size()));
        EXPECT_EQ(buf, bytes);
        rt.observe_read(file_id_of(fd), 0, buf.size());
        ::close(fd);
    }
    void finish() {
        if (!fds.empty()) mp.read_enter(fds.front(), 0, 1);
        for (int fd : fds) ::close(fd);
        fds.clear();
    }
    ~Reader() { finish(); }
};

// The history of part readers, kept while runtimes come and go (as the agent's policy host
// keeps it): a base of PartSession declared before Session, so it outlives the runtime.
struct HistoryHolder {
    PartHistory history;
};

struct PartSession : HistoryHolder, Session {
    // Switches the policy on with knob part = `part`; false when io_uring cannot open files
    // as direct descriptors here (the test is then skipped).
    bool start_part(uint64_t part) {
        EXPECT_TRUE(start(nullptr, {1024, 2, 128, part}, &history));
        return rt && mp && rt->worker().uses_io_uring();
    }
    uint64_t issued() const { return Counters::get(rt->counters(mp->slot).issued_bytes); }
    uint64_t used() const { return Counters::get(rt->counters(mp->slot).used_bytes); }
    uint64_t errors() const { return Counters::get(rt->counters(mp->slot).errors); }
};

// The tests of knob `part`: a table directory for their parts, the policy switched on by each.
class MarksPart : public ::testing::Test, public PartSession {
protected:
    TableDir table;
};

constexpr const char* kNoUring =
    "io_uring unavailable here: no direct descriptors to open the part with";

// knob part=2: the first .mrk opened by a part reader has every other marks file of the part
// advised (by path, from columns.txt, through io_uring direct descriptors), each recorded for
// the ledger; the reader's later .mrk opens ask nothing more; a directory without a manifest
// is dropped. (That the worker's opens take no number of the target's descriptor table is
// tests/uring's OpenatDirectTakesNoProcessDescriptor.)
TEST_F(MarksPart, PartAllAdvisesEveryOtherMarksFileOfThePartAtTheFirstOpen) {
    Part& part = table.add(300);
    if (!start_part(2)) GTEST_SKIP() << kNoUring;
    Reader reader{*mp, *rt, part, {}};
    reader.open(0);
    const Counters& c = rt->counters(mp->slot);
    uint64_t others = 0;
    for (size_t i = 1; i < part.mrk.size(); ++i) others += size_of(part.mrk[i]);
    EXPECT_EQ(mp->state(5), 1u);
    EXPECT_EQ(Counters::get(c.actions), 1u);
    EXPECT_EQ(issued(), others) << "every other .mrk, not the open one; drops "
                                << Counters::get(c.drops) << " errors " << errors();
    EXPECT_EQ(Counters::get(c.inflight), 0u);
    EXPECT_EQ(errors(), 0u);  // `Missing`'s files fail their lookup: not an error
    // The reader's next column: its .mrk open asks nothing, its read of the file is used.
    reader.open(1);
    EXPECT_EQ(mp->state(5), 1u);
    EXPECT_EQ(Counters::get(c.actions), 1u);
    reader.read_marks(1);
    EXPECT_EQ(used(), size_of(part.mrk[1]));
    reader.finish();
    // A .mrk outside a part (no manifest): nothing issued, the action dropped.
    PartDir bare;
    const std::string lone = bare.write("Lone.mrk", std::string(4096, 'x'));
    bare.write("Other.mrk", std::string(4096, 'y'));
    const int lfd = ::open(lone.c_str(), O_RDONLY);
    ASSERT_GE(lfd, 0);
    const uint64_t drops = Counters::get(c.drops), issued_before = issued();
    open_marks_exit(*mp, lfd);
    rt->worker().barrier();
    EXPECT_EQ(Counters::get(c.drops), drops + 1);
    EXPECT_EQ(issued(), issued_before);
    ::close(lfd);
    ASSERT_TRUE(rt->disable(mp->slot));
    EXPECT_EQ(used() + Counters::get(c.wasted_bytes), issued());
}

// knob part=1, no history: a reader's first .mrk open advises nothing (a one-column reader
// costs nothing), its second every marks file it has not opened (a reader of several columns
// never seen before); its later opens nothing more. Every open is one action.
TEST_F(MarksPart, AReaderNeverSeenBeforeAdvisesNothingAtItsFirstOpenAndTheRestAtItsSecond) {
    Part& part = table.add(300);
    if (!start_part(1)) GTEST_SKIP() << kNoUring;
    Reader reader{*mp, *rt, part, {}};
    reader.open(2);
    EXPECT_EQ(issued(), 0u);
    EXPECT_EQ(mp->state(5), 1u);
    reader.open(0);
    EXPECT_EQ(mp->state(6), 1u);
    EXPECT_EQ(issued(), size_of(part.mrk[1]) + size_of(part.mrk[3]));
    reader.open(1);
    reader.open(3);
    EXPECT_EQ(issued(), size_of(part.mrk[1]) + size_of(part.mrk[3]));
    EXPECT_EQ(Counters::get(rt->counters(mp->slot).actions), 4u);
    EXPECT_EQ(errors(), 0u);
    reader.read_marks(1);
    reader.read_marks(3);
    EXPECT_EQ(used(), issued());
    reader.finish();
    ASSERT_TRUE(rt->disable(mp->slot));
    EXPECT_EQ(Counters::get(rt->counters(mp->slot).wasted_bytes), 0u);
}

// knob part=1: a reader of the table that opened WatchID then EventDate teaches the next
// reader beginning with WatchID, in another part of the same table, to advise exactly
// EventDate's marks file at its first open; a reader beginning otherwise gets nothing.
TEST_F(MarksPart, AReaderWhoseHistoryNamesTwoColumnsGetsExactlyTheOtherAdvised) {
    Part& a = table.add(300);
    Part& b = table.add(200);
    Part& c = table.add(100);
    if (!start_part(1)) GTEST_SKIP() << kNoUring;
    {
        Reader first{*mp, *rt, a, {}};
        first.open(0);
        first.open(2);  // nothing seen before began so: URL and Title advised, never read
    }
    const uint64_t before = issued();
    EXPECT_EQ(before, size_of(a.mrk[1]) + size_of(a.mrk[3]));
    Reader second{*mp, *rt, b, {}};
    second.open(0);
    EXPECT_EQ(issued() - before, size_of(b.mrk[2])) << "EventDate's, nothing else";
    second.read_marks(1);
    second.read_marks(3);
    EXPECT_EQ(used(), 0u) << "URL's or Title's marks file advised";
    second.read_marks(2);
    EXPECT_EQ(used(), size_of(b.mrk[2]));
    second.open(2);
    EXPECT_EQ(issued() - before, size_of(b.mrk[2])) << "the history ends at EventDate";
    second.finish();
    Reader other{*mp, *rt, c, {}};
    other.open(3);
    EXPECT_EQ(issued() - before, size_of(b.mrk[2])) << "no reader began with Title";
    other.finish();
    EXPECT_EQ(errors(), 0u);
}

// knob part=1: the history is the target's, not the runtime's: after the last policy went off
// (its I/O thread stopped) and on again in a runtime given the same history (the agent's
// policy host keeps it), a reader beginning as an earlier one did gets that reader's other
// column advised at its first open.
TEST_F(MarksPart, TheHistoryOutlivesThePolicySwitchedOffAndOnAgain) {
    Part& a = table.add(300);
    Part& b = table.add(300);
    if (!start_part(1)) GTEST_SKIP() << kNoUring;
    {
        Reader first{*mp, *rt, a, {}};
        first.open(3);
        first.open(1);
    }
    ASSERT_TRUE(rt->disable(mp->slot));
    mp.reset();
    rt.reset();
    ASSERT_TRUE(start_part(1));
    Reader again{*mp, *rt, b, {}};
    again.open(3);
    EXPECT_EQ(issued(), size_of(b.mrk[1])) << "URL's, learnt before the restart";
    again.read_marks(1);
    EXPECT_EQ(used(), issued());
}

// knob part=1: with two readers in the history that opened WatchID (WatchID, URL, EventDate,
// Title and WatchID, EventDate), a reader's first open (WatchID) advises what both opened
// (EventDate); its second (URL) names which one it is: Title is advised. A reader whose opens
// only the wide ones contain (WatchID, Title) gets their other column (URL); one opening
// Title then EventDate (the order does not count) gets URL and WatchID.
TEST_F(MarksPart, ReadersOfTheSameColumnsAdviseWhatAllOpenedUntilTheOpensTellThemApart) {
    Part& p = table.add(300);
    Part& q = table.add(300);
    Part& r = table.add(300);
    Part& t = table.add(300);
    Part& u = table.add(300);
    if (!start_part(1)) GTEST_SKIP() << kNoUring;
    {
        Reader all{*mp, *rt, p, {}};
        for (size_t i : {0, 1, 2, 3}) all.open(i);
    }
    {
        Reader two{*mp, *rt, q, {}};
        two.open(0);  // {WatchID}: only the first reader began so: all three advised
        two.open(2);
    }
    const uint64_t before = issued();
    EXPECT_EQ(before, 2 * size_of(p.mrk[1]) + 3 * size_of(q.mrk[1]));
    {
        Reader wide{*mp, *rt, r, {}};
        wide.open(0);
        EXPECT_EQ(issued() - before, size_of(r.mrk[2]));
        wide.open(1);
        EXPECT_EQ(issued() - before, size_of(r.mrk[2]) + size_of(r.mrk[3]));
        wide.read_marks(2);
        wide.read_marks(3);
        wide.open(2);
        wide.open(3);
        EXPECT_EQ(used(), size_of(r.mrk[2]) + size_of(r.mrk[3]));
    }
    const uint64_t mid = issued();
    {
        Reader odd{*mp, *rt, t, {}};
        odd.open(0);
        EXPECT_EQ(issued() - mid, size_of(t.mrk[2]));
        odd.open(3);
        EXPECT_EQ(issued() - mid, size_of(t.mrk[2]) + size_of(t.mrk[1]));
    }
    const uint64_t late = issued();
    {
        Reader reversed{*mp, *rt, u, {}};
        reversed.open(3);  // the readers with Title: WatchID is what they all opened
        EXPECT_EQ(issued() - late, size_of(u.mrk[0]));
        reversed.open(2);
        EXPECT_EQ(issued() - late, size_of(u.mrk[0]) + size_of(u.mrk[1]));
    }
    EXPECT_EQ(errors(), 0u);
}

TEST(MarksPolicy, ADescriptorClosedAndReusedForAPipeLosesNoByte) {
    Part part(100);
    Session s;
    ASSERT_TRUE(s.start(&part));
    auto& [rt, mp] = s;
    // Column 1's descriptor is closed and its number reused by a pipe holding data.
    const int victim = part.columns[1].bin;
    ::close(victim);
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    if (p[0] != victim) {
        ASSERT_EQ(::dup2(p[0], victim), victim);
        ::close(p[0]);
    }
    ASSERT_EQ(::write(p[1], "column", 6), 6);
    mp->read_enter(part.columns[0].bin, part.columns[0].marks[30].compressed, 65536);
    rt->worker().barrier();
    char buf[8] = {};
    EXPECT_EQ(::read(victim, buf, sizeof buf), 6);
    EXPECT_EQ(std::string(buf, 6), "column");
    EXPECT_EQ(Counters::get(rt->counters(mp->slot).errors), 0u);
    EXPECT_GE(rt->describe()["worker"]["not_regular"].get<uint64_t>(), 1u);
    ::close(victim);
    ::close(p[1]);
    part.columns[1].bin = -1;
    Session::close(part);
}

}  // namespace
}  // namespace liveio::policy
