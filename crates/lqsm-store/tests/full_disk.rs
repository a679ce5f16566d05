//! A real full disk under the embedded store: a small tmpfs is filled by commits until one
//! fails. The failure names the cause, every commit that returned `Ok` is there after the
//! store is opened again, and once there is room the store takes commits again.
//!
//! Mounting needs root (or CAP_SYS_ADMIN); where `mount` is refused the test says so on
//! stdout and passes without checking anything (`lqsm_store::faults` covers the same
//! ground with injected failures everywhere).
#![allow(clippy::unwrap_used)]
#![allow(clippy::print_stdout)] // It prints what it filled, or why it could not mount.

use std::path::{Path, PathBuf};
use std::process::Command;

use lqsm_store::testsuite::{job_key, job_write, record};
use lqsm_store::{EmbeddedStore, Store, StoreError, WriteBatch};

/// The tmpfs's size: small enough to fill in a moment.
const DISK: &str = "16m";
/// A file taking room on the disk, removed to make room again.
const BALLAST_BYTES: usize = 4 << 20;
/// Jobs per batch and payload bytes per job: 256 KiB a batch.
const JOBS_PER_BATCH: u64 = 16;
const PAYLOAD_BYTES: usize = 16 << 10;
/// Far more batches than fit, so the loop always ends on a full disk.
const MOST_BATCHES: u64 = 10_000;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mounted {
    path: PathBuf,
}

impl Mounted {
    /// Mounts it, or says why it cannot.
    fn tmpfs(path: &Path, size: &str) -> Result<Mounted, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs refused ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mounted {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn batch(n: u64) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for j in n * JOBS_PER_BATCH..(n + 1) * JOBS_PER_BATCH {
        batch.jobs.push(job_write(j, record(j, 200)));
        batch.payloads.push((job_key(j), record(!j, PAYLOAD_BYTES)));
    }
    batch
}

#[test]
fn a_full_disk_fails_the_commit_keeps_every_acknowledged_batch_and_takes_commits_once_there_is_room()
 {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = match Mounted::tmpfs(&disk, DISK) {
        Ok(mounted) => mounted,
        Err(why) => {
            println!("skipped: a real full disk needs a tmpfs mount, and {why}");
            return;
        }
    };
    let ballast = disk.join("ballast");
    std::fs::write(&ballast, vec![7u8; BALLAST_BYTES]).unwrap();
    let data = disk.join("data");

    let store = EmbeddedStore::open(&data).unwrap();
    let mut acknowledged = 0;
    let refusal = loop {
        assert!(acknowledged < MOST_BATCHES, "a {DISK} disk never filled up");
        match store.commit(&batch(acknowledged)) {
            Ok(()) => acknowledged += 1,
            Err(e) => break e,
        }
    };
    let message = refusal.to_string();
    println!("{acknowledged} batches acknowledged, then: {message}");
    assert!(
        acknowledged > 0,
        "the disk was full before the first batch: {message}"
    );
    // The commit's own journal write may be the one that finds the disk full, or a flush
    // in the engine's background may find it first and stop the engine; either way the
    // failure says the disk is full.
    assert!(
        message.contains("No space left on device") || message.contains("its disk is full"),
        "the failure does not say the disk is full: {message}"
    );
    assert!(
        message.contains(&data.display().to_string()),
        "the failure does not name the data directory: {message}"
    );
    assert!(!message.contains("Os {"), "debug output in: {message}");
    // Once a write failed the engine takes no more, even with room again: it cannot tell
    // what reached the disk.
    std::fs::remove_file(&ballast).unwrap();
    let again = store.commit(&batch(acknowledged));
    assert!(
        matches!(again, Err(StoreError::Poisoned(_))),
        "a commit with room again, before reopening: {again:?}"
    );
    drop(store);

    // Opened again (a restart), with room: every acknowledged batch, whole.
    let store = EmbeddedStore::open(&data).unwrap();
    let loaded = store.load().unwrap();
    let held = loaded.jobs.len() as u64;
    assert!(
        held >= acknowledged * JOBS_PER_BATCH,
        "{acknowledged} batches were acknowledged but only {held} jobs are there"
    );
    for n in 0..acknowledged {
        let keys: Vec<_> = (n * JOBS_PER_BATCH..(n + 1) * JOBS_PER_BATCH)
            .map(job_key)
            .collect();
        let payloads = store.payloads(&keys).unwrap();
        for (j, payload) in (n * JOBS_PER_BATCH..).zip(payloads) {
            assert_eq!(
                payload,
                Some(record(!j, PAYLOAD_BYTES)),
                "payload of job {j} of acknowledged batch {n}"
            );
        }
    }
    // And it takes commits again.
    let next = held.div_ceil(JOBS_PER_BATCH);
    store.commit(&batch(next)).unwrap();
    assert!(
        store
            .job(&job_key(next * JOBS_PER_BATCH))
            .unwrap()
            .is_some()
    );
    drop(store);
    drop(mounted);
}
