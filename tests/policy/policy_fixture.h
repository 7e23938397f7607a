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
    static char pattern(uint32_t seed, uint64_t i) { return static_cast<char>((i * 131 + seed * 7 + (i >> 12)) & 0xff); }
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

// The test policy object (tests/policy/bpf/policy_test.bpf.c) loaded with the policy helpers
// and switched on in `rt`.
struct TestPolicy {
    ebpf::Object object;
    std::unique_ptr<ebpf::Runtime> services;
    std::unique_ptr<ebpf::Executable> on_read, on_complete;
    uint8_t slot = 0;

    static std::unique_ptr<TestPolicy> enable(Runtime& rt, std::vector<uint64_t> knobs) {
        auto tp = std::make_unique<TestPolicy>();
        auto obj = ebpf::Object::open(std::string(LIVEIO_POLICY_TEST_BPF_DIR) + "/policy_test.bpf.o");
        if (!obj) {
            ADD_FAILURE() << obj.error().message;
            return nullptr;
        }
        tp->object = std::move(obj).value();
        ebpf::HelperTable helpers = ebpf::HelperTable::standard();
        if (auto r = Runtime::add_helpers(helpers); !r) {
            ADD_FAILURE() << r.error().message;
            return nullptr;
        }
        tp->services = ebpf::Runtime::create().value();
        auto load = [&](const char* name) -> std::unique_ptr<ebpf::Executable> {
            auto exe = ebpf::Executable::load(tp->object.program(name).value(), helpers, ebpf::Engine::Jit);
            if (!exe) {
                ADD_FAILURE() << exe.error().message;
                return nullptr;
            }
            return std::move(exe).value();
        };
        tp->on_read = load("on_read");
        tp->on_complete = load("on_complete");
        if (!tp->on_read || !tp->on_complete) return nullptr;
        Runtime::PolicySpec spec;
        spec.name = "test";
        for (auto& p : tp->object.programs()) spec.programs.push_back(p.get());
        spec.completion = tp->on_complete.get();
        spec.services = tp->services.get();
        spec.knobs = std::move(knobs);
        auto slot = rt.enable(std::move(spec));
        if (!slot) {
            ADD_FAILURE() << slot.error().message;
            return nullptr;
        }
        tp->slot = *slot;
        return tp;
    }

    // Runs on_read as the agent does at the exit of a read of `fd` that returned `result`.
    int64_t read_exit(int fd, int64_t result) {
        liveio_io_ctx io{};
        io.size = sizeof io;
        io.tid = static_cast<uint32_t>(::gettid());
        io.nr = 0;
        io.fd = fd;
        io.offset = -1;
        io.count = result > 0 ? static_cast<uint64_t>(result) : 0;
        io.result = result;
        io.file_id = file_id_of(fd);
        io.file_class = LIVEIO_CLASS_FILE;
        io.direction = LIVEIO_IO_READ;
        ebpf::ExecEnv env = services->make_env();
        on_read->run(env, reinterpret_cast<uint64_t>(&io), sizeof io);
        return rc(0);
    }
    int64_t rc(uint32_t i) {
        int64_t v = 0;
        object.map("rc")->copy_value(&i, &v);
        return v;
    }
    uint64_t seen(uint32_t cookie) {
        uint64_t v = 0;
        object.map("seen")->copy_value(&cookie, &v);
        return v;
    }
};

inline std::unique_ptr<Runtime> make_runtime(uint64_t budget = uint64_t{64} << 20) {
    Runtime::Options o;
    o.worker.budget_bytes = budget;
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

    PolicyOnFile(uint64_t size, uint32_t seed, std::vector<uint64_t> knobs, uint64_t budget = uint64_t{64} << 20) {
        file.write_pattern(size, seed);
        rt = make_runtime(budget);
        if (rt) tp = TestPolicy::enable(*rt, std::move(knobs));
    }
    // False when a part failed (the failure is recorded).
    bool ok() const { return rt && tp && !::testing::Test::HasFatalFailure(); }
};

}  // namespace liveio::policy::testing
