#!/bin/bash
# LQSM on PostgreSQL, with the defaults a new user gets: one release `lqsm server` on a
# fresh schema of the local PostgreSQL, three runs of each figure (a fresh schema and
# server per run), then the medians:
#   batched submit: `load URL batch 200 1000 4` (200,000 no-op jobs, 1,000 a request,
#                   4 clients), acknowledged once durable in PostgreSQL;
#   single submits: `load URL single 10 64` (64 clients, one job a request, 10 s);
#   end to end:     one default `lqsm worker` and `lqsm bench -n 100000 --batch 1000 -c 4`
#                   (no-op function jobs submitted and run to completion).
# Build first:
#   cargo build --release -p lqsm-cli && cargo build --release -p lqsm-server --example load
# Usage: scripts/bench-pg.sh      (env: PG, PORT, DIR)
set -u
PG=${PG:-postgresql://postgres@127.0.0.1:5432/test}
PORT=${PORT:-7470}
DIR=${DIR:-/tmp/lqsm-pg-bench}
SCHEMA=lqsm_pg_bench
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/lqsm
LOAD=$ROOT/target/release/examples/load
URL=http://127.0.0.1:$PORT
for b in "$BIN" "$LOAD"; do
    [ -x "$b" ] || { echo "missing $b: see the build line at the top of $0" >&2; exit 1; }
done
SERVER=""
start() {
    psql "$PG" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1
    rm -rf "$DIR"; mkdir -p "$DIR"
    printf '[store]\nbackend = "postgres"\nurl = "%s"\nschema = "%s"\n' "$PG" "$SCHEMA" > "$DIR/lqsm.toml"
    RUST_LOG=warn $BIN server --config "$DIR/lqsm.toml" --listen 127.0.0.1:$PORT \
        --data-dir "$DIR/data" > "$DIR/server.log" 2>&1 &
    SERVER=$!
    until curl -sf $URL/readyz >/dev/null; do sleep 0.05; done
}
stop() { kill "$@" 2>/dev/null; wait "$@" 2>/dev/null; }
trap 'stop $SERVER; psql "$PG" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1' EXIT
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
rate() { grep -oE '= [0-9]+ jobs/s' | grep -oE '[0-9]+'; }
load() { cut -d' ' -f1 /proc/loadavg; }
BATCH=(); SINGLE=(); E2E=()
for run in 1 2 3; do
    start
    R=$($LOAD $URL batch 200 1000 4 | rate); BATCH+=("${R:-0}")
    echo "run $run: batched submit ${R:-failed} jobs/s (load average $(load))"
    stop $SERVER

    start
    R=$($LOAD $URL single 10 64 | rate); SINGLE+=("${R:-0}")
    echo "run $run: single submits, 64 clients ${R:-failed} jobs/s (load average $(load))"
    stop $SERVER

    start
    RUST_LOG=warn $BIN worker --server $URL > "$DIR/worker.log" 2>&1 &
    WORKER=$!
    until [ "$(curl -sf $URL/v1/workers | grep -c '"id"')" -ge 1 ]; do sleep 0.05; done
    R=$(LQSM_SERVER=$URL $BIN bench -n 100000 --batch 1000 -c 4 | grep "completion rate" | grep -oE '[0-9]+ jobs/s' | grep -oE '[0-9]+')
    E2E+=("${R:-0}")
    echo "run $run: end to end ${R:-failed} jobs/s (load average $(load))"
    stop $WORKER $SERVER
done
echo "median: batched submit $(median "${BATCH[@]}") jobs/s, single submits $(median "${SINGLE[@]}") jobs/s, end to end $(median "${E2E[@]}") jobs/s"
