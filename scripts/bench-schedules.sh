#!/bin/bash
# What 10,000 schedules firing every second cost the submission path: three runs, each
# of two fresh release `lqsm server`s (embedded store): on the first, batched submissions
# alone (`load URL batch 200 1000 4`); on the second, SCHEDULES schedules are created
# (every 1 s, a no-op function job each, in root.default, no worker: the jobs stay
# pending) and, once they fire, the same submissions. Prints both rates per run, the jobs
# the schedules made meanwhile, and the median ratio.
# Build first:
#   cargo build --release -p lqsm-cli && cargo build --release -p lqsm-server --example load
# Usage: scripts/bench-schedules.sh [SCHEDULES]       (default 10000; env PORT, DIR)
set -u
SCHEDULES=${1:-10000}
PORT=${PORT:-7490}
DIR=${DIR:-/tmp/lqsm-schedules-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/lqsm
LOAD=$ROOT/target/release/examples/load
URL=http://127.0.0.1:$PORT
for b in "$BIN" "$LOAD"; do
    [ -x "$b" ] || { echo "missing $b: see the build line at the top of $0" >&2; exit 1; }
done
rate() { grep -oE '= [0-9]+ jobs/s' | grep -oE '[0-9]+'; }
fired() { curl -sf "$URL/v1/cluster" | grep -oE '"pending":[0-9]+' | grep -oE '[0-9]+'; }
fresh() {
    rm -rf "$DIR"; mkdir -p "$DIR"
    RUST_LOG=warn $BIN server --listen 127.0.0.1:$PORT --data-dir "$DIR/data" > "$DIR/server.log" 2>&1 &
    SERVER=$!
    until curl -sf $URL/readyz >/dev/null; do sleep 0.05; done
}
RATIOS=()
for run in 1 2 3; do
    fresh
    ALONE=$($LOAD $URL batch 200 1000 4 | rate)
    kill $SERVER; wait $SERVER 2>/dev/null
    fresh
    # Many schedules at once: 16 clients creating them.
    python3 - "$URL" "$SCHEDULES" <<'EOF'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
url, n = sys.argv[1], int(sys.argv[2])
def create(i):
    body = json.dumps({"name": f"s{i}", "every_ms": 1000,
                       "job": {"queue": "root.default",
                               "kind": {"type": "function", "handler": "lqsm.noop", "args": {}}}}).encode()
    req = urllib.request.Request(url + "/v1/schedules", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 201, r.status
with ThreadPoolExecutor(16) as pool:
    list(pool.map(create, range(n)))
EOF
    BEFORE=$(fired)
    sleep 3
    WITH=$($LOAD $URL batch 200 1000 4 | rate)
    AFTER=$(fired)
    LOAD_AVG=$(cut -d' ' -f1 /proc/loadavg)
    RATIO=$(echo "scale=2; ${WITH:-0} / ${ALONE:-1}" | bc)
    echo "run $run: alone ${ALONE:-failed} jobs/s, with $SCHEDULES schedules ${WITH:-failed} jobs/s (ratio $RATIO); the schedules made $((AFTER - BEFORE - 200000)) jobs during the second run (load average $LOAD_AVG)"
    RATIOS+=("$RATIO")
    kill $SERVER; wait $SERVER 2>/dev/null
done
echo "median ratio: $(printf '%s\n' "${RATIOS[@]}" | sort -n | sed -n 2p)"
