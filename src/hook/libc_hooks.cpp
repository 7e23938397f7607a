// Wrappers for libc I/O functions. Each one describes its call to the dispatcher as the
// syscall libc would make and, when the handler does not take it over, calls the ORIGINAL
// libc function so libc's own behavior (cancellation points, errno, fallbacks) is unchanged.
//
// The wrappers are instantiated once per mechanism (GOT, inline): the mechanism decides which
// dispatcher slot they report to and where their original pointers live (for GOT the libc
// function itself; for inline hooks the relocated-prologue trampoline).
#include <dlfcn.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdarg>
#include <fcntl.h>

#include "hook/dispatcher.h"
#include "hook/got_hooks.h"

namespace liveio::hook {
namespace {

template <Mechanism M>
struct Originals {
    static inline void* fn[64] = {};
};

template <Mechanism M, int Id, typename Fn>
Fn original() {
    return reinterpret_cast<Fn>(Originals<M>::fn[Id]);
}

#define L(x) ((long)(x))

enum FnId {
    kRead, kWrite, kPread, kPread64, kPwrite, kPwrite64, kLseek, kLseek64, kOpen, kOpen64,
    kOpenat, kClose, kFsync, kFtruncate, kReadv, kWritev, kPreadv, kPwritev, kSend, kRecv,
    kSendto, kRecvfrom, kSendmsg, kRecvmsg, kEpollWait, kSyscall, kOpen2, kOpen64_2, kAccept,
    kAccept4, kConnect, kFnCount
};

template <Mechanism M>
struct Wrappers {
    static Dispatcher& d() { return Dispatcher::instance(); }

    static ssize_t read(int fd, void* b, size_t n) {
        return d().call_libc(M, {SYS_read, {fd, L(b), L(n)}},
                             [&] { return original<M, kRead, decltype(&::read)>()(fd, b, n); });
    }
    static ssize_t write(int fd, const void* b, size_t n) {
        return d().call_libc(M, {SYS_write, {fd, L(b), L(n)}},
                             [&] { return original<M, kWrite, decltype(&::write)>()(fd, b, n); });
    }
    template <int Id>
    static ssize_t pread(int fd, void* b, size_t n, off_t o) {
        return d().call_libc(M, {SYS_pread64, {fd, L(b), L(n), o}},
                             [&] { return original<M, Id, decltype(&::pread)>()(fd, b, n, o); });
    }
    template <int Id>
    static ssize_t pwrite(int fd, const void* b, size_t n, off_t o) {
        return d().call_libc(M, {SYS_pwrite64, {fd, L(b), L(n), o}},
                             [&] { return original<M, Id, decltype(&::pwrite)>()(fd, b, n, o); });
    }
    template <int Id>
    static off_t lseek(int fd, off_t o, int w) {
        return d().call_libc(M, {SYS_lseek, {fd, o, w}},
                             [&] { return original<M, Id, decltype(&::lseek)>()(fd, o, w); });
    }
    // open is variadic: the mode is only meaningful with O_CREAT/O_TMPFILE, but reading the
    // third integer register unconditionally is what libc itself does on x86-64.
    template <int Id>
    static int open(const char* path, int flags, mode_t mode) {
        return d().call_libc(M, {SYS_open, {L(path), flags, mode}}, [&] {
            return original<M, Id, int (*)(const char*, int, ...)>()(path, flags, mode);
        });
    }
    // The _FORTIFY_SOURCE entry points of open when the flags are not a compile-time
    // constant: ClickHouse opens its column and mark files through __open_2, so a GOT hook
    // on `open` alone never sees them (docs/clickhouse-io.md). No mode: O_CREAT is refused.
    template <int Id>
    static int open_2(const char* path, int flags) {
        return d().call_libc(M, {SYS_open, {L(path), flags, 0}}, [&] {
            return original<M, Id, int (*)(const char*, int)>()(path, flags);
        });
    }
    static int openat(int dir, const char* path, int flags, mode_t mode) {
        return d().call_libc(M, {SYS_openat, {dir, L(path), flags, mode}}, [&] {
            return original<M, kOpenat, int (*)(int, const char*, int, ...)>()(dir, path, flags,
                                                                               mode);
        });
    }
    static int close(int fd) {
        return d().call_libc(M, {SYS_close, {fd}},
                             [&] { return original<M, kClose, decltype(&::close)>()(fd); });
    }
    static int fsync(int fd) {
        return d().call_libc(M, {SYS_fsync, {fd}},
                             [&] { return original<M, kFsync, decltype(&::fsync)>()(fd); });
    }
    static int ftruncate(int fd, off_t len) {
        return d().call_libc(M, {SYS_ftruncate, {fd, len}}, [&] {
            return original<M, kFtruncate, decltype(&::ftruncate)>()(fd, len);
        });
    }
    static ssize_t readv(int fd, const iovec* v, int c) {
        return d().call_libc(M, {SYS_readv, {fd, L(v), c}},
                             [&] { return original<M, kReadv, decltype(&::readv)>()(fd, v, c); });
    }
    static ssize_t writev(int fd, const iovec* v, int c) {
        return d().call_libc(M, {SYS_writev, {fd, L(v), c}}, [&] {
            return original<M, kWritev, decltype(&::writev)>()(fd, v, c);
        });
    }
    // The kernel takes the offset split in two registers (pos_l, pos_h); on x86-64 pos_l
    // carries all 64 bits.
    static ssize_t preadv(int fd, const iovec* v, int c, off_t o) {
        return d().call_libc(M, {SYS_preadv, {fd, L(v), c, o, 0}}, [&] {
            return original<M, kPreadv, decltype(&::preadv)>()(fd, v, c, o);
        });
    }
    static ssize_t pwritev(int fd, const iovec* v, int c, off_t o) {
        return d().call_libc(M, {SYS_pwritev, {fd, L(v), c, o, 0}}, [&] {
            return original<M, kPwritev, decltype(&::pwritev)>()(fd, v, c, o);
        });
    }
    static ssize_t send(int fd, const void* b, size_t n, int f) {
        return d().call_libc(M, {SYS_sendto, {fd, L(b), L(n), f, 0, 0}}, [&] {
            return original<M, kSend, decltype(&::send)>()(fd, b, n, f);
        });
    }
    static ssize_t recv(int fd, void* b, size_t n, int f) {
        return d().call_libc(M, {SYS_recvfrom, {fd, L(b), L(n), f, 0, 0}}, [&] {
            return original<M, kRecv, decltype(&::recv)>()(fd, b, n, f);
        });
    }
    static ssize_t sendto(int fd, const void* b, size_t n, int f, const sockaddr* a,
                          socklen_t al) {
        return d().call_libc(M, {SYS_sendto, {fd, L(b), L(n), f, L(a), al}}, [&] {
            return original<M, kSendto, decltype(&::sendto)>()(fd, b, n, f, a, al);
        });
    }
    static ssize_t recvfrom(int fd, void* b, size_t n, int f, sockaddr* a, socklen_t* al) {
        return d().call_libc(M, {SYS_recvfrom, {fd, L(b), L(n), f, L(a), L(al)}}, [&] {
            return original<M, kRecvfrom, decltype(&::recvfrom)>()(fd, b, n, f, a, al);
        });
    }
    static int accept(int fd, sockaddr* a, socklen_t* al) {
        return d().call_libc(M, {SYS_accept, {fd, L(a), L(al)}}, [&] {
            return original<M, kAccept, decltype(&::accept)>()(fd, a, al);
        });
    }
    static int accept4(int fd, sockaddr* a, socklen_t* al, int f) {
        return d().call_libc(M, {SYS_accept4, {fd, L(a), L(al), f}}, [&] {
            return original<M, kAccept4, decltype(&::accept4)>()(fd, a, al, f);
        });
    }
    static int connect(int fd, const sockaddr* a, socklen_t al) {
        return d().call_libc(M, {SYS_connect, {fd, L(a), al}}, [&] {
            return original<M, kConnect, decltype(&::connect)>()(fd, a, al);
        });
    }
    static ssize_t sendmsg(int fd, const msghdr* m, int f) {
        return d().call_libc(M, {SYS_sendmsg, {fd, L(m), f}}, [&] {
            return original<M, kSendmsg, decltype(&::sendmsg)>()(fd, m, f);
        });
    }
    static ssize_t recvmsg(int fd, msghdr* m, int f) {
        return d().call_libc(M, {SYS_recvmsg, {fd, L(m), f}}, [&] {
            return original<M, kRecvmsg, decltype(&::recvmsg)>()(fd, m, f);
        });
    }
    static int epoll_wait(int ep, epoll_event* ev, int max, int timeout) {
        return d().call_libc(M, {SYS_epoll_wait, {ep, L(ev), max, timeout}}, [&] {
            return original<M, kEpollWait, decltype(&::epoll_wait)>()(ep, ev, max, timeout);
        });
    }
    // syscall(2) is variadic; on x86-64 a callee may read six integer registers whatever
    // the caller passed, which is what glibc's own implementation does.
    static long syscall(long nr, long a, long b, long c, long e, long f, long g) {
        return d().call_libc(M, {nr, {a, b, c, e, f, g}}, [&] {
            return original<M, kSyscall, long (*)(long, ...)>()(nr, a, b, c, e, f, g);
        });
    }

    static std::vector<LibcHook> table() {
        auto& o = Originals<M>::fn;
        auto h = [&](const char* name, auto* fn, int id) {
            return LibcHook{name, reinterpret_cast<void*>(fn), &o[id]};
        };
        return {
            h("read", &read, kRead),
            h("write", &write, kWrite),
            h("pread", &pread<kPread>, kPread),
            h("pread64", &pread<kPread64>, kPread64),
            h("pwrite", &pwrite<kPwrite>, kPwrite),
            h("pwrite64", &pwrite<kPwrite64>, kPwrite64),
            h("lseek", &lseek<kLseek>, kLseek),
            h("lseek64", &lseek<kLseek64>, kLseek64),
            h("open", &open<kOpen>, kOpen),
            h("open64", &open<kOpen64>, kOpen64),
            h("__open_2", &open_2<kOpen2>, kOpen2),
            h("__open64_2", &open_2<kOpen64_2>, kOpen64_2),
            h("openat", &openat, kOpenat),
            h("close", &close, kClose),
            h("fsync", &fsync, kFsync),
            h("ftruncate", &ftruncate, kFtruncate),
            h("readv", &readv, kReadv),
            h("writev", &writev, kWritev),
            h("preadv", &preadv, kPreadv),
            h("pwritev", &pwritev, kPwritev),
            h("send", &send, kSend),
            h("recv", &recv, kRecv),
            h("sendto", &sendto, kSendto),
            h("recvfrom", &recvfrom, kRecvfrom),
            h("accept", &accept, kAccept),
            h("accept4", &accept4, kAccept4),
            h("connect", &connect, kConnect),
            h("sendmsg", &sendmsg, kSendmsg),
            h("recvmsg", &recvmsg, kRecvmsg),
            h("epoll_wait", &epoll_wait, kEpollWait),
            h("syscall", &syscall, kSyscall),
        };
    }
};

#undef L

}  // namespace

const std::vector<LibcHook>& libc_hooks(Mechanism mechanism) {
    static const std::vector<LibcHook> got = Wrappers<Mechanism::Got>::table();
    static const std::vector<LibcHook> inl = Wrappers<Mechanism::Inline>::table();
    return mechanism == Mechanism::Inline ? inl : got;
}

const std::vector<std::string_view>& default_hooked_functions() {
    static const std::vector<std::string_view> names = {
        "read",    "write",   "pread",    "pread64",  "pwrite",  "pwrite64", "lseek",
        "lseek64", "open",    "open64",   "__open_2", "__open64_2", "openat", "close",
        "fsync",   "ftruncate", "readv",  "writev",   "preadv",  "pwritev",  "send",
        "recv",    "sendto",  "recvfrom", "accept",   "accept4", "connect",  "sendmsg",
        "recvmsg", "epoll_wait"};
    return names;
}

}  // namespace liveio::hook
