#!/bin/bash
# Workflows against their ceiling: three runs, each measurement on a fresh release
# `lqsm standalone` (server and one worker in one process, embedded store, default
# settings, empty data directory), no-op function jobs in root.default:
#   chord     one workflow of CHORD `lqsm.noop` members and one `lqsm.echo` callback
#             after all of them with `pass_results` (CHORD+1 nodes). Timed from sending
#             the POST to the callback's end (`GET /v1/jobs/{id}/wait`); checks the
#             callback got CHORD inputs.
#   chord-id  one workflow (a group) of CHORD `lqsm.noop` members, then the callback as
#             a single job (`POST /v1/jobs`) with `after` = their CHORD ids.
#   ceiling   the same CHORD+1 no-op jobs with no dependencies, `POST /v1/jobs/batch`
#             (at most 10,000 a request, so two), timed until the last has succeeded
#             (its `finished_at_ms`, the server's clock, which is this machine's).
#   chains    CHAINS workflows of LEN `lqsm.noop` nodes, each after the one before with
#             `pass_results`, posted by THREADS client threads; jobs/s from the first
#             POST to the last job's end.
#   peer      the same CHAINS*LEN no-op jobs with no dependencies, posted the same way:
#             CHAINS batch requests of LEN jobs by THREADS threads (what the requests
#             cost, without the dependencies).
#   ceiling   the same CHAINS*LEN jobs with no dependencies in one batch request.
# Prints every run, the medians and the ratios (the workflow's time over the other's),
# the load average and the cpu seconds the standalone process used per measurement.
# Build first:
#   CARGO_BUILD_JOBS=1 cargo build --release -p lqsm-cli
# Usage: scripts/bench-workflows.sh [CHORD] [CHAINS] [LEN] [THREADS]
#        (defaults 10000 1000 10 4; env PORT (7495), BIN (target/release/lqsm))
set -u
unset ${!LQSM_@}   # default settings, as a new user gets them
CHORD=${1:-10000}
CHAINS=${2:-1000}
LEN=${3:-10}
THREADS=${4:-4}
PORT=${PORT:-7495}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/lqsm}
URL=http://127.0.0.1:$PORT
TICKS=$(getconf CLK_TCK)
[ -x "$BIN" ] || { echo "missing $BIN: CARGO_BUILD_JOBS=1 cargo build --release -p lqsm-cli" >&2; exit 1; }
if curl -sf "$URL/readyz" >/dev/null 2>&1; then
    echo "something already answers on $URL: choose another PORT" >&2; exit 1
fi
DIR=$(mktemp -d /tmp/lqsm-workflows-bench.XXXXXX)
SERVER=
PY=$DIR/bench.py
stop() {
    if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; fi
    SERVER=
}
trap 'stop; rm -rf "$DIR"' EXIT
trap 'exit 130' INT TERM

cat > "$PY" <<'EOF'
import json, sys, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

url, mode = sys.argv[1], sys.argv[2]
Q = "root.default"
NOOP = {"type": "function", "handler": "lqsm.noop", "args": None}
ECHO = {"type": "function", "handler": "lqsm.echo", "args": None}
INLINE = 256 * 1024  # the server's INLINE_INPUTS_BYTES

def call(method, path, body=None, timeout=60):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data, {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())

def counts():
    return call("GET", "/v1/queues/" + Q)[1]["counts"]

def until_ended(n, t0, deadline=300):
    """Polls the queue's counts every 10 ms until n jobs have ended; seconds since t0."""
    while True:
        c = counts()
        ended = c["succeeded"] + c["failed"] + c["cancelled"] + c["expired"]
        if ended >= n:
            t = time.monotonic() - t0
            if c["succeeded"] != n:
                sys.exit(f"{ended} ended but {c['succeeded']} succeeded of {n}: {c}")
            return t
        if time.monotonic() - t0 > deadline:
            sys.exit(f"not done after {deadline} s: {c}")
        time.sleep(0.01)

def last_end(wall0):
    """Seconds from wall0 (ms) to the last job's end, by the server's own timestamps."""
    last, cursor = 0, ""
    while True:
        page = call("GET", f"/v1/jobs?queue={Q}&limit=1000" + cursor)[1]
        last = max([last] + [j["finished_at_ms"] for j in page["jobs"]])
        if not page.get("next_cursor"):
            return (last - wall0) / 1000
        cursor = "&cursor=" + page["next_cursor"]

def attempt(view):
    return view["attempts"][-1] if view.get("attempts") else {}

def chord(members, by_id):
    nodes = [{"name": f"m{i}", "queue": Q, "kind": NOOP} for i in range(members)]
    callback = {"queue": Q, "kind": ECHO, "pass_results": True}
    if not by_id:
        nodes.append(dict(callback, name="cb", after=[f"m{i}" for i in range(members)]))
    body = json.dumps({"nodes": nodes}).encode()
    wall0, t0 = time.time() * 1000, time.monotonic()
    status, answer = call("POST", "/v1/workflows", body)
    assert status == 201, status
    posted = time.monotonic() - t0
    if by_id:
        ids = [n["id"] for n in answer["nodes"]]
        status, cb = call("POST", "/v1/jobs", dict(callback, after=ids))
        assert status == 201, (status, cb)
        cb_id = cb["id"]
    else:
        cb_id = answer["nodes"][-1]["id"]
    posted_all = time.monotonic() - t0
    _, view = call("GET", f"/v1/jobs/{cb_id}/wait?timeout_ms=300000", timeout=330)
    total = time.monotonic() - t0
    if view["state"] != "succeeded":
        sys.exit(f"callback ended {view['state']}: {view.get('reason')}")
    inputs = (view.get("result") or {}).get("inputs")
    if not isinstance(inputs, list) or len(inputs) != members:
        sys.exit(f"callback got {None if inputs is None else len(inputs)} inputs, not {members}")
    # Afterwards, untimed: where the time went, from the server's own timestamps.
    _, wf = call("GET", f"/v1/workflows/{answer['id']}", timeout=120)
    ms = [n for n in wf["nodes"] if n["id"] != cb_id]
    assert len(ms) == members and all(n["state"] == "succeeded" for n in ms), wf["counts"]
    size = sum(len(json.dumps(n.get("result"))) for n in ms)
    first_start = min(attempt(n)["started_at_ms"] for n in ms) - wall0
    last_end = max(n["finished_at_ms"] for n in ms) - wall0
    a = attempt(view)
    print(f"{total:.3f} s (posted in {posted:.3f} s{'' if not by_id else f', callback posted at {posted_all:.3f} s'}; "
          f"members ran {first_start/1000:.2f}-{last_end/1000:.2f} s; callback assigned "
          f"{(a['scheduled_at_ms'] - wall0)/1000:.2f} s, ended {(view['finished_at_ms'] - wall0)/1000:.2f} s); "
          f"{len(inputs)} inputs, {'inline' if size <= INLINE else 'by reference'} "
          f"({size} bytes of parents' results, {INLINE} inline at most)")

def batch(n, size, threads):
    """n independent jobs, `size` a request, posted by `threads` threads."""
    jobs = [{"queue": Q, "kind": NOOP} for _ in range(n)]
    bodies = [json.dumps({"jobs": jobs[i:i + size]}).encode() for i in range(0, n, size)]
    def post(body):
        status, answer = call("POST", "/v1/jobs/batch", body)
        assert status == 200, status
    wall0, t0 = time.time() * 1000, time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, bodies))
    posted = time.monotonic() - t0
    polled = until_ended(n, t0)
    total = last_end(wall0)
    print(f"{total:.3f} s ({n / total:.0f} jobs/s; {len(bodies)} requests posted in {posted:.3f} s; "
          f"the last job ended at {total:.3f} s, seen by polling at {polled:.3f} s)")

def chains(count, length, threads):
    bodies = []
    for _ in range(count):
        nodes = [{"name": "0", "queue": Q, "kind": NOOP}]
        for i in range(1, length):
            nodes.append({"name": str(i), "queue": Q, "kind": NOOP, "after": [str(i - 1)], "pass_results": True})
        bodies.append(json.dumps({"nodes": nodes}).encode())
    def post(body):
        status, answer = call("POST", "/v1/workflows", body)
        assert status == 201, status
        return answer["id"]
    wall0, t0 = time.time() * 1000, time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        ids = list(pool.map(post, bodies))
    posted = time.monotonic() - t0
    polled = until_ended(count * length, t0)
    total = last_end(wall0)
    # Afterwards, untimed: the hop from one link's end to the next one's start, in 20 chains.
    hops = []
    for wf in ids[:: max(1, count // 20)]:
        nodes = sorted(call("GET", f"/v1/workflows/{wf}")[1]["nodes"], key=lambda n: int(n["name"]))
        assert all(n["state"] == "succeeded" for n in nodes)
        hops += [attempt(b)["started_at_ms"] - a["finished_at_ms"] for a, b in zip(nodes, nodes[1:])]
    hops.sort()
    print(f"{total:.3f} s ({count * length / total:.0f} jobs/s; {count} workflows posted in {posted:.3f} s; "
          f"hop from a link's end to the next one's start p50 {hops[len(hops) // 2]} ms, "
          f"p90 {hops[len(hops) * 9 // 10]} ms, max {hops[-1]} ms; seen by polling at {polled:.3f} s)")

if mode == "chord":
    chord(int(sys.argv[3]), False)
elif mode == "chord-id":
    chord(int(sys.argv[3]), True)
elif mode == "batch":
    batch(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
elif mode == "chains":
    chains(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
EOF

cpu_seconds() { awk -v t="$TICKS" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
fresh() {
    stop
    rm -rf "$DIR/data"
    RUST_LOG=warn "$BIN" standalone --listen 127.0.0.1:$PORT --server "$URL" --data-dir "$DIR/data" \
        > "$DIR/standalone.log" 2>&1 &
    SERVER=$!
    local i=0
    until curl -sf "$URL/readyz" >/dev/null; do
        sleep 0.05; i=$((i + 1))
        if [ $i -gt 600 ] || ! kill -0 $SERVER 2>/dev/null; then
            echo "the standalone did not become ready:" >&2; cat "$DIR/standalone.log" >&2; exit 1
        fi
    done
    until [ "$(curl -sf "$URL/v1/workers" | grep -c '"id"')" -ge 1 ]; do
        sleep 0.05; i=$((i + 1))
        [ $i -gt 1200 ] && { echo "the standalone's worker did not register" >&2; exit 1; }
    done
}
# measure NAME ARGS...: on a fresh standalone; prints the line, appends the seconds to NAME.
measure() {
    local name=$1; shift
    fresh
    local before out secs
    before=$(cpu_seconds $SERVER)
    out=$(python3 "$PY" "$URL" "$@") || { echo "$name failed: $out" >&2; exit 1; }
    secs=${out%% s*}
    printf '  %-8s %s [cpu %.2f s, load %s]\n' "$name" "$out" \
        "$(echo "$(cpu_seconds $SERVER) - $before" | bc)" "$(cut -d' ' -f1 /proc/loadavg)"
    eval "$name+=(\"$secs\")"
    stop
}
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }

chord=(); chord_id=(); chord_ceiling=(); chains=(); chains_peer=(); chains_ceiling=()
ratio() { printf '%.2f' "$(echo "scale=4; $1 / $2" | bc)"; }
echo "lqsm $("$BIN" --version 2>/dev/null | head -1), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "chord $CHORD jobs, ceiling $((CHORD + 1)); chains $CHAINS x $LEN by $THREADS threads"
for run in 1 2 3; do
    echo "run $run:"
    measure chord chord "$CHORD"
    measure chord_id chord-id "$CHORD"
    measure chord_ceiling batch $((CHORD + 1)) 10000 1
    measure chains chains "$CHAINS" "$LEN" "$THREADS"
    measure chains_peer batch $((CHAINS * LEN)) "$LEN" "$THREADS"
    measure chains_ceiling batch $((CHAINS * LEN)) 10000 1
done
C=$(median "${chord[@]}"); CI=$(median "${chord_id[@]}"); CC=$(median "${chord_ceiling[@]}")
H=$(median "${chains[@]}"); HP=$(median "${chains_peer[@]}"); HC=$(median "${chains_ceiling[@]}")
N=$((CHAINS * LEN))
echo "medians (time; a ratio is the workflow's time over the other's):"
echo "  chord, one workflow of $CHORD members + a callback: $C s; ratio to the ceiling $(ratio "$C" "$CC")"
echo "  chord-id, $CHORD members + a callback by id:     $CI s; ratio to the ceiling $(ratio "$CI" "$CC")"
echo "  ceiling, $((CHORD + 1)) independent jobs in batches of 10,000: $CC s ($(echo "($CHORD + 1) / $CC" | bc) jobs/s)"
echo "  chains, $CHAINS workflows of $LEN:                 $H s ($(echo "$N / $H" | bc) jobs/s); ratio to the peer $(ratio "$H" "$HP"), to the ceiling $(ratio "$H" "$HC")"
echo "  peer, $N independent jobs in $CHAINS batches of $LEN: $HP s ($(echo "$N / $HP" | bc) jobs/s)"
echo "  ceiling, $N independent jobs in one batch:      $HC s ($(echo "$N / $HC" | bc) jobs/s)"
echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
