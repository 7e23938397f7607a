#include "bench/bench.h"
#include "cli/commands.h"

namespace liveio::cli {

void add_bench_commands(CLI::App& app) {
    auto* bench =
        app.add_subcommand("bench", "Run a benchmark: ours vs the baseline, side by side");
    bench->require_subcommand(1);
    liveio::bench::add_uring_bench(*bench);
    liveio::bench::add_vm_bench(*bench);
    liveio::bench::add_hooks_bench(*bench);
    liveio::bench::add_observe_bench(*bench);
    liveio::bench::add_clickhouse_bench(*bench);
    liveio::bench::add_policy_bench(*bench);
    liveio::bench::add_redirect_bench(*bench);
    liveio::bench::add_net_bench(*bench);
    liveio::bench::add_cluster_bench(*bench);
    liveio::bench::add_read_action_bench(*bench);
    liveio::bench::add_percall_bench(*bench);
}

}  // namespace liveio::cli

namespace liveio::cli {

void add_soak_commands(CLI::App& app) {
    auto* soak = app.add_subcommand(
        "soak", "Long runs under load: liveio attaches and detaches, results and leaks checked");
    soak->require_subcommand(1);
    liveio::bench::add_soak_clickhouse(*soak);
}

}  // namespace liveio::cli
