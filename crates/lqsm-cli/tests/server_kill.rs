//! `kill -9` of a real `lqsm server` (embedded store) several times while real `lqsm
//! worker`s run its jobs across the kills: nothing acknowledged is lost and nothing runs
//! to completion twice, counted from the jobs' own side.
//!
//! A submitter submits command jobs with ids it chooses; each job appends its id to a
//! marks file. When a submission fails (the server is down, or died before it answered)
//! the submitter sends the same job, same id, again until the server acknowledges it:
//! a job the dead server had stored is then the same job, not a second one.
//!
//! CI runs 3 kills. The long run (docs/RELIABILITY.md; about 20 jobs per cycle keeps
//! it within minutes):
//! `LQSM_SERVER_KILL_CYCLES=100 LQSM_SERVER_KILL_JOBS_PER_CYCLE=20 cargo test -p
//! lqsm-cli --test server_kill -- --nocapture`.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.
#![allow(clippy::print_stdout)] // Each run prints its acknowledged, lost and twice-run counts.

mod e2e_support;

use lqsm_api as api;
use lqsm_testkit::wait::eventually_explained;
use lqsm_testkit::{Api, ServerProcess, WorkerProcess};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use uuid::Uuid;

/// A number from the environment, or `default`.
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How many times the server is killed (`LQSM_SERVER_KILL_CYCLES`, 3 by default), and
/// how many jobs are acknowledged between two kills (`LQSM_SERVER_KILL_JOBS_PER_CYCLE`,
/// 40 by default): the server dies once every that many acknowledgements, and as many
/// again are submitted after the last kill.
fn plan() -> (usize, usize) {
    let cycles = setting("LQSM_SERVER_KILL_CYCLES", 3).max(1);
    let per_cycle = setting("LQSM_SERVER_KILL_JOBS_PER_CYCLE", 40).max(1);
    (cycles, per_cycle)
}

/// A command job with a client-chosen id that appends its id to `marks` (after a short
/// sleep, so that kills find jobs running on the workers).
fn marking_job(id: Uuid, marks: &Path) -> api::SubmitJob {
    e2e_support::marking_job(id, marks, "sleep 0.2")
}

fn completions(marks: &Path) -> HashMap<Uuid, usize> {
    e2e_support::completions(marks)
}

/// What the submitter did so far, shared with the test's thread.
#[derive(Clone, Default)]
struct Progress {
    /// Ids the server acknowledged, in order.
    acknowledged: Arc<Mutex<Vec<Uuid>>>,
    /// Submissions that failed (no answer, or not a 200/201) and were sent again.
    failures: Arc<AtomicUsize>,
}

impl Progress {
    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }
}

/// Submits `jobs` marking jobs one after the other, each the same job (same id) again
/// after a failure until the server acknowledges it.
fn submitter(api: Api, jobs: usize, marks: PathBuf, progress: Progress) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..jobs {
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
                    _ => {
                        progress.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "job {id} was not acknowledged for 90 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            progress.acknowledged.lock().unwrap().push(id);
        }
    })
}

/// How many jobs the server says are running (at most a page: the workers hold 8).
fn running_jobs(api: &Api) -> Option<usize> {
    let reply = api.try_get("/v1/jobs?state=running&limit=1000").ok()?;
    (reply.status == 200).then(|| reply.json::<api::JobList>().jobs.len())
}

fn workers(api: &Api) -> Option<Vec<api::WorkerView>> {
    let reply = api.try_get("/v1/workers").ok()?;
    (reply.status == 200).then(|| reply.json())
}

fn logs(server: &ServerProcess, workers: &[WorkerProcess]) -> String {
    let mut text = format!("--- server log:\n{}\n", server.log_tail());
    for w in workers {
        text.push_str(&format!("--- worker {} log:\n{}\n", w.name(), w.log_tail()));
    }
    text
}

#[test]
fn kill_9_of_the_server_with_workers_running_loses_nothing_and_runs_nothing_twice() {
    let (cycles, per_cycle) = plan();
    let total = per_cycle * (cycles + 1);
    let started = Instant::now();
    let dir = TempDir::with_prefix("lqsm-server-kill-").unwrap();
    let marks = dir.path().join("completed");
    let mut server = ServerProcess::start();
    let api = server.api();
    let processes: Vec<WorkerProcess> = ["w1", "w2"]
        .iter()
        .map(|name| WorkerProcess::start(&server.url(), name, &["--cpus", "4", "--memory", "1G"]))
        .collect();
    eventually_explained(
        "both workers to be active",
        Duration::from_secs(30),
        || logs(&server, &processes),
        || {
            let active = workers(&api)?
                .iter()
                .filter(|w| w.state == api::WorkerState::Active)
                .count();
            (active == 2).then_some(())
        },
    );

    let progress = Progress::default();
    let submitting = submitter(api.clone(), total, marks.clone(), progress.clone());
    let mut in_flight_at_kills = Vec::new();
    let mut running_at_kills = Vec::new();
    for kill_at in (1..=cycles).map(|cycle| cycle * per_cycle) {
        eventually_explained(
            &format!("{kill_at} jobs to be acknowledged"),
            Duration::from_secs(90),
            || logs(&server, &processes),
            || (progress.acknowledged() >= kill_at).then_some(()),
        );
        // Acknowledged jobs not yet completed: they are pending or running as the
        // server dies.
        let done = completions(&marks);
        let in_flight = progress
            .acknowledged
            .lock()
            .unwrap()
            .iter()
            .filter(|id| !done.contains_key(id))
            .count();
        in_flight_at_kills.push(in_flight);
        // And what the workers run as it dies, as the server last said.
        let running = running_jobs(&api).unwrap_or_default();
        running_at_kills.push(running);
        let failures = progress.failures.load(Ordering::Relaxed);
        server.kill_9();
        // The submitter meets the dead server and keeps sending the same job.
        eventually_explained(
            "a submission to fail while the server is down",
            Duration::from_secs(30),
            || logs(&server, &processes),
            || (progress.failures.load(Ordering::Relaxed) > failures).then_some(()),
        );
        server.restart();
    }
    submitting.join().unwrap();
    let acknowledged = progress.acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), total);
    assert_eq!(
        acknowledged.iter().collect::<HashSet<_>>().len(),
        total,
        "distinct ids"
    );

    // Every acknowledged job succeeds, and then no worker runs anything any more.
    let api = server.api();
    eventually_explained(
        "every acknowledged job to succeed and the workers to be idle",
        Duration::from_secs(120) + Duration::from_millis(100) * total as u32,
        || {
            let jobs = api.all_jobs().unwrap_or_default();
            let unfinished: Vec<_> = acknowledged
                .iter()
                .map(|id| (id, jobs.get(id).map(|j| j.state)))
                .filter(|(_, state)| *state != Some(api::JobState::Succeeded))
                .collect();
            format!(
                "not succeeded: {unfinished:?}\n{}",
                logs(&server, &processes)
            )
        },
        || {
            let jobs = api.all_jobs()?;
            let all_succeeded = acknowledged.iter().all(|id| {
                jobs.get(id)
                    .is_some_and(|j| j.state == api::JobState::Succeeded)
            });
            let idle = workers(&api)?.iter().all(|w| w.attempts == 0);
            (all_succeeded && idle).then_some(())
        },
    );
    let jobs = api.all_jobs().unwrap();
    assert_eq!(
        jobs.len(),
        total,
        "the server holds exactly the acknowledged jobs"
    );

    let completions = completions(&marks);
    let lost: Vec<&Uuid> = acknowledged
        .iter()
        .filter(|id| !completions.contains_key(id))
        .collect();
    let twice: Vec<(&Uuid, &usize)> = completions.iter().filter(|(_, n)| **n > 1).collect();
    let rerun = jobs.values().filter(|j| j.attempts.len() > 1).count();
    println!(
        "acknowledged {}, lost {}, completed twice {} (server kills {cycles}, submissions \
         sent again {}, kills that found jobs running {}, acknowledged but unfinished at each \
         kill {:?}, running at each kill {:?}, jobs with more than one attempt {rerun}, wall \
         time {:.1?})",
        acknowledged.len(),
        lost.len(),
        twice.len(),
        progress.failures.load(Ordering::Relaxed),
        running_at_kills.iter().filter(|n| **n > 0).count(),
        in_flight_at_kills,
        running_at_kills,
        started.elapsed(),
    );
    let twice_views: Vec<&api::JobView> = twice.iter().filter_map(|(id, _)| jobs.get(id)).collect();
    assert!(
        twice.is_empty(),
        "jobs completed twice: {twice:?}\n{twice_views:#?}\n{}",
        logs(&server, &processes)
    );
    assert!(lost.is_empty(), "acknowledged jobs never run: {lost:?}");
    assert!(
        completions.keys().all(|id| acknowledged.contains(id)),
        "only acknowledged jobs ran"
    );
    assert!(
        running_at_kills.iter().any(|n| *n > 0),
        "no kill found a job running: the test proved nothing"
    );
}
