// liveio-agent.so is dlopen'ed into processes that are already running. Its initial-exec TLS
// (the hooks must not reach __tls_get_addr, which can malloc) has to fit glibc's static TLS
// surplus, which is small and shared with every other library loaded later: glibc 2.36 gives
// 512 bytes of optional static TLS by default (glibc.rtld.optional_static_tls) on top of a
// reserve for libc's own modules. A library over budget makes `liveio attach` fail with
// "cannot allocate memory in static TLS block" on every process not started with a larger
// tunable — which no test using GLIBC_TUNABLES would notice. This checks the budget itself
// and dlopens the library in a child started without any tunable.
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include <gtest/gtest.h>

namespace {

constexpr uint64_t kTlsBudget = 512;

// memsz of the PT_TLS segment, 0 without one; -1 when the file is not a 64-bit ELF.
int64_t tls_size(const char* path) {
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st {};
    fstat(fd, &st);
    void* map = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return -1;
    const auto* base = static_cast<const unsigned char*>(map);
    int64_t size = -1;
    const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
    if (static_cast<size_t>(st.st_size) >= sizeof(Elf64_Ehdr) &&
        memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64 &&
        eh->e_phoff + uint64_t{eh->e_phnum} * sizeof(Elf64_Phdr) <=
            static_cast<uint64_t>(st.st_size)) {
        size = 0;
        const auto* ph = reinterpret_cast<const Elf64_Phdr*>(base + eh->e_phoff);
        for (int i = 0; i < eh->e_phnum; ++i)
            if (ph[i].p_type == PT_TLS) size = static_cast<int64_t>(ph[i].p_memsz);
    }
    munmap(map, static_cast<size_t>(st.st_size));
    return size;
}

TEST(AgentTls, InitialExecTlsFitsGlibcsOptionalStaticTls) {
    const int64_t size = tls_size(LIVEIO_AGENT_PATH);
    ASSERT_GE(size, 0) << "cannot read the ELF headers of " << LIVEIO_AGENT_PATH;
    EXPECT_LE(static_cast<uint64_t>(size), kTlsBudget)
        << "liveio-agent.so has " << size << " bytes of TLS: thread_locals of the hook/agent code "
        << "are initial-exec and must stay small (allocate per-thread blocks lazily instead)";
}

TEST(AgentTls, DlopenSucceedsInAProcessWithoutTunables) {
    // A fresh process image: the test binary itself may have been started with a tunable.
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        char* const argv[] = {const_cast<char*>("/proc/self/exe"),
                              const_cast<char*>("--gtest_filter=AgentTls.DlopenInThisProcess"),
                              nullptr};
        char* const envp[] = {const_cast<char*>("LIVEIO_TLS_PROBE=1"), nullptr};
        execve("/proc/self/exe", argv, envp);
        _exit(127);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status);
    EXPECT_EQ(WEXITSTATUS(status), 0) << "dlopen of liveio-agent.so failed in a process started "
                                         "without GLIBC_TUNABLES (see the child's output above)";
}

// Runs only inside the child above (its environment has no GLIBC_TUNABLES).
TEST(AgentTls, DlopenInThisProcess) {
    if (getenv("LIVEIO_TLS_PROBE") == nullptr)
        GTEST_SKIP() << "runs as the child of DlopenSucceedsInAProcessWithoutTunables";
    // The constructor starts the control thread and installs nothing (no LIVEIO_AGENT_RUN).
    void* handle = dlopen(LIVEIO_AGENT_PATH, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(handle, nullptr) << dlerror();
}

}  // namespace
