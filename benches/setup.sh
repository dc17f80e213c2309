#!/usr/bin/env bash
# Installs what the benchmarks need on top of scripts/setup.sh: wrk (load),
# valgrind (instruction counts), the Python peers of
# benches/requirements.txt (into the project's .venv), and Triton's
# perf_analyzer (benches/setup_perf_analyzer.sh, into .tools/). Idempotent; every
# benchmark entry point runs it first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
log() { printf '\033[1;34m[bench-setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[bench-setup] FAILED:\033[0m %s\n' "$*" >&2; exit 1; }

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v valgrind >/dev/null || missing+=(valgrind)
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "install ${missing[*]} (no apt-get here)"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || die "apt-get update failed: check the network access to the Debian mirror"
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

stamp=.venv/.abmesh-bench-requirements
if ! cmp -s benches/requirements.txt "$stamp"; then
  log "pip install -r benches/requirements.txt (into .venv)"
  .venv/bin/python3 -m pip install --quiet --disable-pip-version-check -r benches/requirements.txt ||
    die "installing the benchmark peers into .venv failed (pip's message is above); check the network access to PyPI"
  cp benches/requirements.txt "$stamp"
fi
# Triton's perf_analyzer (benches/model_host), into .tools/perf_analyzer.
benches/setup_perf_analyzer.sh >/dev/null
log "ok"
