#!/bin/bash
# Fills a server with N thousand pending jobs, reads its RSS, kills it with -9 and
# times the restart until /readyz. Build first:
#   cargo build --release -p lqsm-cli -p lqsm-server --example load
set -u
N_BATCHES=${1:-1000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/lqsm
LOAD=$ROOT/target/release/examples/load
DIR=/tmp/lqsm-restart-bench
rm -rf $DIR; mkdir -p $DIR
RUST_LOG=warn $BIN server --listen 127.0.0.1:7432 --data-dir $DIR/data > $DIR/out1 2> $DIR/err1 &
until curl -sf http://127.0.0.1:7432/readyz >/dev/null; do sleep 0.05; done
$LOAD http://127.0.0.1:7432 batch $N_BATCHES 1000 4
PID=$(pgrep -f "lqsm server --listen 127.0.0.1:7432")
grep VmRSS /proc/$PID/status
kill -9 $PID; sleep 0.5
START=$(date +%s.%N)
RUST_LOG=warn $BIN server --listen 127.0.0.1:7432 --data-dir $DIR/data > $DIR/out2 2> $DIR/err2 &
until curl -sf http://127.0.0.1:7432/readyz >/dev/null; do sleep 0.02; done
END=$(date +%s.%N)
echo "restart to ready: $(echo "$END - $START" | bc) s"
PID=$(pgrep -f "lqsm server --listen 127.0.0.1:7432")
grep VmRSS /proc/$PID/status
curl -s http://127.0.0.1:7432/v1/cluster; echo
kill $PID
