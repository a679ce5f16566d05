//! The end-to-end harness: a temporary directory, a real `lqsm server` on a random
//! loopback port, real `lqsm worker` processes, and the `lqsm` CLI to drive them —
//! everything a person would run, torn down on drop.
//!
//! Every wait polls with a deadline; a wait that runs out panics with what it waited
//! for and the end of every process's log.

#![allow(dead_code)] // Each test binary uses its own part of the harness.

pub mod fault_proxy;

use lqsm_api as api;
use serde::de::DeserializeOwned;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use uuid::Uuid;

/// How long any wait for a state may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How long one CLI command may run before the test fails.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// How often a wait looks again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Polls `f` until it returns `Some`, or panics naming `what` (and calling `context`
/// for the failure message) after `timeout`.
pub fn eventually_or<T>(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// `lqsm` with settings from the test alone (no `LQSM_*` from the environment).
fn lqsm(log_filter: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lqsm"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LQSM_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("NO_COLOR", "1")
        .env("RUST_LOG", log_filter)
        // A panic must show itself as one in the output.
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    cmd
}

/// Waits for `child` to exit, at most `timeout`.
pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on our child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGTERM to `pid` with `kill -TERM`.
pub fn sigterm(pid: u32) {
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
}

/// The last lines of a log file, for failure messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Whether something answers `GET /readyz` on `addr` with 200.
fn ready(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

/// Starts `cmd` (a server or standalone) whose first stdout line is
/// `lqsm server listening on http://ADDR`, and waits until `/readyz` answers.
fn spawn_listening(mut cmd: Command, log: &Path) -> (Child, SocketAddr) {
    let stderr = File::create(log).expect("create a log file");
    cmd.stdout(Stdio::piped()).stderr(stderr);
    let mut child = cmd.spawn().expect("spawn lqsm");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        // Keep reading so the process never writes into a closed pipe.
        for _ in lines {}
    });
    let first = rx.recv_timeout(DEADLINE);
    let addr = match &first {
        Ok(Some(Ok(line))) => line
            .strip_prefix("lqsm server listening on http://")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok()),
        _ => None,
    };
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "lqsm did not announce its address (first line: {first:?}); its log:\n{}",
            tail(log)
        );
    };
    let deadline = Instant::now() + DEADLINE;
    while !ready(addr) {
        if let Some(status) = child.try_wait().expect("try_wait on our child") {
            panic!(
                "lqsm exited with {status} before it was ready; its log:\n{}",
                tail(log)
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "lqsm at {addr} did not become ready; its log:\n{}",
                tail(log)
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
    (child, addr)
}

/// A running (or stopped) `lqsm server` with its data directory.
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    data_dir: PathBuf,
    logs: PathBuf,
    extra: Vec<String>,
    starts: u32,
}

impl Server {
    /// Starts `lqsm server --listen 127.0.0.1:0 --data-dir <dir>/data` plus `extra`.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut server = Server {
            child: None,
            addr: "127.0.0.1:0".parse().expect("a socket address"),
            data_dir: dir.join("data"),
            logs: dir.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            starts: 0,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server already runs");
        self.starts += 1;
        let mut cmd = lqsm("info");
        cmd.arg("server")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra);
        let (child, addr) = spawn_listening(cmd, &self.log());
        if self.addr.port() != 0 {
            assert_eq!(addr, self.addr, "the server came back on another address");
        }
        self.addr = addr;
        self.child = Some(child);
    }

    fn log(&self) -> PathBuf {
        self.logs.join(format!("server-{}.log", self.starts))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The end of the current process's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log())
    }

    /// SIGTERM; waits for the process to exit and returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server runs");
        sigterm(child.id());
        wait_with_deadline(&mut child, DEADLINE).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not exit within {DEADLINE:?} of SIGTERM; its log:\n{}",
                self.log_tail()
            )
        })
    }

    /// Starts the server again on the same data directory and the same address.
    pub fn start_again(&mut self) {
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `lqsm worker` process.
pub struct Worker {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Worker {
    /// Starts `lqsm worker --server URL --cpus N --memory 1G --name NAME`.
    pub fn start(dir: &Path, url: &str, name: &str, cpus: u32) -> Worker {
        let cpus = cpus.to_string();
        Worker::start_with(dir, url, name, &["--cpus", &cpus, "--memory", "1G"])
    }

    /// Starts `lqsm worker --server URL --name NAME ARGS...`.
    pub fn start_with(dir: &Path, url: &str, name: &str, args: &[&str]) -> Worker {
        let log = dir.join(format!("worker-{name}.log"));
        let stderr = File::create(&log).expect("create a log file");
        let child = lqsm("info")
            .arg("worker")
            .arg("--server")
            .arg(url)
            .arg("--name")
            .arg(name)
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn lqsm worker");
        Worker {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM; the process keeps running until it chooses to exit.
    pub fn terminate(&self) {
        sigterm(self.child.as_ref().expect("the worker runs").id());
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the worker runs");
        let status = wait_with_deadline(&mut child, timeout);
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "worker {} did not exit within {timeout:?}; its log:\n{}",
                self.name,
                self.log_tail()
            );
        };
        status
    }

    /// SIGKILL: the process dies at once, mid-job.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("the worker runs");
        child.kill().expect("SIGKILL the worker");
        child.wait().expect("reap the worker");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a finished CLI command did.
#[derive(Debug)]
pub struct Ran {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Its exit code (`None` when a signal ended it).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts it exited with 0.
    pub fn success(&self) -> &Ran {
        assert!(
            self.status.success(),
            "`{}` failed: {self:#?}",
            self.command
        );
        self
    }

    /// Its stdout as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`{}` did not print a {}: {e}\n{self:#?}",
                self.command,
                std::any::type_name::<T>()
            )
        })
    }
}

/// Runs `lqsm ARGS...`, at most `timeout`.
pub fn run_lqsm(args: &[&str], timeout: Duration) -> Ran {
    let command = format!("lqsm {}", args.join(" "));
    let mut child = lqsm("warn")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lqsm");
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read_all(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read_all(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let Some(status) = wait_with_deadline(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`{command}` did not finish within {timeout:?}");
    };
    Ran {
        command,
        status,
        stdout: stdout.join().expect("the stdout reader ends"),
        stderr: stderr.join().expect("the stderr reader ends"),
    }
}

/// The `lqsm` CLI pointed at one server.
#[derive(Clone)]
pub struct Cli {
    url: String,
}

impl Cli {
    pub fn new(url: &str) -> Cli {
        Cli {
            url: url.to_owned(),
        }
    }

    /// `lqsm --server URL ARGS...`.
    pub fn run(&self, args: &[&str]) -> Ran {
        let mut all = vec!["--server", &self.url];
        all.extend_from_slice(args);
        run_lqsm(&all, COMMAND_DEADLINE)
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
    pub server: Server,
    pub workers: Vec<Worker>,
    pub cli: Cli,
    // Last, so it is removed after every process has stopped.
    pub dir: TempDir,
}

impl Cluster {
    /// A server started with `server_args`, and one worker per `(name, cpus)`, each
    /// seen active by the server.
    pub fn start(server_args: &[&str], workers: &[(&str, u32)]) -> Cluster {
        let dir = TempDir::with_prefix("lqsm-e2e-").expect("a temp dir");
        let server = Server::start(dir.path(), server_args);
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
        let worker = Worker::start(self.dir.path(), url, name, cpus);
        self.push_active(worker);
    }

    /// Starts `lqsm worker ... ARGS` and waits until the server lists it as active.
    pub fn add_worker_with(&mut self, name: &str, args: &[&str]) {
        let worker = Worker::start_with(self.dir.path(), &self.server.url(), name, args);
        self.push_active(worker);
    }

    fn push_active(&mut self, worker: Worker) {
        let name = worker.name.clone();
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
    pub fn worker(&mut self, name: &str) -> &mut Worker {
        self.workers
            .iter_mut()
            .find(|w| w.name == name)
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
            text.push_str(&format!("--- worker {} log:\n{}\n", w.name, w.log_tail()));
        }
        text
    }

    /// Polls `f` until it returns `Some`; panics with the logs after [`DEADLINE`].
    pub fn eventually<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        eventually_or(what, DEADLINE, || self.logs(), f)
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
        // Workers first, so none is left polling a dead server.
        self.workers.clear();
        if let Some(mut child) = self.server.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `lqsm standalone` process: a server and its own worker in one.
pub struct Standalone {
    child: Option<Child>,
    pub cli: Cli,
    log: PathBuf,
}

impl Standalone {
    /// `lqsm standalone --listen 127.0.0.1:0 --data-dir <dir>/data`, ready.
    pub fn start(dir: &Path) -> Standalone {
        Standalone::start_with(dir, &[], "standalone.log")
    }

    /// Like [`Standalone::start`], with `extra` arguments, logging to `log_name` in
    /// `dir` (give each start on the same directory its own).
    pub fn start_with(dir: &Path, extra: &[&str], log_name: &str) -> Standalone {
        let log = dir.join(log_name);
        let mut cmd = lqsm("info");
        cmd.arg("standalone")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(extra);
        let (child, addr) = spawn_listening(cmd, &log);
        Standalone {
            child: Some(child),
            cli: Cli::new(&format!("http://{addr}")),
            log,
        }
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// SIGKILL: the process (server and worker) dies at once.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("standalone runs");
        child.kill().expect("SIGKILL standalone");
        child.wait().expect("reap standalone");
    }

    /// SIGTERM; waits for the process to exit and returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("standalone runs");
        sigterm(child.id());
        wait_with_deadline(&mut child, DEADLINE).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "standalone did not exit within {DEADLINE:?} of SIGTERM; its log:\n{}",
                self.log_tail()
            )
        })
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether process `pid` is gone: no /proc entry, or a zombie, or the pid now
/// belongs to another program than `expected_cmdline` (NUL-separated argv).
pub fn process_gone(pid: u32, expected_cmdline: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next())
        .unwrap_or("");
    if state == "Z" || state == "X" {
        return true;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline) != expected_cmdline
}
