#pragma once
// Identity of a regular file behind a descriptor, for the policy runtime's checks that a
// descriptor still names the file an action was issued for.
#include <sys/stat.h>
#include <sys/syscall.h>

#include <cstdint>

#include "base/raw_syscall.h"

namespace liveio::policy {

// A file's id from its device (dev_t encoding) and inode: (dev << 32) ^ ino, as the agent's
// FdInfo::file_id.
inline uint64_t file_id(uint64_t dev, uint64_t ino) { return (dev << 32) ^ ino; }

// file_id() of the regular file `fd` is open on, or 0 when it is not open on a regular file.
// `size`, when given, receives the file's size.
inline uint64_t regular_file_id(int fd, uint64_t* size = nullptr) {
    struct stat st {};
    if (fd < 0 || liveio::raw_syscall(SYS_fstat, fd, reinterpret_cast<long>(&st)) != 0) return 0;
    if (!S_ISREG(st.st_mode)) return 0;
    if (size != nullptr) *size = static_cast<uint64_t>(st.st_size);
    return file_id(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino));
}

}  // namespace liveio::policy
