#include "agent/policy_host.h"

#include <chrono>

#include "hook/dispatcher.h"
#include "liveio/io_edge.h"
#include "uring/engine.h"

namespace liveio::agent {

using nlohmann::json;

PolicyHost::~PolicyHost() { (void)off_all(true); }

Result<void> PolicyHost::off_all(bool force) {
    hook::Dispatcher::ScopedInside inside;
    std::lock_guard lock(mu_);
    while (!active_.empty()) {
        const std::string name = active_.begin()->first;
        auto r = off_locked(name, force);
        if (!r && active_.count(name) != 0) return r;  // refused: the policy is still on
    }
    stop_runtime();
    return {};
}

bool PolicyHost::PolicyRedirector::redirect(CallFrame& frame) {
    uint8_t slot = 0;
    if (!policy::Runtime::take_redirect(slot)) return false;
    policy::Runtime* rt = host_.live_.load(std::memory_order_acquire);
    if (rt == nullptr) return false;
    if (policy::Redirector* executor = rt->redirector();
        executor != nullptr && executor->run(frame))
        return true;
    rt->count_fallback(slot);
    return false;
}

Result<void> PolicyHost::start_runtime() {
    if (runtime_) return {};
    policy::Runtime::Options options;
    options.worker.part_history = &part_history_;
    auto rt = policy::Runtime::create(options);
    if (!rt)
        return make_error(rt.error().code,
                          "cannot start the policy runtime: " + rt.error().message);
    runtime_ = std::move(rt).value();
    live_.store(runtime_.get(), std::memory_order_release);
    bpf_.set_policy_runtime(runtime_.get());
    if (executor_ != nullptr) {
        runtime_->set_redirector(executor_);
        if (auto r = pipeline_.set_redirector(&redirector_); !r) {
            stop_runtime();
            return make_error(r.error().code,
                              "the call pipeline's redirector slot is taken: " + r.error().message);
        }
    }
    return {};
}

Result<void> PolicyHost::set_executor(policy::Redirector* executor) {
    std::lock_guard lock(mu_);
    return set_executor_locked(executor);
}

Result<void> PolicyHost::set_executor_locked(policy::Redirector* executor) {
    if (executor_ == executor) return {};
    if (runtime_) {
        // New requests stop first (the helper answers -EOPNOTSUPP), then the slot empties
        // with a grace period: no thread is inside the old executor afterwards.
        runtime_->set_redirector(nullptr);
        if (pipeline_.redirector() == &redirector_) pipeline_.clear_redirector();
        runtime_->set_redirector(executor);
        if (executor != nullptr)
            if (auto r = pipeline_.set_redirector(&redirector_); !r) return r;
    }
    executor_ = executor;
    return {};
}

void PolicyHost::stop_runtime() {
    if (!runtime_) return;
    // Nobody reaches the runtime any more once these return: the slot is cleared with a
    // grace period, the BPF host's exit edge loads the pointer on every call.
    runtime_->set_redirector(nullptr);
    if (pipeline_.redirector() == &redirector_) pipeline_.clear_redirector();
    bpf_.set_policy_runtime(nullptr);
    live_.store(nullptr, std::memory_order_release);
    runtime_.reset();  // joins the I/O thread, closes its ring
}

Result<json> PolicyHost::on(const std::string& name, const std::string& object_path,
                            const std::vector<std::string>& settings) {
    hook::Dispatcher::ScopedInside inside;
    auto r = on_locked_or_undo(name, object_path, settings);
    return r;
}

Result<json> PolicyHost::on_locked_or_undo(const std::string& name, const std::string& object_path,
                                           const std::vector<std::string>& settings) {
    auto def = policy::find_policy(name);
    if (!def) return def.error();
    std::lock_guard lock(mu_);
    if (active_.count(name)) return make_error(EEXIST, "policy '" + name + "' is already on");
    // A failure below leaves no executor of a policy that is not on.
    struct Undo {
        PolicyHost& h;
        const std::string& name;
        ~Undo() {
            if (name == "uring" && h.uring_ && !h.active_.count(name)) {
                h.uring_->redirect().shutdown();
                (void)h.set_executor_locked(nullptr);
                h.uring_.reset();
            }
        }
    } undo{*this, name};
    Active a;
    a.def = *def;
    for (const policy::KnobDef& k : a.def->knobs) a.knobs[k.name] = k.default_value;
    for (const std::string& s : settings) {
        auto parsed = a.def->parse_setting(s);
        if (!parsed) return parsed.error();
        a.knobs[parsed->first->name] = parsed->second;
    }
    if (name == "uring" && !uring_) {
        policy::UringRedirectOptions options;
        options.nowait_first = a.knobs["nowait"] != 0;
        auto ex = policy::UringExecutor::create(options);
        if (!ex) return make_error(ex.error().code, "policy 'uring': " + ex.error().message);
        uring_ = std::move(ex).value();
        // Regular files as the BPF host classified them (at this call's enter edge, where
        // the policy's program asked for the redirect): no syscall.
        uring_->redirect().set_regular_hint(
            [](const void* fds, int fd) {
                const uint32_t c = static_cast<const FdClassCache*>(fds)->peek(fd).file_class;
                return c >= LIVEIO_CLASS_FILE && c <= LIVEIO_CLASS_CH_OTHER;
            },
            &bpf_.fd_classes());
        executor_ = uring_.get();  // installed with the runtime below (or now, if it runs)
        if (runtime_) {
            executor_ = nullptr;
            if (auto r = set_executor_locked(uring_.get()); !r) return r.error();
        }
    }
    if (auto r = start_runtime(); !r) return r.error();
    auto loaded = bpf_.load({object_path, ebpf::Engine::Jit, {}});
    if (!loaded)
        return make_error(loaded.error().code, "policy '" + name + "': " + loaded.error().message);
    a.object = loaded->id;
    auto progs = bpf_.object_programs(a.object);
    if (!progs) {
        (void)bpf_.unload(a.object);
        return progs.error();
    }
    policy::Runtime::PolicySpec spec;
    spec.name = name;
    spec.programs = progs->programs;
    spec.completion = progs->completion;
    spec.services = &bpf_.runtime();
    for (const policy::KnobDef& k : a.def->knobs) {
        if (k.index == policy::kRuntimeKnob) continue;
        if (spec.knobs.size() <= static_cast<size_t>(k.index)) spec.knobs.resize(k.index + 1);
        spec.knobs[k.index] = a.knobs[k.name];
    }
    // Programs were attached by load() before the slot exists: until enable() publishes it,
    // their helper calls are refused (-EPERM), which a program treats like a full queue.
    auto slot = runtime_->enable(std::move(spec));
    if (!slot) {
        (void)bpf_.unload(a.object);
        return slot.error();
    }
    a.slot = *slot;
    if (auto it = a.knobs.find("budget_mb"); it != a.knobs.end())
        runtime_->set_budget(it->second << 20);
    if (auto it = a.knobs.find("fill"); it != a.knobs.end()) runtime_->set_fill(a.slot, it->second != 0);
    active_.emplace(name, a);
    return json{{"policy", name}, {"on", true}, {"object", a.object}, {"knobs", a.knobs}};
}

Result<void> PolicyHost::off_locked(const std::string& name, bool force, json* final) {
    auto it = active_.find(name);
    if (it == active_.end()) return make_error(ENOENT, "policy '" + name + "' is not on");
    // Linux AIO events translated by `uring` reach the target only through the executor: while
    // the target has not taken them all, the policy stays on (its AIO calls keep being served).
    if (name == "uring" && uring_ && !uring_->redirect().drain_aio(std::chrono::seconds(10)) &&
        !force)
        return make_error(
            EBUSY,
            "policy 'uring': the target has not yet reaped the Linux AIO events liveio "
            "translated (new submissions run natively now); try again");
    const Active a = it->second;
    active_.erase(it);
    // Drain first (nothing queued or in flight, no completion program running), then detach
    // the programs: they may still run on target threads until unload returns, and their
    // helpers refuse work for a slot that is off.
    auto drained = runtime_->disable(a.slot);
    // The slot keeps its counters until it is enabled again (under mu_, not before we return).
    if (final != nullptr) *final = runtime_->counters_json(a.slot);
    auto unloaded = bpf_.unload(a.object);
    if (name == "uring" && uring_) {
        // Threads may sleep inside the executor in a redirected call that waits for data
        // (a pipe, a socket): shutdown wakes them (they finish natively) and refuses new
        // calls, so emptying the slot, which waits until no thread is inside, cannot hang.
        uring_->redirect().shutdown();
        (void)set_executor_locked(nullptr);
        uring_.reset();
    }
    if (!drained) return drained.error();
    if (!unloaded) return unloaded.error();
    return {};
}

Result<json> PolicyHost::off(const std::string& name) {
    hook::Dispatcher::ScopedInside inside;
    std::lock_guard lock(mu_);
    // The final figures are taken after the drain: what was still queued, in flight or
    // unread until then is counted too (read before, it was neither used nor wasted yet).
    json last;
    if (auto r = off_locked(name, false, &last); !r) return r.error();
    // The last policy: stop the I/O thread too, so an idle agent runs no thread of ours.
    if (active_.empty()) stop_runtime();
    return json{{"policy", name}, {"on", false}, {"final", last}};
}

Result<json> PolicyHost::set(const std::string& name, const std::string& setting) {
    std::lock_guard lock(mu_);
    auto it = active_.find(name);
    if (it == active_.end())
        return make_error(ENOENT,
                          "policy '" + name + "' is not on (liveio policy PID on " + name + ")");
    Active& a = it->second;
    auto parsed = a.def->parse_setting(setting);
    if (!parsed) return parsed.error();
    const policy::KnobDef& k = *parsed->first;
    if (k.index == policy::kRuntimeKnob) {
        if (k.name == "budget_mb") runtime_->set_budget(parsed->second << 20);
        if (k.name == "fill") runtime_->set_fill(a.slot, parsed->second != 0);
    } else if (auto r = runtime_->set_knob(a.slot, static_cast<unsigned>(k.index), parsed->second);
               !r) {
        return r.error();
    }
    a.knobs[k.name] = parsed->second;
    return json{{"policy", name}, {"knobs", a.knobs}};
}

json PolicyHost::list() const {
    std::lock_guard lock(mu_);
    json policies = json::array();
    for (const policy::PolicyDef& def : policy::catalog()) {
        json p = {{"name", def.name}, {"summary", def.summary}, {"on", false}};
        json knobs = json::object();
        for (const policy::KnobDef& k : def.knobs) knobs[k.name] = k.default_value;
        if (auto it = active_.find(def.name); it != active_.end() && runtime_) {
            p["on"] = true;
            p["object"] = it->second.object;
            knobs = it->second.knobs;
            p["counters"] = runtime_->counters_json(it->second.slot);
            if (def.name == "uring" && uring_) {
                const policy::UringRedirectStats st = uring_->redirect().stats();
                json reasons = json::object();
                for (int r = 0; r < static_cast<int>(policy::FallbackReason::Count); ++r)
                    if (st.by_reason[r])
                        reasons[policy::fallback_reason_name(
                            static_cast<policy::FallbackReason>(r))] = st.by_reason[r];
                p["counters"]["redirected"] = st.redirected;
                p["counters"]["nowait_reads"] = st.nowait_reads;
                p["counters"]["fallback_reasons"] = reasons;
                p["counters"]["rings"] = st.engines_live;
                p["counters"]["rings_retired"] = st.engines_retired;
                p["counters"]["rings_recreated"] = st.engines_recreated;
                p["counters"]["descriptors_lost"] = st.descriptors_lost;
                p["counters"]["aio"] = {{"contexts", st.aio_contexts},
                                        {"submits", st.aio_submits},
                                        {"ops", st.aio_ops},
                                        {"events", st.aio_events},
                                        {"native_submits", st.aio_native_submits}};
            }
        }
        p["knobs"] = knobs;
        policies.push_back(std::move(p));
    }
    json out = {{"policies", policies}};
    if (runtime_) out["worker"] = runtime_->describe()["worker"];
    const uring::RingFdCounts rings = uring::ring_fd_counts();
    out["ring_fds"] = {{"unnumbered", rings.unnumbered},
                       {"high", rings.high},
                       {"low", rings.low},
                       {"unnumbered_refused", rings.unnumbered_refused},
                       {"last_refusal_errno", rings.last_refusal}};
    return out;
}

Result<void> PolicyHost::register_requests(RequestRouter& router) {
    auto name_of = [](const json& req) -> Result<std::string> {
        if (!req.contains("name") || !req["name"].is_string())
            return make_error(EINVAL, "expected {\"name\": \"<policy>\"}");
        return req["name"].get<std::string>();
    };
    auto reply = [](Result<json> r) -> Result<Reply> {
        if (!r) return r.error();
        return Reply{std::move(r).value(), {}, {}};
    };
    if (auto r = router.add("policy.list", "policies: available, on/off, knobs, counters",
                            [this](const json&) -> Result<Reply> {
                                return Reply{list(), {}, {}};
                            });
        !r)
        return r;
    if (auto r = router.add(
            "policy.on", "policy.on {name, path: /abs/NAME.bpf.o, knobs: [\"k=v\"...]}",
            [this, name_of, reply](const json& req) -> Result<Reply> {
                auto name = name_of(req);
                if (!name) return name.error();
                if (!req.contains("path") || !req["path"].is_string())
                    return make_error(EINVAL, "policy.on needs {\"path\": \"/abs/NAME.bpf.o\"}");
                std::vector<std::string> settings;
                if (req.contains("knobs"))
                    for (auto& k : req["knobs"])
                        if (k.is_string()) settings.push_back(k.get<std::string>());
                return reply(on(*name, req["path"].get<std::string>(), settings));
            });
        !r)
        return r;
    if (auto r = router.add("policy.off", "policy.off {name}: drain and unload",
                            [this, name_of, reply](const json& req) -> Result<Reply> {
                                auto name = name_of(req);
                                if (!name) return name.error();
                                return reply(off(*name));
                            });
        !r)
        return r;
    return router.add("policy.set", "policy.set {name, setting: \"key=value\"}",
                      [this, name_of, reply](const json& req) -> Result<Reply> {
                          auto name = name_of(req);
                          if (!name) return name.error();
                          if (!req.contains("setting") || !req["setting"].is_string())
                              return make_error(EINVAL,
                                                "policy.set needs {\"setting\": \"key=value\"}");
                          return reply(set(*name, req["setting"].get<std::string>()));
                      });
}

}  // namespace liveio::agent
