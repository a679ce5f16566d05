#!/bin/bash
# The ceiling of this machine's PostgreSQL for LQSM's job rows, with no LQSM code involved:
#
#  1. COPY of JOBS job rows (text COPY from a file through psql's \copy, one COPY for the
#     jobs and one for their tag rows) into empty tables that already have their indexes;
#  2. the three durable writes of a job's life, in batches of BATCH jobs, each write one
#     transaction (synchronous_commit on): accepted = INSERT of the rows and tag rows,
#     assigned = UPDATE of state and record, finished = UPDATE of state and record, run
#     by pgbench with CLIENTS connections.
#
# The rows are generated inside the server (generate_series), so this is what PostgreSQL
# itself sustains: no client encodes or sends the records. The tables have the shape of
# LQSM's schema (crates/lqsm-store-postgres/src/migrations.rs, version 1): a 16-byte uuid
# key, a 200-byte record, queue and state with an index each (queue, key), (state, key),
# and a tag table (tag, key) with an index by key; every 5th job is tagged, every 7th too.
# Each figure is printed per run; take the median of the RUNS runs.
#
# Usage: scripts/bench-pg-ceiling.sh     (env: PGURL, JOBS, BATCH, CLIENTS, RUNS)
set -euo pipefail
PGURL=${PGURL:-postgresql://postgres@127.0.0.1:5432/test}
JOBS=${JOBS:-1000000}
BATCH=${BATCH:-1000}
CLIENTS=${CLIENTS:-1}
RUNS=${RUNS:-3}
SCHEMA=lqsm_ceiling
WORK=$(mktemp -d /tmp/lqsm-pg-ceiling.XXXXXX)
trap 'rm -rf "$WORK"; psql "$PGURL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true' EXIT

sql() { PGOPTIONS="-c search_path=$SCHEMA" psql "$PGURL" -v ON_ERROR_STOP=1 -qAt "$@"; }
now() { date +%s.%N; }
rate() { echo "$1 $2 $3" | awk '{ printf "%.0f", $1 / ($3 - $2) }'; }

# Job number i as a key (hex of i, so key order is number order), record and tags.
KEY="lpad(to_hex(i), 32, '0')::uuid"
RECORD="decode(md5(i::text) || repeat('ab', 184), 'hex')"

psql "$PGURL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1
psql "$PGURL" -qc "CREATE SCHEMA $SCHEMA"
sql <<SQL
CREATE TABLE jobs (
  key uuid PRIMARY KEY,
  queue text COLLATE "C" NOT NULL,
  state text COLLATE "C" NOT NULL,
  record bytea NOT NULL
);
CREATE INDEX jobs_by_queue ON jobs (queue, key);
CREATE INDEX jobs_by_state ON jobs (state, key);
CREATE TABLE job_tags (tag text COLLATE "C" NOT NULL, key uuid NOT NULL, PRIMARY KEY (tag, key));
CREATE INDEX job_tags_by_job ON job_tags (key);
CREATE SEQUENCE batches;
SQL

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(psql "$PGURL" -Atc 'SELECT version()' | cut -d' ' -f1-2)"
echo "settings: synchronous_commit=$(psql "$PGURL" -Atc 'SHOW synchronous_commit') fsync=$(psql "$PGURL" -Atc 'SHOW fsync') shared_buffers=$(psql "$PGURL" -Atc 'SHOW shared_buffers')"

# The COPY files, made once.
sql -c "\\copy (SELECT $KEY, 'root.q' || (i % 100), 'pending', $RECORD FROM generate_series(0, $JOBS - 1) i) TO '$WORK/jobs.copy'"
sql -c "\\copy (SELECT t, $KEY FROM generate_series(0, $JOBS - 1) i, LATERAL (VALUES ('five', i % 5 = 0), ('seven', i % 7 = 0)) v(t, tagged) WHERE tagged) TO '$WORK/tags.copy'"
echo "COPY files: $(du -h "$WORK/jobs.copy" | cut -f1) of jobs, $(du -h "$WORK/tags.copy" | cut -f1) of tags"

for run in $(seq 1 "$RUNS"); do
  sql -c "TRUNCATE jobs, job_tags" -c "CHECKPOINT"
  start=$(now)
  sql -c "\\copy jobs FROM '$WORK/jobs.copy'" -c "\\copy job_tags FROM '$WORK/tags.copy'"
  end=$(now)
  echo "run $run: COPY of $JOBS jobs: $(rate "$JOBS" "$start" "$end") jobs/s (load $(cut -d' ' -f1 /proc/loadavg))"
done

# One pgbench transaction = one batch's whole life: three transactions, in order.
cat > "$WORK/lifecycle.sql" <<SQL
SELECT nextval('batches') - 1 AS b \gset
\set lo :b * $BATCH
\set hi :lo + $BATCH - 1
BEGIN;
INSERT INTO jobs (key, queue, state, record)
  SELECT $KEY, 'root.q' || (i % 100), 'pending', $RECORD FROM generate_series(:lo, :hi) i;
INSERT INTO job_tags (tag, key)
  SELECT t, $KEY FROM generate_series(:lo, :hi) i,
    LATERAL (VALUES ('five', i % 5 = 0), ('seven', i % 7 = 0)) v(t, tagged) WHERE tagged;
COMMIT;
BEGIN;
UPDATE jobs j SET state = 'running', record = decode(md5(s.i::text || 'a') || repeat('cd', 184), 'hex')
  FROM (SELECT $KEY AS key, i FROM generate_series(:lo, :hi) i) s WHERE j.key = s.key;
COMMIT;
BEGIN;
UPDATE jobs j SET state = 'succeeded', record = decode(md5(s.i::text || 'f') || repeat('ef', 184), 'hex')
  FROM (SELECT $KEY AS key, i FROM generate_series(:lo, :hi) i) s WHERE j.key = s.key;
COMMIT;
SQL

BATCHES=$((JOBS / BATCH))
for run in $(seq 1 "$RUNS"); do
  sql -c "TRUNCATE jobs, job_tags" -c "ALTER SEQUENCE batches RESTART" -c "CHECKPOINT"
  start=$(now)
  PGOPTIONS="-c search_path=$SCHEMA" pgbench -n -c "$CLIENTS" -j "$CLIENTS" \
    -t $((BATCHES / CLIENTS)) -f "$WORK/lifecycle.sql" "$PGURL" > "$WORK/pgbench.out" 2>&1 \
    || { cat "$WORK/pgbench.out"; exit 1; }
  end=$(now)
  done_jobs=$(sql -c "SELECT count(*) FROM jobs WHERE state = 'succeeded'")
  echo "run $run: three writes per job, batches of $BATCH, $CLIENTS client(s): $(rate "$done_jobs" "$start" "$end") jobs/s ($done_jobs jobs, load $(cut -d' ' -f1 /proc/loadavg))"
done
