// The library the injection tests load into a running process. Its constructor and destructor
// append a line to the file named by INJECT_PROBE_MARKER (in the target's environment), so a
// test can see each load and unload happen inside the target.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void mark(const char* what) {
    const char* path = getenv("INJECT_PROBE_MARKER");
    if (!path) return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    char line[64];
    int n = snprintf(line, sizeof line, "%s %d\n", what, (int)getpid());
    if (write(fd, line, (size_t)n) != n) { /* the test notices the missing line */ }
    close(fd);
}

__attribute__((constructor)) static void on_load(void) { mark("load"); }
__attribute__((destructor)) static void on_unload(void) { mark("unload"); }

// Weighted so that every argument register must arrive in its place.
long inject_probe_weigh(long a, long b, long c, long d, long e, long f) {
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f;
}

// Reads the process id where the call runs, to prove it ran inside the target.
long inject_probe_pid(void) { return (long)getpid(); }
