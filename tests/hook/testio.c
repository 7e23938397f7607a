/* A shared library doing I/O through its own PLT/GOT: the object the GOT tests patch.
 * Built twice: eagerly bound with full RELRO (read-only GOT) and lazily bound (slots start
 * at PLT resolver stubs), with PREFIX keeping the two sets of exported names apart. */
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define NAME(x) CAT(PREFIX, x)

ssize_t NAME(read)(int fd, void* buf, size_t n) { return read(fd, buf, n); }
ssize_t NAME(write)(int fd, const void* buf, size_t n) { return write(fd, buf, n); }
ssize_t NAME(pread)(int fd, void* buf, size_t n, off_t off) { return pread(fd, buf, n, off); }
ssize_t NAME(pwrite)(int fd, const void* buf, size_t n, off_t off) { return pwrite(fd, buf, n, off); }
ssize_t NAME(send)(int fd, const void* buf, size_t n) { return send(fd, buf, n, 0); }
ssize_t NAME(recv)(int fd, void* buf, size_t n) { return recv(fd, buf, n, 0); }
ssize_t NAME(readv)(int fd, const struct iovec* v, int c) { return readv(fd, v, c); }
int NAME(close)(int fd) { return close(fd); }
/* What _FORTIFY_SOURCE makes of open(path, flags) with non-constant flags: ClickHouse opens
 * its column files this way. */
extern int __open_2(const char* path, int flags);
int NAME(open_fortified)(const char* path, int flags) { return __open_2(path, flags); }
int NAME(accept)(int fd) { return accept(fd, 0, 0); }
int NAME(connect)(int fd, const struct sockaddr* a, socklen_t len) { return connect(fd, a, len); }
/* Taking the address makes a GLOB_DAT relocation for read in addition to its JUMP_SLOT. */
typedef ssize_t (*read_fn)(int, void*, size_t);
read_fn NAME(read_pointer)(void) { return &read; }
