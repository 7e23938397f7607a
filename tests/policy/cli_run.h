// Running the `liveio` executable from the policy tests (LIVEIO_BPF_DIR pointing at this
// build's objects), and polling a condition with a bound.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "observe/child.h"

namespace liveio::policy::testing {

struct CliRun {
    int status;
    std::string out, err;
};

inline CliRun liveio(std::vector<std::string> args) {
    args.insert(args.begin(), LIVEIO_CLI_PATH);
    observe::testing_util::Child c(args, {std::string("LIVEIO_BPF_DIR=") + LIVEIO_BPF_DIR});
    const int status = c.wait();
    return {status, c.out(), c.err()};
}

// Polls `done` every 10 ms, up to 60 s (bounded: a condition that never holds fails the test).
template <typename F>
bool eventually(F&& done) {
    for (int i = 0; i < 6000; ++i) {
        if (done()) return true;
        ::usleep(10000);
    }
    return done();
}

inline std::string slurp(const std::string& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A target child and the write end of its input pipe: closed and killed (reaped) unless the
// test cleared them (fd = -1 once closed, pid = -1 once reaped).
struct ChildReaper {
    pid_t pid;
    int fd;
    ~ChildReaper() {
        if (fd >= 0) ::close(fd);
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    }
};

}  // namespace liveio::policy::testing
