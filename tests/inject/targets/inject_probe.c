// The library the injection tests load into a running process. Its constructor and destructor
// append a line to the file named by INJECT_PROBE_MARKER (in the target's environment), so a
// test can see each load and unload happen inside the target.
#include <fcntl.h>
#include <pthread.h>
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

// A thread that keeps executing this library's code until told to stop: the unload must not
// unmap the library under it (the target would fault in unmapped code).
static volatile int spinner_stop;
static volatile long spinner_laps;

static void* spin_here(void* unused) {
    (void)unused;
    while (!__atomic_load_n(&spinner_stop, __ATOMIC_ACQUIRE)) __atomic_add_fetch(&spinner_laps, 1, __ATOMIC_RELAXED);
    return NULL;
}

// Starts the spinner (detached: it ends by itself once stopped). Returns 0 or an errno value.
long inject_probe_start_spinner(void) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, spin_here, NULL);
    pthread_attr_destroy(&attr);
    return rc;
}

long inject_probe_spinner_laps(void) { return __atomic_load_n(&spinner_laps, __ATOMIC_RELAXED); }

void inject_probe_stop_spinner(void) { __atomic_store_n(&spinner_stop, 1, __ATOMIC_RELEASE); }
