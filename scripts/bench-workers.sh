#!/bin/bash
# 10,000 simulated workers: one release `lqsm server` (port 7480) and one load process
# (`load URL workers N SECONDS`) that registers N workers over HTTP and long-polls as
# real workers do, each running no-op attempts (an assignment is reported succeeded in
# that worker's next poll), while a submitter keeps 200,000 no-op jobs outstanding in
# batches of 1,000 for SECONDS. Then submitting stops, the backlog drains, and the
# workers sit idle in their long-polls for 4 s, when the ESTABLISHED TCP connections to
# the server's port are counted on the server's side (`ss`).
# Per run: placements/s (from the load process), the server's cpu seconds over the timed
# run divided by its length (cores used), the server's peak VmRSS sampled every second,
# the long-polls held open at the idle moment, and the load average.
# First on the embedded store (fresh data directory), then on PostgreSQL (a fresh schema,
# dropped before and after). RUNS runs each (default 3).
# Build first (this script builds nothing):
#   cargo build --release -p lqsm-cli && cargo build --release -p lqsm-server --example load
# Usage: scripts/bench-workers.sh [N] [SECONDS]        (defaults 10000 and 30)
# env: RUNS (3), JOBS (200000), PORT (7480), DIR (/tmp/lqsm-workers-bench), PG,
#      STORES ("embedded postgres")
set -u
N=${1:-10000}
SECONDS_RUN=${2:-30}
RUNS=${RUNS:-3}
JOBS=${JOBS:-200000}
PORT=${PORT:-7480}
DIR=${DIR:-/tmp/lqsm-workers-bench}
PG=${PG:-postgresql://postgres@127.0.0.1:5432/test}
STORES=${STORES:-embedded postgres}
SCHEMA=lqsm_workers_bench
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/lqsm
LOAD=$ROOT/target/release/examples/load
URL=http://127.0.0.1:$PORT
TICKS=$(getconf CLK_TCK)
for b in "$BIN" "$LOAD"; do
    [ -x "$b" ] || { echo "missing $b: cargo build --release -p lqsm-cli && cargo build --release -p lqsm-server --example load" >&2; exit 1; }
done

# Every long-poll is a socket in the server and one in the load process (each needs N
# plus a few hundred descriptors; the limit is per process).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
echo "ulimit -n: $NOFILE (hard $(ulimit -Hn)); $N workers; $SECONDS_RUN s; $JOBS jobs outstanding; $RUNS runs per store"
if [ "$NOFILE" != unlimited ] && [ "$N" -gt $((NOFILE - 500)) ]; then
    echo "too many workers for $NOFILE file descriptors per process: use at most $((NOFILE - 500))" >&2
    exit 1
fi

SERVER=""
LOADPID=""
drop_schema() { psql "$PG" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1; }
stop() { [ -n "$*" ] && { kill "$@" 2>/dev/null; wait "$@" 2>/dev/null; }; }
cleanup() { stop $LOADPID $SERVER; case "$STORES" in *postgres*) drop_schema ;; esac; }
trap cleanup EXIT
cpu_seconds() { awk -v t="$TICKS" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
rss_mb() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
now() { date +%s.%N; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
open_polls() { ss -Htn state established "( sport = :$PORT )" | wc -l; }
wait_line() { # wait_line PATTERN FILE: until a line matches, or the load process ends
    until grep -q "$1" "$2"; do
        kill -0 "$LOADPID" 2>/dev/null || return 1
        sleep 0.1
    done
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

start_server() { # start_server STORE
    rm -rf "$DIR"; mkdir -p "$DIR"
    local config=()
    if [ "$1" = postgres ]; then
        drop_schema
        printf '[store]\nbackend = "postgres"\nurl = "%s"\nschema = "%s"\n' "$PG" "$SCHEMA" > "$DIR/lqsm.toml"
        config=(--config "$DIR/lqsm.toml")
    fi
    RUST_LOG=warn $BIN server "${config[@]}" --listen 127.0.0.1:$PORT --data-dir "$DIR/data" \
        > "$DIR/server.log" 2>&1 &
    SERVER=$!
    until curl -sf $URL/readyz >/dev/null; do
        kill -0 $SERVER 2>/dev/null || { echo "server failed to start:" >&2; cat "$DIR/server.log" >&2; exit 1; }
        sleep 0.05
    done
}

for store in $STORES; do
    RATES=(); CORES=(); RSS=(); OPEN=()
    for run in $(seq "$RUNS"); do
        start_server "$store"
        OUT=$DIR/load.out
        : > "$OUT"
        "$LOAD" "$URL" workers "$N" "$SECONDS_RUN" "$JOBS" > "$OUT" 2>&1 &
        LOADPID=$!
        wait_line '^registered:' "$OUT" || { echo "load failed:"; cat "$OUT"; exit 1; }
        C0=$(cpu_seconds $SERVER); T0=$(now); LOAD0=$(loadavg); PEAK=0
        until grep -q '^run:' "$OUT"; do
            kill -0 $LOADPID 2>/dev/null || { echo "load failed:"; cat "$OUT"; exit 1; }
            R=$(rss_mb $SERVER); [ "${R:-0}" -gt "$PEAK" ] && PEAK=$R
            sleep 1
        done
        C1=$(cpu_seconds $SERVER); T1=$(now); LOAD1=$(loadavg)
        wait_line '^idle:' "$OUT" || { echo "load failed:"; cat "$OUT"; exit 1; }
        sleep 1
        HELD=$(open_polls)
        wait $LOADPID; LOADPID=""
        stop $SERVER; SERVER=""
        RATE=$(grep '^run:' "$OUT" | grep -oE '= [0-9]+ placements/s' | grep -oE '[0-9]+')
        CORE=$(awk -v a="$C0" -v b="$C1" -v s="$T0" -v e="$T1" 'BEGIN {printf "%.2f", (b - a) / (e - s)}')
        echo "$store run $run: ${RATE:-failed} placements/s; server $CORE cores, peak RSS $PEAK MB; $HELD connections established at idle; load average $LOAD0 -> $LOAD1"
        sed 's/^/    /' "$OUT"
        RATES+=("${RATE:-0}"); CORES+=("$CORE"); RSS+=("$PEAK"); OPEN+=("$HELD")
    done
    [ "$store" = postgres ] && drop_schema
    echo "$store median: $(median "${RATES[@]}") placements/s; server $(median "${CORES[@]}") cores, peak RSS $(median "${RSS[@]}") MB; $(median "${OPEN[@]}") long-polls held at idle"
done
