#!/bin/bash
# End to end: a release `lqsm server` (durable store) and one `lqsm worker`, then
# `lqsm bench -n N --batch 1000 -c 4` three times (no-op function jobs submitted and run
# to completion); prints each completion rate and their median. Build first:
#   cargo build --release -p lqsm-cli
# Usage: scripts/bench-e2e.sh [N] [worker args...]
#   scripts/bench-e2e.sh 100000                       # the default worker
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
[ -x "$BIN" ] || { echo "missing $BIN: cargo build --release -p lqsm-cli" >&2; exit 1; }
rm -rf "$DIR"; mkdir -p "$DIR"
RUST_LOG=warn $BIN server --listen 127.0.0.1:$PORT --data-dir "$DIR/data" > "$DIR/server.out" 2>&1 &
SERVER=$!
trap 'kill $WORKER $SERVER 2>/dev/null; wait 2>/dev/null' EXIT
until curl -sf $URL/readyz >/dev/null; do sleep 0.05; done
RUST_LOG=warn $BIN worker --server $URL "$@" > "$DIR/worker.out" 2>&1 &
WORKER=$!
until [ "$(curl -sf $URL/v1/workers | grep -c '"id"')" -ge 1 ]; do sleep 0.05; done
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
RATES=()
for run in 1 2 3; do
    RATE=$(LQSM_SERVER=$URL $BIN bench -n "$N" --batch 1000 -c 4 | grep "completion rate" | grep -oE '[0-9]+ jobs/s' | grep -oE '[0-9]+')
    echo "run $run: $RATE jobs/s (load average $(cut -d' ' -f1 /proc/loadavg))"
    RATES+=("$RATE")
done
MEDIAN=$(printf '%s\n' "${RATES[@]}" | sort -n | sed -n 2p)
echo "median: $MEDIAN jobs/s"
