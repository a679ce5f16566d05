#!/bin/bash
# The view's cost with 100,000 queues: create them in 10 batches, then submit single jobs
# for 10 s and read lqsm_view_publish_seconds before and after.
set -u
BIN=target/release/lqsm
LOAD=target/release/examples/load
DATA=${DATA:-/tmp/lqsm-bench-queue-view}
PORT=7432
BASE=http://127.0.0.1:$PORT
rm -rf $DATA
$BIN server --data-dir $DATA --listen 127.0.0.1:$PORT > $DATA.log 2>&1 &
SERVER=$!
for i in $(seq 1 100); do curl -sf $BASE/readyz >/dev/null && break; sleep 0.2; done
start=$(date +%s.%N)
for b in $(seq 0 9); do
  python3 -c "
import json,sys
b=int(sys.argv[1])
print(json.dumps({'queues':[{'path':'root.q%06d'%(b*10000+i),'capacity':0.0} for i in range(10000)]}))" $b > $DATA.batch.json
  curl -s -o /dev/null -w "%{http_code} " -X POST -H 'content-type: application/json' --data-binary @$DATA.batch.json $BASE/v1/queues/batch
done
echo; echo "created 100000 queues in $(echo "$(date +%s.%N) - $start" | bc) s"
metric() { curl -s $BASE/metrics | grep -E "^$1(_sum|_count)" | tr '\n' ' '; }
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "before: $(metric lqsm_view_publish_seconds)"
$LOAD $BASE single 10 64 0
echo "after: $(metric lqsm_view_publish_seconds)"
echo "GET /v1/queues: $(curl -s -o /dev/null -w '%{size_download} bytes in %{time_total} s' $BASE/v1/queues)"
echo "GET /v1/cluster: $(curl -s -o /dev/null -w '%{size_download} bytes in %{time_total} s' $BASE/v1/cluster)"
kill $SERVER; wait $SERVER
