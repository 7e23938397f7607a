// An Error from an errno value, with the operation that failed: "what: <strerror(code)>".
#pragma once

#include <cstring>
#include <string>
#include <string_view>

#include "base/result.h"

namespace liveio {

inline Error errno_error(int code, std::string_view what) {
    return make_error(code, std::string(what) + ": " + std::strerror(code));
}

}  // namespace liveio
