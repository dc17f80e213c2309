#!/usr/bin/env bash
# Installs what abmesh needs to build, test and run its demo on a fresh
# Debian machine that has rustup, Python 3 (with venv) and apt. Idempotent:
# steps already done are skipped. Used by scripts/demo.sh, scripts/test.sh
# and .ci/run.
#
# Python packages go into the project's own virtual environment, .venv
# (scripts/requirements.txt, pinned); scripts/env.sh puts it first on PATH
# for every script and test. Nothing is installed into the system Python.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
# Prints what failed and what to do about it, then exits 1.
die() {
  printf '\033[1;31m[setup] FAILED:\033[0m %s\n' "$1" >&2
  shift
  for hint in "$@"; do printf '        %s\n' "$hint" >&2; done
  exit 1
}
trap 'die "line $LINENO: \`$BASH_COMMAND\` exited with status $?" "re-run scripts/setup.sh after fixing the cause above"' ERR

# --- Rust --------------------------------------------------------------
command -v rustup >/dev/null ||
  die "rustup is not installed" "install it from https://rustup.rs, then re-run"
# The filter (wasm32-wasip1) and its portable tests under Node
# (wasm32-unknown-unknown).
for target in wasm32-wasip1 wasm32-unknown-unknown; do
  if ! rustup target list --installed | grep -qx "$target"; then
    log "rustup target add $target"
    rustup target add "$target" ||
      die "rustup target add $target failed" "check the network access to static.rust-lang.org"
  fi
done
for component in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^$component"; then
    log "rustup component add $component"
    rustup component add "$component" || die "rustup component add $component failed"
  fi
done

# --- Debian packages ---------------------------------------------------
# chromium: renders the HTML report in the report test.
apt_missing=()
command -v chromium >/dev/null || apt_missing+=(chromium)
command -v node >/dev/null || apt_missing+=(nodejs)
if ((${#apt_missing[@]})); then
  command -v apt-get >/dev/null ||
    die "missing ${apt_missing[*]} and there is no apt-get" "install them with your package manager"
  log "apt-get install ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq || die "apt-get update failed" "check the network access to the Debian mirror"
  $sudo apt-get install -y -qq "${apt_missing[@]}" >/dev/null ||
    die "apt-get install ${apt_missing[*]} failed" "install them by hand, then re-run"
fi

# --- Python: the project's virtual environment -------------------------
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null ||
  die "$PYTHON is not on PATH" "install Python 3.9 or newer (Debian: apt-get install python3 python3-venv)"
if [[ ! -x .venv/bin/python3 ]] || ! .venv/bin/python3 -c 'import sys' 2>/dev/null; then
  log "creating the virtual environment .venv (with $("$PYTHON" --version 2>&1))"
  rm -rf .venv
  "$PYTHON" -m venv .venv ||
    die "\`$PYTHON -m venv .venv\` failed" "Debian: apt-get install python3-venv; or set PYTHON to another interpreter"
fi
# Reinstall only when the requirements changed since the last install.
stamp=.venv/.abmesh-requirements
if ! cmp -s scripts/requirements.txt "$stamp"; then
  log "pip install -r scripts/requirements.txt (into .venv)"
  .venv/bin/python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt ||
    die "installing the Python packages into .venv failed (pip's message is above)" \
        "check the network access to PyPI, then re-run; \`rm -rf .venv\` starts over"
  cp scripts/requirements.txt "$stamp"
fi

# --- wasm-bindgen-test-runner -------------------------------------------
# At the version Cargo.lock pins for wasm-bindgen.
wbg="$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)"
[[ -n "$wbg" ]] || die "Cargo.lock pins no wasm-bindgen" "restore Cargo.lock from git"
export PATH="$HOME/.cargo/bin:$PATH"
if ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q " $wbg"; then
  log "cargo install wasm-bindgen-cli $wbg (a few minutes, once)"
  # Not --locked: one of its locked dependencies is not on the registry
  # mirror; cargo picks the newest compatible versions instead.
  cargo install --quiet wasm-bindgen-cli --version "$wbg" ||
    die "cargo install wasm-bindgen-cli $wbg failed" "check the network access to crates.io"
fi

log "ok"
