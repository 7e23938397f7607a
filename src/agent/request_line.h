// The agent's side of the control protocol (control/protocol.h): answering one request line.
#pragma once

#include <string>
#include <string_view>

#include "agent/router.h"

namespace liveio::agent {

// The agent's side of one request line: parses and checks it (a JSON object with the integer
// "v" equal to kProtocolVersion and a string "cmd"), dispatches it on `router` and renders the
// response line. On success `reply` holds the handler's descriptors and after-reply work (the
// caller sends the descriptors with the line, closes them, then runs the work). Never throws:
// whatever the line holds and whatever the handler does, the answer is a response line.
std::string answer_request_line(const RequestRouter& router, std::string_view line, Reply& reply);

}  // namespace liveio::agent
