//! The group commit: one transaction, a handful of statements whatever the batch's size.
//!
//! Each kind of entry travels as a few parallel arrays bound to one statement
//! (`unnest($1::uuid[], $2::text[], ...)`), so 1,000 jobs are one INSERT, not 1,000. The
//! batch is first reduced to what it leaves behind (the last write of a key wins, a deletion
//! wins over writes), because one statement may not change the same row twice.

use std::collections::HashSet;

use lqsm_store::{JobKey, StoreError, WriteBatch};
use uuid::Uuid;

use crate::pool::Connection;
use crate::sql;

/// Writes the job rows and moves their counts. Rows that exist are updated, joined to
/// themselves as `old` for the values they had (every part of one statement sees the same
/// snapshot, taken before it changes anything); the others are inserted. The difference
/// goes to `lqsm_job_counts`. A plain UPDATE, not `INSERT ... ON CONFLICT DO UPDATE`: the
/// latter also locks each row it overwrites, one more WAL record per job (measured: the
/// three-writes lifecycle 8-17% slower with it, docs/BENCHMARKS.md). No other writer can
/// insert the same keys meanwhile: commits hold the lease row's lock.
const UPSERT_JOBS: &str = "
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[])
        AS i(key, queue, state, record)
), updated AS (
    UPDATE lqsm_jobs j SET queue = i.queue, state = i.state, record = i.record
    FROM input i, lqsm_jobs old
    WHERE j.key = i.key AND old.key = i.key
    RETURNING j.key, j.queue, j.state, old.queue AS old_queue, old.state AS old_state
), inserted AS (
    INSERT INTO lqsm_jobs (key, queue, state, record)
    SELECT key, queue, state, record FROM input
    WHERE key NOT IN (SELECT key FROM updated)
    RETURNING queue, state
), delta AS (
    SELECT queue, state, 1 AS n FROM inserted
    UNION ALL
    SELECT queue, state, 1 FROM updated
    UNION ALL
    SELECT old_queue, old_state, -1 FROM updated
)
INSERT INTO lqsm_job_counts AS c (queue, state, jobs)
SELECT queue, state, sum(n) FROM delta GROUP BY queue, state HAVING sum(n) <> 0
ON CONFLICT (queue, state) DO UPDATE SET jobs = c.jobs + excluded.jobs";

/// Removes the tags the written jobs no longer carry ($1: every written job; $2, $3: the
/// (job, tag) pairs they carry now). A state change keeps its tags, so it removes nothing.
const DROP_STALE_TAGS: &str = "
DELETE FROM lqsm_job_tags t
WHERE t.key = ANY($1::uuid[])
  AND NOT EXISTS (
      SELECT 1 FROM unnest($2::uuid[], $3::text[]) AS n(key, tag)
      WHERE n.key = t.key AND n.tag = t.tag)";

const INSERT_TAGS: &str = "
INSERT INTO lqsm_job_tags (key, tag)
SELECT * FROM unnest($1::uuid[], $2::text[])
ON CONFLICT DO NOTHING";

const UPSERT_PAYLOADS: &str = "
INSERT INTO lqsm_payloads (key, payload) SELECT * FROM unnest($1::uuid[], $2::bytea[])
ON CONFLICT (key) DO UPDATE SET payload = excluded.payload";

const UPSERT_LOGS: &str = "
INSERT INTO lqsm_logs (key, logs) SELECT * FROM unnest($1::uuid[], $2::bytea[])
ON CONFLICT (key) DO UPDATE SET logs = excluded.logs";

const UPSERT_RESULTS: &str = "
INSERT INTO lqsm_results (key, result) SELECT * FROM unnest($1::uuid[], $2::bytea[])
ON CONFLICT (key) DO UPDATE SET result = excluded.result";

const UPSERT_QUEUES: &str = "
INSERT INTO lqsm_queues (path, record) SELECT * FROM unnest($1::text[], $2::bytea[])
ON CONFLICT (path) DO UPDATE SET record = excluded.record";

const UPSERT_META: &str = "
INSERT INTO lqsm_meta (name, value) SELECT * FROM unnest($1::text[], $2::bytea[])
ON CONFLICT (name) DO UPDATE SET value = excluded.value";

/// Deletes jobs with everything that hangs off them, and takes them off the counts.
const DELETE_JOBS: &str = "
WITH tags AS (
    DELETE FROM lqsm_job_tags WHERE key = ANY($1::uuid[])
), payloads AS (
    DELETE FROM lqsm_payloads WHERE key = ANY($1::uuid[])
), logs AS (
    DELETE FROM lqsm_logs WHERE key = ANY($1::uuid[])
), results AS (
    DELETE FROM lqsm_results WHERE key = ANY($1::uuid[])
), gone AS (
    DELETE FROM lqsm_jobs WHERE key = ANY($1::uuid[]) RETURNING queue, state
)
INSERT INTO lqsm_job_counts AS c (queue, state, jobs)
SELECT queue, state, -count(*) FROM gone GROUP BY queue, state
ON CONFLICT (queue, state) DO UPDATE SET jobs = c.jobs + excluded.jobs";

const DELETE_QUEUES: &str = "DELETE FROM lqsm_queues WHERE path = ANY($1::text[])";

const DELETE_META: &str = "DELETE FROM lqsm_meta WHERE name = ANY($1::text[])";

/// The keys of the jobs a batch deletes.
fn deleted_keys(batch: &WriteBatch) -> impl Iterator<Item = &JobKey> {
    batch.deleted_jobs.iter().map(|deletion| &deletion.key)
}

/// What a batch leaves behind, as the arrays the statements bind.
#[derive(Default)]
struct Arrays<'a> {
    job_keys: Vec<Uuid>,
    job_queues: Vec<&'a str>,
    job_states: Vec<&'a str>,
    job_records: Vec<&'a [u8]>,
    tag_keys: Vec<Uuid>,
    tag_names: Vec<&'a str>,
    payload_keys: Vec<Uuid>,
    payloads: Vec<&'a [u8]>,
    log_keys: Vec<Uuid>,
    logs: Vec<&'a [u8]>,
    result_keys: Vec<Uuid>,
    results: Vec<&'a [u8]>,
    queue_paths: Vec<&'a str>,
    queue_records: Vec<&'a [u8]>,
    meta_names: Vec<&'a str>,
    meta_values: Vec<&'a [u8]>,
    deleted_jobs: Vec<Uuid>,
    deleted_queues: Vec<&'a str>,
    deleted_meta: Vec<&'a str>,
}

impl<'a> Arrays<'a> {
    fn of(batch: &'a WriteBatch) -> Self {
        let deleted: HashSet<&JobKey> = deleted_keys(batch).collect();
        let deleted_queues: HashSet<&str> =
            batch.deleted_queues.iter().map(String::as_str).collect();
        let deleted_meta: HashSet<&str> = batch.deleted_meta.iter().map(String::as_str).collect();
        let mut arrays = Arrays {
            deleted_jobs: deleted.iter().map(|k| Uuid::from_bytes(**k)).collect(),
            deleted_queues: deleted_queues.iter().copied().collect(),
            deleted_meta: deleted_meta.iter().copied().collect(),
            ..Arrays::default()
        };
        // Walked from the end, so the first entry seen of a key is its last write.
        let mut seen: HashSet<&JobKey> = HashSet::with_capacity(batch.jobs.len());
        for job in batch.jobs.iter().rev() {
            if deleted.contains(&job.key) || !seen.insert(&job.key) {
                continue;
            }
            let key = Uuid::from_bytes(job.key);
            arrays.job_keys.push(key);
            arrays.job_queues.push(&job.index.queue);
            arrays.job_states.push(&job.index.state);
            arrays.job_records.push(&job.record);
            for tag in &job.index.tags {
                arrays.tag_keys.push(key);
                arrays.tag_names.push(tag);
            }
        }
        let mut seen: HashSet<&JobKey> = HashSet::with_capacity(batch.payloads.len());
        for (key, payload) in batch.payloads.iter().rev() {
            if !deleted.contains(key) && seen.insert(key) {
                arrays.payload_keys.push(Uuid::from_bytes(*key));
                arrays.payloads.push(payload);
            }
        }
        let mut seen: HashSet<&JobKey> = HashSet::with_capacity(batch.logs.len());
        for (key, log) in batch.logs.iter().rev() {
            if !deleted.contains(key) && seen.insert(key) {
                arrays.log_keys.push(Uuid::from_bytes(*key));
                arrays.logs.push(log);
            }
        }
        let mut seen: HashSet<&JobKey> = HashSet::with_capacity(batch.results.len());
        for (key, result) in batch.results.iter().rev() {
            if !deleted.contains(key) && seen.insert(key) {
                arrays.result_keys.push(Uuid::from_bytes(*key));
                arrays.results.push(result);
            }
        }
        let mut seen: HashSet<&str> = HashSet::with_capacity(batch.queues.len());
        for (path, record) in batch.queues.iter().rev() {
            if !deleted_queues.contains(path.as_str()) && seen.insert(path) {
                arrays.queue_paths.push(path);
                arrays.queue_records.push(record);
            }
        }
        let mut seen: HashSet<&str> = HashSet::with_capacity(batch.meta.len());
        for (name, value) in batch.meta.iter().rev() {
            if !deleted_meta.contains(name.as_str()) && seen.insert(name) {
                arrays.meta_names.push(name);
                arrays.meta_values.push(value);
            }
        }
        arrays
    }
}

/// Commits a non-empty batch in one transaction, after checking its epoch under the lease
/// row's lock.
pub(crate) fn commit(connection: &mut Connection, batch: &WriteBatch) -> Result<(), StoreError> {
    let arrays = Arrays::of(batch);
    // Prepared before the transaction starts (a no-op after the first commit on this
    // connection), since the transaction borrows the client.
    let lock_lease = connection
        .statement(crate::LOCK_LEASE)
        .map_err(sql("preparing the commit"))?;
    let mut statements = Vec::with_capacity(11);
    for text in [
        UPSERT_JOBS,
        DROP_STALE_TAGS,
        INSERT_TAGS,
        UPSERT_PAYLOADS,
        UPSERT_LOGS,
        UPSERT_RESULTS,
        UPSERT_QUEUES,
        UPSERT_META,
        DELETE_JOBS,
        DELETE_QUEUES,
        DELETE_META,
    ] {
        statements.push(
            connection
                .statement(text)
                .map_err(sql("preparing the commit"))?,
        );
    }
    let [
        upsert_jobs,
        drop_stale_tags,
        insert_tags,
        upsert_payloads,
        upsert_logs,
        upsert_results,
        upsert_queues,
        upsert_meta,
        delete_jobs,
        delete_queues,
        delete_meta,
    ] = <[postgres::Statement; 11]>::try_from(statements)
        .expect("eleven statements were prepared above");

    let mut tx = connection
        .client
        .transaction()
        .map_err(sql("starting a commit"))?;
    // Locked until the transaction ends: a lease cannot change hands mid-commit, and
    // commits from several threads or servers run one after the other.
    let term = crate::read_term_with(&mut tx, &lock_lease)?;
    term.check_writer(batch.epoch)?;
    let writing = sql("writing a batch");
    if !arrays.job_keys.is_empty() {
        tx.execute(
            &upsert_jobs,
            &[
                &arrays.job_keys,
                &arrays.job_queues,
                &arrays.job_states,
                &arrays.job_records,
            ],
        )
        .map_err(&writing)?;
        tx.execute(
            &drop_stale_tags,
            &[&arrays.job_keys, &arrays.tag_keys, &arrays.tag_names],
        )
        .map_err(&writing)?;
    }
    if !arrays.tag_keys.is_empty() {
        tx.execute(&insert_tags, &[&arrays.tag_keys, &arrays.tag_names])
            .map_err(&writing)?;
    }
    if !arrays.payload_keys.is_empty() {
        tx.execute(&upsert_payloads, &[&arrays.payload_keys, &arrays.payloads])
            .map_err(&writing)?;
    }
    if !arrays.log_keys.is_empty() {
        tx.execute(&upsert_logs, &[&arrays.log_keys, &arrays.logs])
            .map_err(&writing)?;
    }
    if !arrays.result_keys.is_empty() {
        tx.execute(&upsert_results, &[&arrays.result_keys, &arrays.results])
            .map_err(&writing)?;
    }
    if !arrays.queue_paths.is_empty() {
        tx.execute(
            &upsert_queues,
            &[&arrays.queue_paths, &arrays.queue_records],
        )
        .map_err(&writing)?;
    }
    if !arrays.meta_names.is_empty() {
        tx.execute(&upsert_meta, &[&arrays.meta_names, &arrays.meta_values])
            .map_err(&writing)?;
    }
    if !arrays.deleted_jobs.is_empty() {
        tx.execute(&delete_jobs, &[&arrays.deleted_jobs])
            .map_err(&writing)?;
    }
    if !arrays.deleted_queues.is_empty() {
        tx.execute(&delete_queues, &[&arrays.deleted_queues])
            .map_err(&writing)?;
    }
    if !arrays.deleted_meta.is_empty() {
        tx.execute(&delete_meta, &[&arrays.deleted_meta])
            .map_err(&writing)?;
    }
    tx.commit().map_err(sql("committing a batch"))
}
