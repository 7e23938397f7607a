// A thread that keeps a ClickHouse test server busy with queries whose answers are known,
// recording every answer that differs (or fails): what tests attaching liveio to a live
// server check at the end. Bounded: at most `max_queries` queries.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "clickhouse/server.h"

namespace liveio::clickhouse::testing {

class QueryLoop {
public:
    // Runs queries[i % n] and compares with expected[i % n]; `before_each(i)` runs first
    // (e.g. dropping caches), when given.
    QueryLoop(LocalServer& server, std::vector<std::string> queries,
              std::vector<std::string> expected, std::function<void(size_t)> before_each = {},
              size_t max_queries = 100000)
        : thread_([this, &server, q = std::move(queries), e = std::move(expected), before_each,
                   max_queries] {
              auto c = server.client();
              for (size_t i = 0; !stop_.load() && i < max_queries; ++i) {
                  if (before_each) before_each(i);
                  auto got = c.query(q[i % q.size()]);
                  if (!got || *got != e[i % e.size()]) {
                      std::lock_guard lock(mu_);
                      wrong_.push_back(got ? *got : got.error().message);
                  }
                  ++answered_;
              }
          }) {}
    ~QueryLoop() { finish(); }
    QueryLoop(const QueryLoop&) = delete;
    QueryLoop& operator=(const QueryLoop&) = delete;

    int answered() const { return answered_.load(); }
    void finish() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    std::vector<std::string> wrong() const {
        std::lock_guard lock(mu_);
        return wrong_;
    }

private:
    std::atomic<bool> stop_{false};
    std::atomic<int> answered_{0};
    mutable std::mutex mu_;
    std::vector<std::string> wrong_;
    std::thread thread_;  // last: starts once the members it uses exist
};

}  // namespace liveio::clickhouse::testing
