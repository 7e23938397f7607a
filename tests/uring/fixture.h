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

#include "uring/engine.h"

namespace liveio::uring::test {

inline std::string backend_name(const testing::TestParamInfo<BackendKind>& info) {
    return info.param == BackendKind::Uring ? "Uring" : "Fallback";
}

// A temporary directory removed with everything in it.
struct TempDir {
    std::string path;
    TempDir() {
        std::string t = "/tmp/liveio-uring-test-XXXXXX";
        if (mkdtemp(t.data()) != nullptr) path = t;
    }
    ~TempDir() {
        if (!path.empty()) std::system(("rm -rf '" + path + "'").c_str());
    }
};

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
        std::string path = dir.path + "/f" + std::to_string(fds.size());
        int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
        EXPECT_GE(fd, 0);
        std::vector<char> data(size);
        uint32_t x = 2463534242u + static_cast<uint32_t>(fds.size());
        for (auto& c : data) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            c = static_cast<char>(x);
        }
        EXPECT_EQ(::pwrite(fd, data.data(), size, 0), static_cast<ssize_t>(size));
        if (content) *content = data;
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

    TempDir dir;
    std::unique_ptr<Engine> engine;
    std::vector<int> fds;
};

}  // namespace liveio::uring::test
