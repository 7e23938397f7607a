// Syscall rewriting maps its sled at address 0, which the kernel allows only with
// vm.mmap_min_addr = 0. Tests of that mechanism lower the setting for their duration when they
// may (root) and put the old value back when they end, also when an assertion fails (the guard
// is destroyed as the test body returns).
#pragma once

#include <unistd.h>

#include <fstream>
#include <string>

namespace liveio::agent::testing {

inline constexpr const char* kMmapMinAddrPath = "/proc/sys/vm/mmap_min_addr";

inline long read_mmap_min_addr() {
    std::ifstream in(kMmapMinAddrPath);
    long value = -1;
    in >> value;
    return value;
}

class MmapMinAddrZero {
public:
    // Lowers the setting to 0 when root and it is not 0 already. ok() tells whether it is 0
    // now; otherwise reason() says why not (for GTEST_SKIP).
    MmapMinAddrZero() {
        old_ = read_mmap_min_addr();
        if (old_ == 0) return;
        if (old_ < 0) {
            reason_ = std::string("cannot read ") + kMmapMinAddrPath;
            return;
        }
        if (::geteuid() != 0) {
            reason_ = "syscall rewriting needs vm.mmap_min_addr=0 (it is " + std::to_string(old_) +
                      ") and only root may change it";
            return;
        }
        if (!write_value(0)) {
            reason_ = std::string("cannot write 0 to ") + kMmapMinAddrPath;
            return;
        }
        changed_ = true;
    }
    ~MmapMinAddrZero() {
        if (changed_) write_value(old_);
    }
    MmapMinAddrZero(const MmapMinAddrZero&) = delete;
    MmapMinAddrZero& operator=(const MmapMinAddrZero&) = delete;

    bool ok() const { return reason_.empty(); }
    const std::string& reason() const { return reason_; }

private:
    static bool write_value(long value) {
        std::ofstream out(kMmapMinAddrPath);
        out << value << '\n';
        out.flush();
        return static_cast<bool>(out);
    }

    long old_ = -1;
    bool changed_ = false;
    std::string reason_;
};

}  // namespace liveio::agent::testing
