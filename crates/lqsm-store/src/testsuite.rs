//! The checks every [`Store`] backend must pass.
//!
//! Each check is a function that panics (like a failed `assert!`) when the backend breaks the
//! contract. A backend's tests call them with:
//!
//! - `new_store`: a factory returning a **fresh, empty** store on each call;
//! - `reopen`: closes a store and opens the same storage again (same data directory, same
//!   database), as a restart of the server would.
//!
//! The quickest way to run them all is the [`conformance_tests!`](crate::conformance_tests)
//! macro, which writes one `#[test]` per check:
//!
//! ```ignore
//! mod conformance {
//!     lqsm_store::conformance_tests!(new_store: my_backend::fresh, reopen: my_backend::reopen);
//! }
//! ```
//!
//! Only [`failed_commit_applies_nothing`] is left out of the macro: it needs a way to make a
//! commit fail half-way, which only the backend knows.
//!
//! Expected contents come from [`Model`], a plain in-memory rendering of the contract.

use std::collections::BTreeMap;

use crate::{JobKey, Snapshot, Store, WriteBatch};

/// The contract in memory: applies batches as a backend must, and says what
/// [`Store::load`] and [`Store::payloads`] must return.
#[derive(Debug, Default, Clone)]
pub struct Model {
    jobs: BTreeMap<JobKey, Vec<u8>>,
    payloads: BTreeMap<JobKey, Vec<u8>>,
    logs: BTreeMap<JobKey, Vec<u8>>,
    queues: BTreeMap<String, Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
}

impl Model {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a committed batch: writes in order (the last write of a key wins), then
    /// deletions (a key both written and deleted in one batch ends deleted).
    pub fn apply(&mut self, batch: &WriteBatch) {
        for (key, record) in &batch.jobs {
            self.jobs.insert(*key, record.clone());
        }
        for (key, payload) in &batch.payloads {
            self.payloads.insert(*key, payload.clone());
        }
        for (key, log) in &batch.logs {
            self.logs.insert(*key, log.clone());
        }
        for (path, record) in &batch.queues {
            self.queues.insert(path.clone(), record.clone());
        }
        for (name, value) in &batch.meta {
            self.meta.insert(name.clone(), value.clone());
        }
        for key in &batch.deleted_jobs {
            self.jobs.remove(key);
            self.payloads.remove(key);
            self.logs.remove(key);
        }
        for path in &batch.deleted_queues {
            self.queues.remove(path);
        }
    }

    /// What [`Store::load`] must return.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            jobs: self.jobs.iter().map(|(k, v)| (*k, v.clone())).collect(),
            queues: self
                .queues
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            meta: self
                .meta
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// What [`Store::payloads`] must return for `jobs`.
    pub fn payloads(&self, jobs: &[JobKey]) -> Vec<Option<Vec<u8>>> {
        jobs.iter().map(|k| self.payloads.get(k).cloned()).collect()
    }

    /// What [`Store::logs`] must return for `job`.
    pub fn logs(&self, job: &JobKey) -> Option<Vec<u8>> {
        self.logs.get(job).cloned()
    }

    /// Every job key that has a payload, in key order.
    pub fn payload_keys(&self) -> Vec<JobKey> {
        self.payloads.keys().copied().collect()
    }
}

/// A job key whose first eight bytes are `n` big-endian, like the millisecond prefix of a
/// UUIDv7: a larger `n` sorts later.
pub fn job_key(n: u64) -> JobKey {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&n.to_be_bytes());
    // The rest varies too, so that a backend comparing only a prefix is caught.
    key[8..].copy_from_slice(&(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
    key
}

/// `len` bytes that depend on `seed` and on the position, so that a record swapped,
/// truncated or shifted is noticed.
pub fn record(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap, deterministic, not constant.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Panics with a short description of the first difference, rather than dumping two
/// snapshots of 100,000 records.
fn assert_loads<S: Store>(store: &S, model: &Model, when: &str) {
    let loaded = store
        .load()
        .unwrap_or_else(|e| panic!("load {when} failed: {e}"));
    let expected = model.snapshot();
    assert_same_entries("job", &loaded.jobs, &expected.jobs, when);
    assert_same_entries("queue", &loaded.queues, &expected.queues, when);
    assert_same_entries("meta", &loaded.meta, &expected.meta, when);
}

fn assert_same_entries<K: std::fmt::Debug + PartialEq>(
    kind: &str,
    loaded: &[(K, Vec<u8>)],
    expected: &[(K, Vec<u8>)],
    when: &str,
) {
    for (i, (got, want)) in loaded.iter().zip(expected).enumerate() {
        assert!(
            got.0 == want.0,
            "{kind} #{i} loaded {when} has key {:?}, expected {:?} (entries must come in key order)",
            got.0,
            want.0
        );
        assert!(
            got.1 == want.1,
            "{kind} {:?} loaded {when} has {} bytes that differ from the {} bytes committed",
            got.0,
            got.1.len(),
            want.1.len()
        );
    }
    assert_eq!(
        loaded.len(),
        expected.len(),
        "number of {kind} records loaded {when}"
    );
}

fn assert_payloads<S: Store>(store: &S, model: &Model, keys: &[JobKey], when: &str) {
    let got = store
        .payloads(keys)
        .unwrap_or_else(|e| panic!("payloads {when} failed: {e}"));
    let want = model.payloads(keys);
    assert_eq!(
        got.len(),
        want.len(),
        "payloads {when} must return one entry per requested job"
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g == w,
            "payload of job #{i} ({:?}) {when}: got {}, expected {}",
            keys[i],
            describe(g),
            describe(w)
        );
    }
}

fn describe(payload: &Option<Vec<u8>>) -> String {
    match payload {
        None => "none".to_string(),
        Some(bytes) => format!("{} bytes", bytes.len()),
    }
}

fn commit<S: Store>(store: &S, model: &mut Model, batch: &WriteBatch) {
    store
        .commit(batch)
        .unwrap_or_else(|e| panic!("commit of {} operations failed: {e}", batch.len()));
    model.apply(batch);
}

/// A batch with `count` jobs numbered from `first`, each with a record of `record_len`
/// bytes and a payload of `payload_len` bytes.
fn jobs_batch(first: u64, count: u64, record_len: usize, payload_len: usize) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for n in first..first + count {
        batch.jobs.push((job_key(n), record(n, record_len)));
        batch
            .payloads
            .push((job_key(n), record(n ^ 0xFFFF, payload_len)));
    }
    batch
}

/// A batch touching every kind of record.
fn mixed_batch(seed: u64) -> WriteBatch {
    let mut batch = jobs_batch(seed * 100, 10, 400, 100);
    for q in ["root", "root.etl", "root.ml", "root.default"] {
        batch
            .queues
            .push((q.to_string(), record(seed + q.len() as u64, 64)));
    }
    batch
        .meta
        .push(("next_token".to_string(), seed.to_le_bytes().to_vec()));
    batch.meta.push(("cluster".to_string(), record(seed, 32)));
    batch
}

/// A fresh store loads nothing, and has no payloads.
pub fn empty_store_loads_nothing<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let model = Model::new();
    assert_loads(&store, &model, "from a fresh store");
    assert_payloads(
        &store,
        &model,
        &[job_key(1), job_key(2)],
        "from a fresh store",
    );
}

/// An empty batch commits and changes nothing.
pub fn empty_batch_changes_nothing<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    commit(&store, &mut model, &mixed_batch(1));
    commit(&store, &mut model, &WriteBatch::new());
    assert_loads(&store, &model, "after an empty batch");
}

/// Whatever a batch writes is loaded back: jobs in key order, queues in path order, meta in
/// name order, and payloads by key.
pub fn committed_batch_is_loaded<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    // Written out of key order, in two batches, so that order must come from the store.
    let mut later = jobs_batch(500, 20, 400, 100);
    later.queues.push(("root.z".to_string(), record(1, 10)));
    later.queues.push(("root.a".to_string(), record(2, 10)));
    later.meta.push(("zeta".to_string(), vec![]));
    later.meta.push(("alpha".to_string(), vec![1]));
    commit(&store, &mut model, &later);
    commit(&store, &mut model, &mixed_batch(1));
    assert_loads(&store, &model, "after two batches");
    assert_payloads(&store, &model, &model.payload_keys(), "after two batches");
}

/// Writing an existing job, queue or meta key replaces its value, across batches and within
/// one batch (the last write wins).
pub fn writes_overwrite_earlier_values<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    commit(&store, &mut model, &mixed_batch(1));

    let mut batch = WriteBatch::new();
    batch.jobs.push((job_key(100), b"running".to_vec()));
    batch.jobs.push((job_key(101), b"first".to_vec()));
    batch.jobs.push((job_key(101), b"second, last".to_vec()));
    batch
        .queues
        .push(("root.etl".to_string(), b"stopped".to_vec()));
    batch.meta.push(("next_token".to_string(), b"42".to_vec()));
    commit(&store, &mut model, &batch);

    let loaded = store.load().unwrap_or_else(|e| panic!("load failed: {e}"));
    let job = |n: u64| loaded.jobs.iter().find(|(k, _)| *k == job_key(n));
    assert_eq!(job(100).map(|(_, v)| v.as_slice()), Some(&b"running"[..]));
    assert_eq!(
        job(101).map(|(_, v)| v.as_slice()),
        Some(&b"second, last"[..])
    );
    assert_loads(&store, &model, "after overwrites");
}

/// Deleting a job removes both its record and its payload; other jobs stay.
pub fn deleted_job_loses_record_and_payload<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    commit(&store, &mut model, &jobs_batch(0, 10, 400, 100));

    let mut batch = WriteBatch::new();
    batch.deleted_jobs = vec![job_key(3), job_key(7)];
    commit(&store, &mut model, &batch);

    let loaded = store.load().unwrap_or_else(|e| panic!("load failed: {e}"));
    assert_eq!(loaded.jobs.len(), 8, "two of ten jobs were deleted");
    assert!(!loaded.jobs.iter().any(|(k, _)| *k == job_key(3)));
    let payloads = store
        .payloads(&[job_key(3), job_key(4), job_key(7)])
        .unwrap_or_else(|e| panic!("payloads failed: {e}"));
    assert!(
        payloads[0].is_none(),
        "a deleted job's payload must be gone"
    );
    assert!(payloads[1].is_some(), "an undeleted job keeps its payload");
    assert!(
        payloads[2].is_none(),
        "a deleted job's payload must be gone"
    );
    assert_loads(&store, &model, "after deleting jobs");
}

/// Deleting a queue removes its record; other queues stay.
pub fn deleted_queue_is_gone<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    commit(&store, &mut model, &mixed_batch(1));

    let mut batch = WriteBatch::new();
    batch.deleted_queues.push("root.etl".to_string());
    commit(&store, &mut model, &batch);

    let loaded = store.load().unwrap_or_else(|e| panic!("load failed: {e}"));
    let paths: Vec<&str> = loaded.queues.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["root", "root.default", "root.ml"]);
    assert_loads(&store, &model, "after deleting a queue");
}

/// A meta value written again replaces the previous one; others are untouched.
pub fn meta_value_is_overwritten<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    for token in 1u64..=5 {
        let mut batch = WriteBatch::new();
        batch
            .meta
            .push(("next_token".to_string(), token.to_le_bytes().to_vec()));
        if token == 1 {
            batch.meta.push(("epoch".to_string(), b"7".to_vec()));
        }
        commit(&store, &mut model, &batch);
    }
    let loaded = store.load().unwrap_or_else(|e| panic!("load failed: {e}"));
    assert_eq!(
        loaded.meta,
        vec![
            ("epoch".to_string(), b"7".to_vec()),
            ("next_token".to_string(), 5u64.to_le_bytes().to_vec()),
        ]
    );
}

/// A key both written and deleted in the same batch ends deleted, whatever the order in
/// which the batch lists them.
pub fn deletion_wins_within_a_batch<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    let mut batch = jobs_batch(0, 3, 40, 10);
    batch.deleted_jobs.push(job_key(1));
    batch.queues.push(("root.gone".to_string(), b"q".to_vec()));
    batch.deleted_queues.push("root.gone".to_string());
    commit(&store, &mut model, &batch);

    let loaded = store.load().unwrap_or_else(|e| panic!("load failed: {e}"));
    assert_eq!(loaded.jobs.len(), 2);
    assert!(loaded.queues.is_empty());
    assert_payloads(&store, &model, &[job_key(0), job_key(1), job_key(2)], "");
    assert_loads(&store, &model, "after a batch that writes and deletes");
}

/// Deleting jobs and queues that do not exist succeeds and changes nothing.
pub fn deleting_missing_records_is_harmless<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    commit(&store, &mut model, &mixed_batch(1));
    let mut batch = WriteBatch::new();
    batch.deleted_jobs.push(job_key(999_999));
    batch.deleted_queues.push("root.never".to_string());
    commit(&store, &mut model, &batch);
    assert_loads(&store, &model, "after deleting missing records");
}

/// A commit that fails half-way applies nothing, and the store stays usable.
///
/// `commit_failing` must apply part of the batch the way the backend's commit does and then
/// fail before the batch is committed (e.g. through an injected engine error), returning the
/// error. The batch given is large (2,000 jobs, overwrites and deletions), so a backend that
/// writes in chunks is caught.
pub fn failed_commit_applies_nothing<S: Store>(
    new_store: impl Fn() -> S,
    commit_failing: impl Fn(&S, &WriteBatch) -> Result<(), crate::StoreError>,
) {
    let store = new_store();
    let mut model = Model::new();
    commit(&store, &mut model, &mixed_batch(1));
    commit(&store, &mut model, &jobs_batch(10_000, 100, 400, 100));

    let mut doomed = jobs_batch(20_000, 2_000, 400, 100);
    doomed.jobs.push((job_key(10_000), b"overwritten".to_vec()));
    doomed.deleted_jobs.push(job_key(10_001));
    doomed.queues.push(("root.new".to_string(), b"q".to_vec()));
    doomed.deleted_queues.push("root.etl".to_string());
    doomed
        .meta
        .push(("next_token".to_string(), b"doomed".to_vec()));

    let outcome = commit_failing(&store, &doomed);
    assert!(
        outcome.is_err(),
        "the failing commit hook must make the commit fail"
    );
    assert_loads(&store, &model, "after a failed commit");
    assert_payloads(
        &store,
        &model,
        &[job_key(10_001), job_key(20_000), job_key(21_999)],
        "after a failed commit",
    );

    commit(&store, &mut model, &doomed);
    assert_loads(&store, &model, "after retrying the failed batch");
}

/// A batch with one name over [`MAX_NAME_BYTES`](crate::MAX_NAME_BYTES), after 2,000 valid
/// jobs, fails with [`StoreError::TooLarge`](crate::StoreError::TooLarge) and applies
/// nothing; a name of exactly the limit is stored.
pub fn oversized_name_fails_the_whole_batch<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    commit(&store, &mut model, &mixed_batch(1));

    let mut batch = jobs_batch(20_000, 2_000, 400, 100);
    batch.deleted_jobs.push(job_key(100));
    batch
        .meta
        .push(("next_token".to_string(), b"doomed".to_vec()));
    batch.queues.push((
        "root.".to_string() + &"q".repeat(crate::MAX_NAME_BYTES),
        vec![],
    ));
    let outcome = store.commit(&batch);
    assert!(
        matches!(outcome, Err(crate::StoreError::TooLarge { .. })),
        "a queue path over the limit must be refused, got {outcome:?}"
    );
    assert_loads(&store, &model, "after a refused batch");

    let mut at_limit = WriteBatch::new();
    at_limit
        .queues
        .push(("q".repeat(crate::MAX_NAME_BYTES), b"long".to_vec()));
    at_limit
        .meta
        .push(("m".repeat(crate::MAX_NAME_BYTES), b"long".to_vec()));
    commit(&store, &mut model, &at_limit);
    assert_loads(&store, &model, "after names at the limit");
}

/// Everything committed is there again after the store is closed and reopened, and the
/// reopened store accepts new commits.
pub fn committed_batch_survives_reopen<S: Store>(
    new_store: impl Fn() -> S,
    reopen: impl Fn(S) -> S,
) {
    let store = new_store();
    let mut model = Model::new();
    commit(&store, &mut model, &mixed_batch(1));
    commit(&store, &mut model, &jobs_batch(1_000, 500, 400, 100));
    let mut changes = WriteBatch::new();
    changes.jobs.push((job_key(1_000), b"succeeded".to_vec()));
    changes.deleted_jobs.push(job_key(1_001));
    changes.deleted_queues.push("root.ml".to_string());
    changes
        .meta
        .push(("next_token".to_string(), b"1001".to_vec()));
    commit(&store, &mut model, &changes);

    let store = reopen(store);
    assert_loads(&store, &model, "after reopening");
    assert_payloads(&store, &model, &model.payload_keys(), "after reopening");
    assert_payloads(
        &store,
        &model,
        &[job_key(1_001)],
        "of a deleted job after reopening",
    );

    commit(&store, &mut model, &mixed_batch(2));
    let store = reopen(store);
    assert_loads(&store, &model, "after a second reopen");
}

/// Payloads and records of 1 MiB are stored and returned intact, several in one batch.
pub fn large_payloads_round_trip<S: Store>(new_store: impl Fn() -> S) {
    const MIB: usize = 1 << 20;
    let store = new_store();
    let mut model = Model::new();
    let mut batch = jobs_batch(0, 8, 400, MIB);
    batch.jobs.push((job_key(100), record(100, MIB)));
    commit(&store, &mut model, &batch);
    commit(&store, &mut model, &jobs_batch(8, 1, 400, MIB + 1));
    assert_loads(&store, &model, "after 1 MiB records");
    assert_payloads(&store, &model, &model.payload_keys(), "of 1 MiB");
}

/// 100,000 small jobs committed in batches of 1,000 (written newest batch first) all load
/// back, in key order.
pub fn many_small_records_load_in_key_order<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    for batch_no in (0..100u64).rev() {
        commit(
            &store,
            &mut model,
            &jobs_batch(batch_no * 1_000, 1_000, 64, 16),
        );
    }
    assert_loads(&store, &model, "after 100,000 jobs");
    let some: Vec<JobKey> = (0..100_000).step_by(997).map(job_key).collect();
    assert_payloads(&store, &model, &some, "of 100,000 jobs");
}

/// Commits made at the same time from several threads all land, each whole.
pub fn concurrent_commits_all_land<S: Store>(new_store: impl Fn() -> S) {
    const THREADS: u64 = 8;
    const COMMITS: u64 = 25;
    const JOBS: u64 = 20;
    let store = new_store();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let store = &store;
            scope.spawn(move || {
                for c in 0..COMMITS {
                    let first = (thread * COMMITS + c) * JOBS;
                    let mut batch = jobs_batch(first, JOBS, 100, 10);
                    batch
                        .meta
                        .push((format!("thread-{thread}"), c.to_le_bytes().to_vec()));
                    store
                        .commit(&batch)
                        .unwrap_or_else(|e| panic!("commit {c} of thread {thread} failed: {e}"));
                }
            });
        }
    });
    let mut model = Model::new();
    for thread in 0..THREADS {
        for c in 0..COMMITS {
            let first = (thread * COMMITS + c) * JOBS;
            let mut batch = jobs_batch(first, JOBS, 100, 10);
            batch
                .meta
                .push((format!("thread-{thread}"), c.to_le_bytes().to_vec()));
            model.apply(&batch);
        }
    }
    assert_loads(&store, &model, "after concurrent commits");
    assert_payloads(
        &store,
        &model,
        &model.payload_keys(),
        "after concurrent commits",
    );
}

/// `payloads` answers in the order asked, repeats included, with `None` for unknown jobs and
/// for jobs that have a record but no payload.
pub fn payloads_come_back_in_request_order<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    let mut batch = jobs_batch(0, 10, 50, 30);
    batch.jobs.push((job_key(50), b"no payload".to_vec()));
    commit(&store, &mut model, &batch);

    let asked = [
        job_key(9),
        job_key(0),
        job_key(12_345),
        job_key(5),
        job_key(9),
        job_key(50),
    ];
    let got = store
        .payloads(&asked)
        .unwrap_or_else(|e| panic!("payloads failed: {e}"));
    assert_eq!(got.len(), asked.len());
    assert_eq!(got[0].as_deref(), Some(record(9 ^ 0xFFFF, 30).as_slice()));
    assert_eq!(got[1].as_deref(), Some(record(0xFFFF, 30).as_slice()));
    assert_eq!(got[2], None, "unknown job");
    assert_eq!(got[4], got[0], "the same job asked twice");
    assert_eq!(got[5], None, "a job with a record but no payload");
    assert_payloads(&store, &model, &asked, "");
    assert!(
        store
            .payloads(&[])
            .unwrap_or_else(|e| panic!("payloads of nothing failed: {e}"))
            .is_empty()
    );
}

/// Logs are stored per job, the last write wins, and they go with the job.
pub fn logs_are_overwritten_and_deleted_with_their_job<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    let mut batch = WriteBatch::new();
    batch.jobs.push((job_key(1), record(1, 40)));
    batch.jobs.push((job_key(2), record(2, 40)));
    batch.logs.push((job_key(1), b"first attempt\n".to_vec()));
    batch.logs.push((job_key(2), b"other job\n".to_vec()));
    commit(&store, &mut model, &batch);
    let mut batch = WriteBatch::new();
    batch.logs.push((job_key(1), b"second attempt\n".to_vec()));
    commit(&store, &mut model, &batch);
    for key in [job_key(1), job_key(2), job_key(3)] {
        let got = store
            .logs(&key)
            .unwrap_or_else(|e| panic!("logs failed: {e}"));
        assert_eq!(got, model.logs(&key), "logs of job {key:?}");
    }
    let mut batch = WriteBatch::new();
    batch.deleted_jobs.push(job_key(1));
    commit(&store, &mut model, &batch);
    let got = store
        .logs(&job_key(1))
        .unwrap_or_else(|e| panic!("logs failed: {e}"));
    assert_eq!(got, None, "a deleted job keeps no logs");
    assert_eq!(
        store.logs(&job_key(2)).ok().flatten(),
        model.logs(&job_key(2))
    );
}

/// Writes one `#[test]` per conformance check (all but
/// [`failed_commit_applies_nothing`](crate::conformance::failed_commit_applies_nothing)).
///
/// `new_store` is a path or closure returning a fresh, empty store on each call; `reopen`
/// one taking a store and returning it closed and opened again.
///
/// ```ignore
/// lqsm_store::conformance_tests!(new_store: fresh_store, reopen: reopen_store);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    (new_store: $new_store:expr, reopen: $reopen:expr $(,)?) => {
        #[test]
        fn empty_store_loads_nothing() {
            $crate::conformance::empty_store_loads_nothing($new_store);
        }
        #[test]
        fn empty_batch_changes_nothing() {
            $crate::conformance::empty_batch_changes_nothing($new_store);
        }
        #[test]
        fn committed_batch_is_loaded() {
            $crate::conformance::committed_batch_is_loaded($new_store);
        }
        #[test]
        fn writes_overwrite_earlier_values() {
            $crate::conformance::writes_overwrite_earlier_values($new_store);
        }
        #[test]
        fn deleted_job_loses_record_and_payload() {
            $crate::conformance::deleted_job_loses_record_and_payload($new_store);
        }
        #[test]
        fn deleted_queue_is_gone() {
            $crate::conformance::deleted_queue_is_gone($new_store);
        }
        #[test]
        fn meta_value_is_overwritten() {
            $crate::conformance::meta_value_is_overwritten($new_store);
        }
        #[test]
        fn deletion_wins_within_a_batch() {
            $crate::conformance::deletion_wins_within_a_batch($new_store);
        }
        #[test]
        fn deleting_missing_records_is_harmless() {
            $crate::conformance::deleting_missing_records_is_harmless($new_store);
        }
        #[test]
        fn oversized_name_fails_the_whole_batch() {
            $crate::conformance::oversized_name_fails_the_whole_batch($new_store);
        }
        #[test]
        fn committed_batch_survives_reopen() {
            $crate::conformance::committed_batch_survives_reopen($new_store, $reopen);
        }
        #[test]
        fn large_payloads_round_trip() {
            $crate::conformance::large_payloads_round_trip($new_store);
        }
        #[test]
        fn many_small_records_load_in_key_order() {
            $crate::conformance::many_small_records_load_in_key_order($new_store);
        }
        #[test]
        fn concurrent_commits_all_land() {
            $crate::conformance::concurrent_commits_all_land($new_store);
        }
        #[test]
        fn logs_are_overwritten_and_deleted_with_their_job() {
            $crate::conformance::logs_are_overwritten_and_deleted_with_their_job($new_store);
        }
        #[test]
        fn payloads_come_back_in_request_order() {
            $crate::conformance::payloads_come_back_in_request_order($new_store);
        }
    };
}
