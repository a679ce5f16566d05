#!/usr/bin/env bash
# The long, coverage-guided fuzz run: builds the AFL++ harness, seeds each target's corpus
# (the committed seeds plus structured random inputs), runs one afl-fuzz per target side
# by side, niced, for at most DURATION, and prints each target's executions and crashes.
#
#   fuzz/run-long.sh [DURATION] [OUT_DIR]       (defaults: 2h, fuzz/out)
#
# Needs cargo-afl (`cargo install cargo-afl --locked`). CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")"
DURATION="${1:-2h}"
OUT="${2:-out}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
TARGETS=(api_request api_types core_commands)

cargo afl build --release
mkdir -p "$OUT"
for t in "${TARGETS[@]}"; do
    if [ ! -d "$OUT/in/$t" ]; then
        mkdir -p "$OUT/in/$t"
        cp ../crates/lqsm-fuzz/corpus/"$t"/* "$OUT/in/$t/"
        "$TARGET_DIR/release/make_corpus" "$t" "$OUT/in/$t" 100
    fi
done

# No CPU pinning: the machine is shared, and three fuzzers on two cores must not abort.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
start=$(date +%s)
pids=()
for t in "${TARGETS[@]}"; do
    # `-i -` resumes a run already in $OUT/$t; a first run starts from the corpus.
    input="$OUT/in/$t"
    [ -f "$OUT/$t/default/fuzzer_stats" ] && input=-
    timeout --signal=INT "$DURATION" nice -n 10 \
        cargo afl fuzz -t 5000 -i "$input" -o "$OUT/$t" "$TARGET_DIR/release/$t" \
        >"$OUT/$t.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || true
done
end=$(date +%s)

echo "wall time: $((end - start)) s"
total=0
for t in "${TARGETS[@]}"; do
    stats="$OUT/$t/default/fuzzer_stats"
    execs=$(awk -F' *: *' '$1 == "execs_done" {print $2}' "$stats")
    crashes=$(awk -F' *: *' '$1 == "saved_crashes" {print $2}' "$stats")
    hangs=$(awk -F' *: *' '$1 == "saved_hangs" {print $2}' "$stats")
    echo "$t: $execs executions, $crashes crashes, $hangs hangs"
    total=$((total + execs))
done
echo "total: $total executions"
