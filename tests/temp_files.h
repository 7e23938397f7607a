// Temporary directories and files of pseudo-random bytes, shared by the tests that compare
// what a call returns natively and through liveio.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace liveio::test_data {

// A fresh directory under /tmp, removed with everything in it; `path` is empty when it could
// not be created.
struct TempDir {
    std::string path;
    explicit TempDir(const std::string& prefix = "liveio-test") {
        std::string t = "/tmp/" + prefix + "-XXXXXX";
        if (::mkdtemp(t.data()) != nullptr) path = t;
    }
    ~TempDir() {
        if (!path.empty()) std::system(("rm -rf '" + path + "'").c_str());
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

// `size` pseudo-random bytes (xorshift32); the same `seed` gives the same bytes.
inline std::vector<char> pattern(size_t size, uint32_t seed) {
    std::vector<char> data(size);
    uint32_t x = 2463534242u ^ seed;
    for (auto& c : data) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        c = static_cast<char>(x);
    }
    return data;
}

// Creates (or truncates) `path` holding `content` and returns it open with `flags` (the
// caller closes it); a failure is recorded.
inline int create_file(const std::string& path, const std::vector<char>& content,
                       int flags = O_RDWR) {
    const int fd = ::open(path.c_str(), flags | O_CREAT | O_TRUNC, 0600);
    EXPECT_GE(fd, 0) << path;
    if (fd >= 0 && !content.empty()) {
        EXPECT_EQ(::pwrite(fd, content.data(), content.size(), 0),
                  static_cast<ssize_t>(content.size()));
    }
    return fd;
}

}  // namespace liveio::test_data
