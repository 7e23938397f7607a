// Kernel tracepoints attached through libbpf (perf_event_open by tracepoint id) need tracefs
// for the ids. Fresh machines and containers often boot without it mounted; as root the tests
// mount it where the kernel expects it, as a system's init would.
#pragma once

#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace liveio::testing {

// "" when /sys/kernel/tracing/events/<probe> exists (mounting tracefs if needed and
// possible), otherwise why not.
inline std::string ensure_tracefs(const std::string& probe = "raw_syscalls/sys_enter") {
    const std::string events = "/sys/kernel/tracing/events/";
    struct stat st {};
    if (::stat((events + probe).c_str(), &st) == 0) return "";
    if (::geteuid() != 0)
        return "tracefs is not mounted at /sys/kernel/tracing (mounting it needs root)";
    if (::mount("nodev", "/sys/kernel/tracing", "tracefs", 0, nullptr) != 0 && errno != EBUSY)
        return std::string("cannot mount tracefs at /sys/kernel/tracing: ") + std::strerror(errno);
    if (::stat((events + probe).c_str(), &st) != 0) return "the kernel has no tracepoint " + probe;
    return "";
}

}  // namespace liveio::testing
