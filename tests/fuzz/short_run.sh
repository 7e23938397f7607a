#!/usr/bin/env bash
# The test suite's run of one fuzz target: every input of the committed corpus, then
# SECONDS of mutation (bounded by -runs too). New inputs go to a scratch directory, never
# into the committed corpus. Exit 77 (CTest: skipped) when the fuzz build is absent.
set -euo pipefail
binary=$1 corpus=$2 seconds=${3:-4}
if [[ ! -x $binary ]]; then
  echo "SKIP: $binary not built (build the fuzz targets: scripts/fuzz.sh --build, needs clang)"
  exit 77
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# -timeout (wall clock, generous for a loaded machine): an input running this long is a hang.
# A failing input is kept next to the binary (artifacts/) to reproduce; -error_exitcode: a
# finding must fail the test (libFuzzer's default 77 is CTest's "skipped").
artifacts=$(dirname "$binary")/artifacts/$(basename "$binary")
mkdir -p "$artifacts"
exec "$binary" -runs=200000 -max_total_time="$seconds" -timeout=60 -rss_limit_mb=2048 \
  -print_final_stats=1 -error_exitcode=1 -artifact_prefix="$artifacts/" "$scratch" "$corpus"
