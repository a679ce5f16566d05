#!/bin/bash
# Benchmark of reads under load: 1,000,000 jobs stored, 64 single submitters, with and
# without 8 listers (20 lists/s each). Usage: run.sh (from the worktree root).
set -u
BIN=target/release/lqsm
LOAD=target/release/examples/load
DATA=${DATA:-/tmp/lqsm-bench-reads}
PORT=7431
BASE=http://127.0.0.1:$PORT
rm -rf $DATA
$BIN server --data-dir $DATA --listen 127.0.0.1:$PORT > $DATA.log 2>&1 &
SERVER=$!
for i in $(seq 1 100); do curl -sf $BASE/readyz >/dev/null && break; sleep 0.2; done
$LOAD $BASE batch 1000 1000 4
metric() { curl -s $BASE/metrics | grep -E "^$1(_sum|_count)" | tr '\n' ' '; }
for run in 1 2 3; do
  for listers in 0 8; do
    echo "== run $run listers $listers load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "before: $(metric lqsm_view_publish_seconds)"
    $LOAD $BASE single 10 64 $listers
    echo "after: $(metric lqsm_view_publish_seconds)"
  done
done
curl -s $BASE/v1/cluster; echo
kill $SERVER; wait $SERVER
