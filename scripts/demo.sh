#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the closed-loop demo: Envoy 1.40 with
# the abmesh filter in front of the abmesh sidecar, which hosts three
# versions of a model; simulated users; a faulty version halted by its
# guardrail; the report's decision. Extra arguments go to the demo
# (--users N, --rate R, --data-dir DIR, --replicas N, --keep-running;
# `--replicas 3`: three sidecars sharing one log on a three-node NATS
# JetStream cluster, one of them killed partway).
#
# `scripts/demo.sh --split` runs the first, filter-only demo instead (two
# plain upstreams, prints the split).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cargo build --quiet --release --target wasm32-wasip1 -p abmesh-filter
if [[ ${1:-} == --split ]]; then
  shift
  exec cargo run --quiet -p abmesh-e2e --bin abmesh-split-demo -- "$@"
fi
cargo build --quiet --release -p abmesh --bin abmesh
export ABMESH_BIN=${ABMESH_BIN:-$PWD/target/release/abmesh}
exec cargo run --quiet --release -p abmesh-e2e --bin abmesh-demo -- "$@"
