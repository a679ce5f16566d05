//! What a failing store does to the server, and what survives its machine crashing, with
//! real `lqsm worker`s running its jobs throughout.
//!
//! The server runs in this process on a [`FaultyStore`], with a submitter sending
//! command jobs with ids it chooses (the same job, same id, again after any failure, until
//! the server acknowledges it) and two workers running them; each job appends its id to
//! a marks file when it completes. Each round injects, in turn:
//!
//! - a failing commit (an I/O error): the server refuses what that commit held and stops
//!   (fail-stop, docs/OPERATIONS.md "When the store fails"); it is started again;
//! - a full disk: the server stops, and a start while the disk is still full fails with
//!   an error that says so; once there is room again it starts;
//! - a crash of the machine in the middle of a commit (the store keeps only the commits
//!   that returned, the server's runtime ends where it is): a new server starts on what
//!   survived. A server that acknowledged anything before its commit returned would lose
//!   it here, which `kill -9` cannot show.
//!
//! A second test runs the server with a shared store's rules (`backend = "postgres"`):
//! there a full disk does not stop it; the leader steps down, answers job reads, and leads
//! again by itself once there is room.
//!
//! After every restart each job acknowledged so far must be there; at the end every
//! acknowledged job has completed exactly once, counted from the marks. Each run prints
//! `acknowledged=N lost=0 completed_twice=0`. `LQSM_STORE_FAULT_ROUNDS` sets the number
//! of rounds (1 by default; the long run is
//! `LQSM_STORE_FAULT_ROUNDS=100 cargo test -p lqsm-server --test store_faults -- --nocapture`).
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.
#![allow(clippy::print_stdout)] // Each run prints its acknowledged, lost and twice-run counts.

use lqsm_api as api;
use lqsm_server::config::{ServerConfig, StoreBackend};
use lqsm_store::Store;
use lqsm_store::faults::{FaultyStore, WriteFault};
use lqsm_store::memory::MemoryStore;
use lqsm_testkit::wait::eventually_explained;
use lqsm_testkit::{Api, ServerOnStore, WorkerProcess};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Jobs acknowledged between two faults.
const JOBS_BETWEEN_FAULTS: usize = 12;
/// How long a commit takes to reach the "disk" (a slow fsync), so that the server keeps a
/// commit in flight while it applies the next batch, as it does under load.
const COMMIT_LATENCY: Duration = Duration::from_millis(5);
/// How many of the last acknowledged jobs are read through the restarted server.
const LAST_READ_THROUGH_THE_SERVER: usize = 20;
/// How long any one step may take on a loaded machine.
const STEP: Duration = Duration::from_secs(90);

fn rounds() -> usize {
    std::env::var("LQSM_STORE_FAULT_ROUNDS")
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("LQSM_STORE_FAULT_ROUNDS={v:?}: {e}"))
        })
        .unwrap_or(1)
}

/// A command job with a client-chosen id that appends its id to `marks` after a short
/// sleep (so that faults find jobs running on the workers).
fn marking_job(id: Uuid, marks: &Path) -> api::SubmitJob {
    let mut job = api::SubmitJob::function("root.default", "unused", serde_json::json!({}));
    job.id = Some(id);
    job.kind = api::JobKind::Command {
        argv: vec![
            "sh".into(),
            "-c".into(),
            format!("sleep 0.1; echo {id} >> '{}'", marks.display()),
        ],
        env: Default::default(),
        cwd: None,
    };
    job
}

/// How many times each job's command ran to completion.
fn completions(marks: &Path) -> HashMap<Uuid, usize> {
    let text = std::fs::read_to_string(marks).unwrap_or_default();
    let mut counts = HashMap::new();
    for line in text.lines() {
        let id: Uuid = line
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("a mark that is no job id: {line:?} ({e})"));
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// What the submitter did so far, shared with the test's thread.
#[derive(Clone, Default)]
struct Progress {
    /// Ids the server acknowledged, in order.
    acknowledged: Arc<Mutex<Vec<Uuid>>>,
    /// Submissions answered with something else than 200/201: status and body.
    refusals: Arc<Mutex<Vec<(u16, String)>>>,
    /// Submissions that got no answer at all (the server was down or went down).
    unanswered: Arc<AtomicUsize>,
    /// Set to make the submitter stop once its current job is acknowledged.
    stop: Arc<AtomicBool>,
}

impl Progress {
    fn acknowledged(&self) -> Vec<Uuid> {
        self.acknowledged.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }
}

/// Submits marking jobs one after the other until told to stop, each the same job (same
/// id) again after a failure until the server acknowledges it.
fn submitter(api: Api, marks: PathBuf, progress: Progress) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !progress.stop.load(Ordering::Relaxed) {
            let id = Uuid::now_v7();
            let job = marking_job(id, &marks);
            let started = Instant::now();
            loop {
                match api.try_post("/v1/jobs", &job) {
                    Ok(reply) if reply.status == 200 || reply.status == 201 => {
                        let submitted: api::Submitted = reply.json();
                        assert_eq!(submitted.id, id, "the server kept the client's id");
                        break;
                    }
                    Ok(reply) => progress
                        .refusals
                        .lock()
                        .unwrap()
                        .push((reply.status, reply.body)),
                    Err(_) => {
                        progress.unanswered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                assert!(
                    started.elapsed() < STEP,
                    "job {id} was not acknowledged for {STEP:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            progress.acknowledged.lock().unwrap().push(id);
        }
    })
}

/// The jobs in one state (a short listing, where every job would be a long one).
fn jobs_in_state(api: &Api, state: &str) -> Option<Vec<api::JobView>> {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?state={state}&limit=1000&cursor={c}"),
            None => format!("/v1/jobs?state={state}&limit=1000"),
        };
        let reply = api.try_get(&path).ok()?;
        if reply.status != 200 {
            return None;
        }
        let page: api::JobList = reply.json();
        jobs.extend(page.jobs);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Some(jobs),
        }
    }
}

/// Counts per fault, in full for a short run, summed up for a long one.
struct Spread<'a>(&'a [usize]);

impl std::fmt::Debug for Spread<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() <= 12 {
            return write!(f, "{:?}", self.0);
        }
        let min = self.0.iter().min().unwrap_or(&0);
        let max = self.0.iter().max().unwrap_or(&0);
        let zero = self.0.iter().filter(|n| **n == 0).count();
        write!(
            f,
            "{} faults: {min} to {max}, 0 at {zero} of them",
            self.0.len()
        )
    }
}

fn worker_views(api: &Api) -> Option<Vec<api::WorkerView>> {
    let reply = api.try_get("/v1/workers").ok()?;
    (reply.status == 200).then(|| reply.json())
}

fn worker_logs(workers: &[WorkerProcess]) -> String {
    workers
        .iter()
        .map(|w| format!("--- worker {} log:\n{}\n", w.name(), w.log_tail()))
        .collect()
}

/// The run's shared parts.
struct Run {
    server: ServerOnStore,
    store: Arc<FaultyStore>,
    workers: Vec<WorkerProcess>,
    progress: Progress,
    /// Where the jobs mark their completions.
    marks: PathBuf,
    /// Commits a crash found in flight and dropped, over the run.
    dropped_at_crashes: u64,
    /// Jobs running on the workers as each fault came, as the server last said.
    running_at_faults: Vec<usize>,
    /// Submissions refused or unanswered during each fault and its restart.
    failures_at_faults: Vec<usize>,
    /// When the submitter started.
    started: Instant,
}

impl Run {
    fn api(&self) -> Api {
        self.server.api()
    }

    fn failures(&self) -> usize {
        self.progress.refusals.lock().unwrap().len()
            + self.progress.unanswered.load(Ordering::Relaxed)
    }

    /// Notes what runs as a fault comes; returns the submissions failed so far.
    fn before_fault(&mut self) -> usize {
        let running = jobs_in_state(&self.api(), "running").map_or(0, |jobs| jobs.len());
        self.running_at_faults.push(running);
        self.failures()
    }

    /// Notes how many submissions failed since `before_fault` said `failed_before`.
    fn after_fault(&mut self, failed_before: usize) {
        let failed = self.failures() - failed_before;
        self.failures_at_faults.push(failed);
    }

    /// Waits until `more` jobs more than now are acknowledged.
    fn let_jobs_through(&self, more: usize) {
        let target = self.progress.count() + more;
        eventually_explained(
            &format!("{target} jobs to be acknowledged"),
            STEP,
            || worker_logs(&self.workers),
            || (self.progress.count() >= target).then_some(()),
        );
    }

    /// The server stopped by itself after its store failed; returns its error.
    fn stopped_with_error(&mut self, fault: &str) -> String {
        match self.server.wait_stopped(STEP) {
            Ok(()) => panic!("the server stopped without an error after {fault}"),
            Err(e) => e.to_string(),
        }
    }

    /// Starts the server again on the current store, then checks that every job
    /// acknowledged so far is there.
    fn restart(&mut self, after: &str) {
        if let Err(e) = self.server.start_again(self.store.clone()) {
            panic!("the server did not start again after {after}: {e}");
        }
        self.nothing_lost(after);
    }

    /// Checks that the server holds every job acknowledged so far.
    ///
    /// The server restores exactly what its store holds, so the store is asked: a lookup
    /// per job, where listing tens of thousands of jobs through the API after every fault
    /// would make a long run slower with every round. The last jobs acknowledged, those
    /// a fault is likeliest to lose, are also read through the server.
    fn nothing_lost(&self, after: &str) {
        let acknowledged = self.progress.acknowledged();
        let api = self.api();
        let mut lost: Vec<&Uuid> = Vec::new();
        for id in &acknowledged {
            let held = self.store.job(id.as_bytes());
            if held
                .unwrap_or_else(|e| panic!("reading job {id} from the store: {e}"))
                .is_none()
            {
                lost.push(id);
            }
        }
        for id in acknowledged.iter().rev().take(LAST_READ_THROUGH_THE_SERVER) {
            let reply = eventually_explained(
                &format!("the server to answer a read of job {id}"),
                STEP,
                || worker_logs(&self.workers),
                || api.try_get(&format!("/v1/jobs/{id}")).ok(),
            );
            if reply.status != 200 && !lost.contains(&id) {
                lost.push(id);
            }
        }
        if !lost.is_empty() {
            // Fail at once: a lost job never completes, so waiting for the end proves
            // nothing more.
            let twice = completions(&self.marks)
                .values()
                .filter(|n| **n > 1)
                .count();
            println!(
                "acknowledged={} lost={} completed_twice={twice} (after {after})",
                acknowledged.len(),
                lost.len()
            );
            panic!(
                "{} acknowledged jobs are missing from the server started again after \
                 {after}: {lost:?}",
                lost.len()
            );
        }
    }

    /// A commit fails with an I/O error: the server refuses it and stops; it starts again.
    fn failing_commit(&mut self) {
        let failed_before = self.before_fault();
        self.store.fail_next_commits(1, WriteFault::Io);
        let error = self.stopped_with_error("a failing commit");
        assert!(error.contains("Input/output error"), "{error}");
        assert!(error.contains("check that the disk is not full"), "{error}");
        self.restart("a failing commit");
        self.after_fault(failed_before);
    }

    /// The disk fills up: the server stops, cannot start while the disk is full and says
    /// why, and starts once there is room again.
    fn full_disk(&mut self) {
        let failed_before = self.before_fault();
        self.store.fail_writes(WriteFault::DiskFull);
        let error = self.stopped_with_error("a full disk");
        assert!(error.contains("No space left on device"), "{error}");
        let refused = self
            .server
            .start_again(self.store.clone())
            .expect_err("a server cannot start while its disk is full");
        assert!(refused.contains("No space left on device"), "{refused}");
        self.store.heal();
        self.restart("a full disk");
        self.after_fault(failed_before);
    }

    /// The machine crashes with a commit in flight; the server starts again on what
    /// reached the disk.
    fn crash(&mut self) {
        let failed_before = self.before_fault();
        // Commits stop short of the disk, so that the crash surely finds one in flight.
        self.store.hold_commits();
        eventually_explained(
            "a commit in flight",
            STEP,
            || worker_logs(&self.workers),
            || (self.store.commits_in_flight() > 0).then_some(()),
        );
        let survivor = self.store.crash();
        self.server.power_off();
        self.dropped_at_crashes += self.store.stats().dropped_at_crash;
        self.store = faulty(FaultyStore::restarted(survivor));
        self.restart("a crash");
        self.after_fault(failed_before);
    }

    /// On a shared store: the disk fills up; the server stays up, refuses writes and
    /// answers job reads; once there is room it leads again by itself.
    fn full_disk_without_restart(&mut self) {
        let failed_before = self.before_fault();
        let read_during = *self.progress.acknowledged().last().unwrap();
        self.store.fail_writes(WriteFault::DiskFull);
        eventually_explained(
            "a submission to be refused on the full disk",
            STEP,
            || worker_logs(&self.workers),
            || (self.failures() > failed_before).then_some(()),
        );
        let api = self.api();
        let reply = api.try_get(&format!("/v1/jobs/{read_during}")).unwrap();
        assert_eq!(
            reply.status, 200,
            "a job read on the full disk: {}",
            reply.body
        );
        assert!(
            self.server.is_running(),
            "the server stopped on a full disk"
        );
        self.store.heal();
        self.let_jobs_through(1);
        assert!(self.server.is_running());
        self.nothing_lost("a full disk on a shared store");
        self.after_fault(failed_before);
    }
}

fn faulty(store: FaultyStore) -> Arc<FaultyStore> {
    store.set_commit_latency(COMMIT_LATENCY);
    Arc::new(store)
}

impl Run {
    /// A server on a fresh faulty store (`adjust` changes its settings), two workers,
    /// and the submitter started.
    fn start(adjust: impl FnOnce(&mut ServerConfig), marks: &Path) -> (Run, JoinHandle<()>) {
        let store = faulty(FaultyStore::new(MemoryStore::new()).unwrap());
        let server = ServerOnStore::start(store.clone() as Arc<dyn Store>, adjust);
        let workers: Vec<WorkerProcess> = ["w1", "w2"]
            .iter()
            .map(|name| {
                WorkerProcess::start(&server.url(), name, &["--cpus", "4", "--memory", "1G"])
            })
            .collect();
        let run = Run {
            server,
            store,
            workers,
            progress: Progress::default(),
            marks: marks.to_path_buf(),
            dropped_at_crashes: 0,
            running_at_faults: Vec::new(),
            failures_at_faults: Vec::new(),
            started: Instant::now(),
        };
        let api = run.api();
        eventually_explained(
            "both workers to be active",
            STEP,
            || worker_logs(&run.workers),
            || {
                let active = worker_views(&api)?
                    .iter()
                    .filter(|w| w.state == api::WorkerState::Active)
                    .count();
                (active == 2).then_some(())
            },
        );
        let submitting = submitter(api, marks.to_path_buf(), run.progress.clone());
        (run, submitting)
    }

    fn round(&self, round: usize, rounds: usize) {
        if rounds > 1 {
            println!(
                "round {round} of {rounds}: {} jobs acknowledged so far, {:.0} s in",
                self.progress.count(),
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// Stops the submitter, waits for every acknowledged job to succeed and the workers
    /// to be idle, prints the counts and checks them; `faults` says what the rounds did.
    fn finish(self, submitting: JoinHandle<()>, faults: &str) {
        self.let_jobs_through(JOBS_BETWEEN_FAULTS);
        self.progress.stop.store(true, Ordering::Relaxed);
        submitting.join().unwrap();
        let acknowledged = self.progress.acknowledged();
        let acknowledged_ids: HashSet<&Uuid> = acknowledged.iter().collect();
        assert_eq!(acknowledged_ids.len(), acknowledged.len(), "distinct ids");

        // Every acknowledged job succeeds, and then no worker runs anything any more.
        let api = self.api();
        // (Waiting on the unfinished ones: listing every job on each look would be slow
        // after a long run.)
        eventually_explained(
            "every acknowledged job to finish and the workers to be idle",
            Duration::from_secs(180),
            || {
                let unfinished: Vec<(Uuid, api::JobState)> = ["pending", "running"]
                    .iter()
                    .flat_map(|state| jobs_in_state(&api, state).unwrap_or_default())
                    .map(|j| (j.id, j.state))
                    .collect();
                format!("unfinished: {unfinished:?}\n{}", worker_logs(&self.workers))
            },
            || {
                let unfinished =
                    jobs_in_state(&api, "pending")?.len() + jobs_in_state(&api, "running")?.len();
                let idle = worker_views(&api)?.iter().all(|w| w.attempts == 0);
                (unfinished == 0 && idle).then_some(())
            },
        );
        let jobs = api.all_jobs().unwrap();
        let not_succeeded: Vec<(&Uuid, Option<api::JobState>)> = acknowledged
            .iter()
            .map(|id| (id, jobs.get(id).map(|j| j.state)))
            .filter(|(_, state)| *state != Some(api::JobState::Succeeded))
            .collect();
        assert!(
            not_succeeded.is_empty(),
            "acknowledged jobs that did not succeed: {not_succeeded:?}"
        );
        let completions = completions(&self.marks);
        let lost: Vec<&Uuid> = acknowledged
            .iter()
            .filter(|id| !completions.contains_key(id))
            .collect();
        let twice: Vec<(&Uuid, &usize)> = completions.iter().filter(|(_, n)| **n > 1).collect();
        let refusals = self.progress.refusals.lock().unwrap().clone();
        let mut refusal_messages: Vec<String> = refusals
            .iter()
            .map(|(status, body)| format!("{status} {body}"))
            .collect();
        refusal_messages.sort();
        refusal_messages.dedup();
        println!(
            "acknowledged={} lost={} completed_twice={} ({faults} in {:.1} s; commits dropped \
             by the crashes {}; submissions refused {} and unanswered {}; jobs with more than \
             one attempt {}; jobs running as each fault came {:?}; submissions failed during \
             each fault {:?})",
            acknowledged.len(),
            lost.len(),
            twice.len(),
            self.started.elapsed().as_secs_f64(),
            self.dropped_at_crashes,
            refusals.len(),
            self.progress.unanswered.load(Ordering::Relaxed),
            jobs.values().filter(|j| j.attempts.len() > 1).count(),
            Spread(&self.running_at_faults),
            Spread(&self.failures_at_faults),
        );
        println!("the refusals, each kind once: {refusal_messages:#?}");
        assert!(lost.is_empty(), "acknowledged jobs never run: {lost:?}");
        assert!(twice.is_empty(), "jobs completed twice: {twice:?}");
        assert_eq!(
            jobs.len(),
            acknowledged.len(),
            "the server holds exactly the acknowledged jobs"
        );
        assert!(
            completions.keys().all(|id| acknowledged_ids.contains(id)),
            "only acknowledged jobs ran"
        );
        // A refusal is a 503 with a JSON error saying why, never another failure.
        for (status, body) in &refusals {
            assert_eq!(*status, 503, "a submission refused otherwise: {body}");
            let error: serde_json::Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("a refusal that is not JSON ({e}): {body}"));
            assert_eq!(error["error"]["code"], "unavailable", "{body}");
            assert!(error["error"]["message"].is_string(), "{body}");
        }
        assert!(
            self.running_at_faults.iter().any(|n| *n > 0),
            "no fault found a job running: the workers' side proved nothing"
        );
        assert!(
            self.failures_at_faults.iter().sum::<usize>() > 0,
            "no submission failed during the faults: they were not noticed"
        );
    }
}

#[test]
fn failing_commits_a_full_disk_and_crashes_lose_nothing_acknowledged_and_run_nothing_twice() {
    let rounds = rounds();
    let dir = tempfile::TempDir::with_prefix("lqsm-store-faults-").unwrap();
    let (mut run, submitting) = Run::start(|_| {}, &dir.path().join("completed"));
    for round in 1..=rounds {
        run.round(round, rounds);
        run.let_jobs_through(JOBS_BETWEEN_FAULTS);
        run.failing_commit();
        run.let_jobs_through(JOBS_BETWEEN_FAULTS);
        run.full_disk();
        run.let_jobs_through(JOBS_BETWEEN_FAULTS);
        run.crash();
    }
    // Each crash found commits in flight, or it proved nothing about acknowledgements.
    assert!(
        run.dropped_at_crashes >= rounds as u64,
        "the crashes dropped {} commits in flight over {rounds} rounds",
        run.dropped_at_crashes
    );
    run.finish(
        submitting,
        &format!("{rounds} rounds of a failing commit, a full disk and a crash"),
    );
}

/// A store several servers share (PostgreSQL's rules: `backend = "postgres"` on the
/// faulty store) does not stop its server: the leader steps down while writes fail,
/// answers job reads meanwhile, and leads again once there is room.
#[test]
fn on_a_shared_store_a_full_disk_is_ridden_out_without_a_restart_and_loses_nothing() {
    let rounds = rounds();
    let dir = tempfile::TempDir::with_prefix("lqsm-store-faults-").unwrap();
    let (mut run, submitting) = Run::start(
        |config| config.store.backend = StoreBackend::Postgres,
        &dir.path().join("completed"),
    );
    for round in 1..=rounds {
        run.round(round, rounds);
        run.let_jobs_through(JOBS_BETWEEN_FAULTS);
        run.full_disk_without_restart();
    }
    run.finish(
        submitting,
        &format!("{rounds} full disks on a shared store, without a restart"),
    );
}
