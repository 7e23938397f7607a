// `liveio policy PID list|on NAME [KEY=VALUE...]|off NAME|set NAME KEY=VALUE`: the
// acceleration policies of a running process (agent/policy_host.h).
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/policy_ops.h"
#include "control/protocol.h"
#include "observe/bpf_client.h"

namespace liveio::cli {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "liveio: %s\n", message.c_str());
    throw CLI::RuntimeError(1);
}

std::string mib(uint64_t bytes) {
    return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20));
}

json call(pid_t pid, const std::string& cmd, json args) {
    auto client = control::ControlClient::connect(pid);
    if (!client)
        fail(fmt::format("process {}: {} (liveio attach {} first)", pid, client.error().message,
                         pid));
    auto r = client->call(cmd, std::move(args), 60000);
    if (!r) fail(fmt::format("{} in {}: {}", cmd, pid, r.error().message));
    return std::move(r).value();
}

json check_on(pid_t pid, const std::string& name, const std::vector<std::string>& settings);

void cmd_policy(pid_t pid, const std::vector<std::string>& words) {
    if (words.empty())
        fail("policy: expected list | on NAME [KEY=VALUE...] | off NAME | set NAME KEY=VALUE");
    const std::string& verb = words[0];
    if (verb == "list") {
        const json l = call(pid, "policy.list", json::object());
        for (auto& p : l["policies"]) {
            std::string knobs;
            for (auto& [k, v] : p["knobs"].items())
                knobs += fmt::format("{}{}={}", knobs.empty() ? "" : " ", k, v.dump());
            std::printf("%-10s %-4s %s\n           knobs: %s\n",
                        p["name"].get<std::string>().c_str(), p.value("on", false) ? "on" : "off",
                        p.value("summary", std::string()).c_str(), knobs.c_str());
        }
        print_policies(l);
        return;
    }
    if (words.size() < 2) fail("policy " + verb + ": expected a policy name");
    const std::string& name = words[1];
    if (verb == "on") {
        const json r =
            check_on(pid, name, std::vector<std::string>(words.begin() + 2, words.end()));
        (void)r;
        return;
    }
    if (verb == "off") {
        const json r = call(pid, "policy.off", {{"name", name}});
        const json f = r.value("final", json::object());
        // Counted after the drain: issued = used + wasted (pending is 0 unless the drain
        // failed); "still cached" is the part of the wasted bytes left in the page cache.
        std::printf(
            "policy %s off in %d (drained): %llu actions, %s issued, %s used, %s wasted (%s of "
            "it still cached), %s pending, %llu drops, %llu errors\n",
            name.c_str(), pid, static_cast<unsigned long long>(f.value("actions", uint64_t{0})),
            mib(f.value("issued_bytes", uint64_t{0})).c_str(),
            mib(f.value("used_bytes", uint64_t{0})).c_str(),
            mib(f.value("wasted_bytes", uint64_t{0})).c_str(),
            mib(f.value("wasted_resident_bytes", uint64_t{0})).c_str(),
            mib(f.value("pending_bytes", uint64_t{0})).c_str(),
            static_cast<unsigned long long>(f.value("drops", uint64_t{0})),
            static_cast<unsigned long long>(f.value("errors", uint64_t{0})));
        return;
    }
    if (verb == "set") {
        if (words.size() != 3) fail("policy set: expected NAME KEY=VALUE");
        const json r = call(pid, "policy.set", {{"name", name}, {"setting", words[2]}});
        std::printf("policy %s in %d: %s\n", name.c_str(), pid, r["knobs"].dump().c_str());
        return;
    }
    fail("policy: unknown action '" + verb + "' (list, on, off, set)");
}

}  // namespace

Result<std::string> policy_object_path(const std::string& name) {
    auto dir = observe::builtin_bpf_dir();
    if (!dir) return dir.error();
    const std::string path = *dir + "/policies/" + name + ".bpf.o";
    if (::access(path.c_str(), R_OK) != 0)
        return make_error(ENOENT, fmt::format("no BPF object for policy '{}' at {}", name, path));
    return path;
}

Result<json> policy_on(pid_t pid, const std::string& name,
                       const std::vector<std::string>& settings) {
    auto path = policy_object_path(name);
    if (!path) return path.error();
    auto client = control::ControlClient::connect(pid);
    if (!client) return client.error();
    return client->call("policy.on", {{"name", name}, {"path", *path}, {"knobs", settings}}, 60000);
}

Result<json> policy_off(pid_t pid, const std::string& name) {
    auto client = control::ControlClient::connect(pid);
    if (!client) return client.error();
    return client->call("policy.off", {{"name", name}}, 60000);
}

namespace {
json check_on(pid_t pid, const std::string& name, const std::vector<std::string>& settings) {
    auto r = policy_on(pid, name, settings);
    if (!r) fail(fmt::format("policy on {} in {}: {}", name, pid, r.error().message));
    std::printf("policy %s on in %d: %s\n", name.c_str(), pid, (*r)["knobs"].dump().c_str());
    return std::move(r).value();
}
}  // namespace

void print_policies(const json& list) {
    bool header = false;
    for (auto& p : list.value("policies", json::array())) {
        if (!p.value("on", false)) continue;
        if (!header) {
            std::printf("%-10s %9s %12s %12s %12s %12s %8s %9s %7s %7s\n", "policy", "actions",
                        "issued", "used", "wasted", "pending", "inflight", "fallbacks", "drops",
                        "errors");
            header = true;
        }
        const json c = p.value("counters", json::object());
        auto n = [&](const char* k) {
            return static_cast<unsigned long long>(c.value(k, uint64_t{0}));
        };
        std::printf("%-10s %9llu %12s %12s %12s %12s %8llu %9llu %7llu %7llu\n",
                    p["name"].get<std::string>().c_str(), n("actions"),
                    mib(c.value("issued_bytes", uint64_t{0})).c_str(),
                    mib(c.value("used_bytes", uint64_t{0})).c_str(),
                    mib(c.value("wasted_bytes", uint64_t{0})).c_str(),
                    mib(c.value("pending_bytes", uint64_t{0})).c_str(), n("inflight"),
                    n("fallbacks"), n("drops"), n("errors"));
        if (c.contains("redirected")) {  // the uring executor's own counters
            std::string reasons;
            const json by_reason = c.value("fallback_reasons", json::object());
            for (auto& [k, v] : by_reason.items())
                if (v.is_number()) reasons += " " + k + "=" + std::to_string(v.get<uint64_t>());
            std::printf("           redirected %llu, rings %llu, native by reason:%s\n",
                        n("redirected"), n("rings"), reasons.empty() ? " none" : reasons.c_str());
            std::printf(
                "           rings retired %llu (descriptors closed by the process %llu), "
                "recreated %llu\n",
                n("rings_retired"), n("descriptors_lost"), n("rings_recreated"));
            const json a = c.value("aio", json::object());
            auto an = [&](const char* k) {
                return a.contains(k) && a[k].is_number()
                           ? static_cast<unsigned long long>(a[k].get<uint64_t>())
                           : 0ull;
            };
            std::printf(
                "           linux aio: %llu contexts, %llu io_submit (%llu iocbs, %llu events) via "
                "io_uring, "
                "%llu io_submit native\n",
                an("contexts"), an("submits"), an("ops"), an("events"), an("native_submits"));
        }
    }
    if (list.contains("worker")) {
        const json w = list["worker"];
        std::printf("liveio-io thread %d: %s, budget %s, %s in flight; prefetches: %llu read "
                    "through the page cache (fill), %llu advised\n",
                    w.value("tid", 0),
                    w.value("io_uring", false) ? "io_uring" : "synchronous fallback",
                    mib(w.value("budget_bytes", uint64_t{0})).c_str(),
                    mib(w.value("bytes_in_flight", uint64_t{0})).c_str(),
                    static_cast<unsigned long long>(w.value("prefetch_fills", uint64_t{0})),
                    static_cast<unsigned long long>(w.value("prefetch_advice", uint64_t{0})));
    }
    if (list.contains("ring_fds")) {
        const json r = list["ring_fds"];
        auto rn = [&](const char* k) {
            return static_cast<unsigned long long>(r.value(k, uint64_t{0}));
        };
        if (rn("unnumbered") + rn("high") + rn("low") + rn("unnumbered_refused") > 0)
            std::printf(
                "io_uring rings created: %llu without a descriptor number, %llu at high numbers, "
                "%llu at low numbers; %llu refused a ring without a number (last errno %d)\n",
                rn("unnumbered"), rn("high"), rn("low"), rn("unnumbered_refused"),
                r.value("last_refusal_errno", 0));
    }
}

void add_policy_commands(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "policy",
        "Acceleration policies of a process: list | on NAME [K=V..] | off NAME | set NAME K=V");
    auto pid = std::make_shared<pid_t>(0);
    auto words = std::make_shared<std::vector<std::string>>();
    cmd->add_option("pid", *pid, "process id")->required()->check(CLI::PositiveNumber);
    cmd->add_option("action", *words,
                    "list | on NAME [KEY=VALUE...] | off NAME | set NAME KEY=VALUE")
        ->required();
    cmd->callback([pid, words] { cmd_policy(*pid, *words); });
}

}  // namespace liveio::cli
