// Waiting for a test's child process without trusting it to end: tests that check that
// something does not hang run it in a child and kill it past a bound.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

namespace liveio::test_data {

// The child's exit status (0..255), -2 when it ended otherwise (a signal), or -1 when it was
// still running after `seconds` (it is then killed and reaped).
inline int exit_status_within(pid_t child, int seconds) {
    int status = 0;
    pid_t done = 0;
    for (int i = 0; i < seconds * 100 && (done = ::waitpid(child, &status, WNOHANG)) == 0; ++i)
        ::usleep(10000);
    if (done == 0) {
        ::kill(child, SIGKILL);
        ::waitpid(child, &status, 0);
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
}

}  // namespace liveio::test_data
