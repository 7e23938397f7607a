// A child process of the observe tests, with stdout and stderr in separate files, killed if
// still running when it goes out of scope.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "agent/process_util.h"

namespace liveio::observe::testing_util {

using agent::testing::read_file;
using agent::testing::temp_path;
using agent::testing::wait_exit;

class Child {
public:
    // `env`: NAME=VALUE entries added to the inherited environment.
    explicit Child(const std::vector<std::string>& argv, const std::vector<std::string>& env = {})
        : out_(temp_path("out")), err_(temp_path("err")) {
        pid_ = ::fork();
        if (pid_ == 0) {
            for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
            if (!std::freopen(out_.c_str(), "w", stdout) ||
                !std::freopen(err_.c_str(), "w", stderr))
                ::_exit(120);
            std::vector<char*> args;
            for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
            args.push_back(nullptr);
            ::execv(args[0], args.data());
            ::_exit(127);
        }
    }
    ~Child() {
        if (status_ < 0 && pid_ > 0) {
            ::kill(pid_, SIGKILL);
            wait_exit(pid_);
        }
        ::unlink(out_.c_str());
        ::unlink(err_.c_str());
    }
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;

    pid_t pid() const { return pid_; }
    std::string out() const { return read_file(out_); }
    std::string err() const { return read_file(err_); }
    int wait() {
        if (status_ < 0) status_ = wait_exit(pid_);
        return status_;
    }
    bool exited() {
        if (status_ >= 0) return true;
        int st;
        if (::waitpid(pid_, &st, WNOHANG) != pid_) return false;
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return true;
    }
    void signal(int sig) { ::kill(pid_, sig); }

private:
    std::string out_, err_;
    pid_t pid_ = -1;
    int status_ = -1;
};

}  // namespace liveio::observe::testing_util
