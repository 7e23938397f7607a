#include "agent/request_line.h"

#include <cerrno>
#include <exception>

#include <nlohmann/json.hpp>

#include "control/protocol.h"

namespace liveio::agent {

using control::kAgentVersion;
using control::kProtocolVersion;
using control::make_error_response;
using control::make_ok;
using control::render_response;

std::string answer_request_line(const RequestRouter& router, std::string_view line, Reply& reply) {
    using nlohmann::json;
    json id = nullptr;
    Result<Reply> result = Reply{};
    try {
        json req;
        try {
            req = json::parse(line);
        } catch (const json::parse_error& e) {
            return render_response(make_error_response(
                id, make_error(EBADMSG, std::string("malformed JSON: ") + e.what())));
        }
        if (!req.is_object())
            return render_response(
                make_error_response(id, make_error(EINVAL, "request must be a JSON object")));
        if (req.contains("id")) id = req["id"];
        if (!req.contains("v") || !req["v"].is_number_integer())
            return render_response(make_error_response(
                id, make_error(EPROTO, "request lacks the integer protocol version \"v\"")));
        const auto v = req["v"].get<int64_t>();
        if (v != kProtocolVersion)
            return render_response(make_error_response(
                id, make_error(EPROTONOSUPPORT, "protocol version " + std::to_string(v) +
                                                    " not supported: agent " + kAgentVersion +
                                                    " speaks version " +
                                                    std::to_string(kProtocolVersion))));
        if (!req.contains("cmd") || !req["cmd"].is_string())
            return render_response(
                make_error_response(id, make_error(EINVAL, "request lacks the string \"cmd\"")));
        result = router.dispatch(req["cmd"].get<std::string>(), req);
    } catch (const std::exception& e) {
        result = make_error(EIO, std::string("request failed: ") + e.what());
    } catch (...) {
        result = make_error(EIO, "request failed with an unknown exception");
    }
    if (!result) return render_response(make_error_response(id, result.error()));
    reply = std::move(result).value();
    return render_response(make_ok(id, std::move(reply.result)));
}

}  // namespace liveio::agent
