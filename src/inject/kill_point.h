// Test hook for what a `liveio` command killed half-way leaves behind: with LIVEIO_KILL_AT=NAME
// in its environment, the process SIGKILLs itself on reaching the point NAME (as an OOM kill
// or a user's kill -9 would end it there). Without the variable a point costs one getenv.
//
// Points: inject-stopped (every thread of the target stopped, nothing changed yet: attach's
// and detach's stops), inject-call-running (the remote dlopen/dlclose/dlsym runs on one
// thread, the others stopped), inject-call-returned (the call returned into its frame's
// rt_sigreturn, the thread not yet restored), attach-injected (agent loaded and running, nothing
// installed), attach-installed (mechanism installed, the command not finished), detach-answered
// (the agent removed its hooks and stopped serving, its library still mapped).
#pragma once

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace liveio::inject {

inline void kill_point(const char* name) {
    const char* at = std::getenv("LIVEIO_KILL_AT");
    if (at != nullptr && std::strcmp(at, name) == 0) ::kill(::getpid(), SIGKILL);
}

}  // namespace liveio::inject
