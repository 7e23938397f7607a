// liveio: live-patch the I/O of a running server into io_uring, observed by eBPF.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
    CLI::App app{"liveio: move a running server's I/O to io_uring and observe it with eBPF"};
    app.require_subcommand(1);
    liveio::cli::add_bench_commands(app);
    liveio::cli::add_process_commands(app);
    liveio::cli::add_observe_commands(app);
    liveio::cli::add_serve_commands(app);
    liveio::cli::add_demo_commands(app);
    liveio::cli::add_cluster_commands(app);
    liveio::cli::add_policy_commands(app);
    liveio::cli::add_soak_commands(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "liveio: %s\n", e.what());
        return 1;
    }
    return 0;
}
