#!/bin/bash
# The dashboard at scale: a release `lqsm server` holding 1,000,000 pending jobs and
# 10,001 queues (root.flat with 10,000 leaves), then each page asked 30 times; prints the
# server's own time per page (its Server-Timing header: from the request's arrival to the
# answer, rendering and the in-process API calls included) as median and p95, and beside
# it the API call the page makes, timed by curl from the same machine (the ceiling).
# Build first: cargo build --release -p lqsm-cli && cargo build --release -p lqsm-server --example load
# (one command with `--example` would build only the example)
set -u
BIN=target/release/lqsm
LOAD=target/release/examples/load
DATA=${DATA:-/tmp/lqsm-bench-dashboard}
PORT=${PORT:-7433}
BASE=http://127.0.0.1:$PORT
N=${N:-30}
rm -rf $DATA
$BIN server --data-dir $DATA --listen 127.0.0.1:$PORT > $DATA.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for i in $(seq 1 100); do curl -sf $BASE/readyz >/dev/null && break; sleep 0.2; done
curl -s -o /dev/null -X POST -H 'content-type: application/json' -d '{"path":"root.flat","capacity":0}' $BASE/v1/queues
python3 -c "
import json
print(json.dumps({'queues':[{'path':'root.flat.q%05d'%i,'capacity':0.0} for i in range(10000)]}))" > $DATA.batch.json
curl -s -o /dev/null -w "queues: %{http_code}\n" -X POST -H 'content-type: application/json' --data-binary @$DATA.batch.json $BASE/v1/queues/batch
$LOAD $BASE batch 1000 1000 4 | tail -1
echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"
JOB=$(curl -s "$BASE/v1/jobs?order=newest&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["id"])')
stats() { sort -n | awk '{a[NR]=$1} END {printf "median %6.1f ms, p95 %6.1f ms", a[int((NR+1)/2)], a[int(NR*0.95+0.999)]}'; }
page() {  # PAGE-PATH API-PATH
  local server api
  server=$(for i in $(seq 1 $N); do
    curl -s -o /dev/null -D - "$BASE$1" | tr -d '\r' | sed -n 's/^server-timing: render;dur=//Ip'
  done | stats)
  api=$(for i in $(seq 1 $N); do
    curl -s -o /dev/null -w '%{time_total}\n' "$BASE$2" | awk '{print $1*1000}'
  done | stats)
  printf "%-44s server %s | API %-40s %s\n" "$1" "$server" "$2" "$api"
}
page "/ui/queues?path=root.flat" "/v1/queues/root.flat?depth=1&limit=100"
page "/ui/queues" "/v1/queues/root?depth=1&limit=100"
page "/ui/queues/rows?path=root.flat&level=1" "/v1/queues/root.flat?depth=1&limit=100"
page "/ui/jobs" "/v1/jobs?order=newest&limit=50"
page "/ui/jobs?queue=root.default&state=pending" "/v1/jobs?order=newest&limit=50&queue=root.default&state=pending"
# The worst case: filters no index covers and nothing matches, so each page examines its
# most (10,000 jobs) and ends short.
page "/ui/jobs?submitter=nobody" "/v1/jobs?order=newest&limit=50&submitter=nobody"
page "/ui/jobs?queue=root.default&state=failed" "/v1/jobs?order=newest&limit=50&queue=root.default&state=failed"
page "/ui/jobs/$JOB" "/v1/jobs/$JOB"
page "/ui" "/v1/cluster"
