#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs the whole test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
"$root/scripts/build.sh"
build=${LIVEIO_BUILD_DIR:-$root/build/release}
cd "$build"
ctest --output-on-failure --timeout 600 -j"$(nproc)" "$@"
