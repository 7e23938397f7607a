#pragma once
// Identity of a regular file behind a descriptor, for the policy runtime's checks that a
// descriptor still names the file an action was issued for.
#include <sys/stat.h>
#include <sys/syscall.h>

#include <cstdint>

#include "base/raw_syscall.h"

namespace liveio::policy {

// (st_dev << 32) ^ st_ino, as the agent's FdInfo::file_id, or 0 when `fd` is not open on a regular
// file. `size`, when given, receives the file's size.
inline uint64_t regular_file_id(int fd, uint64_t* size = nullptr) {
    struct stat st {};
    if (fd < 0 || liveio::raw_syscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0) return 0;
    if (!S_ISREG(st.st_mode)) return 0;
    if (size != nullptr) *size = static_cast<uint64_t>(st.st_size);
    return (static_cast<uint64_t>(st.st_dev) << 32) ^ static_cast<uint64_t>(st.st_ino);
}

}  // namespace liveio::policy
