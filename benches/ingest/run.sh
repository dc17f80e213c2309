#!/usr/bin/env bash
# Durable ingestion benchmark of the sidecar (see README.md here). For each
# log in LOGS (default: "file nats", measured one after the other in the
# same run so their ratio means something on a shared machine):
#   1. `abmesh serve --data-dir` (release build) on a fresh directory; with
#      `nats`, on a fresh three-node NATS JetStream cluster on loopback
#      (`--log nats://.../INGEST?replicas=3`: every write acknowledged by
#      the stream's quorum);
#   2. USERS users exposed through /v1/exposures;
#   3. EVENTS outcome events posted by CLIENTS clients in batches of BATCH
#      over HTTP, each batch acknowledged only once durable and applied;
#   4. report latency (JSON and HTML) at that volume;
#   5. SIGKILL, restart on the same directory: recovery time, and the
#      report latency again;
#   6. with `nats` only: a new replica with an empty data directory, which
#      catches up from the stream (and its shared snapshot): catch-up time.
# Prints a JSON summary per log and the ratios; everything also lands in
# $OUT (default: a temp dir).
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
LOGS=${LOGS:-file nats}
PORT=${PORT:-8091}
ADMIN_PORT=${ADMIN_PORT:-8092}
NATS_BASE=${NATS_BASE:-14222}
OUT=${OUT:-$(mktemp -d /tmp/abmesh-ingest-bench.XXXXXX)}
mkdir -p "$OUT"

# BIN=path runs another abmesh binary (an older build, say) with the same
# load generator; SKIP_BUILD=1 uses what is built.
TARGET=${CARGO_TARGET_DIR:-target}
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release -p abmesh --bin abmesh --example ingest_load >&2
BIN=${BIN:-$TARGET/release/abmesh}
LOAD=$TARGET/release/examples/ingest_load

cat > "$OUT/experiments.json" <<'EOF'
{"experiments":[{"name":"ranker","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}
EOF

PID=
NATS_PIDS=()
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    for p in "${NATS_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# A three-node JetStream cluster on loopback: client ports NATS_BASE..+2,
# routes +100.., monitoring +200...
nats_start() {
    local dir=$1 routes="" i
    for i in 0 1 2; do routes+="nats-route://127.0.0.1:$((NATS_BASE + 100 + i)),"; done
    for i in 0 1 2; do
        mkdir -p "$dir/n$i"
        cat > "$dir/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:$((NATS_BASE + i))
http: 127.0.0.1:$((NATS_BASE + 200 + i))
jetstream { store_dir: "$dir/n$i/js", max_file_store: 64GB }
cluster { name: bench, listen: 127.0.0.1:$((NATS_BASE + 100 + i)), routes: [${routes%,}] }
EOF
        nats-server -c "$dir/n$i.conf" >"$dir/n$i.log" 2>&1 &
        NATS_PIDS+=($!)
    done
    for _ in $(seq 1 300); do
        if curl -s "http://127.0.0.1:$((NATS_BASE + 200))/jsz" | grep -q '"leader": *"n'; then return 0; fi
        sleep 0.1
    done
    echo "the NATS cluster did not elect a JetStream leader" >&2
    exit 1
}

nats_stop() {
    for p in "${NATS_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${NATS_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    NATS_PIDS=()
}

# Starts the server; sets PID, and STARTUP_S to the seconds until it
# listened (recovery or catch-up included).
start_server() {
    local log=$1 dir=$2 t0 t1
    shift 2
    t0=$(date +%s.%N)
    "$BIN" serve --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
        --data-dir "$dir" --experiments "$OUT/experiments.json" "$@" \
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

run_one() {
    local log=$1 out=$OUT/$1 args=()
    mkdir -p "$out"
    if [[ $log == nats ]]; then
        nats_start "$out/nats"
        args=(--log "nats://127.0.0.1:$NATS_BASE,127.0.0.1:$((NATS_BASE + 1)),127.0.0.1:$((NATS_BASE + 2))/INGEST?replicas=3")
    fi
    start_server "$out/serve-1.log" "$out/data" "${args[@]}"
    echo "[$log] ingesting $EVENTS events from $CLIENTS clients in batches of $BATCH" >&2
    "$LOAD" --url "http://127.0.0.1:$PORT" --admin-url "http://127.0.0.1:$ADMIN_PORT" --clients "$CLIENTS" --batch "$BATCH" --events "$EVENTS" --users "$USERS" \
        > "$out/load.json"
    RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
    DISK_BYTES=$(du -sb "$out/data" | cut -f1)
    [[ $log == nats ]] && DISK_BYTES=$(du -sb "$out/nats" | cut -f1)

    # Crash and recover.
    kill -9 "$PID"
    wait "$PID" 2>/dev/null || true
    start_server "$out/serve-2.log" "$out/data" "${args[@]}"
    RECOVERY_S=$STARTUP_S
    RECOVERED=$(grep "outcome log recovered" "$out/serve-2.log" | sed 's/.*recovered //')
    "$LOAD" --url "http://127.0.0.1:$PORT" --admin-url "http://127.0.0.1:$ADMIN_PORT" --events 0 --skip-exposures --report-samples 50 > "$out/after-restart.json"
    CATCHUP_S=null
    if [[ $log == nats ]]; then
        # A new replica, empty data directory: catches up from the stream
        # (starting from the newest snapshot in the object store, if any).
        kill "$PID"; wait "$PID" 2>/dev/null || true
        start_server "$out/serve-3.log" "$out/data-new" "${args[@]}"
        CATCHUP_S=$STARTUP_S
        grep -h "restoring the newest snapshot\|caught up" "$out/serve-3.log" | sed 's/^/  /' >&2 || true
    fi
    kill "$PID"; wait "$PID" 2>/dev/null || true
    PID=
    nats_stop
    python3 - "$log" "$out" "$RSS_KB" "$DISK_BYTES" "$RECOVERY_S" "$RECOVERED" "$CATCHUP_S" <<'EOF'
import json, sys
log, out, rss, disk, rec_s, recovered, catchup = sys.argv[1:8]
load = json.load(open(f"{out}/load.json"))
after = json.load(open(f"{out}/after-restart.json"))
summary = {
    "log": log,
    "events": load["events"],
    "users": load["exposures"]["users"],
    "clients": load["clients"],
    "batch": load["batch"],
    "events_per_second": round(load["events_per_second"]),
    "batch_latency_ms": load["batch_latency_ms"],
    "exposure_rows_per_second": round(load["exposures"]["rows_per_second"]),
    "report_json_ms": load["report_json_ms"],
    "report_html_ms": load["report_html_ms"],
    "server_rss_mib": round(int(rss) / 1024),
    "log_on_disk_mib": round(int(disk) / 2**20),
    "restart_after_sigkill_s": round(float(rec_s), 2),
    "recovery": recovered,
    "new_replica_catch_up_s": None if catchup == "null" else round(float(catchup), 2),
    "report_json_ms_after_restart": after["report_json_ms"],
    "decision": load["report_decision"]["decision"],
    "ingest_counters": after["ingest_counters"],
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
EOF
}

for log in $LOGS; do
    run_one "$log"
done

python3 - "$OUT" $LOGS <<'EOF'
import json, sys
out, logs = sys.argv[1], sys.argv[2:]
s = {l: json.load(open(f"{out}/{l}/summary.json")) for l in logs}
if "file" in s and "nats" in s:
    f, n = s["file"], s["nats"]
    print(json.dumps({
        "nats_vs_file_events_per_second": round(n["events_per_second"] / f["events_per_second"], 3),
        "file_events_per_second": f["events_per_second"],
        "nats_events_per_second": n["events_per_second"],
        "nats_new_replica_catch_up_s": n["new_replica_catch_up_s"],
        "report_json_ms_p50": {l: s[l]["report_json_ms"]["p50"] for l in logs},
    }, indent=2))
EOF
