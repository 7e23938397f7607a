// liveio-io-target: a multi-threaded program that does real I/O continuously and verifies
// every byte and every errno, used as the victim for `liveio run/attach/detach` tests.
//
//   liveio-io-target [--threads N] [--seconds S] [--dir DIR] [--report-ms MS] [--idle]
//
// Threads: N file workers (pread/pwrite/read/write/lseek at random offsets, checked against
// an in-memory shadow of the file), a socketpair echo and a TCP loopback echo (send/recv,
// every echoed byte compared), a fork+exec of /bin/true (exit status checked) and an errno
// checker (EBADF, ESPIPE, ENOTSOCK, and errno left untouched by successful calls).
// Prints "ready" once every worker runs (the file workers have written their file), then a
// "counts ..." line every report interval and a "final ..." line at the end. The first wrong
// byte or errno prints "MISMATCH: ..." on stderr and exits with status 2. Stops on
// SIGTERM/SIGINT or after --seconds; exits 0 when clean.
//
// Waits use poll() with a timeout before recv(), so the workers never sit in a hooked call for
// long. The file and echo workers never wait otherwise: they run at nice 10 (per thread), so
// that they take the CPU nobody else wants, not the CPU of the `liveio` commands and the agent
// thread the tests drive them with, nor that of the tests ctest runs beside. --idle adds what
// servers have: threads blocked in recv() on an idle TCP connection and an idle socketpair and in
// read() on an idle pipe, for the whole run (SIGUSR1 makes them call again, through the hooks
// installed by then); at the end each gets one byte, checked. A detach must not wait for them.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

std::atomic<bool> g_stop{false};
// Workers that have begun their work; "ready" is printed once every one has.
std::atomic<int> g_started{0};
std::atomic<uint64_t> g_file_ops{0}, g_socketpair_ops{0}, g_tcp_ops{0}, g_execs{0},
    g_errno_checks{0};

[[noreturn]] void mismatch(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "MISMATCH: %s\n", buf);
    std::fflush(stderr);
    std::fflush(stdout);
    _exit(2);
}

void fill_random(std::mt19937_64& rng, unsigned char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<unsigned char>(rng());
}

// Busy workers call this first: on Linux the nice value belongs to the calling thread only.
void lower_thread_priority() { setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 10); }

void compare(const unsigned char* got, const unsigned char* want, size_t n, const char* what,
             long where) {
    if (std::memcmp(got, want, n) == 0) return;
    size_t i = 0;
    while (got[i] == want[i]) ++i;
    mismatch("%s: byte %zu at offset %ld is 0x%02x, expected 0x%02x", what, i, where, got[i],
             want[i]);
}

// Full-length transfer expected: regular files and blocking stream sockets of these sizes.
void expect_len(ssize_t got, size_t want, const char* what) {
    if (got != static_cast<ssize_t>(want))
        mismatch("%s returned %zd (errno %d), expected %zu", what, got, errno, want);
}

void file_worker(const std::string& dir, unsigned seed) {
    lower_thread_priority();
    constexpr size_t kSize = 256 * 1024;
    std::string path = dir + "/liveio-io-target-XXXXXX";
    const int fd = mkstemp(path.data());
    if (fd < 0) mismatch("mkstemp in %s: %s", dir.c_str(), strerror(errno));
    unlink(path.c_str());
    std::vector<unsigned char> shadow(kSize), buf(kSize);
    std::mt19937_64 rng(seed);
    fill_random(rng, shadow.data(), kSize);
    expect_len(pwrite(fd, shadow.data(), kSize, 0), kSize, "initial pwrite");
    g_started.fetch_add(1);
    while (!g_stop.load(std::memory_order_relaxed)) {
        const size_t len = 1 + rng() % 8192;
        const off_t off = static_cast<off_t>(rng() % (kSize - len));
        switch (rng() % 4) {
            case 0:  // pwrite new bytes, then the shadow
                fill_random(rng, buf.data(), len);
                expect_len(pwrite(fd, buf.data(), len, off), len, "pwrite");
                std::memcpy(shadow.data() + off, buf.data(), len);
                break;
            case 1:
                expect_len(pread(fd, buf.data(), len, off), len, "pread");
                compare(buf.data(), shadow.data() + off, len, "pread", off);
                break;
            case 2:  // lseek + write
                if (lseek(fd, off, SEEK_SET) != off)
                    mismatch("lseek to %ld failed", static_cast<long>(off));
                fill_random(rng, buf.data(), len);
                expect_len(write(fd, buf.data(), len), len, "write");
                std::memcpy(shadow.data() + off, buf.data(), len);
                if (lseek(fd, 0, SEEK_CUR) != off + static_cast<off_t>(len))
                    mismatch("file position after write is wrong");
                break;
            case 3:  // lseek + read
                if (lseek(fd, off, SEEK_SET) != off)
                    mismatch("lseek to %ld failed", static_cast<long>(off));
                expect_len(read(fd, buf.data(), len), len, "read");
                compare(buf.data(), shadow.data() + off, len, "read", off);
                break;
        }
        g_file_ops.fetch_add(1, std::memory_order_relaxed);
    }
    close(fd);
}

// Receives exactly n bytes, polling so the thread never blocks inside recv() for long.
// Returns false when asked to stop first.
bool recv_exact(int fd, unsigned char* p, size_t n, const char* what) {
    size_t got = 0;
    while (got < n) {
        pollfd pfd{fd, POLLIN, 0};
        const int r = poll(&pfd, 1, 100);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) {
            if (g_stop.load()) return false;
            continue;
        }
        const ssize_t k = recv(fd, p + got, n - got, MSG_DONTWAIT);
        if (k < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (k == 0 && g_stop.load()) return false;
        if (k <= 0) mismatch("%s: recv returned %zd (errno %d)", what, k, errno);
        got += static_cast<size_t>(k);
    }
    return true;
}

void send_exact(int fd, const unsigned char* p, size_t n, const char* what) {
    size_t sent = 0;
    while (sent < n) {
        const ssize_t k = send(fd, p + sent, n - sent, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) mismatch("%s: send returned %zd (errno %d)", what, k, errno);
        sent += static_cast<size_t>(k);
    }
}

// The echo side: returns what it receives, in messages of a size the client announced.
void echo_server(int fd, const char* what) {
    lower_thread_priority();
    g_started.fetch_add(1);
    std::vector<unsigned char> buf(65536);
    while (!g_stop.load(std::memory_order_relaxed)) {
        uint32_t len;
        if (!recv_exact(fd, reinterpret_cast<unsigned char*>(&len), sizeof len, what)) break;
        if (len > buf.size()) mismatch("%s: announced length %u is corrupt", what, len);
        if (!recv_exact(fd, buf.data(), len, what)) break;
        send_exact(fd, buf.data(), len, what);
    }
}

void echo_client(int fd, unsigned seed, std::atomic<uint64_t>& counter, const char* what) {
    lower_thread_priority();
    g_started.fetch_add(1);
    std::mt19937_64 rng(seed);
    std::vector<unsigned char> out(65536), in(65536);
    while (!g_stop.load(std::memory_order_relaxed)) {
        const uint32_t len = 1 + static_cast<uint32_t>(rng() % 16384);
        fill_random(rng, out.data(), len);
        send_exact(fd, reinterpret_cast<const unsigned char*>(&len), sizeof len, what);
        send_exact(fd, out.data(), len, what);
        if (!recv_exact(fd, in.data(), len, what)) break;
        compare(in.data(), out.data(), len, what, 0);
        counter.fetch_add(1, std::memory_order_relaxed);
    }
    shutdown(fd, SHUT_WR);
}

void tcp_pair(int fds[2]) {
    const int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (lfd < 0 || bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        listen(lfd, 1) != 0 || getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &al) != 0)
        mismatch("tcp listen: %s", strerror(errno));
    fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fds[0] < 0 || connect(fds[0], reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
        mismatch("tcp connect: %s", strerror(errno));
    fds[1] = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fds[1] < 0) mismatch("tcp accept: %s", strerror(errno));
    close(lfd);
    const int one = 1;
    setsockopt(fds[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fds[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void exec_worker() {
    g_started.fetch_add(1);
    while (!g_stop.load(std::memory_order_relaxed)) {
        const pid_t pid = fork();
        if (pid < 0) mismatch("fork: %s", strerror(errno));
        if (pid == 0) {
            execl("/bin/true", "true", static_cast<char*>(nullptr));
            _exit(127);
        }
        int status = 0;
        pid_t w;
        while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
        }
        if (w != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            mismatch("/bin/true: waitpid %d, status 0x%x", w, status);
        g_execs.fetch_add(1, std::memory_order_relaxed);
        usleep(20000);
    }
}

void expect_errno(long ret, int want, const char* what) {
    if (ret != -1 || errno != want)
        mismatch("%s returned %ld errno %d (%s), expected -1 errno %d (%s)", what, ret, errno,
                 strerror(errno), want, strerror(want));
}

void errno_worker(const std::string& dir) {
    g_started.fetch_add(1);
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) mismatch("pipe: %s", strerror(errno));
    std::string path = dir + "/liveio-io-target-ro-XXXXXX";
    const int tmp = mkstemp(path.data());
    if (tmp < 0) mismatch("mkstemp: %s", strerror(errno));
    const int ro = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    unlink(path.c_str());
    close(tmp);
    char c = 0;
    while (!g_stop.load(std::memory_order_relaxed)) {
        expect_errno(read(-1, &c, 1), EBADF, "read(-1)");
        expect_errno(pread(pipefd[0], &c, 1, 0), ESPIPE, "pread(pipe)");
        expect_errno(lseek(pipefd[0], 0, SEEK_SET), ESPIPE, "lseek(pipe)");
        expect_errno(write(ro, &c, 1), EBADF, "write(O_RDONLY fd)");
        expect_errno(recv(pipefd[0], &c, 1, MSG_DONTWAIT), ENOTSOCK, "recv(pipe)");
        expect_errno(send(ro, &c, 1, 0), ENOTSOCK, "send(file)");
        // A successful call leaves errno exactly as the caller had it.
        errno = 4242;
        if (write(pipefd[1], "x", 1) != 1 || errno != 4242)
            mismatch("write clobbered errno (%d)", errno);
        errno = 4343;
        if (read(pipefd[0], &c, 1) != 1 || c != 'x' || errno != 4343)
            mismatch("read returned wrong data or clobbered errno (%d)", errno);
        g_errno_checks.fetch_add(1, std::memory_order_relaxed);
        usleep(1000);
    }
    close(ro);
    close(pipefd[0]);
    close(pipefd[1]);
}

// Blocks in recv/read on an idle descriptor. Main writes 'w' there on SIGUSR1 (the thread
// prints "idle-rearm TID" and makes the call again, so that it is made through whatever hooks
// are installed now) and 'q' at the end of the run.
void idle_blocker(int fd, bool socket, const char* what) {
    for (;;) {
        char c = 0;
        ssize_t n;
        do {
            n = socket ? recv(fd, &c, 1, 0) : read(fd, &c, 1);
        } while (n < 0 && errno == EINTR);
        if (n == 1 && c == 'q') return;
        if (n != 1 || c != 'w')
            mismatch("%s: idle call returned %zd (errno %d) byte 0x%02x", what, n, errno, c);
        std::printf("idle-rearm %ld\n", static_cast<long>(gettid()));
        std::fflush(stdout);
    }
}

void print_counts(const char* tag) {
    std::printf(
        "%s file_ops=%llu socketpair_ops=%llu tcp_ops=%llu execs=%llu errno_checks=%llu "
        "mismatches=0\n",
        tag, static_cast<unsigned long long>(g_file_ops.load()),
        static_cast<unsigned long long>(g_socketpair_ops.load()),
        static_cast<unsigned long long>(g_tcp_ops.load()),
        static_cast<unsigned long long>(g_execs.load()),
        static_cast<unsigned long long>(g_errno_checks.load()));
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    int threads = 2;
    double seconds = 0;
    long report_ms = 500;
    std::string dir = "/tmp";
    bool idle = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "liveio-io-target: %s needs a value\n", a.c_str());
                std::exit(64);
            }
            return argv[++i];
        };
        if (a == "--threads")
            threads = std::atoi(value());
        else if (a == "--seconds")
            seconds = std::atof(value());
        else if (a == "--dir")
            dir = value();
        else if (a == "--report-ms")
            report_ms = std::atol(value());
        else if (a == "--idle")
            idle = true;
        else {
            std::fprintf(stderr,
                         "usage: liveio-io-target [--threads N] [--seconds S] [--dir DIR] "
                         "[--report-ms MS] [--idle]\n");
            return 64;
        }
    }
    if (threads < 1 || threads > 64 || report_ms < 1) {
        std::fprintf(stderr, "liveio-io-target: --threads must be 1..64, --report-ms positive\n");
        return 64;
    }
    setvbuf(stdout, nullptr, _IOLBF, 0);

    // Every thread inherits a mask with the stop signals blocked; main collects them.
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGTERM);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGUSR1);  // --idle: rearm the idle calls
    pthread_sigmask(SIG_BLOCK, &stop_set, nullptr);

    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) workers.emplace_back(file_worker, dir, 1000u + t);
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0)
        mismatch("socketpair: %s", strerror(errno));
    workers.emplace_back(echo_server, sp[1], "socketpair echo");
    workers.emplace_back(echo_client, sp[0], 77u, std::ref(g_socketpair_ops), "socketpair echo");
    int tcp[2];
    tcp_pair(tcp);
    workers.emplace_back(echo_server, tcp[1], "tcp echo");
    workers.emplace_back(echo_client, tcp[0], 78u, std::ref(g_tcp_ops), "tcp echo");
    workers.emplace_back(exec_worker);
    workers.emplace_back(errno_worker, dir);
    // Started workers, the idle blockers aside (they block from the start by design).
    const int counted = static_cast<int>(workers.size());
    int idle_tcp[2] = {-1, -1}, idle_sp[2] = {-1, -1}, idle_pipe[2] = {-1, -1};
    if (idle) {
        tcp_pair(idle_tcp);
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, idle_sp) != 0 ||
            pipe2(idle_pipe, O_CLOEXEC) != 0)
            mismatch("idle descriptors: %s", strerror(errno));
        workers.emplace_back(idle_blocker, idle_tcp[0], true, "idle tcp recv");
        workers.emplace_back(idle_blocker, idle_sp[0], true, "idle socketpair recv");
        workers.emplace_back(idle_blocker, idle_pipe[0], false, "idle pipe read");
    }
    // "ready" means every worker runs: the file workers have written their file once (at nice
    // 10 on a busy machine a worker may not have run at all yet when main gets here).
    while (g_started.load() < counted) usleep(1000);
    std::printf("ready pid=%d threads=%zu\n", getpid(), workers.size() + 1);
    std::fflush(stdout);

    // Signals from a ptrace attach or an in-process world stop interrupt sigtimedwait early;
    // reports follow a deadline so they stay periodic whatever interrupts the wait.
    auto now_ms = [] {
        timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
    };
    const long start = now_ms();
    const long end = seconds > 0 ? start + static_cast<long>(seconds * 1000) : -1;
    long next_report = start + report_ms;
    for (;;) {
        const long wake = end >= 0 ? std::min(next_report, end) : next_report;
        const long wait_ms = std::max(0L, wake - now_ms());
        timespec wait{wait_ms / 1000, (wait_ms % 1000) * 1000000};
        const int sig = sigtimedwait(&stop_set, nullptr, &wait);
        if (sig == SIGTERM || sig == SIGINT) break;
        if (sig == SIGUSR1 && idle) {
            for (int fd : {idle_tcp[1], idle_sp[1], idle_pipe[1]})
                if (write(fd, "w", 1) != 1)
                    mismatch("rearming an idle thread: %s", strerror(errno));
        }
        const long now = now_ms();
        if (now >= next_report) {
            print_counts("counts");
            next_report = now + report_ms;
        }
        if (end >= 0 && now >= end) break;
    }
    g_stop.store(true);
    if (idle) {
        for (int fd : {idle_tcp[1], idle_sp[1], idle_pipe[1]})
            if (write(fd, "q", 1) != 1) mismatch("waking an idle thread: %s", strerror(errno));
    }
    for (auto& w : workers) w.join();
    print_counts("final");
    return 0;
}
