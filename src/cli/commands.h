// Subcommand groups of the `liveio` command, one registration function per file.
#pragma once

#include <CLI/CLI.hpp>

namespace liveio::cli {

void add_bench_commands(CLI::App& app);
void add_process_commands(CLI::App& app);
void add_observe_commands(CLI::App& app);
void add_serve_commands(CLI::App& app);
void add_demo_commands(CLI::App& app);
void add_cluster_commands(CLI::App& app);
void add_policy_commands(CLI::App& app);
void add_soak_commands(CLI::App& app);

}  // namespace liveio::cli
