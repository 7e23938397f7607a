// Benchmarks behind `liveio bench NAME`. Each registers its own subcommand with its options;
// every benchmark prints a side-by-side table and ends with `metric: NAME VALUE` lines.
#pragma once

#include <CLI/CLI.hpp>

namespace liveio::bench {

void add_uring_bench(CLI::App& bench);
void add_vm_bench(CLI::App& bench);
void add_hooks_bench(CLI::App& bench);
void add_observe_bench(CLI::App& bench);
void add_clickhouse_bench(CLI::App& bench);
void add_policy_bench(CLI::App& bench);
void add_redirect_bench(CLI::App& bench);
void add_net_bench(CLI::App& bench);
void add_cluster_bench(CLI::App& bench);
void add_read_action_bench(CLI::App& bench);
void add_percall_bench(CLI::App& bench);
// `liveio soak clickhouse` (soak_clickhouse.cpp): not a benchmark, a reliability run with metrics.
void add_soak_clickhouse(CLI::App& soak);

}  // namespace liveio::bench
