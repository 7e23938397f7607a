// A process for the injection tests to attach to while it keeps doing verified I/O.
//
//   inject_target PIPE_PAIRS FILE_THREADS [spin|churn|join]
//
// Each pipe pair is a writer thread streaming a known byte sequence and a reader thread that
// verifies every byte; each file thread pwrite()s a block to a private temporary file and
// pread()s it back. With "spin" the main thread runs a register-resident integer/floating-point
// loop that checks its own invariants (so a clobbered register or SSE state is caught) and a
// helper thread serves stdin; otherwise the main thread serves stdin itself, mostly blocked in
// read() on the pipe, which must never fail with EINTR.
//
// With "join" a helper thread serves stdin and the main thread waits for it in pthread_join (libc
// internals: the injected call then runs on another thread than the main one).
//
// With "churn" a thread keeps creating short-lived threads (each does one pipe round trip and
// ends). Every SIGRTMIN (SA_RESTART handler) is counted, so a test can check that none of the
// signals it queued during an injection was lost.
//
// Commands on stdin, one per line: "status" answers "ok VERIFIED_BYTES ERRORS SIGNALS THREADS"
// (SIGRTMIN received, churned threads ended), "quit" exits.
// Any I/O error, EINTR, short transfer or wrong byte is counted in ERRORS and described on stderr.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

std::atomic<uint64_t> verified{0};
std::atomic<uint64_t> errors{0};
std::atomic<uint64_t> signals_received{0};
std::atomic<uint64_t> threads_ended{0};

uint8_t pattern(uint64_t stream, uint64_t offset) {
    uint64_t x = (stream + 1) * 0x9e3779b97f4a7c15ull ^ offset * 0xbf58476d1ce4e5b9ull;
    return static_cast<uint8_t>(x ^ (x >> 29) ^ (x >> 47));
}

void fail(const char* what, long value) {
    errors.fetch_add(1);
    fprintf(stderr, "inject_target: %s (%ld, errno %s)\n", what, value, strerror(errno));
}

void pipe_writer(int fd, uint64_t stream) {
    uint8_t buf[3000];
    for (uint64_t off = 0;;) {
        for (size_t i = 0; i < sizeof buf; ++i) buf[i] = pattern(stream, off + i);
        ssize_t n = write(fd, buf, sizeof buf);
        if (n <= 0) return fail("pipe write failed", n);
        off += static_cast<uint64_t>(n);
        if (static_cast<size_t>(n) != sizeof buf) return fail("short pipe write", n);
    }
}

void pipe_reader(int fd, uint64_t stream) {
    uint8_t buf[4096];
    for (uint64_t off = 0;;) {
        ssize_t n = read(fd, buf, sizeof buf);  // partial reads are normal for pipes
        if (n <= 0) return fail("pipe read failed", n);
        for (ssize_t i = 0; i < n; ++i)
            if (buf[i] != pattern(stream, off + i))
                return fail("wrong byte from pipe at offset", static_cast<long>(off + i));
        off += static_cast<uint64_t>(n);
        verified.fetch_add(static_cast<uint64_t>(n));
    }
}

void file_worker(uint64_t stream) {
    int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) return fail("O_TMPFILE open failed", fd);
    uint8_t out[8192], in[8192];
    for (uint64_t round = 0;; ++round) {
        off_t at = static_cast<off_t>((round % 64) * sizeof out);
        for (size_t i = 0; i < sizeof out; ++i) out[i] = pattern(stream, round * sizeof out + i);
        ssize_t n = pwrite(fd, out, sizeof out, at);
        if (n != static_cast<ssize_t>(sizeof out)) return fail("pwrite failed or short", n);
        n = pread(fd, in, sizeof in, at);
        if (n != static_cast<ssize_t>(sizeof in)) return fail("pread failed or short", n);
        if (memcmp(in, out, sizeof in) != 0)
            return fail("wrong bytes read back from file, round", static_cast<long>(round));
        verified.fetch_add(sizeof in);
    }
}

// Integer and floating-point state kept in registers across iterations; any change made from
// outside that is not undone breaks the invariant.
[[noreturn]] void spin() {
    uint64_t i = 0;
    double x = 0.0, y = 1.0;
    for (;;) {
        ++i;
        x += 1.0;
        y *= 1.0000001;
        if (static_cast<double>(i) != x || !(y >= 1.0)) {
            fprintf(stderr, "inject_target: register state corrupted at iteration %llu\n",
                    (unsigned long long)i);
            _exit(3);
        }
        if ((i & 0xfffff) == 0) {
            verified.fetch_add(1);
            asm volatile("" ::: "memory");
        }
        if (i == (1ull << 52)) i = 0, x = 0.0;
    }
}

void count_signal(int) { signals_received.fetch_add(1, std::memory_order_relaxed); }

// Creates threads one after the other, each passing one byte through a pipe before it ends.
void churn() {
    for (uint64_t i = 0;; ++i) {
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) != 0) {
            fail("churn pipe", -1);
            return;
        }
        std::thread t([&] {
            char c = static_cast<char>(i);
            if (write(fds[1], &c, 1) != 1) fail("churn write", -1);
        });
        char got = 0;
        ssize_t n = read(fds[0], &got, 1);
        if (n != 1 || got != static_cast<char>(i)) fail("churn read", n);
        t.join();
        close(fds[0]);
        close(fds[1]);
        threads_ended.fetch_add(1, std::memory_order_relaxed);
    }
}

// Serves stdin with raw read(): EINTR here means an interrupted call was not restarted.
void serve() {
    std::string line;
    for (;;) {
        char c;
        ssize_t n = read(0, &c, 1);
        if (n < 0) {
            fail("stdin read failed", n);
            _exit(2);
        }
        if (n == 0) _exit(0);
        if (c != '\n') {
            line += c;
            continue;
        }
        if (line == "quit") _exit(0);
        if (line == "status") {
            char reply[128];
            int len =
                snprintf(reply, sizeof reply, "ok %llu %llu %llu %llu\n",
                         (unsigned long long)verified.load(), (unsigned long long)errors.load(),
                         (unsigned long long)signals_received.load(),
                         (unsigned long long)threads_ended.load());
            if (write(1, reply, static_cast<size_t>(len)) != len) _exit(4);
        }
        line.clear();
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PIPE_PAIRS FILE_THREADS [spin]\n", argv[0]);
        return 64;
    }
    int pairs = atoi(argv[1]), files = atoi(argv[2]);
    bool spinning = argc > 3 && strcmp(argv[3], "spin") == 0;
    bool churning = argc > 3 && strcmp(argv[3], "churn") == 0;
    bool joining = argc > 3 && strcmp(argv[3], "join") == 0;
    struct sigaction sa = {};
    sa.sa_handler = count_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGRTMIN, &sa, nullptr) != 0) return 6;
    std::vector<std::thread> threads;
    if (churning) threads.emplace_back(churn);
    for (int p = 0; p < pairs; ++p) {
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) != 0) return 5;
        threads.emplace_back(pipe_writer, fds[1], p);
        threads.emplace_back(pipe_reader, fds[0], p);
    }
    for (int f = 0; f < files; ++f) threads.emplace_back(file_worker, 1000 + f);
    if (write(1, "ready\n", 6) != 6) return 4;
    if (spinning) {
        threads.emplace_back(serve);
        spin();
    }
    if (joining) {
        std::thread server(serve);
        server.join();  // serve() exits the process
    }
    serve();
}
