//! A store held in memory, for tests (cargo feature `testsuite`): the contract's
//! [`Model`] with an epoch and a lease, behind one lock. Nothing survives the process.
//!
//! It is what a [`FaultyStore`](crate::faults::FaultyStore) keeps as the image of what
//! reached the disk, and what it hands back after a simulated crash; a test can also run a
//! server on it without a data directory.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::testsuite::Model;
use crate::{
    Epoch, JobCount, JobKey, JobPage, JobQuery, Lease, Snapshot, Store, StoreError, Term,
    WriteBatch,
};

/// A [`Store`] in memory that keeps the whole contract (it passes the test kit), with
/// nothing durable beyond the value itself.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<Contents>,
}

/// Everything a store holds.
#[derive(Debug, Default, Clone)]
struct Contents {
    model: Model,
    term: Term,
}

impl MemoryStore {
    /// An empty store at epoch 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// A second store holding what this one holds now; the two then change apart.
    pub fn duplicate(&self) -> MemoryStore {
        MemoryStore {
            state: Mutex::new(self.contents().clone()),
        }
    }

    fn contents(&self) -> MutexGuard<'_, Contents> {
        // A panic elsewhere while the lock was held leaves no half-applied batch: every
        // change below is computed first and assigned whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let mut contents = self.contents();
        contents.term.check_writer(batch.epoch)?;
        batch.check_limits()?;
        contents.model.apply(batch);
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(self.contents().model.snapshot())
    }

    fn payloads(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        Ok(self.contents().model.payloads(jobs))
    }

    fn logs(&self, job: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.contents().model.logs(job))
    }

    fn results(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        Ok(self.contents().model.results(jobs))
    }

    fn job(&self, key: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.contents().model.job(key))
    }

    fn jobs(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        Ok(self.contents().model.jobs(query))
    }

    fn counts(&self) -> Result<Vec<JobCount>, StoreError> {
        Ok(self.contents().model.counts())
    }

    fn epoch(&self) -> Result<Epoch, StoreError> {
        Ok(self.contents().term.epoch)
    }

    fn lease(&self) -> Result<Option<Lease>, StoreError> {
        Ok(self.contents().term.lease.clone())
    }

    fn acquire_lease(&self, holder: &str, ttl: Duration, now_ms: u64) -> Result<Lease, StoreError> {
        let mut contents = self.contents();
        let term = contents.term.acquired(holder, ttl, now_ms)?;
        let lease = term.lease.clone();
        contents.term = term;
        lease.ok_or_else(|| StoreError::Engine("a lease acquired is held".into()))
    }

    fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: u64) -> Result<Lease, StoreError> {
        let mut contents = self.contents();
        let term = contents.term.renewed(lease, ttl, now_ms)?;
        let renewed = term.lease.clone();
        contents.term = term;
        renewed.ok_or_else(|| StoreError::Engine("a lease renewed is held".into()))
    }

    fn resign_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut contents = self.contents();
        contents.term = contents.term.resigned(lease)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;

    fn reopen(store: MemoryStore) -> MemoryStore {
        // Nothing to close: "reopening" keeps what the value holds.
        store
    }

    crate::store_testsuite!(new_store: MemoryStore::new, reopen: reopen);
}
