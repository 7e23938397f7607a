// The threads of a process as /proc lists them: used from outside (the injector stopping
// every thread, the CLI's detach diagnostic) and from inside (syscall rewriting looking for
// threads asleep in its dispatch code, pid = getpid()).
#pragma once

#include <dirent.h>
#include <sys/types.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace liveio {

// Thread ids of `pid` (/proc/PID/task); empty when the process is gone.
inline std::vector<pid_t> list_threads(pid_t pid) {
    std::vector<pid_t> tids;
    const std::string dir = "/proc/" + std::to_string(pid) + "/task";
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') tids.push_back(static_cast<pid_t>(std::atoi(e->d_name)));
        ::closedir(d);
    }
    return tids;
}

// A thread of a process sleeping in a system call, from /proc/PID/task/TID/syscall: the
// call's number and the user instruction pointer (just after the syscall instruction).
struct SleepingThread {
    pid_t tid;
    long nr;
    uintptr_t pc;
};

// The threads of `pid` sleeping in system calls now (running ones are not listed).
inline std::vector<SleepingThread> sleeping_threads(pid_t pid) {
    std::vector<SleepingThread> out;
    for (pid_t tid : list_threads(pid)) {
        // "NR ARG1..ARG6 SP PC" while sleeping in a call; "running" or "-1 SP PC" otherwise.
        std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/syscall");
        std::vector<std::string> fields;
        for (std::string f; in >> f;) fields.push_back(f);
        if (fields.size() < 3 || fields[0] == "running" || fields[0] == "-1") continue;
        out.push_back({tid, std::strtol(fields[0].c_str(), nullptr, 10),
                       static_cast<uintptr_t>(std::strtoull(fields.back().c_str(), nullptr, 16))});
    }
    return out;
}

}  // namespace liveio
