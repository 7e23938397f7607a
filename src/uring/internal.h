// Shared pieces of the two backends (io_uring and synchronous fallback). Not a public header.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "uring/engine.h"

namespace liveio::uring::detail {

// Reads and writes of bytes: the ops whose short result breaks a soft link and which `.whole()`
// completes.
bool is_transfer(OpCode code);
// File reads/writes whose -EAGAIN completion is resubmitted.
bool is_file_rw(OpCode code);
// Ops `.whole()` completes: the transfers plus send/recv on stream sockets.
bool is_byte_stream(OpCode code);
bool is_vectored(OpCode code);
// Bytes the op asks for (sum of iovecs for vectored ops).
uint64_t requested_bytes(const Op& op);
// After `done` bytes of a transfer completed: rewrite `op` to cover the remainder. Vectored ops
// get their remaining iovecs copied into `iov_storage` (the caller's array is left untouched).
void advance(Op& op, uint64_t done, std::vector<iovec>& iov_storage);
// Whether `res` of `op` fails a soft link chain (what the kernel does: error or short transfer;
// but a failed fsync, fdatasync or sync_file_range does not, unless its descriptor did not
// resolve).
bool breaks_chain(const Op& op, int32_t res);
// Combines the bytes already transferred with the latest result for `.whole()` ops.
inline int32_t whole_result(uint64_t done, int32_t res) {
    if (res >= 0) return static_cast<int32_t>(done + static_cast<uint64_t>(res));
    return done > 0 ? static_cast<int32_t>(done) : res;
}

// Provided buffers of one group: the storage both backends hand out for recv_multishot.
struct BufferGroup {
    uint16_t group = 0;
    unsigned count = 0;
    uint32_t size = 0;
    std::vector<char> storage;
    std::span<char> at(int32_t id) {
        if (id < 0 || static_cast<unsigned>(id) >= count) return {};
        return {storage.data() + static_cast<size_t>(id) * size, size};
    }
};
Result<void> check_buffer_ring_args(unsigned count, uint32_t size);

// The backend's record (which has a BufferGroup `info`) for buffer group `id`, or nullptr.
template <typename Group>
Group* find_group(std::vector<Group>& groups, uint16_t id) {
    for (auto& g : groups)
        if (g.info.group == id) return &g;
    return nullptr;
}

Result<std::unique_ptr<Engine>> create_uring_engine(const Options& options);
std::unique_ptr<Engine> create_fallback_engine(const Options& options, std::string why);

}  // namespace liveio::uring::detail
