// liveio-observe-target: a workload with exactly known I/O counts for the observing commands'
// tests. Prints "ready" and then, for every SIGUSR1 it receives, runs one batch on a private
// temporary file: --calls pwrite64 calls then --calls pread64 calls of --size bytes each (at
// distinct offsets, every read checked), and prints "batch K done". Exits 0 on SIGTERM.
//
//   liveio-observe-target [--calls N] [--size BYTES] [--dir DIR]
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    long calls = 100, size = 4096;
    std::string dir = "/tmp";
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string opt = argv[i];
        if (opt == "--calls")
            calls = std::atol(argv[i + 1]);
        else if (opt == "--size")
            size = std::atol(argv[i + 1]);
        else if (opt == "--dir")
            dir = argv[i + 1];
        else {
            std::fprintf(stderr, "unknown option %s\n", opt.c_str());
            return 64;
        }
    }
    if (calls <= 0 || size <= 0) {
        std::fprintf(stderr, "--calls and --size must be positive\n");
        return 64;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, nullptr);

    std::string path = dir + "/liveio-observe-target-XXXXXX";
    const int fd = mkstemp(path.data());
    if (fd < 0) {
        std::fprintf(stderr, "mkstemp in %s: %s\n", dir.c_str(), std::strerror(errno));
        return 1;
    }
    unlink(path.c_str());
    std::vector<char> out(static_cast<size_t>(size)), in(static_cast<size_t>(size));
    std::printf("ready\n");
    std::fflush(stdout);
    for (int batch = 1;; ++batch) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) return 1;
        if (sig != SIGUSR1) break;
        for (long i = 0; i < calls; ++i) {
            std::memset(out.data(), static_cast<int>('a' + (i + batch) % 26), out.size());
            if (pwrite(fd, out.data(), out.size(), i * size) != size) {
                std::fprintf(stderr, "pwrite: %s\n", std::strerror(errno));
                return 2;
            }
        }
        for (long i = 0; i < calls; ++i) {
            if (pread(fd, in.data(), in.size(), i * size) != size ||
                in[0] != static_cast<char>('a' + (i + batch) % 26)) {
                std::fprintf(stderr, "pread at %ld: wrong size or data\n", i * size);
                return 2;
            }
        }
        std::printf("batch %d done\n", batch);
        std::fflush(stdout);
    }
    close(fd);
    return 0;
}
