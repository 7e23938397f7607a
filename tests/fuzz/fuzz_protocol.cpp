// Fuzz target: the agent's control protocol as the agent serves it. The input is a byte
// stream cut into chunks (each chunk's length is its first byte) as recv() might deliver
// them; the agent's LineBuffer frames them (kMaxRequestBytes per line) and every line is
// answered by answer_request_line with the BPF host's requests registered (bpf.load, unload,
// list, maps, log). Every answer must be one JSON response line with "v", "id" and "ok".
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "agent/bpf_host.h"
#include "agent/request_line.h"
#include "agent/router.h"
#include "control/protocol.h"

using namespace liveio;

namespace {

[[noreturn]] void fail(const char* what, const std::string& line) {
    std::fprintf(stderr, "fuzz check failed: %s: %s\n", what, line.c_str());
    std::abort();
}

void check_response(const std::string& response) {
    if (response.empty() || response.back() != '\n' || response.find('\n') != response.size() - 1)
        fail("response is not one line", response);
    auto j = nlohmann::json::parse(response, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) fail("response is not a JSON object", response);
    if (!j.contains("v") || !j.contains("id") || !j.contains("ok") || !j["ok"].is_boolean())
        fail("response lacks v, id or ok", response);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static agent::RequestRouter router;
    static std::unique_ptr<agent::BpfHost> host = [] {
        auto h = agent::BpfHost::create({}).value();
        if (!h->register_requests(router)) std::abort();
        return h;
    }();
    (void)host;

    control::LineBuffer in(control::kMaxRequestBytes);
    size_t pos = 0;
    while (pos < size && !in.overflowed()) {
        const size_t len = std::min<size_t>(data[pos], size - pos - 1);
        in.append(std::string_view(reinterpret_cast<const char*>(data) + pos + 1, len));
        pos += 1 + len;
        while (auto line = in.next_line()) {
            agent::Reply reply;
            const std::string response = agent::answer_request_line(router, *line, reply);
            check_response(response);
            for (int fd : reply.fds) ::close(fd);
            if (reply.after_reply) reply.after_reply();
        }
    }
    // Whatever was loaded goes again, so inputs stay independent.
    host->unload_all();
    return 0;
}
