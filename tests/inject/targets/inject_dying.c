// A library whose constructor makes the process it is loaded into die, for the tests of an
// injection whose target dies during the injected call. INJECT_DYING_MODE (in the target's
// environment) says how:
//   exit          the call's thread calls exit_group(3)
//   abort         the call's thread calls abort()
//   abort-thread  another thread calls abort() while the call's thread waits in the constructor
//   kill-thread   another thread SIGKILLs the process while the call's thread waits
// Before that the constructor appends "ctor PID TID" to the file named by INJECT_PROBE_MARKER,
// so a test can tell which thread ran the call.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void mark_call_thread(void) {
    const char* path = getenv("INJECT_PROBE_MARKER");
    if (!path) return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    char line[64];
    int n = snprintf(line, sizeof line, "ctor %d %d\n", (int)getpid(), (int)gettid());
    if (write(fd, line, (size_t)n) != n) { /* the test notices the missing line */
    }
    close(fd);
}

static void* abort_now(void* unused) {
    (void)unused;
    abort();
}

static void* kill_now(void* unused) {
    (void)unused;
    kill(getpid(), SIGKILL);
    return NULL;
}

__attribute__((constructor)) static void on_load(void) {
    mark_call_thread();
    const char* mode = getenv("INJECT_DYING_MODE");
    if (!mode) return;
    if (strcmp(mode, "exit") == 0) syscall(SYS_exit_group, 3);
    if (strcmp(mode, "abort") == 0) abort();
    void* (*other)(void*) = strcmp(mode, "abort-thread") == 0  ? abort_now
                            : strcmp(mode, "kill-thread") == 0 ? kill_now
                                                               : NULL;
    if (!other) return;
    pthread_t t;
    if (pthread_create(&t, NULL, other, NULL) != 0) return;
    for (;;) pause();  // the process dies by the other thread's hand
}
