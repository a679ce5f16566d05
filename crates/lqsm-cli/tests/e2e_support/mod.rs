//! The end-to-end fixtures of the CLI's tests: the `lqsm` CLI pointed at a server
//! ([`Cli`]), and a [`Cluster`] of a real `lqsm server` and real `lqsm worker`
//! processes (started by `lqsm_testkit::process`) driven through that CLI, as a person
//! would, torn down on drop.
//!
//! Every wait polls with a deadline; a wait of a cluster that runs out panics with what
//! it waited for and the end of every process's log.

#![allow(dead_code)] // Each test binary uses its own part of the harness.

use lqsm_api as api;
use lqsm_testkit::{DEADLINE, Ran, ServerProcess, WorkerProcess, eventually_explained, run_lqsm};
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use tempfile::TempDir;
use uuid::Uuid;

/// The `lqsm` CLI pointed at one server.
#[derive(Clone)]
pub struct Cli {
    url: String,
}

impl Cli {
    /// The CLI with `--server url`.
    pub fn new(url: &str) -> Cli {
        Cli {
            url: url.to_owned(),
        }
    }

    /// `lqsm --server URL ARGS...`.
    pub fn run(&self, args: &[&str]) -> Ran {
        let mut all = vec!["--server", &self.url];
        all.extend_from_slice(args);
        run_lqsm(&all, DEADLINE)
    }

    /// `lqsm --server URL -o json ARGS...`, asserted to succeed, read as `T`.
    pub fn json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        self.run(&all).success().json()
    }

    /// `lqsm submit -o json ARGS...`: the new job's id.
    pub fn submit(&self, args: &[&str]) -> Uuid {
        let mut all = vec!["submit"];
        all.extend_from_slice(args);
        let printed: serde_json::Value = self.json(&all);
        printed["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("`lqsm submit` printed no job id: {printed}"))
    }

    /// `lqsm job get ID -o json`.
    pub fn job(&self, id: Uuid) -> api::JobView {
        self.json(&["job", "get", &id.to_string()])
    }

    /// `lqsm job list --all -o json`: every job, newest first.
    pub fn jobs(&self) -> Vec<api::JobView> {
        self.json::<api::JobList>(&["job", "list", "--all"]).jobs
    }

    /// `lqsm workers list -o json`.
    pub fn workers(&self) -> Vec<api::WorkerView> {
        self.json(&["workers", "list"])
    }

    /// `lqsm cluster -o json`.
    pub fn cluster(&self) -> api::ClusterSummary {
        self.json(&["cluster"])
    }
}

/// Whether a job has reached a state it never leaves.
pub fn finished(job: &api::JobView) -> bool {
    job.state.is_terminal()
}

/// A temporary directory, a server and workers, torn down on drop (workers first).
pub struct Cluster {
    /// The `lqsm server` process.
    pub server: ServerProcess,
    /// The `lqsm worker` processes.
    pub workers: Vec<WorkerProcess>,
    /// The CLI pointed at the server.
    pub cli: Cli,
    /// A directory for the test's own files (job marks, config files).
    // Last, so it is removed after every process has stopped.
    pub dir: TempDir,
}

impl Cluster {
    /// A server started with `server_args`, and one worker per `(name, cpus)`, each
    /// seen active by the server.
    pub fn start(server_args: &[&str], workers: &[(&str, u32)]) -> Cluster {
        let dir = TempDir::with_prefix("lqsm-e2e-").expect("a temp dir");
        let server = ServerProcess::builder().args(server_args).start();
        let cli = Cli::new(&server.url());
        let mut cluster = Cluster {
            server,
            workers: Vec::new(),
            cli,
            dir,
        };
        for (name, cpus) in workers {
            cluster.add_worker(name, *cpus);
        }
        cluster
    }

    /// Starts a worker and waits until the server lists it as active.
    pub fn add_worker(&mut self, name: &str, cpus: u32) {
        let url = self.server.url();
        self.add_worker_via(name, cpus, &url);
    }

    /// Starts a worker that reaches the server at `url` (a proxy in front of it,
    /// say) and waits until the server lists it as active.
    pub fn add_worker_via(&mut self, name: &str, cpus: u32, url: &str) {
        let cpus = cpus.to_string();
        let worker = WorkerProcess::start(url, name, &["--cpus", &cpus, "--memory", "1G"]);
        self.push_active(worker);
    }

    /// Starts `lqsm worker ... ARGS` and waits until the server lists it as active.
    pub fn add_worker_with(&mut self, name: &str, args: &[&str]) {
        let worker = WorkerProcess::start(&self.server.url(), name, args);
        self.push_active(worker);
    }

    fn push_active(&mut self, worker: WorkerProcess) {
        let name = worker.name().to_owned();
        self.workers.push(worker);
        self.eventually(&format!("worker {name} to be active"), || {
            self.worker_view(&name)
                .filter(|w| w.state == lqsm_api::WorkerState::Active)
        });
    }

    /// A path inside the test's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The worker process named `name`.
    pub fn worker(&mut self, name: &str) -> &mut WorkerProcess {
        self.workers
            .iter_mut()
            .find(|w| w.name() == name)
            .unwrap_or_else(|| panic!("no worker process named {name}"))
    }

    /// The server's view of the worker named `name`.
    pub fn worker_view(&self, name: &str) -> Option<api::WorkerView> {
        self.cli.workers().into_iter().find(|w| w.name == name)
    }

    /// The name of the worker with this id.
    pub fn worker_name(&self, id: Uuid) -> String {
        self.cli
            .workers()
            .into_iter()
            .find(|w| w.id == id)
            .unwrap_or_else(|| panic!("no worker {id} in `lqsm workers list`"))
            .name
    }

    /// The end of every process's log.
    pub fn logs(&self) -> String {
        let mut text = format!("--- server log:\n{}\n", self.server.log_tail());
        for w in &self.workers {
            text.push_str(&format!("--- worker {} log:\n{}\n", w.name(), w.log_tail()));
        }
        text
    }

    /// Polls `f` until it returns `Some`; panics with the logs after [`DEADLINE`].
    pub fn eventually<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        eventually_explained(what, DEADLINE, || self.logs(), f)
    }

    /// Polls the job until it is finished; returns its view.
    pub fn wait_finished(&self, id: Uuid) -> api::JobView {
        self.eventually(&format!("job {id} to finish"), || {
            Some(self.cli.job(id)).filter(finished)
        })
    }

    /// Polls the job until it is in `state`.
    pub fn wait_state(&self, id: Uuid, state: api::JobState) -> api::JobView {
        self.eventually(&format!("job {id} to be {state}"), || {
            let job = self.cli.job(id);
            assert!(
                job.state == state || !finished(&job),
                "job {id} finished as {} while waiting for {state}: {job:#?}",
                job.state
            );
            (job.state == state).then_some(job)
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Workers first, so none is left polling a dead server; the server goes next,
        // with the fields.
        self.workers.clear();
    }
}

/// A command job with a client-chosen id that runs `before` (e.g. `sleep 0.2`, or
/// nothing), then appends its id to `marks`: a line per run that completed, counted by
/// [`completions`].
pub fn marking_job(id: Uuid, marks: &std::path::Path, before: &str) -> api::SubmitJob {
    let mut job = api::SubmitJob::function("root.default", "unused", serde_json::json!({}));
    job.id = Some(id);
    let mark = format!("echo {id} >> '{}'", marks.display());
    job.kind = api::JobKind::Command {
        argv: vec![
            "sh".into(),
            "-c".into(),
            if before.is_empty() {
                mark
            } else {
                format!("{before}; {mark}")
            },
        ],
        env: Default::default(),
        cwd: None,
    };
    job
}

/// How many times each job's command ran to completion, from the marks file of
/// [`marking_job`].
pub fn completions(marks: &std::path::Path) -> std::collections::HashMap<Uuid, usize> {
    let text = std::fs::read_to_string(marks).unwrap_or_default();
    let mut counts = std::collections::HashMap::new();
    for line in text.lines() {
        let id: Uuid = line
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("a mark that is no job id: {line:?} ({e})"));
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}
