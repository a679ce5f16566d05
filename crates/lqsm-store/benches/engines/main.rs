//! Durable commit and load speed of the candidate embedded engines, through the same
//! [`Store`] interface the server uses: fjall (`EmbeddedStore`, the one chosen) and redb
//! (`RedbStore`, kept here only for this comparison). Every commit is fsynced.
//!
//! `CARGO_TARGET_DIR=/tmp/target-store cargo bench -p lqsm-store --bench engines`
//!
//! Results and the choice they led to: `crates/lqsm-store/STORAGE.md`.

use std::cell::Cell;
use std::path::Path;

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use lqsm_store::{
    EmbeddedStore, JobIndex, JobKey, JobWrite, Snapshot, Store, StoreError, WriteBatch,
};

mod redb_store;

use redb_store::RedbStore;

fn main() {
    // A child started by `crashed` fills a store and dies without closing it.
    if let Ok(dir) = std::env::var(CRASH_FILL_DIR) {
        let dir = Path::new(&dir);
        match std::env::var(CRASH_FILL_ENGINE).as_deref() {
            Ok("EmbeddedStore") => fill_and_crash::<EmbeddedStore>(dir),
            Ok("RedbStore") => fill_and_crash::<RedbStore>(dir),
            other => panic!("unknown engine {other:?}"),
        }
    }
    divan::main();
}

const CRASH_FILL_DIR: &str = "LQSM_BENCH_CRASH_FILL_DIR";
const CRASH_FILL_ENGINE: &str = "LQSM_BENCH_CRASH_FILL_ENGINE";

/// A job record about the size the server writes.
const RECORD_BYTES: usize = 400;
/// A job payload (arguments) of a small function job.
const PAYLOAD_BYTES: usize = 100;
/// Jobs per group commit in the batch benchmark.
const BATCH_JOBS: u64 = 1_000;
/// Jobs in the store the load benchmark reads back.
const LOAD_JOBS: u64 = 1_000_000;

/// An engine under test: a store that can be opened in a directory.
trait Engine: Sized {
    /// The type's name, to tell the crashing child which engine to fill.
    const NAME: &str;
    /// Opens (or creates) the store in `dir`.
    fn open_in(dir: &Path) -> Result<Self, StoreError>;
    /// A durable group commit.
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError>;
    /// Everything, as at a restart.
    fn load(&self) -> Result<Snapshot, StoreError>;
}

impl Engine for EmbeddedStore {
    const NAME: &str = "EmbeddedStore";
    fn open_in(dir: &Path) -> Result<Self, StoreError> {
        EmbeddedStore::open(dir)
    }
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        Store::commit(self, batch)
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        Store::load(self)
    }
}

impl Engine for RedbStore {
    const NAME: &str = "RedbStore";
    fn open_in(dir: &Path) -> Result<Self, StoreError> {
        RedbStore::open(dir)
    }
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        RedbStore::commit(self, batch)
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        RedbStore::load(self)
    }
}

/// Time-ordered keys, as UUIDv7 job ids are.
fn key(n: u64) -> JobKey {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&n.to_be_bytes());
    key[8..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    key
}

/// Bytes that do not compress to nothing (the server's records are mostly varied binary).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Index fields like the server's: a few queues, pending.
fn index(n: u64) -> JobIndex {
    JobIndex {
        queue: format!("root.q{}", n % 4),
        state: "pending".to_string(),
        tags: Vec::new(),
    }
}

/// `count` new jobs from `first`, each with its record and payload.
fn jobs(first: u64, count: u64) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for n in first..first + count {
        batch.jobs.push(JobWrite {
            key: key(n),
            record: bytes(n, RECORD_BYTES),
            index: index(n),
            previous: None,
        });
        batch.payloads.push((key(n), bytes(!n, PAYLOAD_BYTES)));
    }
    batch
}

fn open_fresh<S: Engine>() -> (tempfile::TempDir, S) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = S::open_in(dir.path()).expect("a fresh store opens");
    (dir, store)
}

/// (1) Durable group commits of 1,000 new jobs (400-byte record + 100-byte payload each).
/// Throughput is in jobs.
#[divan::bench(types = [EmbeddedStore, RedbStore], sample_count = 60, sample_size = 1)]
fn commit_batch_of_1000_jobs<S: Engine>(bencher: Bencher) {
    let (_dir, store) = open_fresh::<S>();
    bench_batch_commits(bencher, &store, 0);
}

/// Times group commits of `BATCH_JOBS` new jobs, numbered from `first`.
fn bench_batch_commits<S: Engine>(bencher: Bencher, store: &S, first: u64) {
    let next = Cell::new(first);
    bencher
        .counter(ItemsCount::new(BATCH_JOBS))
        .with_inputs(|| {
            let first = next.get();
            next.set(first + BATCH_JOBS);
            jobs(first, BATCH_JOBS)
        })
        .bench_local_refs(|batch| store.commit(batch).expect("commit"));
}

/// (1b) The same group commits on a store that already holds 1,000,000 jobs (the steady
/// state of a busy server, with the engine's background work running).
#[divan::bench(types = [EmbeddedStore, RedbStore], sample_count = 60, sample_size = 1)]
fn commit_batch_of_1000_jobs_onto_1m<S: Engine>(bencher: Bencher) {
    let dir = filled::<S>();
    let store = S::open_in(dir.path()).expect("reopen");
    bench_batch_commits(bencher, &store, LOAD_JOBS);
}

/// (1c) Sustained: 1,000,000 more jobs in 1,000 group commits of 1,000, onto a store that
/// holds 1,000,000 already; one sample is the whole run, so the engine's background work
/// (flushes, compactions, page allocation) is paid inside it. Throughput is in jobs.
#[divan::bench(types = [EmbeddedStore, RedbStore], sample_count = 2, sample_size = 1)]
fn sustained_1m_jobs_in_batches_of_1000<S: Engine>(bencher: Bencher) {
    let dir = filled::<S>();
    let store = S::open_in(dir.path()).expect("reopen");
    let next = Cell::new(LOAD_JOBS);
    bencher
        .counter(ItemsCount::new(LOAD_JOBS))
        .with_inputs(|| {
            let first = next.get();
            next.set(first + LOAD_JOBS);
            (first..first + LOAD_JOBS)
                .step_by(BATCH_JOBS as usize)
                .map(|n| jobs(n, BATCH_JOBS))
                .collect::<Vec<_>>()
        })
        .bench_local_refs(|batches| {
            for batch in batches.iter() {
                store.commit(batch).expect("commit");
            }
        });
    report_disk_use::<S>(dir.path(), next.get());
}

/// Prints how much disk the data directory takes (on stderr, beside divan's table).
fn report_disk_use<S: Engine>(dir: &Path, jobs: u64) {
    fn size(path: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return 0;
        };
        if !meta.is_dir() {
            return meta.len();
        }
        std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| size(&e.path())).sum())
            .unwrap_or(0)
    }
    eprintln!(
        "{}: {} MiB on disk for {jobs} jobs of {RECORD_BYTES} + {PAYLOAD_BYTES} bytes",
        S::NAME,
        size(dir) >> 20
    );
}

/// (2) Durable commits of a single job record from one thread: the latency of one fsynced
/// commit, and commits per second.
#[divan::bench(types = [EmbeddedStore, RedbStore], sample_count = 100, sample_size = 5)]
fn commit_single_job<S: Engine>(bencher: Bencher) {
    let (_dir, store) = open_fresh::<S>();
    let next = Cell::new(0u64);
    bencher
        .counter(ItemsCount::new(1u64))
        .with_inputs(|| {
            let n = next.get();
            next.set(n + 1);
            let mut batch = WriteBatch::new();
            batch.jobs.push(JobWrite {
                key: key(n),
                record: bytes(n, RECORD_BYTES),
                index: index(n),
                previous: None,
            });
            batch
        })
        .bench_local_refs(|batch| store.commit(batch).expect("commit"));
}

/// A store holding `LOAD_JOBS` jobs with payloads, written in group commits of 10,000.
fn filled<S: Engine>() -> tempfile::TempDir {
    let (dir, store) = open_fresh::<S>();
    fill(&store);
    drop(store);
    dir
}

fn fill<S: Engine>(store: &S) {
    for first in (0..LOAD_JOBS).step_by(10_000) {
        store.commit(&jobs(first, 10_000)).expect("fill commit");
    }
}

/// In the child: fill a store, then die without closing it, as a `kill -9` would.
fn fill_and_crash<S: Engine>(dir: &Path) -> ! {
    let store = S::open_in(dir).expect("open in the child");
    fill(&store);
    std::process::abort();
}

/// A directory holding `LOAD_JOBS` jobs whose writer process died without closing it.
fn crashed<S: Engine>() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let status = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(CRASH_FILL_DIR, dir.path())
        .env(CRASH_FILL_ENGINE, S::NAME)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("start the filling child");
    assert!(!status.success(), "the filling child must die, not exit");
    dir
}

/// Copies a data directory, so that every sample recovers from the same crash.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// (3) Restart: open the data directory and load 1,000,000 job records (400 bytes each).
#[divan::bench(types = [EmbeddedStore, RedbStore], sample_count = 5, sample_size = 1)]
fn open_and_load_1m_jobs<S: Engine>(bencher: Bencher) {
    let dir = filled::<S>();
    bencher.counter(ItemsCount::new(LOAD_JOBS)).bench_local(|| {
        let store = S::open_in(dir.path()).expect("reopen");
        let snapshot = store.load().expect("load");
        assert_eq!(snapshot.jobs.len() as u64, LOAD_JOBS);
        drop(store);
        black_box(snapshot)
    });
}

/// (3b) Restart after a crash: open a data directory whose writer died mid-life (so the engine
/// must recover) and load 1,000,000 job records.
#[divan::bench(types = [EmbeddedStore, RedbStore], sample_count = 3, sample_size = 1)]
fn open_and_load_1m_jobs_after_crash<S: Engine>(bencher: Bencher) {
    let crashed = crashed::<S>();
    let copies = tempfile::tempdir().expect("a temporary directory");
    let next = Cell::new(0u32);
    bencher
        .counter(ItemsCount::new(LOAD_JOBS))
        .with_inputs(|| {
            let copy = copies.path().join(next.get().to_string());
            next.set(next.get() + 1);
            copy_dir(crashed.path(), &copy);
            copy
        })
        .bench_local_values(|copy| {
            let store = S::open_in(&copy).expect("recover");
            let snapshot = store.load().expect("load");
            assert_eq!(snapshot.jobs.len() as u64, LOAD_JOBS);
            drop(store);
            black_box(snapshot)
        });
}
