//! The embedded backend: one data directory, nothing to install.
//!
//! Built on fjall, a log-structured merge tree, chosen over redb by measurement
//! (`crates/lqsm-store/STORAGE.md`). A commit is one fjall batch: it is appended to the
//! journal as a single checksummed entry and fsynced before `commit` returns, so after a crash
//! the journal replays every acknowledged batch and drops a torn last one whole.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode, Readable};

use crate::data_dir::DataDir;
use crate::{JobKey, Snapshot, Store, StoreError, WriteBatch};

/// The engine's directory inside the data directory.
const ENGINE_DIR: &str = "fjall";

/// The default [`Store`]: an embedded database in one data directory.
///
/// Every commit is made durable (fsync) before `commit` returns. Commits from several
/// threads are safe; each is its own atomic unit. Only one `EmbeddedStore` may have a
/// directory open at a time, in this process or any other.
pub struct EmbeddedStore {
    db: Database,
    jobs: Keyspace,
    payloads: Keyspace,
    logs: Keyspace,
    queues: Keyspace,
    meta: Keyspace,
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
            .open()
            .map_err(engine)?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(engine)
        };
        Ok(Self {
            jobs: keyspace("jobs")?,
            payloads: keyspace("payloads")?,
            logs: keyspace("logs")?,
            queues: keyspace("queues")?,
            meta: keyspace("meta")?,
            db,
            dir,
        })
    }

    /// The data directory this store holds.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Commits `batch`; with `fail_after`, fails instead after adding that many operations
    /// to the engine's batch (for tests of atomicity).
    fn commit_inner(
        &self,
        batch: &WriteBatch,
        fail_after: Option<usize>,
    ) -> Result<(), StoreError> {
        if batch.is_empty() && fail_after.is_none() {
            return Ok(());
        }
        batch.check_limits()?;
        let mut budget = fail_after.unwrap_or(usize::MAX);
        let mut step = || {
            if budget == 0 {
                return Err(StoreError::Engine("injected failure".to_string()));
            }
            budget -= 1;
            Ok(())
        };
        // Deletions of jobs are three operations each (record, payload, logs).
        let operations = batch.len() + 2 * batch.deleted_jobs.len();
        let mut writes = OwnedWriteBatch::with_capacity(self.db.clone(), operations)
            .durability(Some(PersistMode::SyncAll));
        // Writes first, deletions after: within a batch, deletion wins. Until `commit` below,
        // all of this is in memory only; an early return drops it and applies nothing.
        for (key, record) in &batch.jobs {
            step()?;
            writes.insert(&self.jobs, key.as_slice(), record.as_slice());
        }
        for (key, payload) in &batch.payloads {
            step()?;
            writes.insert(&self.payloads, key.as_slice(), payload.as_slice());
        }
        for (key, log) in &batch.logs {
            step()?;
            writes.insert(&self.logs, key.as_slice(), log.as_slice());
        }
        for (path, record) in &batch.queues {
            step()?;
            writes.insert(&self.queues, path.as_bytes(), record.as_slice());
        }
        for (name, value) in &batch.meta {
            step()?;
            writes.insert(&self.meta, name.as_bytes(), value.as_slice());
        }
        for key in &batch.deleted_jobs {
            step()?;
            writes.remove(&self.jobs, key.as_slice());
            writes.remove(&self.payloads, key.as_slice());
            writes.remove(&self.logs, key.as_slice());
        }
        for path in &batch.deleted_queues {
            step()?;
            writes.remove(&self.queues, path.as_bytes());
        }
        step()?;
        writes.commit().map_err(engine)
    }
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

/// Maps fjall's errors onto what an operator can act on.
fn engine(err: fjall::Error) -> StoreError {
    match err {
        fjall::Error::Poisoned => {
            StoreError::Poisoned("an earlier journal write or fsync failed".to_string())
        }
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
    use tempfile::TempDir;

    /// A store with the temporary directory it lives in (removed when dropped).
    struct TestStore {
        store: EmbeddedStore,
        dir: TempDir,
    }

    impl Store for TestStore {
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
    }

    fn fresh() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("data")).unwrap();
        TestStore { store, dir }
    }

    fn reopen(test: TestStore) -> TestStore {
        let TestStore { store, dir } = test;
        drop(store);
        let store = EmbeddedStore::open(&dir.path().join("data")).unwrap();
        TestStore { store, dir }
    }

    crate::conformance_tests!(new_store: fresh, reopen: reopen);

    #[test]
    fn commit_failing_half_way_applies_nothing() {
        crate::conformance::failed_commit_applies_nothing(fresh, |test, batch| {
            test.store.commit_inner(batch, Some(batch.len() / 2))
        });
    }

    #[test]
    fn commit_failing_after_every_write_applies_nothing() {
        crate::conformance::failed_commit_applies_nothing(fresh, |test, batch| {
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
}
