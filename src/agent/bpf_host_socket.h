// The socket helper of the liveio/io_exit edge (bpf/include/liveio/net_stats.h):
// liveio_socket_endpoints gives a program the addresses of the socket a connect or accept
// call connected, recorded when the call returns instead of looked up later (a short-lived
// connection is gone from /proc/net/tcp by the time a reader looks).
#pragma once

#include "base/result.h"
#include "hook/dispatch.h"

namespace liveio::ebpf {
class HelperTable;
}

namespace liveio::agent {

class FdClassCache;

// Opened by the host around the io_exit programs of one connect/accept/accept4 call: the
// helper answers only a program running with `ctx` on this thread meanwhile.
class SocketEdgeScope {
public:
    // Does nothing unless `call` is connect, accept or accept4 and `ctx` is set (the host opens
    // one per edge, with the io_exit context).
    SocketEdgeScope(const void* ctx, const hook::SyscallCall& call, long result);
    ~SocketEdgeScope();
    SocketEdgeScope(const SocketEdgeScope&) = delete;
    SocketEdgeScope& operator=(const SocketEdgeScope&) = delete;

private:
    bool active_ = false;
};

// Registers liveio_socket_endpoints (LIVEIO_HELPER_SOCKET_ENDPOINTS).
Result<void> add_socket_helpers(ebpf::HelperTable& table);

}  // namespace liveio::agent
