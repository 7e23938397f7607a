#!/usr/bin/env bash
# Configures and builds liveio into build/release (or $LIVEIO_BUILD_DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${LIVEIO_BUILD_DIR:-$root/build/release}
launcher=()
# ccache, when installed, makes rebuilds cheap. No CCACHE_BASEDIR: it rewrites paths to
# relative ones, and tests locate their data from __FILE__.
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)"
