// Processes and their threads as /proc shows them: used from outside (the injector stopping
// every thread, the CLI's detach diagnostic, the CLI and cluster harness asking whether a
// process still runs) and from inside (syscall rewriting looking for threads asleep in its
// dispatch code, pid = getpid()).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/types.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "base/raw_syscall.h"

namespace liveio {

// The state letter of `pid` in /proc/PID/stat ('R', 'S', 'D', 'Z', ...), 0 when there is no
// such process. The state follows the last ')': the command name may hold parentheses.
inline char process_state(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) return 0;
    const size_t paren = line.rfind(')');
    return paren != std::string::npos && paren + 2 < line.size() ? line[paren + 2] : 0;
}

// Exists and is neither a zombie nor dead: a zombie is gone for every purpose but its
// parent's wait (an orphan's zombie waits for whoever adopted it to reap it).
inline bool process_running(pid_t pid) {
    const char state = process_state(pid);
    return state != 0 && state != 'Z' && state != 'X';
}

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

// Whether thread `tid` of `pid` is an io_uring worker (io-wq "iou-wrk-N", SQPOLL "iou-sqp-N":
// PF_IO_WORKER in /proc/PID/task/TID/stat): a kernel thread inside the thread group that runs
// no user code, takes no signal and refuses ptrace, so a stop of every thread must skip it.
// Raw system calls into fixed buffers: usable inside the target while other threads are parked.
inline bool is_io_uring_worker(pid_t pid, pid_t tid) {
    constexpr unsigned long kPfIoWorker = 0x10;
    char path[64] = "/proc/";
    size_t len = 6;
    auto put_num = [&](long v) {
        char digits[20];
        int n = 0;
        do digits[n++] = static_cast<char>('0' + v % 10), v /= 10;
        while (v > 0 && n < 19);
        while (n > 0) path[len++] = digits[--n];
    };
    put_num(pid);
    for (const char* t = "/task/"; *t; ++t) path[len++] = *t;
    put_num(tid);
    for (const char* t = "/stat"; *t; ++t) path[len++] = *t;
    path[len] = 0;
    char stat[1024];
    const long fd = raw_syscall(SYS_open, reinterpret_cast<long>(path), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    const long got = raw_syscall(SYS_read, fd, reinterpret_cast<long>(stat), sizeof stat - 1);
    raw_syscall(SYS_close, fd);
    if (got <= 0) return false;
    stat[got] = 0;
    // "pid (comm) state ppid pgrp session tty_nr tpgid flags ...": comm may hold spaces and
    // parentheses, so fields are counted after the last ')'.
    const char* p = nullptr;
    for (const char* c = stat; *c; ++c)
        if (*c == ')') p = c;
    if (p == nullptr) return false;
    for (int field = 2; field < 9 && *p; ++p)
        if (*p == ' ') ++field;
    unsigned long flags = 0;
    for (; *p >= '0' && *p <= '9'; ++p) flags = flags * 10 + static_cast<unsigned long>(*p - '0');
    return (flags & kPfIoWorker) != 0;
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
        std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) +
                         "/syscall");
        std::vector<std::string> fields;
        for (std::string f; in >> f;) fields.push_back(f);
        if (fields.size() < 3 || fields[0] == "running" || fields[0] == "-1") continue;
        out.push_back({tid, std::strtol(fields[0].c_str(), nullptr, 10),
                       static_cast<uintptr_t>(std::strtoull(fields.back().c_str(), nullptr, 16))});
    }
    return out;
}

}  // namespace liveio
