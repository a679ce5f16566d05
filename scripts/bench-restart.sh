#!/bin/bash
# Fills a server with N thousand pending jobs, reads its RSS, kills it with -9 and
# times the restart until /readyz, then reads the RSS again. Build first (two commands:
# naming an example limits a build to the targets named):
#   cargo build --release -p lqsm-cli && cargo build --release -p lqsm-server --example load
# PORT and DIR choose the port and the scratch directory (emptied first), so that
# several runs on one machine do not collide.
set -u
N_BATCHES=${1:-1000}
PORT=${PORT:-7432}
DIR=${DIR:-/tmp/lqsm-restart-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/lqsm
LOAD=$ROOT/target/release/examples/load
URL=http://127.0.0.1:$PORT
for f in "$BIN" "$LOAD"; do
    [ -x "$f" ] || { echo "missing $f: build it first (see the top of this script)" >&2; exit 1; }
done
rm -rf "$DIR"; mkdir -p "$DIR"
RUST_LOG=warn $BIN server --listen 127.0.0.1:$PORT --data-dir "$DIR/data" > "$DIR/out1" 2> "$DIR/err1" &
PID=$!
until curl -sf $URL/readyz >/dev/null; do sleep 0.05; done
$LOAD $URL batch "$N_BATCHES" 1000 4
grep VmRSS /proc/$PID/status
kill -9 $PID; wait $PID 2>/dev/null; sleep 0.5
START=$(date +%s.%N)
RUST_LOG=warn,lqsm_server=info $BIN server --listen 127.0.0.1:$PORT --data-dir "$DIR/data" > "$DIR/out2" 2> "$DIR/err2" &
PID=$!
until curl -sf $URL/readyz >/dev/null; do sleep 0.02; done
END=$(date +%s.%N)
echo "restart to ready: $(echo "$END - $START" | bc) s"
grep VmRSS /proc/$PID/status
grep -a -e "opened the store" -e "restored state" "$DIR/err2" | sed 's/\x1b\[[0-9;]*m//g'
curl -s $URL/v1/cluster; echo
kill $PID; wait $PID 2>/dev/null
