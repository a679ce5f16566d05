//! The test kit: the checks every [`Store`] backend must pass (cargo feature `testsuite`).
//!
//! Each check is a function that panics (like a failed `assert!`) when the backend breaks the
//! contract. A backend's tests call them with:
//!
//! - `new_store`: a factory returning a **fresh, empty** store on each call;
//! - `reopen`: closes a store and opens the same storage again (same data directory, same
//!   database), as a restart of the server would.
//!
//! The quickest way to run them all is the [`store_testsuite!`](crate::store_testsuite)
//! macro, which writes one `#[test]` per check:
//!
//! ```ignore
//! // Cargo.toml: [dev-dependencies] lqsm-store = { path = "..", features = ["testsuite"] }
//! mod conformance {
//!     lqsm_store::store_testsuite!(new_store: my_backend::fresh, reopen: my_backend::reopen);
//! }
//! ```
//!
//! Only [`failed_commit_applies_nothing`] is left out of the macro: it needs a way to make a
//! commit fail half-way, which only the backend knows.
//!
//! Expected contents come from [`Model`], a plain in-memory rendering of the contract.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{
    JobCount, JobDeletion, JobFilter, JobIndex, JobKey, JobPage, JobQuery, JobWrite, Order,
    Snapshot, Store, StoreError, WriteBatch,
};

/// A store kept together with what must outlive it (its temporary directory, its database
/// schema), passing every call on to the store. Fields drop in order: the store closes
/// before the guard removes its storage.
#[derive(Debug)]
pub struct Guarded<S, G> {
    /// The store under test.
    pub store: S,
    /// What the store's storage lives in, removed when dropped.
    pub guard: G,
}

impl<S: Store, G: Send + Sync + 'static> Store for Guarded<S, G> {
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.store.commit(batch)
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.store.load()
    }
    fn payloads(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.store.payloads(jobs)
    }
    fn logs(&self, job: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.logs(job)
    }
    fn results(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.store.results(jobs)
    }
    fn job(&self, key: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.job(key)
    }
    fn jobs(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        self.store.jobs(query)
    }
    fn counts(&self) -> Result<Vec<JobCount>, StoreError> {
        self.store.counts()
    }
    fn epoch(&self) -> Result<crate::Epoch, StoreError> {
        self.store.epoch()
    }
    fn lease(&self) -> Result<Option<crate::Lease>, StoreError> {
        self.store.lease()
    }
    fn clock_ms(&self) -> Result<Option<u64>, StoreError> {
        self.store.clock_ms()
    }
    fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<crate::Lease, StoreError> {
        self.store.acquire_lease(holder, ttl, now_ms)
    }
    fn renew_lease(
        &self,
        lease: &crate::Lease,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<crate::Lease, StoreError> {
        self.store.renew_lease(lease, ttl, now_ms)
    }
    fn resign_lease(&self, lease: &crate::Lease) -> Result<(), StoreError> {
        self.store.resign_lease(lease)
    }
}

/// The contract in memory: applies batches as a backend must, and says what
/// [`Store::load`], [`Store::payloads`] and the reads must return.
#[derive(Debug, Default, Clone)]
pub struct Model {
    jobs: BTreeMap<JobKey, (Vec<u8>, JobIndex)>,
    payloads: BTreeMap<JobKey, Vec<u8>>,
    logs: BTreeMap<JobKey, Vec<u8>>,
    results: BTreeMap<JobKey, Vec<u8>>,
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
        for job in &batch.jobs {
            self.jobs
                .insert(job.key, (job.record.clone(), job.index.clone()));
        }
        for (key, payload) in &batch.payloads {
            self.payloads.insert(*key, payload.clone());
        }
        for (key, log) in &batch.logs {
            self.logs.insert(*key, log.clone());
        }
        for (key, result) in &batch.results {
            self.results.insert(*key, result.clone());
        }
        for (path, record) in &batch.queues {
            self.queues.insert(path.clone(), record.clone());
        }
        for (name, value) in &batch.meta {
            self.meta.insert(name.clone(), value.clone());
        }
        for deletion in &batch.deleted_jobs {
            self.jobs.remove(&deletion.key);
            self.payloads.remove(&deletion.key);
            self.logs.remove(&deletion.key);
            self.results.remove(&deletion.key);
        }
        for path in &batch.deleted_queues {
            self.queues.remove(path);
        }
        for name in &batch.deleted_meta {
            self.meta.remove(name);
        }
    }

    /// `batch` with what a writer must tell the store: each job's index before the batch
    /// ([`JobWrite::previous`], [`JobDeletion::previous`]), as this model holds it.
    pub fn with_previous(&self, batch: &WriteBatch) -> WriteBatch {
        let previous = |key: &JobKey| self.jobs.get(key).map(|(_, index)| index.clone());
        let mut batch = batch.clone();
        for job in &mut batch.jobs {
            job.previous = previous(&job.key);
        }
        for deletion in &mut batch.deleted_jobs {
            deletion.previous = previous(&deletion.key);
        }
        batch
    }

    /// What [`Store::load`] must return.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            jobs: self
                .jobs
                .iter()
                .map(|(k, (v, _))| (*k, v.clone()))
                .collect(),
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

    /// What [`Store::results`] must return for `jobs`.
    pub fn results(&self, jobs: &[JobKey]) -> Vec<Option<Vec<u8>>> {
        jobs.iter().map(|k| self.results.get(k).cloned()).collect()
    }

    /// What [`Store::job`] must return.
    pub fn job(&self, key: &JobKey) -> Option<Vec<u8>> {
        self.jobs.get(key).map(|(record, _)| record.clone())
    }

    /// What [`Store::jobs`] must return for `query`.
    pub fn jobs(&self, query: &JobQuery) -> JobPage {
        let matches = |index: &JobIndex| match &query.filter {
            JobFilter::All => true,
            JobFilter::Queue(q) => index.queue == *q,
            JobFilter::State(s) => index.state == *s,
            JobFilter::Tag(t) => index.tags.contains(t),
        };
        let after = |key: &JobKey| match (query.after, query.order) {
            (None, _) => true,
            (Some(a), Order::OldestFirst) => *key > a,
            (Some(a), Order::NewestFirst) => *key < a,
        };
        let selected = self
            .jobs
            .iter()
            .filter(|(k, (_, index))| matches(index) && after(k));
        let limit = query.limit.max(1);
        let mut jobs: Vec<(JobKey, Vec<u8>)> = match query.order {
            Order::OldestFirst => selected
                .take(limit + 1)
                .map(|(k, (r, _))| (*k, r.clone()))
                .collect(),
            Order::NewestFirst => selected
                .rev()
                .take(limit + 1)
                .map(|(k, (r, _))| (*k, r.clone()))
                .collect(),
        };
        let more = jobs.len() > limit;
        jobs.truncate(limit);
        let next = if more {
            jobs.last().map(|(k, _)| *k)
        } else {
            None
        };
        JobPage { jobs, next }
    }

    /// What [`Store::counts`] must return.
    pub fn counts(&self) -> Vec<JobCount> {
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (_, index) in self.jobs.values() {
            *counts
                .entry((index.queue.clone(), index.state.clone()))
                .or_default() += 1;
        }
        counts
            .into_iter()
            .map(|((queue, state), count)| JobCount {
                queue,
                state,
                count,
            })
            .collect()
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

/// The queues, states and tags [`job_write`] spreads jobs over.
pub const QUEUES: [&str; 3] = ["root.a", "root.b", "root.a.deep"];
/// See [`QUEUES`].
pub const STATES: [&str; 4] = ["pending", "running", "succeeded", "failed"];

/// The index fields of job number `n`: its queue and state cycle through [`QUEUES`] and
/// [`STATES`] (at different periods, so every pair occurs), every 5th job is tagged
/// `five`, every 7th `seven`.
pub fn index_of(n: u64) -> JobIndex {
    let mut tags = Vec::new();
    if n.is_multiple_of(5) {
        tags.push("five".to_string());
    }
    if n.is_multiple_of(7) {
        tags.push("seven".to_string());
    }
    JobIndex {
        queue: QUEUES[(n % 3) as usize].to_string(),
        state: STATES[(n % 4) as usize].to_string(),
        tags,
    }
}

/// Job number `n` with `record` and the index fields of [`index_of`], as a new job (no
/// previous index: [`Model::with_previous`] fills it in for a job the store holds).
pub fn job_write(n: u64, record: Vec<u8>) -> JobWrite {
    JobWrite {
        key: job_key(n),
        record,
        index: index_of(n),
        previous: None,
    }
}

/// The deletion of job number `n` (its previous index is filled in by
/// [`Model::with_previous`]).
pub fn deletion(n: u64) -> JobDeletion {
    JobDeletion {
        key: job_key(n),
        previous: None,
    }
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
    assert_reads(store, model, when);
}

/// Every filter the reads offer, for the jobs of [`job_write`].
fn filters() -> Vec<JobFilter> {
    let mut filters = vec![JobFilter::All];
    filters.extend(QUEUES.iter().map(|q| JobFilter::Queue(q.to_string())));
    filters.push(JobFilter::Queue("root.none".to_string()));
    filters.extend(STATES.iter().map(|s| JobFilter::State(s.to_string())));
    for tag in ["five", "seven", "none"] {
        filters.push(JobFilter::Tag(tag.to_string()));
    }
    filters
}

/// Checks the reads (job by key, listings in both orders page by page, counts) against the
/// model. With more than 5,000 jobs only the first two pages of each listing are walked.
fn assert_reads<S: Store>(store: &S, model: &Model, when: &str) {
    let counts = store
        .counts()
        .unwrap_or_else(|e| panic!("counts {when} failed: {e}"));
    assert_eq!(counts, model.counts(), "job counts {when}");
    let walk_all = model.jobs.len() <= 5_000;
    for filter in filters() {
        for order in [Order::OldestFirst, Order::NewestFirst] {
            let mut query = JobQuery {
                filter: filter.clone(),
                order,
                after: None,
                limit: 37,
            };
            for page_no in 0.. {
                let got = store
                    .jobs(&query)
                    .unwrap_or_else(|e| panic!("listing {query:?} {when} failed: {e}"));
                let want = model.jobs(&query);
                assert_page(&got, &want, &query, when);
                match want.next {
                    Some(next) if walk_all || page_no < 1 => query.after = Some(next),
                    _ => break,
                }
            }
        }
    }
    for key in model.jobs.keys().step_by(97).take(50) {
        let got = store
            .job(key)
            .unwrap_or_else(|e| panic!("job {key:?} {when} failed: {e}"));
        assert!(got == model.job(key), "job {key:?} read {when}");
    }
    let missing = job_key(u64::MAX);
    assert_eq!(
        store.job(&missing).ok().flatten(),
        None,
        "a job never written {when}"
    );
}

fn assert_page(got: &JobPage, want: &JobPage, query: &JobQuery, when: &str) {
    let keys = |page: &JobPage| page.jobs.iter().map(|(k, _)| *k).collect::<Vec<_>>();
    assert_eq!(
        keys(got),
        keys(want),
        "keys listed for {query:?} {when} (oldest or newest first, after the cursor)"
    );
    assert!(
        got.jobs == want.jobs,
        "records listed for {query:?} {when} differ from those committed"
    );
    assert_eq!(got.next, want.next, "next cursor for {query:?} {when}");
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

/// Commits `batch` as a writer does, with each job's previous index filled in from `model`,
/// then applies it to `model`.
fn commit<S: Store>(store: &S, model: &mut Model, batch: &WriteBatch) {
    let batch = model.with_previous(batch);
    store
        .commit(&batch)
        .unwrap_or_else(|e| panic!("commit of {} operations failed: {e}", batch.len()));
    model.apply(&batch);
}

/// A batch with `count` jobs numbered from `first`, each with a record of `record_len`
/// bytes and a payload of `payload_len` bytes.
fn jobs_batch(first: u64, count: u64, record_len: usize, payload_len: usize) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for n in first..first + count {
        batch.jobs.push(job_write(n, record(n, record_len)));
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
    batch.jobs.push(job_write(100, b"running".to_vec()));
    batch.jobs.push(job_write(101, b"first".to_vec()));
    batch.jobs.push(job_write(101, b"second, last".to_vec()));
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
    batch.deleted_jobs = vec![deletion(3), deletion(7)];
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

/// A deleted meta value is gone once the commit returns; a deletion wins
/// over a write of the same name in its batch; deleting a name never written is a no-op.
pub fn meta_value_is_deleted<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    let mut batch = WriteBatch::new();
    for name in ["schedule/a", "schedule/b", "schedule/c"] {
        batch
            .meta
            .push((name.to_string(), name.as_bytes().to_vec()));
    }
    commit(&store, &mut model, &batch);
    let mut batch = WriteBatch::new();
    batch.deleted_meta.push("schedule/a".to_string());
    batch
        .meta
        .push(("schedule/b".to_string(), b"rewritten".to_vec()));
    batch.deleted_meta.push("schedule/b".to_string());
    batch.deleted_meta.push("schedule/never".to_string());
    commit(&store, &mut model, &batch);
    let loaded = store.load().unwrap_or_else(|e| panic!("load failed: {e}"));
    assert_eq!(
        loaded.meta,
        vec![("schedule/c".to_string(), b"schedule/c".to_vec())]
    );
    assert_loads(&store, &model, "after deleting meta values");
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
    batch.deleted_jobs.push(deletion(1));
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
    batch.deleted_jobs.push(deletion(999_999));
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
    doomed.jobs.push(job_write(10_000, b"overwritten".to_vec()));
    doomed.deleted_jobs.push(deletion(10_001));
    doomed.queues.push(("root.new".to_string(), b"q".to_vec()));
    doomed.deleted_queues.push("root.etl".to_string());
    doomed
        .meta
        .push(("next_token".to_string(), b"doomed".to_vec()));

    let doomed = model.with_previous(&doomed);
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
    batch.deleted_jobs.push(deletion(100));
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
    changes.jobs.push(job_write(1_000, b"succeeded".to_vec()));
    changes.deleted_jobs.push(deletion(1_001));
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
    batch.jobs.push(job_write(100, record(100, MIB)));
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
    batch.jobs.push(job_write(50, b"no payload".to_vec()));
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
    batch.jobs.push(job_write(1, record(1, 40)));
    batch.jobs.push(job_write(2, record(2, 40)));
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
    batch.deleted_jobs.push(deletion(1));
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

/// Results kept apart are stored per job, read many at once in the order asked, the
/// last write wins, and they go with the job.
pub fn results_are_read_in_order_and_deleted_with_their_job<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    let mut batch = WriteBatch::new();
    batch.jobs.push(job_write(1, record(1, 40)));
    batch.jobs.push(job_write(2, record(2, 40)));
    batch.results.push((job_key(1), br#"{"rows":1}"#.to_vec()));
    batch.results.push((job_key(2), vec![b'7'; 300_000]));
    commit(&store, &mut model, &batch);
    let mut batch = WriteBatch::new();
    batch.results.push((job_key(1), br#"{"rows":2}"#.to_vec()));
    commit(&store, &mut model, &batch);
    let keys = [job_key(2), job_key(3), job_key(1)];
    let got = store
        .results(&keys)
        .unwrap_or_else(|e| panic!("results failed: {e}"));
    let expected: Vec<_> = keys.iter().map(|k| model.results.get(k).cloned()).collect();
    assert_eq!(got, expected);
    assert_eq!(got[2].as_deref(), Some(&br#"{"rows":2}"#[..]));
    let mut batch = WriteBatch::new();
    batch.deleted_jobs.push(deletion(1));
    commit(&store, &mut model, &batch);
    let got = store
        .results(&[job_key(1), job_key(2)])
        .unwrap_or_else(|e| panic!("results failed: {e}"));
    assert_eq!(got[0], None, "a deleted job keeps no result");
    assert_eq!(got[1].as_ref().map(Vec::len), Some(300_000));
    assert!(
        store
            .results(&[])
            .unwrap_or_else(|e| panic!("results of nothing failed: {e}"))
            .is_empty()
    );
}

/// Reads follow every change: a job whose state or tags change moves between listings and
/// counts, a deleted job leaves every listing, the count of an emptied group goes away.
pub fn reads_follow_changes_and_deletions<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    commit(&store, &mut model, &jobs_batch(0, 300, 40, 0));
    assert_loads(&store, &model, "after 300 jobs");

    let mut batch = WriteBatch::new();
    for n in (0..300).step_by(3) {
        let mut job = job_write(n, record(n + 1, 20));
        job.index.state = "succeeded".to_string();
        job.index.tags = vec!["rerun".to_string(), "five".to_string()];
        batch.jobs.push(job);
    }
    // Written twice in one batch: the second index wins.
    let mut first = job_write(1, b"first".to_vec());
    first.index.queue = "root.first".to_string();
    batch.jobs.push(first);
    batch.jobs.push(job_write(1, b"second".to_vec()));
    // Written and deleted in one batch: gone from every index.
    batch.jobs.push(job_write(2, b"doomed".to_vec()));
    batch
        .deleted_jobs
        .extend([deletion(2), deletion(4), deletion(7)]);
    commit(&store, &mut model, &batch);
    assert_loads(&store, &model, "after state and tag changes and deletions");

    // Every job of one group deleted: its count disappears.
    let mut batch = WriteBatch::new();
    batch.deleted_jobs = (0..300).filter(|n| n % 3 == 1).map(deletion).collect();
    commit(&store, &mut model, &batch);
    assert_loads(&store, &model, "after deleting a whole queue's jobs");
    assert!(
        store
            .counts()
            .unwrap_or_else(|e| panic!("counts failed: {e}"))
            .iter()
            .all(|c| c.queue != QUEUES[1]),
        "no count is left for a queue without jobs"
    );
}

/// The reads with 1,000,000 jobs stored: counts, the first pages of every listing both
/// ways, a page from a cursor in the middle, and jobs by key. Committed in batches of
/// 50,000 with 16-byte records.
pub fn million_jobs_are_listed_and_counted<S: Store>(new_store: impl Fn() -> S) {
    const JOBS: u64 = 1_000_000;
    const BATCH: u64 = 50_000;
    let store = new_store();
    for first in (0..JOBS).step_by(BATCH as usize) {
        let mut batch = WriteBatch::new();
        batch.jobs = (first..first + BATCH)
            .map(|n| job_write(n, n.to_be_bytes().repeat(2)))
            .collect();
        store
            .commit(&batch)
            .unwrap_or_else(|e| panic!("commit of jobs {first}.. failed: {e}"));
    }
    // Expected answers come from the numbering rule of `index_of`, not from a model of a
    // million entries.
    let matches = |filter: &JobFilter, n: u64| {
        let index = index_of(n);
        match filter {
            JobFilter::All => true,
            JobFilter::Queue(q) => index.queue == *q,
            JobFilter::State(s) => index.state == *s,
            JobFilter::Tag(t) => index.tags.contains(t),
        }
    };
    let mut want_counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for n in 0..JOBS {
        let index = index_of(n);
        *want_counts.entry((index.queue, index.state)).or_default() += 1;
    }
    let want_counts: Vec<JobCount> = want_counts
        .into_iter()
        .map(|((queue, state), count)| JobCount {
            queue,
            state,
            count,
        })
        .collect();
    assert_eq!(
        store
            .counts()
            .unwrap_or_else(|e| panic!("counts failed: {e}")),
        want_counts,
        "counts of 1,000,000 jobs"
    );
    for filter in filters() {
        for (order, after) in [
            (Order::OldestFirst, None),
            (Order::NewestFirst, None),
            (Order::OldestFirst, Some(JOBS / 2)),
            (Order::NewestFirst, Some(JOBS / 2)),
        ] {
            let query = JobQuery {
                filter: filter.clone(),
                order,
                after: after.map(job_key),
                limit: 100,
            };
            let got = store
                .jobs(&query)
                .unwrap_or_else(|e| panic!("listing {query:?} failed: {e}"));
            let wanted: Vec<u64> = match order {
                Order::OldestFirst => (after.map_or(0, |a| a + 1)..JOBS)
                    .filter(|n| matches(&filter, *n))
                    .take(101)
                    .collect(),
                Order::NewestFirst => (0..after.unwrap_or(JOBS))
                    .rev()
                    .filter(|n| matches(&filter, *n))
                    .take(101)
                    .collect(),
            };
            let want = JobPage {
                jobs: wanted
                    .iter()
                    .take(100)
                    .map(|n| (job_key(*n), n.to_be_bytes().repeat(2)))
                    .collect(),
                next: (wanted.len() > 100).then(|| job_key(wanted[99])),
            };
            assert_page(&got, &want, &query, "with 1,000,000 jobs");
        }
    }
    for n in (0..JOBS).step_by(99_991) {
        assert_eq!(
            store.job(&job_key(n)).ok().flatten(),
            Some(n.to_be_bytes().repeat(2)),
            "job {n} of 1,000,000"
        );
    }
}

/// Epochs fence stale writers: after a new lease is taken, a batch of an older epoch is
/// refused with [`StoreError::Fenced`] and applies nothing; the epoch survives a reopen.
pub fn stale_epoch_is_fenced<S: Store>(new_store: impl Fn() -> S, reopen: impl Fn(S) -> S) {
    const TTL: Duration = Duration::from_secs(10);
    let store = new_store();
    let mut model = Model::new();
    assert_eq!(store.epoch().ok(), Some(0), "a fresh store is at epoch 0");
    commit(&store, &mut model, &mixed_batch(1));

    let lease = store
        .acquire_lease("server-a", TTL, 1_000)
        .unwrap_or_else(|e| panic!("acquire failed: {e}"));
    assert_eq!(lease.epoch, 1, "acquiring makes a new epoch");
    let mut stale = mixed_batch(2);
    stale.epoch = 0;
    let refused = store.commit(&stale);
    match &refused {
        Err(StoreError::Fenced {
            writer: 0,
            current: 1,
            holder,
        }) => assert_eq!(holder, "server-a"),
        other => panic!("a batch of epoch 0 after epoch 1 began must be fenced, got {other:?}"),
    }
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("no longer the leader"), "{message}");
    assert!(
        store.commit(&WriteBatch::new()).is_err(),
        "even an empty batch of a stale epoch is refused"
    );
    assert_loads(&store, &model, "after a fenced batch");

    let mut current = mixed_batch(3);
    current.epoch = 1;
    commit(&store, &mut model, &current);

    // Server b takes over once a's lease lapsed; a's writes are fenced from then on.
    let b = store
        .acquire_lease("server-b", TTL, 1_000 + 10_000)
        .unwrap_or_else(|e| panic!("acquire after expiry failed: {e}"));
    assert_eq!(b.epoch, 2);
    let mut from_a = mixed_batch(4);
    from_a.epoch = 1;
    assert!(matches!(
        store.commit(&from_a),
        Err(StoreError::Fenced {
            writer: 1,
            current: 2,
            ..
        })
    ));
    let mut future = mixed_batch(5);
    future.epoch = 3;
    assert!(
        matches!(store.commit(&future), Err(StoreError::Fenced { .. })),
        "an epoch never granted is refused too"
    );

    let store = reopen(store);
    assert_eq!(store.epoch().ok(), Some(2), "the epoch is durable");
    assert_eq!(
        store.lease().ok().flatten(),
        Some(b),
        "the lease is durable"
    );
    assert!(matches!(
        store.commit(&from_a),
        Err(StoreError::Fenced { .. })
    ));
    assert_loads(&store, &model, "after fencing and a reopen");
}

/// Leases: one live holder at a time; renew only by the current holder at its epoch;
/// resigning lets another acquire at once; every acquisition makes a new epoch.
pub fn leases_have_one_holder_at_a_time<S: Store>(new_store: impl Fn() -> S) {
    const TTL: Duration = Duration::from_millis(5_000);
    let store = new_store();
    let ok = |what: &str, result: Result<crate::Lease, StoreError>| {
        result.unwrap_or_else(|e| panic!("{what} failed: {e}"))
    };
    assert_eq!(store.lease().ok().flatten(), None);
    let a = ok("acquire by a", store.acquire_lease("a", TTL, 100));
    assert_eq!(
        (a.holder.as_str(), a.epoch, a.expires_at_ms),
        ("a", 1, 5_100)
    );

    match store.acquire_lease("b", TTL, 5_099) {
        Err(StoreError::LeaseHeld {
            holder,
            epoch: 1,
            remaining_ms: 1,
        }) => assert_eq!(holder, "a"),
        other => panic!("b must wait for a's live lease, got {other:?}"),
    }
    let a = ok("renew by a", store.renew_lease(&a, TTL, 5_000));
    assert_eq!(
        (a.epoch, a.expires_at_ms),
        (1, 10_000),
        "renewing keeps the epoch"
    );
    assert!(matches!(
        store.acquire_lease("b", TTL, 9_999),
        Err(StoreError::LeaseHeld { .. })
    ));

    // A holder acquiring again (a restart) fences its own earlier writers.
    let a2 = ok("acquire again by a", store.acquire_lease("a", TTL, 9_000));
    assert_eq!(a2.epoch, 2);
    assert!(
        matches!(
            store.renew_lease(&a, TTL, 9_001),
            Err(StoreError::LeaseLost { epoch: 1, .. })
        ),
        "a lease of an older epoch cannot be renewed"
    );

    // A lapsed lease nobody took can still be renewed by its holder.
    let a2 = ok("late renew by a", store.renew_lease(&a2, TTL, 20_000));
    let b = ok(
        "acquire by b after expiry",
        store.acquire_lease("b", TTL, 30_000),
    );
    assert_eq!(b.epoch, 3);
    let lost = store.renew_lease(&a2, TTL, 30_001);
    assert!(
        matches!(lost, Err(StoreError::LeaseLost { .. })),
        "only the current holder renews, got {lost:?}"
    );
    let message = lost.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("granted to `b`"), "{message}");
    assert!(matches!(
        store.resign_lease(&a2),
        Err(StoreError::LeaseLost { .. })
    ));

    // Resigning frees the lease at once; the epoch stays until someone acquires.
    store
        .resign_lease(&b)
        .unwrap_or_else(|e| panic!("resign by b failed: {e}"));
    assert_eq!(store.lease().ok().flatten(), None);
    assert_eq!(store.epoch().ok(), Some(3));
    let c = ok(
        "acquire by c after b resigned",
        store.acquire_lease("c", TTL, 30_002),
    );
    assert_eq!(c.epoch, 4);
    assert!(matches!(
        store.resign_lease(&b),
        Err(StoreError::LeaseLost { .. })
    ));
}

/// Records are opaque: whatever bytes are written come back unchanged, including records
/// whose header names a format newer than any this build knows (the store never judges a
/// record's format; the codec above it does), JSON text and empty records.
pub fn records_are_stored_as_opaque_bytes<S: Store>(new_store: impl Fn() -> S) {
    let store = new_store();
    let mut model = Model::new();
    let mut batch = WriteBatch::new();
    let newer = {
        let mut bytes = vec![0xB7, 0x63];
        bytes.extend_from_slice(b"a record of format 99");
        bytes
    };
    batch.jobs.push(job_write(1, newer.clone()));
    batch
        .jobs
        .push(job_write(2, br#"{"id":"format 0 is JSON"}"#.to_vec()));
    batch.jobs.push(job_write(3, Vec::new()));
    batch.jobs.push(job_write(4, vec![0, 0xFF, 0, 0xB7]));
    batch.queues.push(("root.q".to_string(), newer.clone()));
    batch.payloads.push((job_key(1), newer.clone()));
    commit(&store, &mut model, &batch);
    assert_loads(&store, &model, "after records of every format");
    assert_eq!(store.job(&job_key(1)).ok().flatten(), Some(newer.clone()));
    assert_eq!(store.job(&job_key(3)).ok().flatten(), Some(Vec::new()));
    assert_payloads(&store, &model, &[job_key(1)], "of a newer format");
}

/// Writes one `#[test]` per conformance check (all but
/// [`failed_commit_applies_nothing`](crate::testsuite::failed_commit_applies_nothing)).
///
/// `new_store` is a path or closure returning a fresh, empty store on each call; `reopen`
/// one taking a store and returning it closed and opened again.
///
/// ```ignore
/// lqsm_store::store_testsuite!(new_store: fresh_store, reopen: reopen_store);
/// ```
#[macro_export]
macro_rules! store_testsuite {
    (new_store: $new_store:expr, reopen: $reopen:expr $(,)?) => {
        #[test]
        fn reads_follow_changes_and_deletions() {
            $crate::testsuite::reads_follow_changes_and_deletions($new_store);
        }
        #[test]
        fn million_jobs_are_listed_and_counted() {
            $crate::testsuite::million_jobs_are_listed_and_counted($new_store);
        }
        #[test]
        fn stale_epoch_is_fenced() {
            $crate::testsuite::stale_epoch_is_fenced($new_store, $reopen);
        }
        #[test]
        fn leases_have_one_holder_at_a_time() {
            $crate::testsuite::leases_have_one_holder_at_a_time($new_store);
        }
        #[test]
        fn records_are_stored_as_opaque_bytes() {
            $crate::testsuite::records_are_stored_as_opaque_bytes($new_store);
        }
        #[test]
        fn meta_value_is_deleted() {
            $crate::testsuite::meta_value_is_deleted($new_store);
        }
        #[test]
        fn empty_store_loads_nothing() {
            $crate::testsuite::empty_store_loads_nothing($new_store);
        }
        #[test]
        fn empty_batch_changes_nothing() {
            $crate::testsuite::empty_batch_changes_nothing($new_store);
        }
        #[test]
        fn committed_batch_is_loaded() {
            $crate::testsuite::committed_batch_is_loaded($new_store);
        }
        #[test]
        fn writes_overwrite_earlier_values() {
            $crate::testsuite::writes_overwrite_earlier_values($new_store);
        }
        #[test]
        fn deleted_job_loses_record_and_payload() {
            $crate::testsuite::deleted_job_loses_record_and_payload($new_store);
        }
        #[test]
        fn deleted_queue_is_gone() {
            $crate::testsuite::deleted_queue_is_gone($new_store);
        }
        #[test]
        fn meta_value_is_overwritten() {
            $crate::testsuite::meta_value_is_overwritten($new_store);
        }
        #[test]
        fn deletion_wins_within_a_batch() {
            $crate::testsuite::deletion_wins_within_a_batch($new_store);
        }
        #[test]
        fn deleting_missing_records_is_harmless() {
            $crate::testsuite::deleting_missing_records_is_harmless($new_store);
        }
        #[test]
        fn oversized_name_fails_the_whole_batch() {
            $crate::testsuite::oversized_name_fails_the_whole_batch($new_store);
        }
        #[test]
        fn committed_batch_survives_reopen() {
            $crate::testsuite::committed_batch_survives_reopen($new_store, $reopen);
        }
        #[test]
        fn large_payloads_round_trip() {
            $crate::testsuite::large_payloads_round_trip($new_store);
        }
        #[test]
        fn many_small_records_load_in_key_order() {
            $crate::testsuite::many_small_records_load_in_key_order($new_store);
        }
        #[test]
        fn concurrent_commits_all_land() {
            $crate::testsuite::concurrent_commits_all_land($new_store);
        }
        #[test]
        fn results_are_read_in_order_and_deleted_with_their_job() {
            $crate::testsuite::results_are_read_in_order_and_deleted_with_their_job($new_store);
        }

        #[test]
        fn logs_are_overwritten_and_deleted_with_their_job() {
            $crate::testsuite::logs_are_overwritten_and_deleted_with_their_job($new_store);
        }
        #[test]
        fn payloads_come_back_in_request_order() {
            $crate::testsuite::payloads_come_back_in_request_order($new_store);
        }
    };
}
