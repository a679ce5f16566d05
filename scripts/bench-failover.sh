#!/bin/bash
# Failover time on PostgreSQL: three release `lqsm server`s share one fresh schema; PENDING
# no-op jobs are submitted (no worker runs them, so they stay pending and every new leader
# restores them all); then KILLS times the leader is stopped (kill -9, or SIGTERM with
# SIGNAL=TERM) and restarted as a follower. Each failover is timed from the signal until
# another server reports `lqsm_leader 1` in /metrics, which it sets once the state is
# restored and its scheduler runs. Prints each time, then min, median and max.
# Build first: cargo build --release -p lqsm-cli
# Usage: scripts/bench-failover.sh [PENDING] [KILLS]
#   scripts/bench-failover.sh 100000 10            # kill -9
#   SIGNAL=TERM scripts/bench-failover.sh 100000 10
# PG (default postgresql://postgres@127.0.0.1:5432/test), PORT (first of three) and DIR
# choose the database, the ports and the scratch directory.
set -u
PENDING=${1:-100000}
KILLS=${2:-10}
SIGNAL=${SIGNAL:-KILL}
PG=${PG:-postgresql://postgres@127.0.0.1:5432/test}
PORT=${PORT:-7460}
DIR=${DIR:-/tmp/lqsm-failover-bench}
SCHEMA=lqsm_failover_bench
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/lqsm
[ -x "$BIN" ] || { echo "missing $BIN: cargo build --release -p lqsm-cli" >&2; exit 1; }
psql "$PG" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1
rm -rf "$DIR"; mkdir -p "$DIR"
PIDS=()
start() { # start server $1 (0..2)
    cat > "$DIR/s$1.toml" <<EOF
[store]
backend = "postgres"
url = "$PG"
schema = "$SCHEMA"
node = "s$1"
EOF
    RUST_LOG=warn $BIN server --config "$DIR/s$1.toml" --listen 127.0.0.1:$((PORT + $1)) \
        --data-dir "$DIR/d$1" >> "$DIR/s$1.log" 2>&1 &
    PIDS[$1]=$!
    until curl -sf http://127.0.0.1:$((PORT + $1))/readyz >/dev/null; do sleep 0.02; done
}
leads() { curl -sf --max-time 1 http://127.0.0.1:$((PORT + $1))/metrics | grep -q '^lqsm_leader 1'; }
cleanup() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; psql "$PG" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1; }
trap cleanup EXIT
for i in 0 1 2; do start $i; done
# The bench would wait for the jobs to run: stop it once they are all pending.
LQSM_SERVER=http://127.0.0.1:$PORT $BIN bench -n "$PENDING" --batch 1000 -c 4 --timeout-s 600 >/dev/null 2>&1 &
BENCH=$!
pending() { curl -sf http://127.0.0.1:$PORT/v1/cluster | grep -oE '"pending":[0-9]+' | grep -oE '[0-9]+'; }
until [ "$(pending || echo 0)" -ge "$PENDING" ]; do sleep 0.2; done
kill $BENCH 2>/dev/null; wait $BENCH 2>/dev/null
echo "pending jobs: $(pending)"
TIMES=()
for k in $(seq 1 "$KILLS"); do
    LEADER=""
    for i in 0 1 2; do leads $i && LEADER=$i; done
    [ -n "$LEADER" ] || { echo "no leader before kill $k" >&2; exit 1; }
    [ -n "${DEBUG:-}" ] && { echo "pids ${PIDS[*]} leader $LEADER"; ss -ltnp | grep -E ":$PORT|:$((PORT+1))|:$((PORT+2))" >&2; }
    T0=$(date +%s.%N)
    kill -"$SIGNAL" "${PIDS[$LEADER]}" 2>/dev/null
    NEW=""
    until [ -n "$NEW" ]; do
        for i in 0 1 2; do [ "$i" != "$LEADER" ] && leads $i && NEW=$i; done
        [ -n "$NEW" ] || sleep 0.02
    done
    T=$(echo "$(date +%s.%N) - $T0" | bc)
    wait "${PIDS[$LEADER]}" 2>/dev/null || true
    printf 'failover %d: s%s -> s%s in %.2f s (load average %s)\n' "$k" "$LEADER" "$NEW" "$T" "$(cut -d' ' -f1 /proc/loadavg)"
    TIMES+=("$T")
    start "$LEADER"
done
printf '%s\n' "${TIMES[@]}" | sort -n | awk '{t[NR]=$1} END {printf "min %.2f s, median %.2f s, max %.2f s over %d failovers\n", t[1], (NR%2 ? t[(NR+1)/2] : (t[NR/2]+t[NR/2+1])/2), t[NR], NR}'
