#!/usr/bin/env bash
# The README's main command: installs the Debian packages that are missing (clickhouse-server
# among them), builds what the demo needs (the liveio command, liveio-agent.so, the built-in
# BPF programs) and runs `liveio demo`: a private 2-shard ClickHouse on free ports in a
# temporary directory, observed live by liveio. Arguments go to `liveio demo` (--help).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
build=${LIVEIO_BUILD_DIR:-$root/build/release}
# shellcheck source=scripts/configure.sh
source "$root/scripts/configure.sh"
liveio_configure "$build"
cmake --build "$build" -j"$(nproc)" --target liveio liveio-agent liveio_bpf_programs
exec "$build/src/cli/liveio" demo "$@"
