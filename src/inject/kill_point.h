// Test hook for what a `liveio` command killed half-way leaves behind: with LIVEIO_KILL_AT=NAME
// in its environment, the process SIGKILLs itself on reaching the point NAME (as an OOM kill
// or a user's kill -9 would end it there). With LIVEIO_KILL_AT=target:NAME it SIGKILLs the
// target process instead (the process being attached to dies at that moment), where the point
// knows the target. Without the variable a point costs one getenv.
//
// Points: inject-seized (every thread of the target seized and interrupted, their stops not yet
// collected), inject-stopped (every thread of the target stopped, nothing changed yet: attach's
// and detach's stops), inject-call-running (the remote dlopen/dlclose/dlsym runs on one
// thread, the others stopped), inject-call-returned (the call returned into its frame's
// rt_sigreturn, the thread not yet restored), attach-injected (agent loaded and running, nothing
// installed), attach-installed (mechanism installed, the command not finished), detach-answered
// (the agent removed its hooks and stopped serving, its library still mapped).
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace liveio::inject {

inline void kill_point(const char* name, pid_t target = 0) {
    const char* at = std::getenv("LIVEIO_KILL_AT");
    if (at == nullptr) return;
    if (std::strcmp(at, name) == 0) ::kill(::getpid(), SIGKILL);
    constexpr char kTarget[] = "target:";
    if (target > 0 && std::strncmp(at, kTarget, sizeof kTarget - 1) == 0 &&
        std::strcmp(at + sizeof kTarget - 1, name) == 0)
        ::kill(target, SIGKILL);
}

}  // namespace liveio::inject
