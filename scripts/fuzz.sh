#!/usr/bin/env bash
# libFuzzer targets (tests/fuzz), built with clang into build/fuzz (or $LIVEIO_FUZZ_BUILD_DIR).
#
#   scripts/fuzz.sh --build             configure and build every target
#   scripts/fuzz.sh --corpus            regenerate the committed seed corpora (tests/fuzz/corpus;
#                                       regression-* inputs kept) from the built BPF objects and
#                                       ../shared/bpf-conformance
#   scripts/fuzz.sh TARGET [SECONDS]    a long run (default 600 s) at low priority: the committed
#                                       corpus plus build/fuzz/work/TARGET (new inputs land
#                                       there), crashes in build/fuzz/artifacts/TARGET/
# Targets: verifier jit_diff loader protocol prometheus sink.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${LIVEIO_FUZZ_BUILD_DIR:-$root/build/fuzz}
targets=(verifier jit_diff loader protocol prometheus sink)

# shellcheck source=scripts/configure.sh
source "$root/scripts/configure.sh"

# build_targets [EXTRA TARGET...]: the fuzz targets (all the test suite's short runs need).
build_targets() {
  CC=clang CXX=clang++ liveio_configure "$build" -DLIVEIO_FUZZ=ON
  cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}" "$@"
}

case ${1:-} in
  --build)
    build_targets ;;
  --corpus)
    build_targets fuzz_make_corpus
    release=${LIVEIO_BUILD_DIR:-$root/build/release}
    objects=$(find "$release/bpf" -name '*.bpf.o' | sort)
    [[ -n $objects ]] || { echo "no BPF objects under $release/bpf: run scripts/build.sh first" >&2; exit 1; }
    # Inputs named regression-* were found by fuzzing (crashes, slow inputs) and are read by
    # unit tests too: they are kept, everything else is regenerated.
    for t in "${targets[@]}"; do
      [[ -d $root/tests/fuzz/corpus/$t ]] || continue
      find "$root/tests/fuzz/corpus/$t" -type f ! -name 'regression-*' -delete
    done
    # shellcheck disable=SC2086
    conformance=${LIVEIO_CONFORMANCE_DIR:-$root/../shared/bpf-conformance}
    # A worktree under <checkout>/../wt/NAME finds the suite one level further up.
    [[ -d $conformance ]] || conformance=$root/../../shared/bpf-conformance
    "$build/tests/fuzz/fuzz_make_corpus" "$root/tests/fuzz/corpus" "$conformance" $objects ;;
  ''|-h|--help)
    sed -n '2,11p' "$0"; exit 2 ;;
  *)
    target=$1 seconds=${2:-600}
    [[ " ${targets[*]} " == *" $target "* ]] || { echo "unknown target '$target' (${targets[*]})" >&2; exit 2; }
    [[ -x $build/tests/fuzz/fuzz_$target ]] || build_targets
    work=$build/work/$target artifacts=$build/artifacts/$target
    mkdir -p "$work" "$artifacts"
    exec nice -n 10 "$build/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=60 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$artifacts/" "$work" "$root/tests/fuzz/corpus/$target" ;;
esac
