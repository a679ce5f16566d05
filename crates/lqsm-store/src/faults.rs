//! Store failures on demand, for tests (cargo feature `testsuite`).
//!
//! [`FaultyStore`] wraps a store and passes every call on, except when a test switches a
//! fault on: every write fails with an I/O error or as a full disk until
//! [`FaultyStore::heal`], or the next few commits fail. Reads keep working (a full disk
//! still reads).
//!
//! It also stands for the machine under the store. It keeps an image of what is durable:
//! each write that **returned** `Ok`, in the order the inner store applied them. On
//! [`FaultyStore::crash`] the machine loses power: this store refuses everything from then
//! on, commits that had started but not returned are dropped, and what comes back is a
//! [`MemoryStore`] holding exactly the image. A writer that acknowledged something before
//! its commit returned finds it missing there. A `kill -9` of a process cannot show that,
//! since the operating system keeps what was written without fsync and writes it out
//! anyway.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::memory::MemoryStore;
use crate::{
    Epoch, JobCount, JobKey, JobPage, JobQuery, Lease, ServerInfo, Snapshot, Store, StoreError,
    WriteBatch,
};

/// What an injected write failure looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// The disk answers a write with an I/O error (EIO).
    Io,
    /// The disk is full (ENOSPC).
    DiskFull,
}

impl WriteFault {
    /// The error a failing write returns: what the operating system would say, in the
    /// store's [`StoreError::Io`], whose message tells an operator what to check.
    pub fn error(self, action: &'static str) -> StoreError {
        // The numbers are the Linux (and BSD) ones: the error reads as a real one does,
        // "No space left on device (os error 28)", and has its kind (`StorageFull`).
        let source = match self {
            WriteFault::Io => std::io::Error::from_raw_os_error(5),
            WriteFault::DiskFull => std::io::Error::from_raw_os_error(28),
        };
        StoreError::Io {
            action,
            path: PathBuf::from(FAULTY_PATH),
            source,
        }
    }
}

/// Where an injected failure says it happened.
const FAULTY_PATH: &str = "the test's faulty store";

/// Counts of what a [`FaultyStore`] did, for a test's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Commits that returned `Ok` (durable).
    pub commits: u64,
    /// Commits failed by an injected fault.
    pub commits_refused: u64,
    /// Other writes (lease, announcement) failed by an injected fault.
    pub writes_refused: u64,
    /// Commits that had started but not returned when the machine crashed: dropped.
    pub dropped_at_crash: u64,
}

/// The faults switched on.
#[derive(Debug, Clone, Copy)]
struct Faults {
    /// Every write fails so, until healed.
    every_write: Option<WriteFault>,
    /// This many next commits fail with `next_commit_fault`.
    next_commits: u64,
    next_commit_fault: WriteFault,
    /// How long a commit takes before it reaches the disk (a slow fsync): the window in
    /// which a crash finds it in flight.
    commit_latency: Duration,
    /// Commits wait before the disk until released (or the crash).
    held: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            every_write: None,
            next_commits: 0,
            next_commit_fault: WriteFault::Io,
            commit_latency: Duration::ZERO,
            held: false,
        }
    }
}

/// Which kind of write is asked, to pick the fault that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Commit,
    Other,
}

/// A [`Store`] whose writes fail on demand and whose machine can crash (see the module's
/// documentation). For tests only.
pub struct FaultyStore {
    inner: Box<dyn Store>,
    /// What reached the disk: every write that returned `Ok`.
    image: MemoryStore,
    /// Held across each write to `inner` and `image`, so that both take writes in the
    /// same order, and by [`FaultyStore::crash`]; true once crashed.
    writes: Mutex<bool>,
    /// The same, for reads, which do not take the lock.
    crashed: AtomicBool,
    faults: Mutex<Faults>,
    /// Wakes held commits.
    released: Condvar,
    /// Commits started and not yet at the disk (waiting out the latency or the lock).
    in_flight: AtomicU64,
    commits: AtomicU64,
    commits_refused: AtomicU64,
    writes_refused: AtomicU64,
    dropped_at_crash: AtomicU64,
}

impl std::fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("faults", &*self.faults())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl FaultyStore {
    /// Wraps `inner`, which must be empty (at epoch 0, holding nothing): the image of what
    /// is durable starts empty. Refused with [`StoreError::Engine`] otherwise.
    pub fn new(inner: impl Store) -> Result<FaultyStore, StoreError> {
        let loaded = inner.load()?;
        if loaded != Snapshot::default() || inner.epoch()? != 0 {
            return Err(StoreError::Engine(
                "a FaultyStore must start on an empty store (it knows what is durable only \
                 from the writes it passes on); after a crash use FaultyStore::restarted"
                    .into(),
            ));
        }
        Ok(Self::with_image(Box::new(inner), MemoryStore::new()))
    }

    /// The store a machine finds after [`crash`](FaultyStore::crash): `survivor`, wrapped
    /// again, with no fault switched on.
    pub fn restarted(survivor: MemoryStore) -> FaultyStore {
        let image = survivor.duplicate();
        Self::with_image(Box::new(survivor), image)
    }

    fn with_image(inner: Box<dyn Store>, image: MemoryStore) -> FaultyStore {
        FaultyStore {
            inner,
            image,
            writes: Mutex::new(false),
            crashed: AtomicBool::new(false),
            faults: Mutex::new(Faults::default()),
            released: Condvar::new(),
            in_flight: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            commits_refused: AtomicU64::new(0),
            writes_refused: AtomicU64::new(0),
            dropped_at_crash: AtomicU64::new(0),
        }
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// From now on every write (commits, lease changes, announcements) fails with `fault`,
    /// until [`heal`](FaultyStore::heal).
    pub fn fail_writes(&self, fault: WriteFault) {
        self.faults().every_write = Some(fault);
    }

    /// The next `count` commits fail with `fault` (other writes go through).
    pub fn fail_next_commits(&self, count: u64, fault: WriteFault) {
        let mut faults = self.faults();
        faults.next_commits = count;
        faults.next_commit_fault = fault;
    }

    /// Switches every fault off (the commit latency stays).
    pub fn heal(&self) {
        let mut faults = self.faults();
        faults.every_write = None;
        faults.next_commits = 0;
    }

    /// Each commit from now on takes `latency` before it reaches the disk.
    pub fn set_commit_latency(&self, latency: Duration) {
        self.faults().commit_latency = latency;
    }

    /// From now on commits wait before they reach the disk, until
    /// [`release_commits`](FaultyStore::release_commits) or the crash (which drops them): a
    /// test crashes the machine with commits surely in flight.
    pub fn hold_commits(&self) {
        self.faults().held = true;
    }

    /// Lets held commits, and those to come, go on to the disk.
    pub fn release_commits(&self) {
        self.faults().held = false;
        self.released.notify_all();
    }

    /// How many commits have started and not reached the disk yet: a crash now drops them.
    pub fn commits_in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// What it did so far.
    pub fn stats(&self) -> FaultStats {
        FaultStats {
            commits: self.commits.load(Ordering::Relaxed),
            commits_refused: self.commits_refused.load(Ordering::Relaxed),
            writes_refused: self.writes_refused.load(Ordering::Relaxed),
            dropped_at_crash: self.dropped_at_crash.load(Ordering::Relaxed),
        }
    }

    /// The machine loses power: from now on every call fails, the commits in flight
    /// (started, not returned) are dropped, and the store a restarted machine finds is
    /// returned: exactly the writes that returned `Ok`. Crashing twice returns the same.
    pub fn crash(&self) -> MemoryStore {
        let mut crashed = self.lock_writes();
        if !*crashed {
            *crashed = true;
            self.crashed.store(true, Ordering::Release);
            // Each of them is past its start and before the lock: it will find the crash.
            self.dropped_at_crash
                .store(self.in_flight.load(Ordering::Acquire), Ordering::Relaxed);
            // Held commits wake to find the crash (under the lock they wait with, so that
            // none checks before the crash and waits after the wake-up).
            let _faults = self.faults();
            self.released.notify_all();
        }
        self.image.duplicate()
    }

    fn lock_writes(&self) -> MutexGuard<'_, bool> {
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn crashed_error() -> StoreError {
        StoreError::Engine(
            "the machine under this store crashed (FaultyStore::crash): nothing reaches its \
             disk any more; run the restarted server on the store crash returned"
                .into(),
        )
    }

    fn read<T>(
        &self,
        read: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.crashed.load(Ordering::Acquire) {
            return Err(Self::crashed_error());
        }
        read(self.inner.as_ref())
    }

    /// Passes a write on unless a fault applies, then records it in the image once the
    /// inner store has taken it. `mirror` must succeed on the image whenever the write
    /// succeeded on the inner store; if it does not, the inner store broke the contract.
    fn write<T>(
        &self,
        kind: Write,
        action: &'static str,
        write: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
        mirror: impl FnOnce(&MemoryStore, &T) -> Result<(), StoreError>,
    ) -> Result<T, StoreError> {
        let crashed = self.lock_writes();
        if kind == Write::Commit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        if *crashed {
            return Err(Self::crashed_error());
        }
        let injected = {
            let mut faults = self.faults();
            match (kind, faults.every_write) {
                (_, Some(fault)) => Some(fault),
                (Write::Commit, None) if faults.next_commits > 0 => {
                    faults.next_commits -= 1;
                    Some(faults.next_commit_fault)
                }
                _ => None,
            }
        };
        if let Some(fault) = injected {
            let refused = match kind {
                Write::Commit => &self.commits_refused,
                Write::Other => &self.writes_refused,
            };
            refused.fetch_add(1, Ordering::Relaxed);
            return Err(fault.error(action));
        }
        let value = write(self.inner.as_ref())?;
        mirror(&self.image, &value).map_err(|e| {
            StoreError::Engine(format!(
                "the store under a FaultyStore accepted a write that the contract refuses \
                 ({e}): it is not a conforming store"
            ))
        })?;
        if kind == Write::Commit {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        drop(crashed);
        Ok(value)
    }
}

/// Refuses a lease that differs from the one the inner store granted.
fn same_lease(granted: &Lease, imaged: Lease) -> Result<(), StoreError> {
    if *granted == imaged {
        return Ok(());
    }
    Err(StoreError::Engine(format!(
        "it granted {granted:?} where the contract grants {imaged:?}"
    )))
}

impl Store for FaultyStore {
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let latency = self.faults().commit_latency;
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        let mut faults = self.faults();
        while faults.held && !self.crashed.load(Ordering::Acquire) {
            faults = self
                .released
                .wait(faults)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(faults);
        self.write(
            Write::Commit,
            "writing a batch to",
            |inner| inner.commit(batch),
            |image, ()| image.commit(batch),
        )
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.read(|inner| inner.load())
    }

    fn payloads(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.read(|inner| inner.payloads(jobs))
    }

    fn logs(&self, job: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|inner| inner.logs(job))
    }

    fn results(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.read(|inner| inner.results(jobs))
    }

    fn job(&self, key: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|inner| inner.job(key))
    }

    fn jobs(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        self.read(|inner| inner.jobs(query))
    }

    fn counts(&self) -> Result<Vec<JobCount>, StoreError> {
        self.read(|inner| inner.counts())
    }

    fn epoch(&self) -> Result<Epoch, StoreError> {
        self.read(|inner| inner.epoch())
    }

    fn lease(&self) -> Result<Option<Lease>, StoreError> {
        self.read(|inner| inner.lease())
    }

    fn clock_ms(&self) -> Result<Option<u64>, StoreError> {
        self.read(|inner| inner.clock_ms())
    }

    fn acquire_lease(&self, holder: &str, ttl: Duration, now_ms: u64) -> Result<Lease, StoreError> {
        self.write(
            Write::Other,
            "writing the lease to",
            |inner| inner.acquire_lease(holder, ttl, now_ms),
            |image, granted| same_lease(granted, image.acquire_lease(holder, ttl, now_ms)?),
        )
    }

    fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: u64) -> Result<Lease, StoreError> {
        self.write(
            Write::Other,
            "writing the lease to",
            |inner| inner.renew_lease(lease, ttl, now_ms),
            |image, renewed| same_lease(renewed, image.renew_lease(lease, ttl, now_ms)?),
        )
    }

    fn resign_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.write(
            Write::Other,
            "writing the lease to",
            |inner| inner.resign_lease(lease),
            |image, ()| image.resign_lease(lease),
        )
    }

    fn announce(&self, server: &ServerInfo) -> Result<(), StoreError> {
        // Who is alive is not state a restarted machine needs: the image keeps none.
        self.write(
            Write::Other,
            "announcing this server in",
            |inner| inner.announce(server),
            |_, ()| Ok(()),
        )
    }

    fn servers(&self) -> Result<Vec<ServerInfo>, StoreError> {
        self.read(|inner| inner.servers())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{FaultyStore, WriteFault};
    use crate::memory::MemoryStore;
    use crate::testsuite::{job_key, job_write, record};
    use crate::{EmbeddedStore, Store, StoreError, WriteBatch};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    fn fresh() -> FaultyStore {
        FaultyStore::new(MemoryStore::new()).unwrap()
    }

    /// A crash and a restart on what survived: everything that returned `Ok` is there.
    fn crash_and_restart(store: FaultyStore) -> FaultyStore {
        FaultyStore::restarted(store.crash())
    }

    crate::store_testsuite!(new_store: fresh, reopen: crash_and_restart);

    #[test]
    fn an_injected_commit_failure_applies_nothing() {
        crate::testsuite::failed_commit_applies_nothing(fresh, |store, batch| {
            store.fail_next_commits(1, WriteFault::Io);
            store.commit(batch)
        });
    }

    fn job_batch(n: u64) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.jobs.push(job_write(n, record(n, 64)));
        batch
    }

    fn has_job(store: &dyn Store, n: u64) -> bool {
        store.job(&job_key(n)).unwrap().is_some()
    }

    /// Waits (with a deadline) until `store` has `count` commits in flight.
    fn until_in_flight(store: &FaultyStore, count: u64) {
        let give_up = Instant::now() + Duration::from_secs(30);
        while store.commits_in_flight() < count {
            assert!(Instant::now() < give_up, "no commit started in 30 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_full_disk_fails_every_write_with_a_message_that_says_so_until_healed() {
        let store = fresh();
        store.commit(&job_batch(1)).unwrap();
        store.fail_writes(WriteFault::DiskFull);
        let refused = store.commit(&job_batch(2)).unwrap_err();
        let message = refused.to_string();
        assert!(message.contains("No space left on device"), "{message}");
        assert!(
            message.contains("check that the disk is not full"),
            "{message}"
        );
        match &refused {
            StoreError::Io { source, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::StorageFull);
            }
            other => panic!("not an I/O error: {other:?}"),
        }
        let lease = store.acquire_lease("a", Duration::from_secs(10), 1_000);
        assert!(matches!(lease, Err(StoreError::Io { .. })), "{lease:?}");
        // Reads go on.
        assert!(has_job(&store, 1));
        assert!(!has_job(&store, 2));
        assert_eq!(store.epoch().unwrap(), 0);

        store.heal();
        store.commit(&job_batch(2)).unwrap();
        assert!(has_job(&store, 2));
        let stats = store.stats();
        assert_eq!((stats.commits, stats.commits_refused), (2, 1));
        assert_eq!(stats.writes_refused, 1);
    }

    #[test]
    fn the_next_commits_fail_and_then_commits_go_through_again() {
        let store = fresh();
        store.fail_next_commits(2, WriteFault::Io);
        for n in 0..2 {
            let message = store.commit(&job_batch(n)).unwrap_err().to_string();
            assert!(message.contains("Input/output error"), "{message}");
        }
        // Only commits are failed: the lease is taken.
        store
            .acquire_lease("a", Duration::from_secs(10), 1_000)
            .unwrap();
        let mut batch = job_batch(3);
        batch.epoch = 1;
        store.commit(&batch).unwrap();
        assert!(!has_job(&store, 0) && !has_job(&store, 1) && has_job(&store, 3));
    }

    #[test]
    fn a_crash_keeps_exactly_the_commits_that_returned_and_drops_those_in_flight() {
        let store = Arc::new(fresh());
        store.commit(&job_batch(1)).unwrap();
        store.hold_commits();
        let slow = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || store.commit(&job_batch(2)))
        };
        until_in_flight(&store, 1);
        let survivor = store.crash();
        let outcome = slow.join().unwrap();
        assert!(outcome.is_err(), "a commit in flight at the crash fails");
        assert!(has_job(&survivor, 1));
        assert!(!has_job(&survivor, 2), "a commit in flight is not durable");
        assert_eq!(store.stats().dropped_at_crash, 1);
        // The crashed machine answers nothing any more.
        assert!(store.load().is_err());
        assert!(store.commit(&job_batch(3)).is_err());
        // The restarted one takes writes again.
        let restarted = FaultyStore::restarted(survivor);
        restarted.commit(&job_batch(4)).unwrap();
        assert!(has_job(&restarted, 1) && has_job(&restarted, 4));
    }

    /// The check the wrapper exists for: a writer that says "done" as soon as it has
    /// started a commit, rather than once it returned, is caught by a crash in between;
    /// one that waits for the commit is not.
    #[test]
    fn a_crash_reveals_an_acknowledgement_sent_before_the_commit_returned() {
        for acknowledges_early in [true, false] {
            let store = Arc::new(fresh());
            store.set_commit_latency(Duration::from_millis(5));
            let acknowledged = Arc::new(Mutex::new(Vec::new()));
            let writer = {
                let store = Arc::clone(&store);
                let acknowledged = Arc::clone(&acknowledged);
                std::thread::spawn(move || {
                    for n in 0.. {
                        if acknowledges_early {
                            acknowledged.lock().unwrap().push(n);
                        }
                        if store.commit(&job_batch(n)).is_err() {
                            return;
                        }
                        if !acknowledges_early {
                            acknowledged.lock().unwrap().push(n);
                        }
                    }
                })
            };
            // Some commits go through, then one is caught in flight.
            while store.stats().commits < 3 {
                std::thread::sleep(Duration::from_millis(2));
            }
            store.hold_commits();
            until_in_flight(&store, 1);
            let survivor = store.crash();
            writer.join().unwrap();
            let lost: Vec<u64> = acknowledged
                .lock()
                .unwrap()
                .iter()
                .copied()
                .filter(|n| !has_job(&survivor, *n))
                .collect();
            if acknowledges_early {
                assert!(!lost.is_empty(), "the early acknowledgement went unnoticed");
            } else {
                assert_eq!(lost, Vec::<u64>::new(), "acknowledged and lost");
            }
        }
    }

    #[test]
    fn it_wraps_only_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let embedded = EmbeddedStore::open(&dir.path().join("data")).unwrap();
        embedded.commit(&job_batch(1)).unwrap();
        let refused = FaultyStore::new(embedded).unwrap_err().to_string();
        assert!(
            refused.contains("must start on an empty store"),
            "{refused}"
        );
        // Over an empty embedded store it passes writes on to the disk.
        let dir = tempfile::tempdir().unwrap();
        let store =
            FaultyStore::new(EmbeddedStore::open(&dir.path().join("data")).unwrap()).unwrap();
        store.commit(&job_batch(7)).unwrap();
        assert!(has_job(&store, 7));
    }
}
