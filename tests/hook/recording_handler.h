// A CallHandler for tests: records every call it sees; can take over one syscall number.
#pragma once

#include <sys/syscall.h>

#include <cstring>
#include <functional>
#include <mutex>
#include <utility>
#include <vector>

#include "hook/dispatch.h"

namespace liveio::hook {

struct Seen {
    long nr;
    long args[6];
    long result;
};

class RecordingHandler : public CallHandler {
public:
    long take_nr = -1;
    long take_result = 0;
    char fill = 0;
    std::function<void(const SyscallCall&)> during_enter;  // runs first in every on_enter

    bool on_enter(CallFrame& frame) override {
        const SyscallCall& call = frame.call;
        if (during_enter) during_enter(call);
        if (call.nr != take_nr) return false;
        if (take_result > 0 && call.nr == SYS_read)
            memset(reinterpret_cast<void*>(call.args[1]), fill, static_cast<size_t>(take_result));
        frame.result = take_result;
        return true;
    }
    void on_exit(CallFrame& frame) override {
        std::lock_guard lock(mu);
        Seen s{frame.call.nr, {}, frame.result};
        memcpy(s.args, frame.call.args, sizeof s.args);
        seen.push_back(s);
    }
    std::vector<Seen> take() {
        std::lock_guard lock(mu);
        return std::exchange(seen, {});
    }
    std::mutex mu;
    std::vector<Seen> seen;
};

}  // namespace liveio::hook
