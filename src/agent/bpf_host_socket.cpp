#include "agent/bpf_host_socket.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstring>

#include "agent/fd_classes.h"
#include "base/raw_syscall.h"
#include "ebpf/helpers.h"
#include "liveio/io_edge.h"
#include "liveio/net_stats.h"

namespace liveio::agent {
namespace {

struct SocketEdge {
    const void* ctx = nullptr;  // the liveio_io_ctx of the programs running on this edge
    long nr = 0;
    long fd = -1;
    long addr = 0;  // connect: the sockaddr the target passed, and its length
    long addrlen = 0;
    long result = 0;
};
__attribute__((tls_model("initial-exec"))) thread_local SocketEdge t_edge;

// Fills `out` from a kernel sockaddr of `len` bytes; false for anything but IPv4/IPv6.
bool to_sock_addr(const sockaddr_storage& sa, size_t len, liveio_sock_addr& out) {
    out = {};
    if (sa.ss_family == AF_INET && len >= sizeof(sockaddr_in)) {
        const auto& in = reinterpret_cast<const sockaddr_in&>(sa);
        out.family = AF_INET;
        out.port = ntohs(in.sin_port);
        std::memcpy(out.addr, &in.sin_addr, 4);
        return true;
    }
    if (sa.ss_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
        const auto& in6 = reinterpret_cast<const sockaddr_in6&>(sa);
        out.port = ntohs(in6.sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
            out.family = AF_INET;
            std::memcpy(out.addr, &in6.sin6_addr.s6_addr[12], 4);
        } else {
            out.family = AF_INET6;
            std::memcpy(out.addr, &in6.sin6_addr, 16);
        }
        return true;
    }
    return false;
}

// getsockname / getpeername of `fd` into `out`: 0 or -errno.
long socket_name(long nr, long fd, liveio_sock_addr& out) {
    sockaddr_storage sa{};
    socklen_t len = sizeof sa;
    const long r = raw_syscall(nr, fd, reinterpret_cast<long>(&sa), reinterpret_cast<long>(&len));
    if (r != 0) return r;
    return to_sock_addr(sa, len, out) ? 0 : -EAFNOSUPPORT;
}

// The address connect() was given, through a fault-safe copy (another thread of the target
// may have unmapped it since the call returned).
long connect_address(long addr, long addrlen, liveio_sock_addr& out) {
    sockaddr_storage sa{};
    if (addr == 0 || addrlen <= 0) return -EINVAL;
    const size_t len = std::min(static_cast<size_t>(addrlen), sizeof sa);
    iovec local{&sa, len};
    iovec remote{reinterpret_cast<void*>(addr), len};
    if (raw_syscall(SYS_process_vm_readv, raw_syscall(SYS_getpid), reinterpret_cast<long>(&local),
                    1, reinterpret_cast<long>(&remote), 1, 0) != static_cast<long>(len))
        return -EFAULT;
    return to_sock_addr(sa, len, out) ? 0 : -EAFNOSUPPORT;
}

long endpoints(const void* ctx, liveio_socket_endpoints& e) {
    const SocketEdge& edge = t_edge;
    if (edge.ctx == nullptr || ctx != edge.ctx) return -EINVAL;
    long sock = -1;
    if (edge.nr == SYS_connect) {
        if (edge.result != 0 && edge.result != -EINPROGRESS) return -EINVAL;
        sock = edge.fd;
        e.file_id = static_cast<const liveio_io_ctx*>(ctx)->file_id;
        if (long r = connect_address(edge.addr, edge.addrlen, e.peer); r != 0) return r;
    } else {
        if (edge.result < 0) return -EINVAL;
        sock = edge.result;
        // The new descriptor, classified now: the host's cache forgets the number only after
        // the programs of this edge ran, so it may still describe an earlier object.
        e.file_id = classify_fd(static_cast<int>(sock)).file_id;
        if (long r = socket_name(SYS_getpeername, sock, e.peer); r != 0) return r;
    }
    return socket_name(SYS_getsockname, sock, e.local);
}

uint64_t h_socket_endpoints(uint64_t ctx, uint64_t out, uint64_t size, uint64_t, uint64_t,
                            ebpf::ExecEnv*) {
    void* dst = reinterpret_cast<void*>(out);
    liveio_socket_endpoints e{};
    if (size != sizeof e) {
        std::memset(dst, 0, static_cast<size_t>(size));
        return static_cast<uint64_t>(-EINVAL);
    }
    const long r = endpoints(reinterpret_cast<const void*>(ctx), e);
    if (r != 0) e = {};
    std::memcpy(dst, &e, sizeof e);
    return static_cast<uint64_t>(r);
}

}  // namespace

SocketEdgeScope::SocketEdgeScope(const void* ctx, const hook::SyscallCall& call, long result) {
    if (ctx == nullptr ||
        (call.nr != SYS_connect && call.nr != SYS_accept && call.nr != SYS_accept4))
        return;
    t_edge = {ctx, call.nr, call.args[0], call.args[1], call.args[2], result};
    active_ = true;
}

SocketEdgeScope::~SocketEdgeScope() {
    if (active_) t_edge = {};
}

Result<void> add_socket_helpers(ebpf::HelperTable& table) {
    using A = ebpf::ArgType;
    ebpf::HelperProto p;
    p.name = "liveio_socket_endpoints";
    p.fn = h_socket_endpoints;
    p.ret = ebpf::RetType::Integer;
    p.args = {A::PtrToCtx, A::PtrToUninitMem, A::ConstSize, A::None, A::None};
    return table.extend(LIVEIO_HELPER_SOCKET_ENDPOINTS, p);
}

}  // namespace liveio::agent
