#!/usr/bin/env bash
# Configures and builds liveio into build/release (or $LIVEIO_BUILD_DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${LIVEIO_BUILD_DIR:-$root/build/release}
# shellcheck source=scripts/configure.sh
source "$root/scripts/configure.sh"
liveio_configure "$build"
cmake --build "$build" -j"$(nproc)"
