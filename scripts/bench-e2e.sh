#!/bin/bash
# End to end: three runs, each on a fresh release `lqsm server` (durable store, empty data
# directory) with one `lqsm worker`: `lqsm bench -n N --batch 1000 -c 4` submits no-op
# function jobs and waits until they have all run. Prints each completion rate, the cpu
# seconds the server and the worker used, and the median rate. Build first:
#   cargo build --release -p lqsm-cli
# Usage: scripts/bench-e2e.sh [N] [worker args...]
#   scripts/bench-e2e.sh 100000                         # the default worker
#   scripts/bench-e2e.sh 100000 --cpus 64 --memory 64G  # capacity never the limit
# PORT and DIR choose the port and the scratch directory (emptied first).
set -u
N=${1:-100000}
shift || true
PORT=${PORT:-7450}
DIR=${DIR:-/tmp/lqsm-e2e-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/lqsm
URL=http://127.0.0.1:$PORT
TICKS=$(getconf CLK_TCK)
[ -x "$BIN" ] || { echo "missing $BIN: cargo build --release -p lqsm-cli" >&2; exit 1; }
cpu_seconds() { awk -v t="$TICKS" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
RATES=()
for run in 1 2 3; do
    rm -rf "$DIR"; mkdir -p "$DIR"
    RUST_LOG=warn $BIN server --listen 127.0.0.1:$PORT --data-dir "$DIR/data" > "$DIR/server.out" 2>&1 &
    SERVER=$!
    until curl -sf $URL/readyz >/dev/null; do sleep 0.05; done
    RUST_LOG=warn $BIN worker --server $URL "$@" > "$DIR/worker.out" 2>&1 &
    WORKER=$!
    until [ "$(curl -sf $URL/v1/workers | grep -c '"id"')" -ge 1 ]; do sleep 0.05; done
    LOAD=$(cut -d' ' -f1 /proc/loadavg)
    RATE=$(LQSM_SERVER=$URL $BIN bench -n "$N" --batch 1000 -c 4 | grep "completion rate" | grep -oE '[0-9]+ jobs/s' | grep -oE '[0-9]+')
    echo "run $run: ${RATE:-failed} jobs/s (load average $LOAD; cpu s: server $(cpu_seconds $SERVER), worker $(cpu_seconds $WORKER))"
    RATES+=("${RATE:-0}")
    kill $WORKER $SERVER 2>/dev/null; wait $WORKER $SERVER 2>/dev/null
done
MEDIAN=$(printf '%s\n' "${RATES[@]}" | sort -n | sed -n 2p)
echo "median: $MEDIAN jobs/s"
