#!/usr/bin/env bash
# The README's main command: installs what is missing, builds, runs the main job.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
"$root/scripts/build.sh"
build=${LIVEIO_BUILD_DIR:-$root/build/release}
exec "$build/src/cli/liveio" bench uring "$@"
