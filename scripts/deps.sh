#!/usr/bin/env bash
# Installs the Debian packages liveio needs, only those missing (idempotent).
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config git clang llvm
  clang-14 libclang-rt-14-dev
  liburing-dev libbpf-dev libelf-dev zlib1g-dev libzydis-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev libfmt-dev nlohmann-json3-dev
  fio strace iproute2 bpftool prometheus gnuplot-nox
  clickhouse-server clickhouse-client clickhouse-tools
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "liveio: missing Debian packages: ${missing[*]}; run as root or install them first" >&2
    exit 1
  fi
  echo "liveio: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # apt's progress is hundreds of lines: kept in a log, shown only when apt fails.
  log=$(mktemp /tmp/liveio-apt.XXXXXX)
  # Another apt/dpkg (unattended-upgrades, a second terminal) may hold the dpkg lock: wait
  # for it (up to 10 minutes) instead of failing.
  apt_opts=(-o DPkg::Lock::Timeout=600)
  # The clickhouse-server package tries to start its service; there is no init here and
  # we never want the system instance anyway (liveio starts private servers).
  if ! { apt-get "${apt_opts[@]}" update -qq &&
         apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "liveio: apt-get failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
  echo "liveio: installed ${#missing[@]} packages"
fi
