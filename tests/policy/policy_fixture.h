// Shared pieces of the policy tests: temporary files with known contents, the test policy's
// BPF object loaded with the policy helpers, and running its io_exit program the way the
// agent does at a read's exit edge.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "ebpf/loader.h"
#include "ebpf/runtime.h"
#include "ebpf/vm.h"
#include "liveio/policy.h"
#include "policy/runtime.h"

namespace liveio::policy::testing {

// A file in a fresh temporary directory, removed with it.
class TempFile {
public:
    explicit TempFile(const std::string& name = "data.bin") {
        char tmpl[] = "/tmp/liveio-policy-XXXXXX";
        dir_ = ::mkdtemp(tmpl);
        path_ = dir_ + "/" + name;
    }
    ~TempFile() {
        ::unlink(path_.c_str());
        ::rmdir(dir_.c_str());
    }
    const std::string& path() const { return path_; }
    // Byte i of the pattern file is pattern(seed, i).
    static char pattern(uint32_t seed, uint64_t i) {
        return static_cast<char>((i * 131 + seed * 7 + (i >> 12)) & 0xff);
    }
    void write_pattern(uint64_t size, uint32_t seed) const {
        std::string data(size, '\0');
        for (uint64_t i = 0; i < size; ++i) data[i] = pattern(seed, i);
        const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
        ::close(fd);
    }

private:
    std::string dir_, path_;
};

inline uint64_t file_id_of(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return 0;
    return (static_cast<uint64_t>(st.st_dev) << 32) ^ static_cast<uint64_t>(st.st_ino);
}

// The liveio_io_ctx the agent hands to io_exit programs of call `nr` (0: read) on `fd` by
// this thread that asked for `count` bytes and returned `result`.
inline liveio_io_ctx io_exit_ctx(long nr, int fd, uint64_t count, int64_t result,
                                 uint32_t file_class) {
    liveio_io_ctx io{};
    io.size = sizeof io;
    io.tid = static_cast<uint32_t>(::gettid());
    io.nr = static_cast<uint64_t>(nr);
    io.fd = fd;
    io.offset = -1;
    io.count = count;
    io.result = result;
    io.file_id = file_id_of(fd);
    io.file_class = file_class;
    io.direction = nr == 0 ? LIVEIO_IO_READ : LIVEIO_IO_OTHER;
    return io;
}

// A policy's BPF object loaded with the policy helpers, the named programs JIT-compiled, and
// switched on in a Runtime as the agent's PolicyHost does (`completion`: the program of
// liveio/io_complete, or null).
struct LoadedPolicy {
    ebpf::Object object;
    std::unique_ptr<ebpf::Runtime> services;
    std::vector<std::unique_ptr<ebpf::Executable>> exes;  // in the order of `names`
    uint8_t slot = 0;

    bool load(const std::string& path, const std::vector<std::string>& names) {
        auto obj = ebpf::Object::open(path);
        if (!obj) {
            ADD_FAILURE() << obj.error().message;
            return false;
        }
        object = std::move(obj).value();
        ebpf::HelperTable helpers = ebpf::HelperTable::standard();
        if (auto r = Runtime::add_helpers(helpers); !r) {
            ADD_FAILURE() << r.error().message;
            return false;
        }
        services = ebpf::Runtime::create().value();
        for (const std::string& name : names) {
            auto exe =
                ebpf::Executable::load(object.program(name).value(), helpers, ebpf::Engine::Jit);
            if (!exe) {
                ADD_FAILURE() << name << ": " << exe.error().message;
                return false;
            }
            exes.push_back(std::move(exe).value());
        }
        return true;
    }
    bool enable(Runtime& rt, const std::string& name, const ebpf::Executable* completion,
                std::vector<uint64_t> knobs) {
        Runtime::PolicySpec spec;
        spec.name = name;
        for (auto& p : object.programs()) spec.programs.push_back(p.get());
        spec.completion = completion;
        spec.services = services.get();
        spec.knobs = std::move(knobs);
        auto s = rt.enable(std::move(spec));
        if (!s) {
            ADD_FAILURE() << s.error().message;
            return false;
        }
        slot = *s;
        return true;
    }
    void run(ebpf::Executable& exe, liveio_io_ctx& io) {
        ebpf::ExecEnv env = services->make_env();
        exe.run(env, reinterpret_cast<uint64_t>(&io), sizeof io);
    }
    uint64_t u64(const char* map, uint32_t i) {
        uint64_t v = 0;
        object.map(map)->copy_value(&i, &v);
        return v;
    }
};

// The test policy object (tests/policy/bpf/policy_test.bpf.c) loaded with the policy helpers
// and switched on in `rt`.
struct TestPolicy : LoadedPolicy {
    ebpf::Executable* on_read = nullptr;
    ebpf::Executable* on_complete = nullptr;

    static std::unique_ptr<TestPolicy> enable(Runtime& rt, std::vector<uint64_t> knobs) {
        auto tp = std::make_unique<TestPolicy>();
        if (!tp->load(std::string(LIVEIO_POLICY_TEST_BPF_DIR) + "/policy_test.bpf.o",
                      {"on_read", "on_complete"}))
            return nullptr;
        tp->on_read = tp->exes[0].get();
        tp->on_complete = tp->exes[1].get();
        if (!tp->LoadedPolicy::enable(rt, "test", tp->on_complete, std::move(knobs)))
            return nullptr;
        return tp;
    }

    // Runs on_read as the agent does at the exit of a read of `fd` that returned `result`.
    int64_t read_exit(int fd, int64_t result) {
        liveio_io_ctx io = io_exit_ctx(0, fd, result > 0 ? static_cast<uint64_t>(result) : 0,
                                       result, LIVEIO_CLASS_FILE);
        run(*on_read, io);
        return rc(0);
    }
    int64_t rc(uint32_t i) { return static_cast<int64_t>(u64("rc", i)); }
    uint64_t seen(uint32_t cookie) { return u64("seen", cookie); }
};

// `history`: the Part actions' history of readers, kept beyond the runtime (null: its own).
inline std::unique_ptr<Runtime> make_runtime(uint64_t budget = uint64_t{64} << 20,
                                             PartHistory* history = nullptr) {
    Runtime::Options o;
    o.worker.budget_bytes = budget;
    o.worker.part_history = history;
    auto rt = Runtime::create(o);
    if (!rt) {
        ADD_FAILURE() << rt.error().message;
        return nullptr;
    }
    return std::move(rt).value();
}

// The setup most policy tests share: a file of `size` bytes of pattern `seed`, the runtime
// (with `budget`) and the test policy switched on in it with `knobs`. Tests bind the parts:
//   PolicyOnFile s(1 << 20, 1, {1, 0, 4096});
//   ASSERT_TRUE(s.ok());
//   auto& [f, rt, tp] = s;
struct PolicyOnFile {
    TempFile file;
    std::unique_ptr<Runtime> rt;
    std::unique_ptr<TestPolicy> tp;  // destroyed before the runtime it is switched on in

    PolicyOnFile(uint64_t size, uint32_t seed, std::vector<uint64_t> knobs,
                 uint64_t budget = uint64_t{64} << 20) {
        file.write_pattern(size, seed);
        rt = make_runtime(budget);
        if (rt) tp = TestPolicy::enable(*rt, std::move(knobs));
    }
    // False when a part failed (the failure is recorded).
    bool ok() const { return rt && tp && !::testing::Test::HasFatalFailure(); }
};

}  // namespace liveio::policy::testing
