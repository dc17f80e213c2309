#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every test of the project:
#  1. the workspace's Rust tests (unit, property, zero-allocation, sidecar,
#     and the cross-component tests against a real Envoy in tests/, with
#     the Wasm filter, then again with the native dynamic module),
#  2. the filter's portable tests compiled to wasm32 and run under Node, so
#     the wasm build is proven to agree with the native one,
#  3. rustfmt and clippy, warnings denied.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh

step() { printf '\n\033[1;34m[test]\033[0m %s\n' "$*"; }

step "build the filter (release wasm and native dynamic module) and the abmesh binary"
cargo build --release --target wasm32-wasip1 -p abmesh-filter
cargo build --release -p abmesh-filter-dynamic
cargo build -p abmesh --bin abmesh

step "workspace tests (the Envoy tests load the Wasm filter)"
cargo test --workspace

step "the Envoy tests again, loading the native dynamic module"
ABMESH_FILTER=dynamic cargo test -p abmesh-e2e

step "portable golden tests on wasm32 under Node"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p abmesh-filter --target wasm32-unknown-unknown --test portable

step "lints: rustfmt and clippy (native and wasm32)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p abmesh-filter --release --target wasm32-wasip1 -- -D warnings

step "all tests passed"
