//! Kill -9 in the middle of commits: every acknowledged batch survives, whole, and no batch
//! is ever half there.
//!
//! The test starts this same test binary again as a child that commits batches in a loop
//! and reports each one on stdout once `commit` has returned; the parent polls what the
//! child has acknowledged until there are enough (or a deadline passes, or the child dies
//! early: both fail the test), kills it (SIGKILL) while it is still committing, then
//! reopens the directory and checks every acknowledged batch.
#![allow(clippy::unwrap_used)]
#![allow(clippy::print_stdout)] // It prints how far the child got and what survived.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// How long the parent waits for the child's acknowledgements: generous, as the machines
/// that run the tests are shared and loaded (on an idle one it takes well under a second).
const ACK_DEADLINE: Duration = Duration::from_secs(120);
/// How often the parent looks at what the child has acknowledged.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// The end of the child's stderr, for failure messages.
fn child_stderr(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[test]
fn acknowledged_batches_survive_kill_9_whole() {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("child.stderr");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_commits_until_killed", "--nocapture"])
        .env(CHILD_DIR, &data)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    // A thread reads the child's acknowledgements as they come, to the end of its output
    // (so what it wrote before the kill still counts); the parent polls what it has read.
    let acknowledged = Arc::new(Mutex::new(Vec::<u64>::new()));
    let reader = {
        let acknowledged = Arc::clone(&acknowledged);
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if let Some(n) = line.unwrap().strip_prefix("committed ") {
                    acknowledged.lock().unwrap().push(n.parse().unwrap());
                }
            }
        })
    };
    let give_up = Instant::now() + ACK_DEADLINE;
    loop {
        let seen = acknowledged.lock().unwrap().len() as u64;
        if seen >= ACKS_BEFORE_KILL {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the child exited ({status}) after acknowledging {seen} batches, before it was \
                 killed:\n{}",
                child_stderr(&stderr_path)
            );
        }
        if Instant::now() >= give_up {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "the child acknowledged only {seen} of {ACKS_BEFORE_KILL} batches in \
                 {ACK_DEADLINE:?}:\n{}",
                child_stderr(&stderr_path)
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
    // Still committing when killed: the kill lands in the middle of the commit loop.
    assert!(
        child.try_wait().unwrap().is_none(),
        "the child was still committing when killed:\n{}",
        child_stderr(&stderr_path)
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    assert!(acknowledged.len() as u64 >= ACKS_BEFORE_KILL);
    assert!(
        acknowledged
            .iter()
            .copied()
            .eq(0..acknowledged.len() as u64),
        "the child acknowledges its batches in order: {acknowledged:?}"
    );
    let last_acknowledged = *acknowledged.last().unwrap();

    let store = EmbeddedStore::open(&data).unwrap();
    let loaded = store.load().unwrap();
    let last_batch = loaded
        .meta
        .iter()
        .find(|(name, _)| name == "last_batch")
        .map(|(_, value)| u64::from_be_bytes(value.as_slice().try_into().unwrap()))
        .unwrap();
    assert!(
        last_batch >= last_acknowledged,
        "batch {last_acknowledged} was acknowledged but the store ends at batch {last_batch}"
    );
    // Batches are committed one after another, so what is there is exactly the batches
    // up to `last_batch`, each whole: at most one batch past the last acknowledged one
    // (committed, killed before it said so).
    assert!(last_batch <= last_acknowledged + 1);
    let expected_jobs = (last_batch + 1) * JOBS_PER_BATCH;
    assert_eq!(loaded.jobs.len() as u64, expected_jobs);
    let jobs: BTreeMap<_, _> = loaded.jobs.iter().cloned().collect();
    assert_eq!(jobs.len() as u64, expected_jobs, "no job twice");
    // Every acknowledged batch survived, whole: each of its jobs, with its record and
    // its payload.
    for &n in &acknowledged {
        let range = n * JOBS_PER_BATCH..(n + 1) * JOBS_PER_BATCH;
        for j in range.clone() {
            assert_eq!(
                jobs.get(&job_key(j)),
                Some(&record(j, 400)),
                "record of job {j} of acknowledged batch {n}"
            );
        }
        let keys: Vec<_> = range.clone().map(job_key).collect();
        for (j, payload) in range.zip(store.payloads(&keys).unwrap()) {
            assert_eq!(
                payload,
                Some(record(!j, 100)),
                "payload of job {j} of acknowledged batch {n}"
            );
        }
    }
    // And what survived past them is whole too.
    for (i, (key, value)) in loaded.jobs.iter().enumerate() {
        let j = i as u64;
        assert_eq!(*key, job_key(j));
        assert_eq!(*value, record(j, 400), "record of job {j}");
    }
    println!("acknowledged batches 0..={last_acknowledged}, the store holds 0..={last_batch}");
}
