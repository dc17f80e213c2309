#!/usr/bin/env bash
# Durable ingestion benchmark of the sidecar (see README.md here):
#   1. `abmesh serve --data-dir` (release build) on a fresh directory;
#   2. USERS users exposed through /v1/exposures;
#   3. EVENTS outcome events posted by CLIENTS clients in batches of BATCH
#      over HTTP, each batch acknowledged only once fsynced and applied;
#   4. report latency (JSON and HTML) at that volume;
#   5. SIGKILL, restart on the same directory: recovery time, and the
#      report latency again.
# Prints a JSON summary; everything also lands in $OUT (default: a temp dir).
# BIN=path benchmarks another abmesh binary; SKIP_BUILD=1 skips the build.
set -euo pipefail
cd "$(dirname "$0")/../.."
# wrk, valgrind, Envoy and the Python peers (into .venv), then .venv first
# on PATH. SKIP_SETUP=1 skips the install check.
[[ ${SKIP_SETUP:-0} == 1 ]] || benches/setup.sh >&2
source scripts/env.sh

EVENTS=${EVENTS:-10000000}
USERS=${USERS:-1000000}
CLIENTS=${CLIENTS:-16}
BATCH=${BATCH:-1000}
PORT=${PORT:-8091}
ADMIN_PORT=${ADMIN_PORT:-8092}
OUT=${OUT:-$(mktemp -d /tmp/abmesh-ingest-bench.XXXXXX)}
mkdir -p "$OUT"

# BIN=path runs another abmesh binary (an older build, say) with the same
# load generator; SKIP_BUILD=1 uses what is built.
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release -p abmesh --bin abmesh --example ingest_load >&2
BIN=${BIN:-./target/release/abmesh}
LOAD=./target/release/examples/ingest_load

cat > "$OUT/experiments.json" <<'EOF'
{"experiments":[{"name":"ranker","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}
EOF

PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; }
trap cleanup EXIT

# Starts the server; sets PID, and STARTUP_S to the seconds until it
# listened (recovery included).
start_server() {
    local log=$1 t0 t1
    t0=$(date +%s.%N)
    "$BIN" serve --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
        --data-dir "$OUT/data" --experiments "$OUT/experiments.json" \
        >/dev/null 2>"$log" &
    PID=$!
    for _ in $(seq 1 60000); do
        if grep -q "admin listening on" "$log"; then
            t1=$(date +%s.%N)
            STARTUP_S=$(python3 -c "print(round($t1 - $t0, 3))")
            return 0
        fi
        kill -0 "$PID" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.01
    done
    echo "the server did not start" >&2
    exit 1
}

start_server "$OUT/serve-1.log"
echo "ingesting $EVENTS events from $CLIENTS clients in batches of $BATCH (data in $OUT/data)" >&2
"$LOAD" --url "http://127.0.0.1:$PORT" --admin-url "http://127.0.0.1:$ADMIN_PORT" --clients "$CLIENTS" --batch "$BATCH" --events "$EVENTS" --users "$USERS" \
    > "$OUT/load.json"
RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
LOG_BYTES=$(du -sb "$OUT/data" | cut -f1)

# Crash and recover.
kill -9 "$PID"
wait "$PID" 2>/dev/null || true
start_server "$OUT/serve-2.log"
RECOVERY_S=$STARTUP_S
RECOVERED=$(grep "outcome log recovered" "$OUT/serve-2.log" | sed 's/.*recovered //')
"$LOAD" --url "http://127.0.0.1:$PORT" --admin-url "http://127.0.0.1:$ADMIN_PORT" --events 0 --skip-exposures --report-samples 50 > "$OUT/after-restart.json"

python3 - "$OUT" "$RSS_KB" "$LOG_BYTES" "$RECOVERY_S" "$RECOVERED" <<'EOF'
import json, sys
out, rss, log_bytes, rec_s, recovered = sys.argv[1:6]
load = json.load(open(f"{out}/load.json"))
after = json.load(open(f"{out}/after-restart.json"))
summary = {
    "events": load["events"],
    "clients": load["clients"],
    "batch": load["batch"],
    "events_per_second": round(load["events_per_second"]),
    "batch_latency_ms": load["batch_latency_ms"],
    "exposure_rows_per_second": round(load["exposures"]["rows_per_second"]),
    "report_json_ms": load["report_json_ms"],
    "report_html_ms": load["report_html_ms"],
    "server_rss_mib": round(int(rss) / 1024),
    "data_dir_mib": round(int(log_bytes) / 2**20),
    "restart_after_sigkill_s": round(float(rec_s), 2),
    "recovery": recovered,
    "report_json_ms_after_restart": after["report_json_ms"],
    "decision": load["report_decision"]["decision"],
    "ingest_counters": after["ingest_counters"],
}
print(json.dumps(summary, indent=2))
EOF
