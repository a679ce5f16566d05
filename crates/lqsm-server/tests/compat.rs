//! Data written by an earlier release still opens: `fixtures/v0-data` is a data directory
//! written by the release that stored records as JSON with no format version (format 0).
//! It holds two queues besides `root.default`, and seven jobs:
//!
//! - in `root.etl`: a command that succeeded, one that failed, one pending with tags, an
//!   idempotency key, a label selector and a timeout, and one delayed by 1000 hours;
//! - in `root.default`: a function (`lqsm.echo`) that succeeded with a result, and one
//!   (`lqsm.fail`) that failed;
//! - in `root.ml`: a pending function whose 3 KB arguments live in the payload store.
//!
//! `fixtures/v0-jobs.json` is what that release's `lqsm job list -o json` printed for it.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_core::{JobId, JobKind, JobState, ResourceManager};
use lqsm_server::config::ServerConfig;
use lqsm_store::{EmbeddedStore, JobFilter, JobQuery, Order, Store};
use std::path::Path;
use uuid::Uuid;

/// Copies the fixture into a temporary directory, so the test never changes it.
fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0-data");
    copy_tree(&source, &dir.path().join("data"));
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Keeps finished jobs however old the fixture gets (they would pass a day's retention).
fn config(data_dir: &Path) -> ServerConfig {
    let mut config = ServerConfig {
        data_dir: data_dir.to_path_buf(),
        ..ServerConfig::default()
    };
    config.scheduler.retention_ms = 100 * 365 * 24 * 3600 * 1000;
    config
}

/// The jobs the old release listed: (id, queue, state).
fn listed_jobs() -> Vec<(JobId, String, JobState)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0-jobs.json");
    let text = std::fs::read_to_string(path).unwrap();
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            let id = JobId(Uuid::parse_str(job["id"].as_str().unwrap()).unwrap());
            let state: JobState = serde_json::from_value(job["state"].clone()).unwrap();
            (id, job["queue"].as_str().unwrap().to_owned(), state)
        })
        .collect()
}

fn check_fixture_state(rm: &ResourceManager) {
    let listed = listed_jobs();
    assert_eq!(listed.len(), 7, "the fixture's job list");
    for (id, queue, state) in &listed {
        let record = rm
            .job_record(*id)
            .unwrap_or_else(|| panic!("job {id} of the fixture is missing"));
        assert_eq!(record.queue.as_str(), queue, "queue of job {id}");
        assert_eq!(record.state, *state, "state of job {id}");
    }
    assert_eq!(
        rm.jobs().count(),
        listed.len(),
        "no job appeared or vanished"
    );
    for path in ["root.etl", "root.ml", "root.default"] {
        assert!(rm.queue(path).is_ok(), "queue {path} of the fixture");
    }
    let etl = rm.queue("root.etl").unwrap();
    assert_eq!(etl.config().capacity, 30.0);
    assert_eq!(rm.queue("root.ml").unwrap().config().max_capacity, 50.0);

    let states = |wanted: JobState| listed.iter().filter(|(_, _, s)| *s == wanted).count();
    assert_eq!(states(JobState::Succeeded), 2);
    assert_eq!(states(JobState::Failed), 2);
    assert_eq!(states(JobState::Pending), 3);

    // The tagged job keeps its options.
    let tagged = rm
        .jobs()
        .find(|job| !job.spec.tags().is_empty())
        .expect("the tagged job");
    assert_eq!(tagged.spec.tags(), ["nightly", "billing"]);
    assert_eq!(tagged.spec.idempotency_key(), Some("inv-2026-11"));
    assert_eq!(tagged.spec.priority, 5);
    assert_eq!(
        tagged.spec.selector().get("zone").map(String::as_str),
        Some("eu")
    );
    // The succeeded echo job keeps its result.
    let echo = rm
        .jobs()
        .find(|job| job.spec.kind.handler() == Some("lqsm.echo") && job.state.is_terminal())
        .expect("the echo job");
    let result = format!("{:?}", echo.termination);
    assert!(result.contains("hello"), "{result}");
}

/// The large job's arguments, read from the payload store.
fn stored_kind(store: &dyn Store, rm: &ResourceManager) -> JobKind {
    let big = rm
        .jobs()
        .find(|job| matches!(job.spec.kind, JobKind::Stored { .. }))
        .expect("the job whose arguments were stored apart");
    let key = *big.id.0.as_bytes();
    let payload = store.payloads(&[key]).unwrap().remove(0).expect("payload");
    lqsm_core::codec::decode_payload(&payload).unwrap()
}

#[test]
fn data_written_by_the_json_release_is_restored() {
    let dir = fixture_copy();
    let data = dir.path().join("data");
    let store = EmbeddedStore::open(&data).unwrap();
    let rm = lqsm_server::restore(&store, &config(&data)).unwrap();
    check_fixture_state(&rm);
    let JobKind::Function { handler, args } = stored_kind(&store, &rm) else {
        panic!("the stored kind is a function");
    };
    assert_eq!(&*handler, "lqsm.echo");
    assert_eq!(args.as_str().len(), 3000 + r#"{"blob":"","k":1}"#.len());
}

#[test]
fn upgrading_old_data_indexes_it_for_the_store_reads() {
    let dir = fixture_copy();
    let data = dir.path().join("data");
    let store = EmbeddedStore::open(&data).unwrap();
    let rm = lqsm_server::restore(&store, &config(&data)).unwrap();
    assert!(
        store.counts().unwrap().is_empty(),
        "the first release kept no index"
    );
    let rewritten = lqsm_server::upgrade_records(&store, &rm, 0, None).unwrap();
    assert_eq!(rewritten, 7);
    let count = |queue: &str, state: &str| {
        store
            .counts()
            .unwrap()
            .iter()
            .find(|c| c.queue == queue && c.state == state)
            .map_or(0, |c| c.count)
    };
    assert_eq!(count("root.etl", "pending"), 2);
    assert_eq!(count("root.etl", "succeeded"), 1);
    assert_eq!(count("root.default", "failed"), 1);
    assert_eq!(count("root.ml", "pending"), 1);
    let tagged = store
        .jobs(&JobQuery {
            filter: JobFilter::Tag("billing".into()),
            order: Order::NewestFirst,
            after: None,
            limit: 10,
        })
        .unwrap();
    assert_eq!(tagged.jobs.len(), 1);
    let record = lqsm_core::codec::decode_job(&tagged.jobs[0].1).unwrap();
    assert_eq!(record.spec.idempotency_key(), Some("inv-2026-11"));
    let loaded = store.load().unwrap();
    let current = |bytes: &Vec<u8>| {
        lqsm_core::codec::format_of(bytes) == Ok(lqsm_core::codec::CURRENT_FORMAT)
    };
    assert!(
        loaded.jobs.iter().all(|(_, r)| current(r)),
        "jobs rewritten"
    );
    assert!(
        loaded.queues.iter().all(|(_, r)| current(r)),
        "queues rewritten"
    );
    assert!(
        loaded
            .meta
            .iter()
            .any(|(k, _)| k == lqsm_server::RECORDS_UPGRADED)
    );
    // Restoring again from the upgraded records gives the same state.
    let again = lqsm_server::restore(&store, &config(&data)).unwrap();
    check_fixture_state(&again);
}

/// Rewrites and indexes the first three jobs in key order, as the first commit of an
/// upgrade does, with or without the progress mark this release commits alongside; returns
/// the last job rewritten.
fn upgrade_first_three(store: &EmbeddedStore, rm: &ResourceManager, mark_progress: bool) -> JobId {
    let mut ids: Vec<JobId> = rm.jobs().map(|job| job.id).collect();
    ids.sort();
    let mut first = lqsm_store::WriteBatch::new();
    for id in &ids[..3] {
        let record = rm.job_record(*id).unwrap();
        first
            .jobs
            .push(lqsm_server::resource_manager::job_entry(&record, None));
    }
    if mark_progress {
        first.meta.push((
            lqsm_server::UPGRADE_PROGRESS.to_owned(),
            ids[2].0.as_bytes().to_vec(),
        ));
    }
    store.commit(&first).unwrap();
    ids[2]
}

#[test]
fn an_upgrade_interrupted_by_a_crash_resumes_without_counting_a_job_twice() {
    let dir = fixture_copy();
    let data = dir.path().join("data");
    let store = EmbeddedStore::open(&data).unwrap();
    let (rm, upgrade) = lqsm_server::restore_and_check(&store, &config(&data)).unwrap();
    assert_eq!(upgrade, lqsm_server::Upgrade::After(None));
    // What a crash after the first of several upgrade commits leaves: the first three jobs
    // (in key order) rewritten and indexed, with the progress mark committed alongside.
    let last = upgrade_first_three(&store, &rm, true);
    drop(rm);

    let (rm, upgrade) = lqsm_server::restore_and_check(&store, &config(&data)).unwrap();
    assert_eq!(
        upgrade,
        lqsm_server::Upgrade::After(Some(*last.0.as_bytes()))
    );
    let after = match upgrade {
        lqsm_server::Upgrade::After(after) => after,
        lqsm_server::Upgrade::Done => unreachable!(),
    };
    let rewritten = lqsm_server::upgrade_records(&store, &rm, 0, after).unwrap();
    assert_eq!(rewritten, 4, "only the jobs the first run did not reach");
    let total: u64 = store.counts().unwrap().iter().map(|c| c.count).sum();
    assert_eq!(
        total,
        7,
        "every job counted once: {:?}",
        store.counts().unwrap()
    );
    let (_, upgrade) = lqsm_server::restore_and_check(&store, &config(&data)).unwrap();
    assert_eq!(upgrade, lqsm_server::Upgrade::Done);
}

#[test]
fn an_upgrade_left_half_done_by_the_previous_release_is_finished_without_counting_twice() {
    let dir = fixture_copy();
    let data = dir.path().join("data");
    let store = EmbeddedStore::open(&data).unwrap();
    let (rm, _) = lqsm_server::restore_and_check(&store, &config(&data)).unwrap();
    // The previous release rewrote and indexed three jobs, then stopped, leaving no
    // progress mark.
    upgrade_first_three(&store, &rm, false);
    drop(rm);

    let (rm, upgrade) = lqsm_server::restore_and_check(&store, &config(&data)).unwrap();
    assert_eq!(upgrade, lqsm_server::Upgrade::After(None));
    let rewritten = lqsm_server::upgrade_records(&store, &rm, 0, None).unwrap();
    assert_eq!(rewritten, 7);
    let total: u64 = store.counts().unwrap().iter().map(|c| c.count).sum();
    assert_eq!(
        total,
        7,
        "every job counted once: {:?}",
        store.counts().unwrap()
    );
}

#[test]
fn old_records_rewritten_in_the_new_format_read_back_the_same() {
    let dir = fixture_copy();
    let data = dir.path().join("data");
    let store = EmbeddedStore::open(&data).unwrap();
    let rm = lqsm_server::restore(&store, &config(&data)).unwrap();
    // Rewrite every job and queue with today's encoder, as the server does on change.
    let mut batch = lqsm_store::WriteBatch::new();
    for job in rm.jobs() {
        let record = rm.job_record(job.id).unwrap();
        batch
            .jobs
            .push(lqsm_server::resource_manager::job_entry(&record, None));
    }
    for path in ["root.etl", "root.ml", "root.default"] {
        let id = rm.queue(path).unwrap().id();
        let record = rm.queue_record(id).unwrap();
        batch
            .queues
            .push((path.to_owned(), lqsm_core::codec::encode_queue(&record)));
    }
    store.commit(&batch).unwrap();
    let loaded = store.load().unwrap();
    assert!(
        loaded
            .jobs
            .iter()
            .all(|(_, bytes)| lqsm_core::codec::format_of(bytes)
                == Ok(lqsm_core::codec::CURRENT_FORMAT)),
        "every job record was rewritten in the current format"
    );
    drop(store);
    let store = EmbeddedStore::open(&data).unwrap();
    let again = lqsm_server::restore(&store, &config(&data)).unwrap();
    check_fixture_state(&again);
    for job in rm.jobs() {
        assert_eq!(again.job_record(job.id), rm.job_record(job.id));
    }
}

#[test]
fn a_record_of_a_newer_format_stops_the_restore_as_newer_not_corrupt() {
    let dir = fixture_copy();
    let data = dir.path().join("data");
    let store = EmbeddedStore::open(&data).unwrap();
    let mut newer = vec![lqsm_core::codec::MARKER, 99];
    newer.extend_from_slice(b"a job as a later release writes it");
    let mut batch = lqsm_store::WriteBatch::new();
    batch.jobs.push(lqsm_store::JobWrite {
        key: *Uuid::now_v7().as_bytes(),
        record: newer,
        index: lqsm_store::JobIndex::default(),
        previous: None,
    });
    store.commit(&batch).unwrap();
    let err = lqsm_server::restore(&store, &config(&data)).unwrap_err();
    assert!(
        matches!(err, lqsm_server::ServerError::NewerFormat { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("written by a newer LQSM (format 99)"),
        "{message}"
    );
    assert!(!message.contains("corrupt"), "{message}");
}
