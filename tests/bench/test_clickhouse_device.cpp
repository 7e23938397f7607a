// The contended device condition of `liveio bench clickhouse` (bench/clickhouse_device.h): the
// condition list, the load's own file, and the background fio load started, measured and
// stopped, never left running. Needs fio (Debian package); no timing is asserted.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "../../bench/clickhouse_device.h"

namespace liveio::bench {
namespace {

namespace fs = std::filesystem;

bool fio_installed() { return ::system("fio --version >/dev/null 2>&1") == 0; }

// True while `pid` is a process (a zombie is one too: the load must have been reaped).
bool process_exists(pid_t pid) { return ::kill(pid, 0) == 0; }

class TempDir {
public:
    TempDir() {
        char tmpl[] = "/var/tmp/liveio-device-XXXXXX";
        if (::mkdtemp(tmpl)) path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        if (!path_.empty()) fs::remove_all(path_, ec);
    }
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

TEST(ClickhouseDevice, ParsesConditionLists) {
    auto both = parse_device_conditions("idle,contended");
    ASSERT_TRUE(both) << both.error().message;
    ASSERT_EQ(both->size(), 2u);
    EXPECT_EQ((*both)[0], DeviceCondition::Idle);
    EXPECT_EQ((*both)[1], DeviceCondition::Contended);
    auto one = parse_device_conditions("contended");
    ASSERT_TRUE(one);
    ASSERT_EQ(one->size(), 1u);
    EXPECT_EQ((*one)[0], DeviceCondition::Contended);
    EXPECT_STREQ(condition_name(DeviceCondition::Contended), "contended");
    EXPECT_FALSE(parse_device_conditions("idle,slow"));
    EXPECT_FALSE(parse_device_conditions("idle,idle"));
    EXPECT_FALSE(parse_device_conditions(""));
    EXPECT_FALSE(parse_device_conditions(","));
}

// A private directory on the disk (O_DIRECT needs one, not tmpfs) with a small load file.
class ClickhouseLoad : public ::testing::Test {
protected:
    void SetUp() override {
        if (!fio_installed()) GTEST_SKIP() << "fio is not installed";
        ASSERT_FALSE(dir_.path().empty());
        auto file = ensure_load_file(dir_.path() + "/load", dir_.path(), kFileBytes);
        ASSERT_TRUE(file) << file.error().message;
        file_ = *file;
    }
    Result<std::unique_ptr<BackgroundLoad>> start(const ContentionSpec& spec) {
        return BackgroundLoad::start(file_, spec, dir_.path() + "/load.json");
    }

    static constexpr uint64_t kFileBytes = 8u << 20;
    TempDir dir_;
    std::string file_;
};

TEST_F(ClickhouseLoad, FileIsWrittenOnceAtItsSize) {
    EXPECT_EQ(fs::file_size(file_), kFileBytes);
    // The second call finds the complete file and does not write it again.
    struct stat before {};
    ASSERT_EQ(::stat(file_.c_str(), &before), 0);
    auto again = ensure_load_file(dir_.path() + "/load", dir_.path(), kFileBytes);
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_EQ(*again, file_);
    struct stat after {};
    ASSERT_EQ(::stat(again->c_str(), &after), 0);
    EXPECT_EQ(before.st_ino, after.st_ino);
    EXPECT_EQ(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
}

TEST_F(ClickhouseLoad, RunsUntilStoppedAndReportsWhatItDid) {
    ContentionSpec spec;
    spec.block_size = "4k";
    spec.queue_depth = 4;
    spec.max_seconds = 120;
    auto load = start(spec);
    ASSERT_TRUE(load) << load.error().message;
    const pid_t pid = (*load)->pid();
    EXPECT_TRUE((*load)->running());
    EXPECT_TRUE(process_exists(pid));
    // fio killed while it sets up writes no figures; in the bench a load runs for minutes.
    std::this_thread::sleep_for(std::chrono::seconds(2));
    auto figures = (*load)->stop();
    ASSERT_TRUE(figures) << figures.error().message;
    EXPECT_FALSE((*load)->running());
    EXPECT_FALSE(process_exists(pid)) << "the load was not reaped";
    EXPECT_FALSE(figures->ended_early);
    EXPECT_GT(figures->iops, 0);
    EXPECT_GT(figures->seconds, 0);
}

TEST_F(ClickhouseLoad, EndedByItsBoundIsReported) {
    ContentionSpec spec;
    spec.queue_depth = 2;
    spec.max_seconds = 1;
    auto load = start(spec);
    ASSERT_TRUE(load) << load.error().message;
    // fio's own bound ends it; waiting for its exit is bounded by the test's timeout.
    siginfo_t info{};
    while (::waitid(P_PID, static_cast<id_t>((*load)->pid()), &info, WEXITED | WNOWAIT) < 0 &&
           errno == EINTR) {
    }
    auto figures = (*load)->stop();
    ASSERT_TRUE(figures) << figures.error().message;
    EXPECT_TRUE(figures->ended_early);
}

TEST_F(ClickhouseLoad, DestructorStopsALoadStillRunning) {
    ContentionSpec spec;
    spec.max_seconds = 120;
    pid_t pid = -1;
    {
        auto load = start(spec);
        ASSERT_TRUE(load) << load.error().message;
        pid = (*load)->pid();
    }
    EXPECT_FALSE(process_exists(pid));
}

TEST_F(ClickhouseLoad, MissingFileIsAnErrorNotARunningLoad) {
    auto load = BackgroundLoad::start(dir_.path() + "/absent.dat", ContentionSpec{},
                                      dir_.path() + "/absent.json");
    EXPECT_FALSE(load);
}

}  // namespace
}  // namespace liveio::bench
