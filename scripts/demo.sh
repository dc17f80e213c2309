#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the end-to-end demo: Envoy 1.40 with
# the abmesh filter in front of two upstreams, a crowd of users, and the
# split the demo observed. Extra arguments go to the demo
# (--users N, --keep-running).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cargo build --quiet --release --target wasm32-wasip1 -p abmesh-filter
exec cargo run --quiet -p abmesh-e2e --bin abmesh-demo -- "$@"
