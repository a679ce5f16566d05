//! The embedded backend: one data directory, nothing to install.
//!
//! Built on fjall, a log-structured merge tree, chosen over redb by measurement
//! (`crates/lqsm-store/STORAGE.md`). A commit is one fjall batch: it is appended to the
//! journal as a single checksummed entry and fsynced before `commit` returns, so after a crash
//! the journal replays every acknowledged batch and drops a torn last one whole.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode, Readable};

use crate::data_dir::DataDir;
use crate::{
    Epoch, JobCount, JobFilter, JobIndex, JobKey, JobPage, JobQuery, Lease, Order, Snapshot, Store,
    StoreError, Term, WriteBatch,
};

/// The engine's directory inside the data directory.
const ENGINE_DIR: &str = "fjall";

/// The most journal the engine keeps before it flushes the memtables holding its oldest
/// part: what a restart after kill -9 replays. The engine's default (512 MiB) let the small
/// index keyspaces, which never fill a memtable, pin the whole journal, so a restart with a
/// million jobs spent seconds replaying it; this is the engine's minimum.
const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// Largest memtable of a keyspace before it is flushed to a table. What a keyspace
/// holds in memory is what it was written since its last flush, so this bounds the
/// engine's write buffers at a dozen times it. The engine's default (64 MiB) was never
/// reached by a keyspace's share of steady churn: in an hour of `lqsm bench soak` nothing
/// flushed and the server's memory grew by 124 MiB; at 4 MiB, only 3 of 12 keyspaces had
/// flushed after 25 minutes and memory grew with the journal until its limit forced the
/// rest 40 minutes in (+44% in the hour). At 512 KiB every keyspace but the two smallest
/// flushes within minutes, and throughput through a server and a worker was no lower; at
/// 256 KiB the hour's memory is flat from minute 12 and 4 MiB lower than at 512 KiB, the
/// slow keyspaces' buffers being half as large (docs/RELIABILITY.md and
/// docs/BENCHMARKS.md, Soak).
const MAX_MEMTABLE_BYTES: u64 = 256 << 10;

/// The engine's cache of table blocks. The server keeps its state in memory and reads
/// tables only for listings and for jobs past that, and the operating system's page cache
/// keeps the table files' recent pages anyway, so this cache saves a block's decoding, not
/// a disk read. Its default, 32 MiB, would be most of a small server's memory once reads
/// fill it; at 4 MiB the soak hour still grew for 20 minutes while it filled.
const BLOCK_CACHE_BYTES: u64 = 1 << 20;

/// Background threads for flushes and compactions. One: with two or more, fjall's first
/// worker hands every compaction to the others and, while they are busy, keeps taking the
/// same message back and sending it again, a busy loop that cost about a seventh of the
/// server's cpu end to end on two cores (profiled). Flushes and compactions then run in
/// turn, which a server that commits in groups keeps up with.
const ENGINE_WORKERS: usize = 1;

/// The keyspace where earlier releases kept each job's index fields (dropped at open).
const RETIRED_JOB_INDEX: &str = "job_index";

/// Keys of the `lease` keyspace.
const EPOCH_KEY: &[u8] = b"epoch";
const LEASE_KEY: &[u8] = b"lease";

/// The default [`Store`]: an embedded database in one data directory.
///
/// Every commit is made durable (fsync) before `commit` returns. Commits from several
/// threads are safe; each is its own atomic unit. Only one `EmbeddedStore` may have a
/// directory open at a time, in this process or any other.
///
/// Next to each job record it keeps secondary indexes (by queue, by state, by tag: an entry
/// `name ++ job key` per job) and a count per queue and state, all changed in the same
/// engine batch as the record, so they never disagree with it.
pub struct EmbeddedStore {
    db: Database,
    jobs: Keyspace,
    payloads: Keyspace,
    logs: Keyspace,
    results: Keyspace,
    queues: Keyspace,
    meta: Keyspace,
    by_queue: Keyspace,
    by_state: Keyspace,
    by_tag: Keyspace,
    /// `queue ++ state` → number of jobs (u64 little-endian).
    counts: Keyspace,
    /// The epoch and the lease.
    lease: Keyspace,
    /// One writer at a time: a commit reads the counts it changes, and the epoch it checks
    /// must not change before it lands. Holds the current epoch and lease.
    writer: Mutex<Term>,
    /// Dropped last (fields drop in order), so the lock outlives the engine.
    dir: DataDir,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the store in `dir`, creating the directory and an empty store if needed, and
    /// recovering whatever was committed before a crash.
    ///
    /// Fails with [`StoreError::Locked`] while another store has `dir` open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir = DataDir::acquire(dir)?;
        let db = Database::builder(dir.path().join(ENGINE_DIR))
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .cache_size(BLOCK_CACHE_BYTES)
            .worker_threads(ENGINE_WORKERS)
            .open()
            .map_err(engine)?;
        let keyspace = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MAX_MEMTABLE_BYTES)
            })
            .map_err(engine)
        };
        let jobs = keyspace("jobs")?;
        // Data written by the releases that read each job's index back kept it in a keyspace
        // of its own; the writer now passes it, so that copy is dropped.
        if db.keyspace_exists(RETIRED_JOB_INDEX) {
            let retired = keyspace(RETIRED_JOB_INDEX)?;
            db.delete_keyspace(retired).map_err(engine)?;
        }
        let lease = keyspace("lease")?;
        let term = read_term(&lease)?;
        let store = Self {
            jobs,
            payloads: keyspace("payloads")?,
            logs: keyspace("logs")?,
            results: keyspace("results")?,
            queues: keyspace("queues")?,
            meta: keyspace("meta")?,
            by_queue: keyspace("by_queue")?,
            by_state: keyspace("by_state")?,
            by_tag: keyspace("by_tag")?,
            counts: keyspace("counts")?,
            lease,
            writer: Mutex::new(term),
            db,
            dir,
        };
        Ok(store)
    }

    /// The data directory this store holds.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn writer(&self) -> MutexGuard<'_, Term> {
        // A panic while holding the lock leaves the term as last made durable (it is only
        // replaced after a successful write), so the poison carries no broken state.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits `batch`; with `fail_after`, fails instead after adding that many operations
    /// to the engine's batch (for tests of atomicity).
    fn commit_inner(
        &self,
        batch: &WriteBatch,
        fail_after: Option<usize>,
    ) -> Result<(), StoreError> {
        batch.check_limits()?;
        let term = self.writer();
        term.check_writer(batch.epoch)?;
        if batch.is_empty() && fail_after.is_none() {
            return Ok(());
        }
        let mut budget = fail_after.unwrap_or(usize::MAX);
        let mut step = || {
            if budget == 0 {
                return Err(StoreError::Engine("injected failure".to_string()));
            }
            budget -= 1;
            Ok(())
        };
        // Deletions of jobs are four operations each (record, payload, logs, result); a
        // job's index changes are about two more.
        let operations = batch.len() + 3 * batch.deleted_jobs.len() + 2 * batch.jobs.len();
        let mut writes = OwnedWriteBatch::with_capacity(self.db.clone(), operations)
            .durability(Some(PersistMode::SyncAll));
        // Writes first, deletions after: within a batch, deletion wins. Until `commit` below,
        // all of this is in memory only; an early return drops it and applies nothing.
        for job in &batch.jobs {
            step()?;
            writes.insert(&self.jobs, job.key.as_slice(), job.record.as_slice());
        }
        for (key, payload) in &batch.payloads {
            step()?;
            writes.insert(&self.payloads, key.as_slice(), payload.as_slice());
        }
        for (key, log) in &batch.logs {
            step()?;
            writes.insert(&self.logs, key.as_slice(), log.as_slice());
        }
        for (key, result) in &batch.results {
            step()?;
            writes.insert(&self.results, key.as_slice(), result.as_slice());
        }
        for (path, record) in &batch.queues {
            step()?;
            writes.insert(&self.queues, path.as_bytes(), record.as_slice());
        }
        for (name, value) in &batch.meta {
            step()?;
            writes.insert(&self.meta, name.as_bytes(), value.as_slice());
        }
        for deletion in &batch.deleted_jobs {
            step()?;
            let key = deletion.key.as_slice();
            writes.remove(&self.jobs, key);
            writes.remove(&self.payloads, key);
            writes.remove(&self.logs, key);
            writes.remove(&self.results, key);
        }
        for path in &batch.deleted_queues {
            step()?;
            writes.remove(&self.queues, path.as_bytes());
        }
        for name in &batch.deleted_meta {
            step()?;
            writes.remove(&self.meta, name.as_bytes());
        }
        self.write_index_changes(batch, &mut writes)?;
        step()?;
        writes
            .commit()
            .map_err(|e| self.write_error("writing a batch to the journal in", e))
    }

    /// A failed write as an operator reads it: the operating system's error (a full disk,
    /// an I/O error) with the data directory, rather than the engine's debug output.
    fn write_error(&self, action: &'static str, err: fjall::Error) -> StoreError {
        match err {
            fjall::Error::Io(source) => StoreError::Io {
                action,
                path: self.dir().to_path_buf(),
                source,
            },
            fjall::Error::Poisoned => StoreError::Poisoned(self.why_poisoned()),
            other => engine(other),
        }
    }

    /// What an operator needs when the engine refuses writes. The write that failed may
    /// have been the engine's own, in the background (a flush or a compaction), whose error
    /// only reached the log; a full disk is by far the likeliest cause, and the one that
    /// can be checked from here.
    fn why_poisoned(&self) -> String {
        let dir = self.dir();
        let failed = format!(
            "an earlier journal write, fsync, flush or compaction in `{}` failed",
            dir.display()
        );
        match nix::sys::statvfs::statvfs(dir) {
            Ok(disk) => {
                let free = disk.blocks_available() * disk.fragment_size();
                if free < NEARLY_FULL_BYTES {
                    format!("{failed}, and its disk is full: {} free", mebibytes(free))
                } else {
                    format!(
                        "{failed}; its disk has {} free, so see the server log for the engine's error",
                        mebibytes(free)
                    )
                }
            }
            Err(e) => format!("{failed}; its free space cannot be read: {e}"),
        }
    }

    /// Adds to `writes` the index entries and counts `batch` changes: each job's index after
    /// the batch against the one the writer says it had before ([`crate::JobWrite::previous`]),
    /// so nothing of the index is read back; only the few counts touched are.
    fn write_index_changes(
        &self,
        batch: &WriteBatch,
        writes: &mut OwnedWriteBatch,
    ) -> Result<(), StoreError> {
        // Job key → (index before the batch, index after it). The writer sends each job at
        // most once per batch; a job sent twice keeps its first `previous` and last index.
        let mut jobs: HashMap<JobKey, (Option<&JobIndex>, Option<&JobIndex>)> =
            HashMap::with_capacity(batch.jobs.len() + batch.deleted_jobs.len());
        for job in &batch.jobs {
            jobs.entry(job.key)
                .or_insert((job.previous.as_ref(), None))
                .1 = Some(&job.index);
        }
        for deletion in &batch.deleted_jobs {
            jobs.entry(deletion.key)
                .or_insert((deletion.previous.as_ref(), None))
                .1 = None;
        }
        let mut counts: HashMap<(&str, &str), i64> = HashMap::new();
        let keyspaces = [&self.by_queue, &self.by_state, &self.by_tag];
        // After netting per job, each entry key occurs once: it ends in the job's key.
        let mut set = |which: usize, name: &str, key: &JobKey, present: bool| {
            let mut entry = index_prefix(name);
            entry.extend_from_slice(key);
            if present {
                writes.insert(keyspaces[which], entry, b"".as_slice());
            } else {
                writes.remove(keyspaces[which], entry);
            }
        };
        for (key, (old, new)) in &jobs {
            if old == new {
                continue;
            }
            match (old, new) {
                (Some(old), Some(new)) => index_differences(old, new, key, &mut set),
                (Some(old), None) => index_entries(old, key, false, &mut set),
                (None, Some(new)) => index_entries(new, key, true, &mut set),
                (None, None) => {}
            }
            if let Some(old) = old {
                *counts.entry((&old.queue, &old.state)).or_default() -= 1;
            }
            if let Some(new) = new {
                *counts.entry((&new.queue, &new.state)).or_default() += 1;
            }
        }
        for ((queue, state), delta) in counts {
            if delta == 0 {
                continue;
            }
            let key = count_key(queue, state);
            let stored = match self.counts.get(&key).map_err(engine)? {
                Some(bytes) => decode_count(&bytes)?,
                None => 0,
            };
            // A count is derived, shown and never decided on: one that would go below zero
            // (an index out of step with the records) stays at zero rather than refusing
            // every later commit, which would stop the server at each restart.
            let now = stored.saturating_add_signed(delta);
            if now == 0 {
                writes.remove(&self.counts, key);
            } else {
                writes.insert(&self.counts, key, now.to_le_bytes().as_slice());
            }
        }
        Ok(())
    }

    /// Writes the term durably, then keeps it.
    fn store_term(&self, term: &mut Term, new: Term) -> Result<(), StoreError> {
        let mut writes = OwnedWriteBatch::with_capacity(self.db.clone(), 2)
            .durability(Some(PersistMode::SyncAll));
        writes.insert(&self.lease, EPOCH_KEY, new.epoch.to_be_bytes().as_slice());
        match &new.lease {
            Some(lease) => writes.insert(&self.lease, LEASE_KEY, encode_lease(lease)),
            None => writes.remove(&self.lease, LEASE_KEY),
        }
        writes
            .commit()
            .map_err(|e| self.write_error("writing the lease to the journal in", e))?;
        *term = new;
        Ok(())
    }

    /// Pages through one of the secondary indexes.
    fn page_of_index(
        &self,
        snapshot: &fjall::Snapshot,
        index: &Keyspace,
        name: &str,
        query: &JobQuery,
    ) -> Result<JobPage, StoreError> {
        let prefix = index_prefix(name);
        let mut upper = prefix.clone();
        upper.extend_from_slice(&[0xFF; 16]);
        let mut lower = prefix.clone();
        lower.extend_from_slice(&[0; 16]);
        let range = match (query.order, query.after) {
            (_, None) => (Bound::Included(lower), Bound::Included(upper)),
            (Order::OldestFirst, Some(after)) => {
                let mut from = prefix.clone();
                from.extend_from_slice(&after);
                (Bound::Excluded(from), Bound::Included(upper))
            }
            (Order::NewestFirst, Some(after)) => {
                let mut to = prefix.clone();
                to.extend_from_slice(&after);
                (Bound::Included(lower), Bound::Excluded(to))
            }
        };
        let iter = snapshot.range(index, range);
        let keys = take_page(iter, query, |entry_key| {
            entry_key
                .get(prefix.len()..)
                .and_then(|k| JobKey::try_from(k).ok())
        })?;
        self.page_of_keys(snapshot, keys, query.limit.max(1))
    }

    /// Reads the records of `keys` (one more than a page when there is a next page).
    fn page_of_keys(
        &self,
        snapshot: &fjall::Snapshot,
        keys: Vec<JobKey>,
        limit: usize,
    ) -> Result<JobPage, StoreError> {
        let mut page = JobPage::default();
        let more = keys.len() > limit;
        for key in keys.into_iter().take(limit) {
            let record = snapshot
                .get(&self.jobs, key)
                .map_err(engine)?
                .ok_or_else(|| StoreError::Corrupt {
                    what: format!(
                        "the index names job {} but its record is missing",
                        crate::JobKeyHex(&key)
                    ),
                })?;
            page.jobs.push((key, record.to_vec()));
        }
        if more {
            page.next = page.jobs.last().map(|(key, _)| *key);
        }
        Ok(page)
    }
}

/// Sets (or removes) every index entry of a job: in index 0 (queue), 1 (state), 2 (tag).
fn index_entries(
    index: &JobIndex,
    key: &JobKey,
    present: bool,
    set: &mut impl FnMut(usize, &str, &JobKey, bool),
) {
    set(0, &index.queue, key, present);
    set(1, &index.state, key, present);
    for tag in &index.tags {
        set(2, tag, key, present);
    }
}

/// Changes only the entries that differ between a job's old index and its new one: a job
/// changing state keeps its queue and tag entries (most commits are state changes).
fn index_differences(
    old: &JobIndex,
    new: &JobIndex,
    key: &JobKey,
    set: &mut impl FnMut(usize, &str, &JobKey, bool),
) {
    if old.queue != new.queue {
        set(0, &old.queue, key, false);
        set(0, &new.queue, key, true);
    }
    if old.state != new.state {
        set(1, &old.state, key, false);
        set(1, &new.state, key, true);
    }
    if old.tags != new.tags {
        for tag in old.tags.iter().filter(|t| !new.tags.contains(t)) {
            set(2, tag, key, false);
        }
        for tag in new.tags.iter().filter(|t| !old.tags.contains(t)) {
            set(2, tag, key, true);
        }
    }
}

/// Collects up to `limit + 1` job keys from an iterator in the query's order.
fn take_page(
    iter: fjall::Iter,
    query: &JobQuery,
    job_key: impl Fn(&[u8]) -> Option<JobKey>,
) -> Result<Vec<JobKey>, StoreError> {
    let wanted = query.limit.max(1) + 1;
    let mut keys = Vec::with_capacity(wanted.min(1024));
    let mut push = |entry: fjall::Guard| -> Result<bool, StoreError> {
        let key = entry.key().map_err(engine)?;
        let job = job_key(&key).ok_or_else(|| StoreError::Corrupt {
            what: format!("an index entry of {} bytes names no job", key.len()),
        })?;
        keys.push(job);
        Ok(keys.len() < wanted)
    };
    match query.order {
        Order::OldestFirst => {
            for entry in iter {
                if !push(entry)? {
                    break;
                }
            }
        }
        Order::NewestFirst => {
            for entry in iter.rev() {
                if !push(entry)? {
                    break;
                }
            }
        }
    }
    Ok(keys)
}

/// A name as an index prefix: its length (2 bytes, big-endian) then its bytes, so that no
/// name's entries run into another's. Names are at most [`crate::MAX_NAME_BYTES`].
fn index_prefix(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + name.len() + 16);
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

fn count_key(queue: &str, state: &str) -> Vec<u8> {
    let mut key = index_prefix(queue);
    key.extend_from_slice(state.as_bytes());
    key
}

fn decode_count(bytes: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_le_bytes)
        .map_err(|_| StoreError::Corrupt {
            what: format!("a job count of {} bytes (counts are 8)", bytes.len()),
        })
}

/// Reads length-prefixed names written by [`index_prefix`].
struct Names<'a>(&'a [u8]);

impl<'a> Names<'a> {
    fn u16(&mut self) -> Option<u16> {
        let (head, rest) = self.0.split_first_chunk::<2>()?;
        self.0 = rest;
        Some(u16::from_be_bytes(*head))
    }

    fn name(&mut self) -> Option<String> {
        let len = usize::from(self.u16()?);
        let bytes = self.0.get(..len)?;
        self.0 = &self.0[len..];
        String::from_utf8(bytes.to_vec()).ok()
    }
}

fn encode_lease(lease: &Lease) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + lease.holder.len());
    out.extend_from_slice(&lease.epoch.to_be_bytes());
    out.extend_from_slice(&lease.expires_at_ms.to_be_bytes());
    out.extend_from_slice(lease.holder.as_bytes());
    out
}

fn read_term(keyspace: &Keyspace) -> Result<Term, StoreError> {
    let bad = |what: &str| StoreError::Corrupt {
        what: format!("the stored {what} cannot be read"),
    };
    let epoch = match keyspace.get(EPOCH_KEY).map_err(engine)? {
        Some(bytes) => <[u8; 8]>::try_from(&*bytes)
            .map(u64::from_be_bytes)
            .map_err(|_| bad("epoch"))?,
        None => 0,
    };
    let lease = match keyspace.get(LEASE_KEY).map_err(engine)? {
        Some(bytes) => {
            let (epoch, rest) = bytes.split_first_chunk::<8>().ok_or_else(|| bad("lease"))?;
            let (expires, holder) = rest.split_first_chunk::<8>().ok_or_else(|| bad("lease"))?;
            Some(Lease {
                holder: String::from_utf8(holder.to_vec()).map_err(|_| bad("lease holder"))?,
                epoch: u64::from_be_bytes(*epoch),
                expires_at_ms: u64::from_be_bytes(*expires),
            })
        }
        None => None,
    };
    Ok(Term { epoch, lease })
}

impl Store for EmbeddedStore {
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.commit_inner(batch, None)
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        // One point in time for all three, even if commits run meanwhile.
        let snapshot = self.db.snapshot();
        let mut jobs = Vec::with_capacity(self.jobs.approximate_len());
        for entry in snapshot.iter(&self.jobs) {
            let (key, record) = entry.into_inner().map_err(engine)?;
            let key = JobKey::try_from(&*key).map_err(|_| StoreError::Corrupt {
                what: format!("a job key of {} bytes (job keys are 16)", key.len()),
            })?;
            jobs.push((key, record.to_vec()));
        }
        Ok(Snapshot {
            jobs,
            queues: read_named(&snapshot, &self.queues, "queue path")?,
            meta: read_named(&snapshot, &self.meta, "meta name")?,
        })
    }

    fn payloads(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let snapshot = self.db.snapshot();
        jobs.iter()
            .map(|key| {
                let found = snapshot.get(&self.payloads, key).map_err(engine)?;
                Ok(found.map(|payload| payload.to_vec()))
            })
            .collect()
    }

    fn logs(&self, job: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        let found = self.logs.get(job).map_err(engine)?;
        Ok(found.map(|log| log.to_vec()))
    }

    fn results(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let snapshot = self.db.snapshot();
        jobs.iter()
            .map(|key| {
                let found = snapshot.get(&self.results, key).map_err(engine)?;
                Ok(found.map(|result| result.to_vec()))
            })
            .collect()
    }

    fn job(&self, key: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        let found = self.jobs.get(key).map_err(engine)?;
        Ok(found.map(|record| record.to_vec()))
    }

    fn jobs(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        let snapshot = self.db.snapshot();
        let index = match &query.filter {
            JobFilter::All => None,
            JobFilter::Queue(name) => Some((&self.by_queue, name)),
            JobFilter::State(name) => Some((&self.by_state, name)),
            JobFilter::Tag(name) => Some((&self.by_tag, name)),
        };
        if let Some((keyspace, name)) = index {
            return self.page_of_index(&snapshot, keyspace, name, query);
        }
        let range: (Bound<JobKey>, Bound<JobKey>) = match (query.order, query.after) {
            (_, None) => (Bound::Unbounded, Bound::Unbounded),
            (Order::OldestFirst, Some(after)) => (Bound::Excluded(after), Bound::Unbounded),
            (Order::NewestFirst, Some(after)) => (Bound::Unbounded, Bound::Excluded(after)),
        };
        let iter = snapshot.range(&self.jobs, range);
        let keys = take_page(iter, query, |key| JobKey::try_from(key).ok())?;
        self.page_of_keys(&snapshot, keys, query.limit.max(1))
    }

    fn counts(&self) -> Result<Vec<JobCount>, StoreError> {
        let mut out = Vec::new();
        for entry in self.db.snapshot().iter(&self.counts) {
            let (key, value) = entry.into_inner().map_err(engine)?;
            let mut names = Names(&key);
            let queue = names.name().ok_or_else(|| StoreError::Corrupt {
                what: "a job count's key cannot be read".to_string(),
            })?;
            let state = String::from_utf8(names.0.to_vec()).map_err(|_| StoreError::Corrupt {
                what: "a job count's state is not UTF-8".to_string(),
            })?;
            out.push(JobCount {
                queue,
                state,
                count: decode_count(&value)?,
            });
        }
        out.sort();
        Ok(out)
    }

    fn epoch(&self) -> Result<Epoch, StoreError> {
        Ok(self.writer().epoch)
    }

    fn lease(&self) -> Result<Option<Lease>, StoreError> {
        Ok(self.writer().lease.clone())
    }

    fn acquire_lease(&self, holder: &str, ttl: Duration, now_ms: u64) -> Result<Lease, StoreError> {
        let mut term = self.writer();
        let new = term.acquired(holder, ttl, now_ms)?;
        self.store_term(&mut term, new)?;
        Ok(term.lease.clone().expect("an acquired term has a lease"))
    }

    /// A renewal is kept in memory, not written. The engine's lock file lets one process
    /// at a time open the directory, so no other reads the lease while this one lives,
    /// and once it is gone its lease means nothing: only the epoch (written by every
    /// acquisition) must survive it. Writing the lease each second, as the leader renews
    /// it, kept a memtable growing all hour that never filled enough to flush
    /// (docs/BENCHMARKS.md, "Soak").
    fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: u64) -> Result<Lease, StoreError> {
        let mut term = self.writer();
        *term = term.renewed(lease, ttl, now_ms)?;
        Ok(term.lease.clone().expect("a renewed term has a lease"))
    }

    fn resign_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut term = self.writer();
        let new = term.resigned(lease)?;
        self.store_term(&mut term, new)
    }
}

/// Every entry of a keyspace keyed by a UTF-8 name, in name order.
fn read_named(
    snapshot: &fjall::Snapshot,
    keyspace: &Keyspace,
    kind: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for entry in snapshot.iter(keyspace) {
        let (name, value) = entry.into_inner().map_err(engine)?;
        let name = String::from_utf8(name.to_vec()).map_err(|e| StoreError::Corrupt {
            what: format!("a {kind} that is not UTF-8: {e}"),
        })?;
        out.push((name, value.to_vec()));
    }
    Ok(out)
}

/// Free space under which a disk counts as full: a compaction writes tables about this
/// large, and the journal grows to it.
const NEARLY_FULL_BYTES: u64 = MAX_JOURNAL_BYTES;

fn mebibytes(bytes: u64) -> String {
    let mib = bytes as f64 / f64::from(1 << 20);
    format!("{mib:.2} MiB")
}

/// Maps fjall's errors onto what an operator can act on.
fn engine(err: fjall::Error) -> StoreError {
    match err {
        fjall::Error::Poisoned => StoreError::Poisoned(
            "an earlier journal write, fsync, flush or compaction failed".to_string(),
        ),
        fjall::Error::JournalRecovery(e) => StoreError::Corrupt {
            what: format!("the journal cannot be replayed ({e})"),
        },
        fjall::Error::InvalidTrailer
        | fjall::Error::InvalidTag(_)
        | fjall::Error::Decompress(_) => StoreError::Corrupt {
            what: format!("{err:?}"),
        },
        fjall::Error::Unrecoverable => StoreError::Corrupt {
            what: "the engine reports its files unrecoverable".to_string(),
        },
        fjall::Error::InvalidVersion(version) => StoreError::Engine(format!(
            "the data directory was written by an incompatible engine format ({version:?})"
        )),
        other => StoreError::Engine(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{JobDeletion, JobWrite};
    use tempfile::TempDir;

    /// A store with the temporary directory it lives in (removed when dropped).
    type TestStore = crate::testsuite::Guarded<EmbeddedStore, TempDir>;

    fn fresh() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("data")).unwrap();
        TestStore { store, guard: dir }
    }

    fn reopen(test: TestStore) -> TestStore {
        let TestStore { store, guard } = test;
        drop(store);
        let store = EmbeddedStore::open(&guard.path().join("data")).unwrap();
        TestStore { store, guard }
    }

    crate::store_testsuite!(new_store: fresh, reopen: reopen);

    #[test]
    fn commit_failing_half_way_applies_nothing() {
        crate::testsuite::failed_commit_applies_nothing(fresh, |test, batch| {
            test.store.commit_inner(batch, Some(batch.len() / 2))
        });
    }

    #[test]
    fn commit_failing_after_every_write_applies_nothing() {
        crate::testsuite::failed_commit_applies_nothing(fresh, |test, batch| {
            test.store.commit_inner(batch, Some(batch.len()))
        });
    }

    #[test]
    fn second_open_of_same_directory_is_refused() {
        let test = fresh();
        let mut batch = WriteBatch::new();
        batch.meta.push(("next_token".to_string(), b"7".to_vec()));
        test.store.commit(&batch).unwrap();

        let err = EmbeddedStore::open(test.store.dir()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("already in use"), "{message}");

        // The refused open changed nothing and the first store still works.
        test.store.commit(&batch).unwrap();
        let test = reopen(test);
        assert_eq!(test.load().unwrap().meta.len(), 1);
    }

    #[test]
    fn open_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b").join("data");
        let store = EmbeddedStore::open(&nested).unwrap();
        assert!(nested.is_dir());
        assert_eq!(store.load().unwrap(), Snapshot::default());
    }

    /// The disk space the engine's journal files take: allocated blocks, not their length,
    /// which the engine sets to 64 MiB up front.
    fn journal_bytes(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(dir.join(ENGINE_DIR))
            .unwrap()
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|e| e == "jnl"))
            .map(|entry| entry.metadata().unwrap().blocks() * 512)
            .sum()
    }

    /// Waits up to a minute for the engine's background work to make `done` true.
    fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            if std::time::Instant::now() >= give_up {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Steady churn that no single keyspace's share would ever flush at the engine's
    /// default memtable size (64 MiB): jobs written with a record, a payload, a log and a
    /// result of 1,200 bytes each, and deleted a round later, 192 MiB in all, 48 MiB per
    /// keyspace. With the default, nothing flushed, the whole journal stayed on disk and
    /// in memory (as in the hour of `lqsm bench soak`). Bounded memtables flush, the
    /// journal rotates at 64 MB, and the journal limit makes the idle keyspaces flush too,
    /// so that the oldest journal is deleted.
    #[test]
    fn churn_flushes_memtables_and_journal_limit_bounds_the_journal() {
        const JOBS_PER_ROUND: usize = 1_000;
        const ROUNDS: usize = 40;
        const VALUE_BYTES: usize = 1_200;
        let test = fresh();
        let index = JobIndex {
            queue: "root.default".to_string(),
            state: "succeeded".to_string(),
            tags: vec![],
        };
        let value = |n: usize, kind: u8| {
            let mut v = vec![kind; VALUE_BYTES];
            v[..8].copy_from_slice(&(n as u64).to_be_bytes());
            v
        };
        let mut previous: Vec<JobKey> = Vec::new();
        let mut flushed_early = false;
        for round in 0..ROUNDS {
            let mut batch = WriteBatch::new();
            let keys: Vec<JobKey> = (0..JOBS_PER_ROUND)
                .map(|i| {
                    let n = round * JOBS_PER_ROUND + i;
                    let mut key = [0u8; 16];
                    key[..8].copy_from_slice(&(n as u64).to_be_bytes());
                    key
                })
                .collect();
            for (i, key) in keys.iter().enumerate() {
                let n = round * JOBS_PER_ROUND + i;
                batch.jobs.push(JobWrite {
                    key: *key,
                    record: value(n, 1),
                    index: index.clone(),
                    previous: None,
                });
                batch.payloads.push((*key, value(n, 2)));
                batch.logs.push((*key, value(n, 3)));
                batch.results.push((*key, value(n, 4)));
            }
            batch.deleted_jobs = previous
                .iter()
                .map(|key| JobDeletion {
                    key: *key,
                    previous: Some(index.clone()),
                })
                .collect();
            test.store.commit(&batch).unwrap();
            previous = keys;
            // A quarter in (12 MiB of records written), the records' keyspace has
            // written tables: its memtable is far below the engine's default.
            if round == ROUNDS / 4 {
                flushed_early = eventually(|| test.store.jobs.disk_space() > 0);
            }
        }
        assert!(
            flushed_early,
            "no table of job records after 12 MiB of them: the memtables are not bounded"
        );
        // The engine rotates its journal at 64 MB, at a flush, and checks its limit at a
        // rotation: a sealed journal that the idle keyspaces still hold waits for the next
        // rotation to make them flush. So: up to 64 MB sealed, up to 64 MB active, and the
        // commit that crossed 64 MB before the next flush noticed.
        let bound = 2 * MAX_JOURNAL_BYTES + MAX_JOURNAL_BYTES / 4;
        let mut journal = 0;
        let bounded = eventually(|| {
            journal = journal_bytes(test.store.dir());
            journal <= bound
        });
        assert!(
            bounded,
            "journal {:.1} MiB on disk after 192 MiB of churn, above {} MiB",
            journal as f64 / f64::from(1 << 20),
            bound >> 20
        );
        // Everything written since the last round's deletions is still there.
        let loaded = test.load().unwrap();
        assert_eq!(loaded.jobs.len(), JOBS_PER_ROUND);
    }
}
