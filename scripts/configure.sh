# Sourced by the build scripts: liveio_configure BUILD_DIR [CMAKE ARGS...] configures the tree
# into BUILD_DIR (RelWithDebInfo unless the arguments say otherwise).
#  - ccache, when installed, makes rebuilds cheap. No CCACHE_BASEDIR: it rewrites paths to
#    relative ones, and tests locate their data from __FILE__.
#  - Ninja, when installed, for a new build directory: it starts a target's compiles as soon as
#    their inputs exist, where make waits for every library the target links to be archived
#    first, so both cores stay busy. A directory configured earlier keeps its generator (CMake
#    refuses to switch one).
liveio_configure() {
  local build=$1
  shift
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
  if command -v ccache >/dev/null; then
    args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  fi
  if [[ ! -f $build/CMakeCache.txt && -z ${CMAKE_GENERATOR:-} ]] && command -v ninja >/dev/null; then
    args+=(-G Ninja)
  fi
  cmake -S "$root" -B "$build" "${args[@]}" "$@" >/dev/null
}
