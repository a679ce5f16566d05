//! Kill -9 in the middle of commits: every acknowledged batch survives, whole, and no batch
//! is ever half there.
//!
//! The test starts this same test binary again as a child that commits batches in a loop
//! and reports each one on stdout once `commit` has returned; the parent kills it (SIGKILL)
//! after some acknowledgements, then reopens the directory.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use lqsm_store::testsuite::{job_key, job_write, record};
use lqsm_store::{EmbeddedStore, Store, WriteBatch};

/// Set in the child: the data directory to commit into.
const CHILD_DIR: &str = "LQSM_STORE_CRASH_CHILD_DIR";
/// Jobs per batch: enough that a batch spans several writes to the journal.
const JOBS_PER_BATCH: u64 = 200;
/// Acknowledgements the parent waits for before it kills the child.
const ACKS_BEFORE_KILL: u64 = 40;

fn batch(n: u64) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for j in n * JOBS_PER_BATCH..(n + 1) * JOBS_PER_BATCH {
        batch.jobs.push(job_write(j, record(j, 400)));
        batch.payloads.push((job_key(j), record(!j, 100)));
    }
    batch
        .meta
        .push(("last_batch".to_string(), n.to_be_bytes().to_vec()));
    batch
}

/// Not a test of its own: the child's body. Without the environment variable it does
/// nothing, so a normal run passes it at once.
#[test]
fn crash_child_commits_until_killed() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let store = EmbeddedStore::open(std::path::Path::new(&dir)).unwrap();
    let mut out = std::io::stdout().lock();
    for n in 0.. {
        store.commit(&batch(n)).unwrap();
        writeln!(out, "committed {n}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn acknowledged_batches_survive_kill_9_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_commits_until_killed", "--nocapture"])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acknowledged = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            let n: u64 = n.parse().unwrap();
            acknowledged = Some(n);
            if n + 1 >= ACKS_BEFORE_KILL {
                break;
            }
        }
    }
    child.kill().unwrap();
    // Acknowledgements written before the kill still count: read them to the end.
    for line in lines {
        if let Some(n) = line.unwrap().strip_prefix("committed ") {
            acknowledged = Some(n.parse().unwrap());
        }
    }
    child.wait().unwrap();
    let acknowledged = acknowledged.expect("the child acknowledged commits before the kill");

    let store = EmbeddedStore::open(dir.path()).unwrap();
    let loaded = store.load().unwrap();
    let last_batch = loaded
        .meta
        .iter()
        .find(|(name, _)| name == "last_batch")
        .map(|(_, value)| u64::from_be_bytes(value.as_slice().try_into().unwrap()))
        .unwrap();
    assert!(
        last_batch >= acknowledged,
        "batch {acknowledged} was acknowledged but the store ends at batch {last_batch}"
    );
    // Batches are committed one after another, so what is there is exactly the batches
    // up to `last_batch`, each whole: at most one batch past the last acknowledged one.
    assert!(last_batch <= acknowledged + 1);
    let expected_jobs = (last_batch + 1) * JOBS_PER_BATCH;
    assert_eq!(loaded.jobs.len() as u64, expected_jobs);
    for (i, (key, value)) in loaded.jobs.iter().enumerate() {
        let j = i as u64;
        assert_eq!(*key, job_key(j));
        assert_eq!(*value, record(j, 400), "record of job {j}");
    }
    let some: Vec<_> = (0..expected_jobs).step_by(97).map(job_key).collect();
    for (j, payload) in (0..expected_jobs)
        .step_by(97)
        .zip(store.payloads(&some).unwrap())
    {
        assert_eq!(payload, Some(record(!j, 100)), "payload of job {j}");
    }
}
