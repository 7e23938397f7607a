#include "agent/call_counters.h"

#include <sys/syscall.h>

#include <string>

namespace liveio::agent {
namespace {

// Syscalls whose non-negative result is a byte count.
bool transfers_bytes(long nr) {
    switch (nr) {
        case SYS_read: case SYS_write: case SYS_pread64: case SYS_pwrite64: case SYS_readv:
        case SYS_writev: case SYS_preadv: case SYS_pwritev: case SYS_preadv2: case SYS_pwritev2:
        case SYS_sendto: case SYS_recvfrom: case SYS_sendmsg: case SYS_recvmsg:
        case SYS_sendfile: case SYS_copy_file_range: case SYS_splice:
            return true;
        default:
            return false;
    }
}

}  // namespace

std::string syscall_name(long nr) {
    switch (nr) {
        case SYS_read: return "read";
        case SYS_write: return "write";
        case SYS_open: return "open";
        case SYS_openat: return "openat";
        case SYS_close: return "close";
        case SYS_lseek: return "lseek";
        case SYS_pread64: return "pread64";
        case SYS_pwrite64: return "pwrite64";
        case SYS_readv: return "readv";
        case SYS_writev: return "writev";
        case SYS_preadv: return "preadv";
        case SYS_pwritev: return "pwritev";
        case SYS_preadv2: return "preadv2";
        case SYS_pwritev2: return "pwritev2";
        case SYS_fsync: return "fsync";
        case SYS_fdatasync: return "fdatasync";
        case SYS_ftruncate: return "ftruncate";
        case SYS_sendto: return "sendto";
        case SYS_recvfrom: return "recvfrom";
        case SYS_sendmsg: return "sendmsg";
        case SYS_recvmsg: return "recvmsg";
        case SYS_epoll_wait: return "epoll_wait";
        case SYS_epoll_pwait: return "epoll_pwait";
        case SYS_futex: return "futex";
        case SYS_clone: return "clone";
        case SYS_clone3: return "clone3";
        case SYS_fork: return "fork";
        case SYS_vfork: return "vfork";
        case SYS_execve: return "execve";
        case SYS_wait4: return "wait4";
        case SYS_socket: return "socket";
        case SYS_connect: return "connect";
        case SYS_accept: return "accept";
        case SYS_accept4: return "accept4";
        case SYS_poll: return "poll";
        case SYS_ppoll: return "ppoll";
        case SYS_mmap: return "mmap";
        case SYS_munmap: return "munmap";
        case SYS_fstat: return "fstat";
        case SYS_newfstatat: return "newfstatat";
        case SYS_statx: return "statx";
        case SYS_getrandom: return "getrandom";
        case SYS_io_uring_enter: return "io_uring_enter";
        default: return "syscall_" + std::to_string(nr);
    }
}

void CallCounters::on_exit(const hook::SyscallCall& call, hook::SyscallResult result, uint64_t) {
    const long nr = call.nr >= 0 && call.nr < kTracked ? call.nr : kTracked;
    Counter& c = counters_[nr];
    c.calls.fetch_add(1, std::memory_order_relaxed);
    if (result < 0)
        c.errors.fetch_add(1, std::memory_order_relaxed);
    else if (transfers_bytes(call.nr))
        c.bytes.fetch_add(static_cast<uint64_t>(result), std::memory_order_relaxed);
}

nlohmann::json CallCounters::snapshot() const {
    nlohmann::json out = nlohmann::json::object();
    uint64_t calls = 0, bytes = 0, errors = 0;
    for (int nr = 0; nr <= kTracked; ++nr) {
        const Counter& c = counters_[nr];
        const uint64_t n = c.calls.load(std::memory_order_relaxed);
        if (n == 0) continue;
        const uint64_t b = c.bytes.load(std::memory_order_relaxed);
        const uint64_t e = c.errors.load(std::memory_order_relaxed);
        out[nr == kTracked ? "other" : syscall_name(nr)] = {{"calls", n}, {"bytes", b}, {"errors", e}};
        calls += n;
        bytes += b;
        errors += e;
    }
    out["total"] = {{"calls", calls}, {"bytes", bytes}, {"errors", errors}};
    return out;
}

uint64_t CallCounters::total_calls() const {
    uint64_t calls = 0;
    for (const Counter& c : counters_) calls += c.calls.load(std::memory_order_relaxed);
    return calls;
}

}  // namespace liveio::agent
