// Syscall rewriting maps its sled at address 0, which the kernel allows only with
// vm.mmap_min_addr = 0. Its tests (tests/hook, tests/agent) and `liveio soak` lower the setting
// for their duration when they may (root) and put the old value back when they end.
//
// The setting is one for the whole machine and ctest runs tests as parallel processes: a test
// putting the old value back while another still installs made that one fail. Root users
// therefore register under lock files: the first user lowers the setting to 0 and
// records the old value, the last one restores it. (A crashed user's lock is released by the
// kernel; the setting then stays 0 until the next user's last release restores what that user
// found.)
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace liveio {

inline constexpr const char* kMmapMinAddrPath = "/proc/sys/vm/mmap_min_addr";

inline long read_mmap_min_addr() {
    std::ifstream in(kMmapMinAddrPath);
    long value = -1;
    in >> value;
    return value;
}

class MmapMinAddrZero {
public:
    // Makes the setting 0 for the guard's lifetime when root; ok() tells whether it is 0 now,
    // otherwise reason() says why not (for GTEST_SKIP).
    MmapMinAddrZero() {
        if (::geteuid() != 0) {
            const long now = read_mmap_min_addr();
            if (now != 0)
                reason_ = "syscall rewriting needs vm.mmap_min_addr=0 (it is " +
                          std::to_string(now) + ") and only root may change it";
            return;
        }
        const int mutex = lock_mutex();
        if (mutex < 0) {
            reason_ = std::string("cannot lock ") + kMutexPath + ": " + std::strerror(errno);
            return;
        }
        users_ = ::open(kUsersPath, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
        if (users_ >= 0) {
            if (::flock(users_, LOCK_EX | LOCK_NB) == 0) {  // no other user: record, then lower
                const std::string old = std::to_string(read_mmap_min_addr());
                (void)!::ftruncate(users_, 0);
                (void)!::pwrite(users_, old.data(), old.size(), 0);
                if (read_mmap_min_addr() != 0) write_value(0);
            }
            ::flock(users_, LOCK_SH);
        }
        if (users_ < 0 || read_mmap_min_addr() != 0)
            reason_ = std::string("cannot set vm.mmap_min_addr to 0 (") + kUsersPath + ")";
        ::close(mutex);
    }
    ~MmapMinAddrZero() {
        if (users_ < 0) return;
        const int mutex = lock_mutex();
        if (::flock(users_, LOCK_EX | LOCK_NB) == 0) {  // the last user puts the old value back
            char old[32] = {};
            if (::pread(users_, old, sizeof old - 1, 0) > 0)
                write_value(std::strtol(old, nullptr, 10));
        }
        ::close(users_);
        if (mutex >= 0) ::close(mutex);
    }
    MmapMinAddrZero(const MmapMinAddrZero&) = delete;
    MmapMinAddrZero& operator=(const MmapMinAddrZero&) = delete;

    bool ok() const { return reason_.empty(); }
    const std::string& reason() const { return reason_; }

private:
    static constexpr const char* kMutexPath = "/tmp/liveio-mmap-min-addr.mutex";
    static constexpr const char* kUsersPath = "/tmp/liveio-mmap-min-addr.users";
    static int lock_mutex() {
        const int fd = ::open(kMutexPath, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
        if (fd >= 0 && ::flock(fd, LOCK_EX) != 0) {
            ::close(fd);
            return -1;
        }
        return fd;
    }
    static bool write_value(long value) {
        std::ofstream out(kMmapMinAddrPath);
        out << value << '\n';
        out.flush();
        return static_cast<bool>(out);
    }

    int users_ = -1;
    std::string reason_;
};

}  // namespace liveio
