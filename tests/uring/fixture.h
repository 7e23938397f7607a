// Test fixture shared by the uring tests: every test runs on both backends (io_uring, fallback)
// and compares what the engine did with what plain system calls see.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "temp_files.h"
#include "uring/engine.h"

namespace liveio::uring::test {

inline std::string backend_name(const testing::TestParamInfo<BackendKind>& info) {
    return info.param == BackendKind::Uring ? "Uring" : "Fallback";
}

using liveio::test_data::TempDir;

class EngineTest : public testing::TestWithParam<BackendKind> {
protected:
    void SetUp() override { make_engine({}); }

    // (Re)creates the engine under test with `options` for this test's backend.
    void make_engine(Options options) {
        options.force_fallback = GetParam() == BackendKind::Fallback;
        auto created = Engine::create(options);
        ASSERT_TRUE(created.ok()) << created.error().message;
        engine = std::move(*created);
        if (GetParam() == BackendKind::Uring && engine->backend() != BackendKind::Uring)
            GTEST_SKIP() << "io_uring unusable here: " << engine->why_fallback();
        ASSERT_EQ(engine->backend(), GetParam());
    }

    // A file of `size` pseudo-random bytes; returns its fd (closed by the fixture).
    int make_file(size_t size, std::vector<char>* content = nullptr) {
        EXPECT_FALSE(dir.path.empty());
        std::vector<char> data =
            liveio::test_data::pattern(size, static_cast<uint32_t>(fds.size()));
        int fd = liveio::test_data::create_file(dir.path + "/f" + std::to_string(fds.size()), data);
        if (content) *content = std::move(data);
        fds.push_back(fd);
        return fd;
    }

    int adopt(int fd) {
        fds.push_back(fd);
        return fd;
    }

    void TearDown() override {
        engine.reset();
        for (int fd : fds) ::close(fd);
    }

    TempDir dir{"liveio-uring-test"};
    std::unique_ptr<Engine> engine;
    std::vector<int> fds;
};

}  // namespace liveio::uring::test
