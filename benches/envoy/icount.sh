#!/usr/bin/env bash
# Instructions per request for each benchmark configuration, counted by
# valgrind (callgrind) on Envoy: deterministic, so unlike req/s it does not
# care what else the machine runs. Slow (Envoy runs ~80x slower under
# valgrind, and each start takes a minute), so it is separate from run.sh.
#
#   benches/envoy/icount.sh                          # none wasm native lua
#   CONFIGS="none wasm wasm_null wasm_abi" benches/envoy/icount.sh
#
# Per config: start Envoy under callgrind (--concurrency 1), warm up with
# WARMUP_S seconds of load, read the request counter from the admin API, zero
# the counters, drive LOAD_S seconds of load (wrk -c$CONNECTIONS with
# users.lua), wait for Envoy to go idle, dump, read the counter again.
# Instructions per request = instructions in the dump / requests between the
# two counter reads (admin requests fall outside the window). The dump is
# also split by object (Envoy's own code, JIT code of V8 / LuaJIT, libc ...).
#
# Environment: CONFIGS ["none wasm native lua"], LOAD_S [10], WARMUP_S [3],
# CONNECTIONS [4], OUT [bench-results/envoy-icount.json], BUILD [1], ENVOY,
# ABMESH_WASM (the filter module, see render.py), SIDECAR [real] and
# SIDECAR_PORT [18000]: the wasm_ship* configs ship batches to a sidecar
# started here (not under valgrind): `real` runs `abmesh serve` (built like
# run.sh does), `stub` runs stub_sidecar.py, which answers like the sidecar
# (Envoy's side of a batch costs the same) and has no state.
#
#   CONFIGS="none wasm wasm_ship1 wasm_ship wasm_ship64" SIDECAR=stub benches/envoy/icount.sh
set -euo pipefail
# The whole script is one block, so bash parses it before running it: editing
# the file while a run is in progress cannot derail that run.
{

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO"
# wrk, valgrind, Envoy and the Python peers (into .venv), then .venv first
# on PATH. SKIP_SETUP=1 skips the install check.
[[ ${SKIP_SETUP:-0} == 1 ]] || benches/setup.sh >&2
source scripts/env.sh

CONFIGS=${CONFIGS:-none wasm native lua}
LOAD_S=${LOAD_S:-10}
WARMUP_S=${WARMUP_S:-3}
CONNECTIONS=${CONNECTIONS:-4}
OUT=${OUT:-bench-results/envoy-icount.json}
BUILD=${BUILD:-1}
ENVOY=${ENVOY:-$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')}
WORK=bench-results/envoy-icount
mkdir -p "$WORK/conf" "$(dirname "$OUT")"
command -v valgrind >/dev/null || { echo "icount.sh: valgrind not found (apt-get install valgrind)" >&2; exit 1; }

if [[ $BUILD == 1 ]]; then
  cargo build --quiet --release --target wasm32-wasip1 -p abmesh-filter
  cargo build --quiet --release -p abmesh-filter-dynamic
  cargo build --quiet --release --target wasm32-wasip1 \
    --manifest-path benches/envoy/nullwasm/Cargo.toml --target-dir target/bench-nullwasm
  cargo build --quiet --release --target wasm32-wasip1 --features no_response \
    --manifest-path benches/envoy/nullwasm/Cargo.toml --target-dir target/bench-nullwasm-noresp
  cargo build --quiet --release --target wasm32-wasip1 --features no_response,no_create \
    --manifest-path benches/envoy/nullwasm/Cargo.toml --target-dir target/bench-nullwasm-min
fi
python3 benches/envoy/render.py lua --check
python3 benches/envoy/render.py bootstraps "$WORK/conf"
for c in ${CONFIGS}; do
  [[ -f $WORK/conf/$c.yaml ]] || { echo "${0##*/}: no config $c (see render.py ports; wasm_alt needs WASM_ALT=file.wasm)" >&2; exit 1; }
done

vg_pid=
sidecar_pid=
cleanup() {
  [[ -n $vg_pid ]] && kill "$vg_pid" 2>/dev/null && wait "$vg_pid" 2>/dev/null
  [[ -n $sidecar_pid ]] && kill "$sidecar_pid" 2>/dev/null && wait "$sidecar_pid" 2>/dev/null
  true
}
trap cleanup EXIT

# Envoy loads the native module from this directory (render.py names it).
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=${ABMESH_DYNAMIC_DIR:-$REPO/target/release}
if [[ " $CONFIGS " =~ \ (wasm|native)_ship[0-9]*\  ]]; then
  case ${SIDECAR:-real} in
    real)
      [[ $BUILD == 1 ]] && cargo build --quiet --release -p abmesh --bin abmesh
      rm -rf "$WORK/sidecar-data"
      target/release/abmesh serve --listen "127.0.0.1:${SIDECAR_PORT:-18000}" \
        --admin-listen 127.0.0.1:0 --data-dir "$WORK/sidecar-data" 2>"$WORK/sidecar.log" &
      ;;
    stub) python3 benches/envoy/stub_sidecar.py "${SIDECAR_PORT:-18000}" 2>"$WORK/sidecar.log" & ;;
    *) echo "icount.sh: SIDECAR must be real or stub" >&2; exit 1 ;;
  esac
  sidecar_pid=$!
fi

requests() {  # downstream requests completed so far
  curl -s "http://127.0.0.1:$1/stats?filter=^http\.bench\.downstream_rq_completed$" | awk '{ print $2 }'
}

: >"$WORK/counts.tsv"
for c in $CONFIGS; do
  read -r _ port admin < <(python3 benches/envoy/render.py ports | awk -v c="$c" '$1 == c')
  rm -f "$WORK/$c".cg*
  valgrind --tool=callgrind --dump-instr=yes --smc-check=all-non-file \
    --callgrind-out-file="$WORK/$c.cg" \
    "$ENVOY" -c "$WORK/conf/$c.yaml" --concurrency 1 --disable-hot-restart --log-level warn \
    >"$WORK/$c.valgrind.log" 2>&1 &
  vg_pid=$!
  for _ in $(seq 1 600); do
    [[ $(curl -s "http://127.0.0.1:$admin/ready" 2>/dev/null) == LIVE ]] && break
    kill -0 "$vg_pid" 2>/dev/null || { echo "icount.sh: $c died; see $WORK/$c.valgrind.log" >&2; exit 1; }
    sleep 0.5
  done
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP_S}s" -s benches/envoy/users.lua "http://127.0.0.1:$port/" >/dev/null
  sleep 1
  n0=$(requests "$admin")
  callgrind_control -z "$vg_pid" >/dev/null
  wrk -t1 -c"$CONNECTIONS" -d"${LOAD_S}s" -s benches/envoy/users.lua "http://127.0.0.1:$port/" >/dev/null
  sleep 2
  callgrind_control -d "$vg_pid" >/dev/null
  n1=$(requests "$admin")
  kill "$vg_pid"
  wait "$vg_pid" 2>/dev/null || true
  vg_pid=
  dump=$(ls "$WORK/$c".cg.* | sort -t. -k3 -n | tail -1)
  printf '%s\t%s\t%s\n' "$c" "$((n1 - n0))" "$dump" >>"$WORK/counts.tsv"
  echo "== $c: $((n1 - n0)) requests counted in $dump"
done

python3 benches/envoy/icount_report.py "$WORK/counts.tsv" "$OUT"
exit
}
