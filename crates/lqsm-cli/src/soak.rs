//! `lqsm bench soak`: a long run of steady mixed load against a real `lqsm server`
//! (embedded store) with real `lqsm worker`s joining and leaving, measuring whether the
//! server stays the same over time: its resident memory and the clients' latency tails.
//!
//! The run starts its own server (this binary, `lqsm server`, in a temporary directory)
//! so that it can read the server's memory from `/proc`, and its own workers, which it
//! replaces one at a time (a new one joins, the oldest leaves: by SIGTERM and by
//! `kill -9` in turn). At a steady rate, not flat out, it submits command jobs singly and
//! in batches, submits delayed jobs and cancels them while they wait, lists jobs with
//! filters, reads the queue tree and reads single jobs. Every job it submits appends its
//! id to a marks file when its command completes: completions are counted from the jobs'
//! side, so a job lost or run to completion twice shows.
//!
//! Each report interval prints one line (memory, per-kind latency percentiles, rates,
//! errors, jobs); the end compares a window early in the run with the last one: the
//! server's memory (the median of its samples, every 2 s) and the p99 latency of all
//! requests (the median of the p99s of the intervals in the window). It fails on any
//! failed request, any acknowledged job that never completed, any job completed twice
//! other than after a killed worker's lost attempt, and any cancelled job that ran.

use crate::units::parse_duration;
use crate::{Output, print};
use lqsm_api as api;
use lqsm_client::{Client, ClientError, JobFilter};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Options of `lqsm bench soak`.
#[derive(clap::Args, Clone)]
pub struct SoakArgs {
    /// How long the load runs (then the backlog drains and everything stops).
    #[arg(long, default_value = "60m", value_parser = parse_duration)]
    duration: Duration,
    /// One line of figures per this much time.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    report_every: Duration,
    /// Multiplies every request rate (1: about 9 command jobs/s and 11.5 requests/s).
    #[arg(long, default_value_t = 1.0)]
    load: f64,
    /// Workers running at any time.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Every this long a new worker joins and the oldest leaves (SIGTERM and kill -9 in
    /// turn); 0 for never.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    churn_every: Duration,
    /// The server's retention of finished jobs (`--retention-ms`). The default of a day
    /// would hold every job of the run in memory; a steady load needs a retention shorter
    /// than the run to reach a steady state, as a production user would set it.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    retention: Duration,
    /// The early window the end is compared with, `FROM..TO` [default: minutes 8 to 12
    /// of an hour, in proportion to --duration].
    #[arg(long, value_parser = parse_window)]
    baseline_window: Option<Window>,
    /// The window at the end [default: the last 4 minutes of an hour, in proportion].
    #[arg(long, value_parser = parse_window)]
    final_window: Option<Window>,
    /// Largest growth of the server's memory from the baseline window to the final one
    /// (0.10: 10%).
    #[arg(long, default_value_t = 0.10)]
    max_rss_growth: f64,
    /// Largest ratio of the final window's p99 latency to the baseline's.
    #[arg(long, default_value_t = 1.5)]
    max_p99_ratio: f64,
    /// A final p99 within this many ms of the baseline's passes whatever the ratio (for
    /// short runs on noisy machines, where a few ms of scheduling delay move a small p99
    /// by more than the ratio).
    #[arg(long, default_value_t = 0.0)]
    p99_slack_ms: f64,
    /// After the load, how long the acknowledged jobs may take to complete.
    #[arg(long, default_value = "150s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Write the whole report (every interval) as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write one CSV row per interval to this file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Keep the temporary directory (data, logs, marks) even when the run passes.
    #[arg(long)]
    keep_dir: bool,
    /// A command the server runs under, split at whitespace and put before the server's
    /// own command line (e.g. `heaptrack -o /tmp/soak-heap`): for profiling its memory
    /// over the run. Memory and signals then go to the `lqsm` process under it.
    #[arg(long, hide = true)]
    server_wrapper: Option<String>,
}

/// A span of the run, in seconds from its start.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Window {
    from_s: f64,
    to_s: f64,
}

impl Window {
    fn contains(&self, t: f64) -> bool {
        t >= self.from_s && t < self.to_s
    }
}

fn parse_window(text: &str) -> Result<Window, String> {
    let (from, to) = text
        .split_once("..")
        .ok_or_else(|| format!("`{text}` is not a window FROM..TO, e.g. 8m..12m"))?;
    let (from, to) = (parse_duration(from)?, parse_duration(to)?);
    if to <= from {
        return Err(format!("window `{text}` ends before it starts"));
    }
    Ok(Window {
        from_s: from.as_secs_f64(),
        to_s: to.as_secs_f64(),
    })
}

/// What a request did, for the latency figures.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Submit,
    SubmitBatch,
    Cancel,
    ListJobs,
    QueueTree,
    JobGet,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Submit,
        Kind::SubmitBatch,
        Kind::Cancel,
        Kind::ListJobs,
        Kind::QueueTree,
        Kind::JobGet,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Submit => "submit",
            Kind::SubmitBatch => "submit_batch",
            Kind::Cancel => "cancel",
            Kind::ListJobs => "list_jobs",
            Kind::QueueTree => "queue_tree",
            Kind::JobGet => "job_get",
        }
    }
}

/// One request: when it was sent (s from the start), its kind, how long it took.
struct Sample {
    at: f64,
    kind: Kind,
    ms: f64,
}

/// One worker joining or leaving.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Churn {
    Started,
    Stopped,
    Killed,
}

/// A job the run submitted, followed until its command marks its completion.
struct Tracked {
    /// The server acknowledged it.
    acknowledged: bool,
    /// It was submitted to be cancelled while it waits: it must never run.
    to_cancel: bool,
    /// Completions its command marked.
    runs: u32,
}

/// What every task of the run shares.
struct Shared {
    started: Instant,
    samples: Mutex<Vec<Sample>>,
    /// When (s), of what (a kind of request, a worker, the marks) and what each error was.
    errors: Mutex<Vec<(f64, &'static str, String)>>,
    /// Server memory samples: (s, KiB).
    rss: Mutex<Vec<(f64, u64)>>,
    jobs: Mutex<HashMap<Uuid, Tracked>>,
    /// When (s) each first completion was seen.
    completions: Mutex<Vec<f64>>,
    /// When (s) each acknowledgement came.
    acknowledgements: Mutex<Vec<f64>>,
    /// Jobs completed twice: whether one of their attempts was lost (its worker killed),
    /// when the server could still say.
    twice: Mutex<Vec<(Uuid, Option<bool>)>>,
    /// Marks of jobs submitted to be cancelled, or never acknowledged.
    unexpected_runs: Mutex<Vec<Uuid>>,
    churn: Mutex<Vec<(f64, Churn)>>,
    /// The last few acknowledged jobs, for single-job reads.
    recent: Mutex<VecDeque<Uuid>>,
}

/// Locks a mutex, taking over a poisoned one: a panicked task's figures are still figures.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Runs one request, recording its latency, or its error.
    async fn timed<T>(
        &self,
        kind: Kind,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Option<T> {
        let at = self.now();
        let sent = Instant::now();
        let result = request.await;
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(value) => {
                lock(&self.samples).push(Sample { at, kind, ms });
                Some(value)
            }
            Err(e) => {
                self.error(kind.name(), e.to_string());
                None
            }
        }
    }

    fn error(&self, what: &'static str, message: String) {
        let at = self.now();
        lock(&self.errors).push((at, what, message));
    }

    fn register(&self, id: Uuid, to_cancel: bool) {
        lock(&self.jobs).insert(
            id,
            Tracked {
                acknowledged: false,
                to_cancel,
                runs: 0,
            },
        );
    }

    fn acknowledged(&self, id: Uuid) {
        if let Some(job) = lock(&self.jobs).get_mut(&id) {
            job.acknowledged = true;
        }
        let now = self.now();
        lock(&self.acknowledgements).push(now);
        let mut recent = lock(&self.recent);
        recent.push_back(id);
        if recent.len() > 20 {
            recent.pop_front();
        }
    }

    /// Acknowledged jobs that must run and have not completed yet.
    fn backlog(&self) -> usize {
        lock(&self.jobs)
            .values()
            .filter(|j| j.acknowledged && !j.to_cancel && j.runs == 0)
            .count()
    }
}

/// The command jobs of the run: append the job's id to `marks` when done, after a short
/// sleep for some of them (so that worker kills find jobs running).
fn marking_job(id: Uuid, marks: &Path, tag: &str, sleep: bool) -> api::SubmitJob {
    let mark = format!("echo \"$LQSM_JOB_ID\" >> '{}'", marks.display());
    let script = if sleep {
        format!("sleep 0.05; {mark}")
    } else {
        mark
    };
    let mut job = api::SubmitJob::new(
        "root.default",
        api::JobKind::Command {
            argv: vec!["sh".into(), "-c".into(), script],
            env: Default::default(),
            cwd: None,
        },
    );
    job.id = Some(id);
    job.tags = vec![tag.to_owned()];
    job.resources = Some(api::Resources {
        cpu: Some(0.01),
        memory_mib: Some(1),
        gpu: None,
        custom: Default::default(),
    });
    // A kill -9 of a worker loses its attempts: they are run again, as a production
    // user's jobs would be with retries.
    job.retry = Some(api::RetrySpec {
        max_attempts: Some(5),
        backoff_base_ms: Some(1000),
        backoff_cap_ms: Some(5000),
        jitter: None,
    });
    job
}

/// The `lqsm` binary's processes: this binary, with no `LQSM_*` setting of the caller's
/// environment, logging warnings to `log`.
fn lqsm(log: &Path) -> anyhow::Result<Command> {
    lqsm_under(log, &[])
}

/// This binary, as [`lqsm`], started by `wrapper` (a program and its arguments, given
/// this binary's command line after them) when there is one.
fn lqsm_under(log: &Path, wrapper: &[String]) -> anyhow::Result<Command> {
    let exe = this_program()?;
    let mut cmd = match wrapper.split_first() {
        Some((program, arguments)) => {
            let mut cmd = Command::new(program);
            cmd.args(arguments).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LQSM_") {
            cmd.env_remove(key);
        }
    }
    let log = std::fs::File::create(log)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", log.display()))?;
    cmd.env("RUST_LOG", "warn").stdin(Stdio::null()).stderr(log);
    Ok(cmd)
}

fn this_program() -> anyhow::Result<PathBuf> {
    std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find this program's path to start lqsm: {e}"))
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    signal_pid(child.id(), signal);
}

fn signal_pid(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// The process running `program` among `root` and its descendants (breadth first), from
/// `/proc`: the server under a wrapper, which may start it as a child rather than exec it.
fn process_running(root: u32, program: &Path) -> Option<u32> {
    let runs_program =
        |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == program);
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name in parentheses may hold spaces; the parent follows the state.
        let after_name = &stat[stat.rfind(')')? + 1..];
        after_name.split_whitespace().nth(1)?.parse().ok()
    };
    let processes: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut generation = vec![root];
    while !generation.is_empty() {
        if let Some(&found) = generation.iter().find(|&&pid| runs_program(pid)) {
            return Some(found);
        }
        generation = processes
            .iter()
            .copied()
            .filter(|&pid| parent_of(pid).is_some_and(|parent| generation.contains(&parent)))
            .collect();
    }
    None
}

/// Waits for `child` to exit, at most `timeout`; kills it (SIGKILL) after that. Whether
/// it exited by itself.
async fn stop_within(child: &mut Child, timeout: Duration) -> bool {
    let give_up = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's resident memory, KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Starts `lqsm server` in `dir` on a random loopback port; its URL once it answers
/// `/readyz`.
async fn start_server(
    dir: &Path,
    retention: Duration,
    wrapper: &[String],
) -> anyhow::Result<(Child, String)> {
    let mut cmd = lqsm_under(&dir.join("server.log"), wrapper)?;
    cmd.arg("server")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--retention-ms")
        .arg(retention.as_millis().to_string())
        .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start lqsm server: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("the server's stdout is not piped"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        // A wrapper may print lines of its own before the server's announcement.
        let mut lines = BufReader::new(stdout).lines();
        let announcement = lines.by_ref().map_while(Result::ok).find_map(|line| {
            line.strip_prefix("lqsm server listening on ")
                .map(|url| url.trim().to_owned())
        });
        let _ = tx.send(announcement);
        // Keep reading so the server never writes into a closed pipe.
        for _ in lines {}
    });
    let url = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let Some(url) = url else {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!(
            "lqsm server did not announce its address; see {}",
            dir.join("server.log").display()
        );
    };
    let client = Client::new(&url, None)?;
    let give_up = Instant::now() + Duration::from_secs(60);
    while !client.ready().await.unwrap_or(false) {
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("lqsm server at {url} was not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, url))
}

/// A worker process of the run.
struct Worker {
    name: String,
    child: Child,
}

fn start_worker(dir: &Path, url: &str, number: usize) -> anyhow::Result<Worker> {
    let name = format!("soak-w{number}");
    let mut cmd = lqsm(&dir.join(format!("{name}.log")))?;
    cmd.arg("--server")
        .arg(url)
        .arg("worker")
        .arg("--name")
        .arg(&name)
        .stdout(Stdio::null());
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start lqsm worker: {e}"))?;
    Ok(Worker { name, child })
}

/// Calls `request(n)` every `period` (n counting from 0) until `stop`, each call its own
/// task, so that a slow answer does not hold the next request back (an open loop: the
/// rate stays what it was asked to be). Waits for the calls in flight at the end.
fn every<F, Fut>(
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    request: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut calls = tokio::task::JoinSet::new();
        let mut n = 0;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            calls.spawn(request(n));
            n += 1;
            // Reap finished calls as we go, so the set does not grow over an hour.
            while calls.try_join_next().is_some() {}
        }
        while calls.join_next().await.is_some() {}
    })
}

/// Reads the marks appended since the last call, counting each job's completions.
struct MarksReader {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl MarksReader {
    fn read_new(&mut self, shared: &Arc<Shared>, client: &Client) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut text = String::new();
        let Ok(read) = file.read_to_string(&mut text) else {
            return;
        };
        self.offset += read as u64;
        self.partial.push_str(&text);
        let Some(end) = self.partial.rfind('\n') else {
            return;
        };
        let complete: String = self.partial.drain(..=end).collect();
        let now = shared.now();
        for line in complete.lines() {
            let Ok(id) = line.trim().parse::<Uuid>() else {
                shared.error("marks", format!("a mark that is no job id: {line:?}"));
                continue;
            };
            let runs = {
                let mut jobs = lock(&shared.jobs);
                match jobs.get_mut(&id) {
                    Some(job) if !job.to_cancel => {
                        job.runs += 1;
                        job.runs
                    }
                    _ => {
                        lock(&shared.unexpected_runs).push(id);
                        continue;
                    }
                }
            };
            if runs == 1 {
                lock(&shared.completions).push(now);
            } else if runs == 2 {
                let index = {
                    let mut twice = lock(&shared.twice);
                    twice.push((id, None));
                    twice.len() - 1
                };
                tokio::spawn(classify_twice(shared.clone(), client.clone(), id, index));
            }
        }
    }
}

/// Asks the server, while it still holds the job (within retention), whether an attempt
/// of a job that completed twice was lost: the at-least-once window of a worker killed
/// between its job's end and its report.
async fn classify_twice(shared: Arc<Shared>, client: Client, id: Uuid, index: usize) {
    if let Ok(job) = client.job(id).await {
        let lost = job.attempts.iter().any(|a| {
            matches!(
                a.outcome,
                Some(api::AttemptOutcome::Lost | api::AttemptOutcome::NotReclaimed)
            )
        });
        if let Some(entry) = lock(&shared.twice).get_mut(index) {
            entry.1 = Some(lost);
        }
    }
}

/// Latency percentiles of some requests, ms.
#[derive(Clone, Copy, Default, Serialize)]
struct Latency {
    count: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn latency(mut ms: Vec<f64>) -> Latency {
    if ms.is_empty() {
        return Latency::default();
    }
    ms.sort_unstable_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    Latency {
        count: ms.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: ms[ms.len() - 1],
    }
}

fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

/// The figures of one report interval.
#[derive(Serialize)]
struct Interval {
    /// Its end, s from the start.
    end_s: f64,
    /// The server's resident memory, MiB (median of the interval's samples).
    rss_mib: f64,
    /// Requests answered per second.
    requests_per_s: f64,
    /// Failed requests.
    errors: usize,
    /// All requests together.
    all: Latency,
    /// Per kind of request.
    kinds: BTreeMap<&'static str, Latency>,
    /// Jobs acknowledged, and first completions marked, in the interval.
    acknowledged: usize,
    completed: usize,
    /// Acknowledged jobs not completed yet at its end.
    backlog: usize,
    /// Jobs the server holds (unfinished and within retention), as it said at the end.
    jobs_held: Option<u64>,
    /// The storage engine's journal on disk at the end, MiB: it holds what the engine's
    /// memtables hold, until they are flushed (at the latest when the journal reaches the
    /// engine's cap), so memory that grows with it is the engine's write buffer.
    journal_mib: f64,
    /// Workers the server knows, by state, at the end.
    workers: BTreeMap<String, usize>,
    /// Workers started, stopped by SIGTERM and killed in the interval.
    workers_started: usize,
    workers_stopped: usize,
    workers_killed: usize,
}

fn interval(
    shared: &Shared,
    window: Window,
    cluster: Option<&api::ClusterSummary>,
    data_dir: &Path,
) -> Interval {
    let samples = lock(&shared.samples);
    let inside: Vec<&Sample> = samples.iter().filter(|s| window.contains(s.at)).collect();
    let kinds = Kind::ALL
        .iter()
        .map(|k| {
            let ms = inside
                .iter()
                .filter(|s| s.kind == *k)
                .map(|s| s.ms)
                .collect();
            (k.name(), latency(ms))
        })
        .collect();
    let all = latency(inside.iter().map(|s| s.ms).collect());
    drop(samples);
    let count = |v: &Mutex<Vec<f64>>| lock(v).iter().filter(|t| window.contains(**t)).count();
    let churn = lock(&shared.churn);
    let churned = |what: Churn| {
        churn
            .iter()
            .filter(|(t, c)| *c == what && window.contains(*t))
            .count()
    };
    Interval {
        end_s: window.to_s,
        rss_mib: rss_median(shared, window).unwrap_or(0) as f64 / 1024.0,
        requests_per_s: all.count as f64 / (window.to_s - window.from_s),
        errors: lock(&shared.errors)
            .iter()
            .filter(|(t, _, _)| window.contains(*t))
            .count(),
        all,
        kinds,
        acknowledged: count(&shared.acknowledgements),
        completed: count(&shared.completions),
        backlog: shared.backlog(),
        jobs_held: cluster.map(|c| c.jobs.values().sum()),
        journal_mib: journal_bytes(data_dir) as f64 / (1024.0 * 1024.0),
        workers: cluster
            .map(|c| {
                c.workers
                    .iter()
                    .map(|(state, n)| (state.as_str().to_owned(), *n))
                    .collect()
            })
            .unwrap_or_default(),
        workers_started: churned(Churn::Started),
        workers_stopped: churned(Churn::Stopped),
        workers_killed: churned(Churn::Killed),
    }
}

/// The disk space the embedded store's journal files (`*.jnl` anywhere under
/// `data_dir`) take: allocated blocks, not their length, which the engine sets to its
/// cap up front.
fn journal_bytes(data_dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => journal_bytes(&path),
                Ok(_) if path.extension().is_some_and(|e| e == "jnl") => {
                    entry.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
                }
                _ => 0,
            }
        })
        .sum()
}

/// The median of the server's memory samples in `window`, KiB.
fn rss_median(shared: &Shared, window: Window) -> Option<u64> {
    median(
        lock(&shared.rss)
            .iter()
            .filter(|(t, _)| window.contains(*t))
            .map(|(_, kib)| *kib)
            .collect(),
    )
}

fn interval_line(index: usize, i: &Interval) -> String {
    let kinds: Vec<String> = i
        .kinds
        .iter()
        .map(|(name, l)| format!("{name} {:.1}/{:.1}", l.p50_ms, l.p99_ms))
        .collect();
    format!(
        "{:>6.0}s #{index:<3} rss {:.1} MiB journal {:.1} MiB | {:.1} req/s, {} errors | p50/p99 ms: all {:.1}/{:.1}, {} | jobs +{} done {} backlog {} held {} | workers {:?} +{} term {} kill {}",
        i.end_s,
        i.rss_mib,
        i.journal_mib,
        i.requests_per_s,
        i.errors,
        i.all.p50_ms,
        i.all.p99_ms,
        kinds.join(", "),
        i.acknowledged,
        i.completed,
        i.backlog,
        i.jobs_held.map_or("?".to_owned(), |n| n.to_string()),
        i.workers,
        i.workers_started,
        i.workers_stopped,
        i.workers_killed,
    )
}

/// The end compared with the baseline.
#[derive(Serialize)]
struct Criteria {
    baseline_window: Window,
    final_window: Window,
    /// The server's memory in each window: the median of its samples.
    rss_baseline_mib: f64,
    rss_final_mib: f64,
    /// Final over baseline, minus 1.
    rss_growth: f64,
    max_rss_growth: f64,
    rss_ok: bool,
    /// The p99 latency of all requests in each window, judged: the median of the p99s of
    /// the report intervals inside it, so that one interval in which the machine stalled
    /// (on a shared machine, a compiler's burst) does not decide alone.
    p99_baseline_ms: f64,
    p99_final_ms: f64,
    p99_ratio: f64,
    max_p99_ratio: f64,
    p99_slack_ms: f64,
    p99_ok: bool,
    /// The p99 of all the window's requests pooled, reported, not judged.
    pooled_p99_baseline_ms: f64,
    pooled_p99_final_ms: f64,
    /// Pooled p99 per kind of request, baseline then final (reported, not judged: a few
    /// hundred samples a window make each kind's p99 a handful of requests).
    p99_by_kind: BTreeMap<&'static str, (f64, f64)>,
}

/// The median, the mean of the middle two for an even count.
fn median_f64(mut values: Vec<f64>) -> Option<f64> {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn criteria(
    shared: &Shared,
    intervals: &[Interval],
    report_every: f64,
    args: &SoakArgs,
    baseline: Window,
    last: Window,
) -> Criteria {
    let rss = |w: Window| rss_median(shared, w).unwrap_or(0) as f64 / 1024.0;
    let (rss_baseline_mib, rss_final_mib) = (rss(baseline), rss(last));
    let rss_growth = if rss_baseline_mib > 0.0 {
        rss_final_mib / rss_baseline_mib - 1.0
    } else {
        f64::INFINITY
    };
    // Intervals wholly inside the window (a small tolerance for float arithmetic).
    let p99_of_intervals = |w: Window| {
        median_f64(
            intervals
                .iter()
                .filter(|i| i.end_s - report_every >= w.from_s - 1e-6 && i.end_s <= w.to_s + 1e-6)
                .filter(|i| i.all.count > 0)
                .map(|i| i.all.p99_ms)
                .collect(),
        )
        .unwrap_or(0.0)
    };
    let (p99_baseline_ms, p99_final_ms) = (p99_of_intervals(baseline), p99_of_intervals(last));
    let p99_ratio = if p99_baseline_ms > 0.0 {
        p99_final_ms / p99_baseline_ms
    } else {
        f64::INFINITY
    };
    let samples = lock(&shared.samples);
    let pooled = |w: Window, kind: Option<Kind>| {
        latency(
            samples
                .iter()
                .filter(|s| w.contains(s.at) && kind.is_none_or(|k| s.kind == k))
                .map(|s| s.ms)
                .collect(),
        )
        .p99_ms
    };
    let p99_by_kind = Kind::ALL
        .iter()
        .map(|k| {
            (
                k.name(),
                (pooled(baseline, Some(*k)), pooled(last, Some(*k))),
            )
        })
        .collect();
    Criteria {
        baseline_window: baseline,
        final_window: last,
        rss_baseline_mib,
        rss_final_mib,
        rss_growth,
        max_rss_growth: args.max_rss_growth,
        rss_ok: rss_baseline_mib > 0.0 && rss_growth <= args.max_rss_growth,
        p99_baseline_ms,
        p99_final_ms,
        p99_ratio,
        max_p99_ratio: args.max_p99_ratio,
        p99_slack_ms: args.p99_slack_ms,
        p99_ok: p99_baseline_ms > 0.0
            && (p99_ratio <= args.max_p99_ratio
                || p99_final_ms <= p99_baseline_ms + args.p99_slack_ms),
        pooled_p99_baseline_ms: pooled(baseline, None),
        pooled_p99_final_ms: pooled(last, None),
        p99_by_kind,
    }
}

/// What the run did in all.
#[derive(Serialize)]
struct Totals {
    requests: usize,
    errors: usize,
    /// The first few errors, as the client reported them.
    first_errors: Vec<String>,
    /// Jobs submitted to run, and acknowledged.
    jobs_submitted: usize,
    jobs_acknowledged: usize,
    /// Jobs submitted to be cancelled while they waited (all cancelled, or an error).
    jobs_cancelled: usize,
    /// Acknowledged jobs that completed (marked by their command).
    jobs_completed: usize,
    /// Acknowledged jobs that never completed within the drain.
    jobs_lost: usize,
    /// Jobs that completed more than once.
    completed_twice: usize,
    /// Of those, the ones with a lost attempt (a worker killed between the job's end and
    /// its report: the at-least-once window) …
    completed_twice_after_a_lost_attempt: usize,
    /// … and the others, or unknown: each one is a defect to explain.
    completed_twice_otherwise: usize,
    /// Jobs that ran though cancelled, or were never acknowledged.
    unexpected_runs: usize,
    workers_started: usize,
    workers_stopped: usize,
    workers_killed: usize,
    /// Workers that did not stop within 60 s of SIGTERM.
    workers_stop_timeouts: usize,
    /// What the server said of some of the lost jobs after the drain (state, then each
    /// attempt's worker and outcome): what a failed run leaves to explain it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lost_jobs_seen: Vec<String>,
}

/// The whole report of a soak run.
#[derive(Serialize)]
struct Report {
    duration_s: f64,
    report_every_s: f64,
    load: f64,
    workers: usize,
    churn_every_s: f64,
    retention_s: f64,
    intervals: Vec<Interval>,
    totals: Totals,
    criteria: Criteria,
    passed: bool,
    /// Why not, when it did not pass.
    failures: Vec<String>,
    /// The run's directory (data, logs, marks), when kept.
    kept_dir: Option<PathBuf>,
}

/// Starts the load: one open-loop generator per kind of request, at `load` times the
/// base rates. The generators stop when `stop` turns true.
fn start_load(
    shared: &Arc<Shared>,
    client: &Client,
    marks: &Path,
    tag: &str,
    load: f64,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let period = |per_second: f64| Duration::from_secs_f64(1.0 / (per_second * load));
    let mut generators = Vec::new();
    // Single submissions, 4/s: half end at once, half after 50 ms.
    {
        let (shared, client, marks, tag) = (
            shared.clone(),
            client.clone(),
            marks.to_owned(),
            tag.to_owned(),
        );
        generators.push(every(period(4.0), stop.clone(), move |n| {
            let (shared, client) = (shared.clone(), client.clone());
            let job = marking_job(Uuid::now_v7(), &marks, &tag, n % 2 == 1);
            async move {
                let id = job.id.unwrap_or_default();
                shared.register(id, false);
                if let Some(answer) = shared.timed(Kind::Submit, client.submit(&job)).await {
                    if answer.id == id {
                        shared.acknowledged(id);
                    } else {
                        shared.error(
                            Kind::Submit.name(),
                            format!("submitted {id}, answered {}", answer.id),
                        );
                    }
                }
            }
        }));
    }
    // Batches of 10, one every 2 s.
    {
        let (shared, client, marks, tag) = (
            shared.clone(),
            client.clone(),
            marks.to_owned(),
            tag.to_owned(),
        );
        generators.push(every(period(0.5), stop.clone(), move |_| {
            let (shared, client) = (shared.clone(), client.clone());
            let batch: Vec<api::SubmitJob> = (0..10)
                .map(|i| marking_job(Uuid::now_v7(), &marks, &tag, i % 2 == 1))
                .collect();
            async move {
                for job in &batch {
                    shared.register(job.id.unwrap_or_default(), false);
                }
                let Some(answer) = shared
                    .timed(Kind::SubmitBatch, client.submit_batch(&batch))
                    .await
                else {
                    return;
                };
                for (job, result) in batch.iter().zip(&answer.results) {
                    match (&result.error, result.id) {
                        (None, Some(id)) if Some(id) == job.id => shared.acknowledged(id),
                        (Some(e), _) => shared.error(Kind::SubmitBatch.name(), e.message.clone()),
                        (None, other) => shared.error(
                            Kind::SubmitBatch.name(),
                            format!("a batch answer named {other:?} for {:?}", job.id),
                        ),
                    }
                }
            }
        }));
    }
    // A job delayed by 10 minutes, cancelled 2 s later while it waits; 1/s.
    {
        let (shared, client, marks, tag) = (
            shared.clone(),
            client.clone(),
            marks.to_owned(),
            tag.to_owned(),
        );
        generators.push(every(period(1.0), stop.clone(), move |_| {
            let (shared, client) = (shared.clone(), client.clone());
            let mut job = marking_job(Uuid::now_v7(), &marks, &tag, false);
            job.delay_ms = Some(600_000);
            async move {
                let id = job.id.unwrap_or_default();
                shared.register(id, true);
                if shared
                    .timed(Kind::Submit, client.submit(&job))
                    .await
                    .is_none()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Some(view) = shared.timed(Kind::Cancel, client.cancel(id)).await
                    && view.state != api::JobState::Cancelled
                {
                    shared.error(
                        Kind::Cancel.name(),
                        format!("cancelled {id}, which is {} now", view.state.as_str()),
                    );
                }
            }
        }));
    }
    // Job listings with filters, 2/s, in turn: waiting jobs of a queue newest first,
    // the run's tag, finished jobs, the whole tree's oldest.
    {
        let (shared, client, tag) = (shared.clone(), client.clone(), tag.to_owned());
        generators.push(every(period(2.0), stop.clone(), move |n| {
            let (shared, client) = (shared.clone(), client.clone());
            let (filter, limit) = match n % 4 {
                0 => (
                    JobFilter {
                        queue: Some("root.default".into()),
                        state: Some(api::JobState::Pending),
                        order: api::ListOrder::Newest,
                        ..JobFilter::default()
                    },
                    50,
                ),
                1 => (
                    JobFilter {
                        tag: Some(tag.clone()),
                        order: api::ListOrder::Newest,
                        ..JobFilter::default()
                    },
                    100,
                ),
                2 => (
                    JobFilter {
                        state: Some(api::JobState::Succeeded),
                        order: api::ListOrder::Newest,
                        ..JobFilter::default()
                    },
                    100,
                ),
                _ => (
                    JobFilter {
                        queue: Some("root".into()),
                        ..JobFilter::default()
                    },
                    20,
                ),
            };
            async move {
                shared
                    .timed(Kind::ListJobs, client.list_jobs(&filter, None, Some(limit)))
                    .await;
            }
        }));
    }
    // The queue tree, 1/s.
    {
        let (shared, client) = (shared.clone(), client.clone());
        generators.push(every(period(1.0), stop.clone(), move |_| {
            let (shared, client) = (shared.clone(), client.clone());
            async move {
                shared.timed(Kind::QueueTree, client.queues()).await;
            }
        }));
    }
    // One recent job, 2/s.
    {
        let (shared, client) = (shared.clone(), client.clone());
        generators.push(every(period(2.0), stop.clone(), move |n| {
            let (shared, client) = (shared.clone(), client.clone());
            async move {
                let id = {
                    let recent = lock(&shared.recent);
                    if recent.is_empty() {
                        return;
                    }
                    recent[n as usize % recent.len()]
                };
                shared.timed(Kind::JobGet, client.job(id)).await;
            }
        }));
    }
    generators
}

/// Replaces a worker every `every`: a new one joins, then the oldest leaves, by kill -9
/// and SIGTERM in turn. Returns the workers running when `stop` turns true.
fn start_churn(
    shared: Arc<Shared>,
    dir: PathBuf,
    url: String,
    mut workers: VecDeque<Worker>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(VecDeque<Worker>, usize)> {
    tokio::spawn(async move {
        let mut stopping: Vec<tokio::task::JoinHandle<bool>> = Vec::new();
        let ended = |stopping: Vec<tokio::task::JoinHandle<bool>>| async move {
            let mut timeouts = 0;
            for stop in stopping {
                if !stop.await.unwrap_or(false) {
                    timeouts += 1;
                }
            }
            timeouts
        };
        if every.is_zero() {
            let _ = stop.wait_for(|s| *s).await;
            return (workers, 0);
        }
        let mut number = workers.len();
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let stopped = tokio::select! {
                _ = ticks.tick() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopped {
                return (workers, ended(stopping).await);
            }
            match start_worker(&dir, &url, number) {
                Ok(worker) => {
                    workers.push_back(worker);
                    lock(&shared.churn).push((shared.now(), Churn::Started));
                }
                Err(e) => shared.error("worker", format!("{e:#}")),
            }
            let kill = number % 2 == 1;
            number += 1;
            let Some(mut oldest) = workers.pop_front() else {
                continue;
            };
            if kill {
                let _ = oldest.child.kill();
                let _ = oldest.child.wait();
                lock(&shared.churn).push((shared.now(), Churn::Killed));
            } else {
                signal(&oldest.child, nix::sys::signal::Signal::SIGTERM);
                // It finishes what it runs, then exits: waited for off this loop, which
                // keeps time.
                let shared = shared.clone();
                stopping.push(tokio::spawn(async move {
                    let by_itself = stop_within(&mut oldest.child, Duration::from_secs(60)).await;
                    lock(&shared.churn).push((shared.now(), Churn::Stopped));
                    if !by_itself {
                        shared.error(
                            "worker",
                            format!("worker {} did not stop within 60 s of SIGTERM", oldest.name),
                        );
                    }
                    by_itself
                }));
            }
        }
    })
}

/// Writes a line of progress where it does not mix with the report: stdout for people,
/// stderr when stdout carries JSON.
fn progress(output: Output, line: &str) {
    #[allow(clippy::print_stdout, clippy::print_stderr)] // Printing is this command's job.
    {
        match output {
            Output::Human => println!("{line}"),
            Output::Json => eprintln!("{line}"),
        }
    }
}

/// The default windows: minutes 8 to 12 and 56 to 60 of an hour, in proportion.
fn default_windows(duration: Duration) -> (Window, Window) {
    let d = duration.as_secs_f64();
    (
        Window {
            from_s: d * 8.0 / 60.0,
            to_s: d * 12.0 / 60.0,
        },
        Window {
            from_s: d * 56.0 / 60.0,
            to_s: d,
        },
    )
}

/// Runs the soak; exit code 0 when it passed, 1 when it did not.
pub async fn run(args: &SoakArgs, output: Output) -> anyhow::Result<u8> {
    anyhow::ensure!(
        args.load.is_finite() && args.load > 0.0,
        "--load must be above 0"
    );
    anyhow::ensure!(args.workers > 0, "--workers must be at least 1");
    anyhow::ensure!(
        !args.report_every.is_zero() && args.report_every <= args.duration,
        "--report-every must be above 0 and at most --duration"
    );
    let (default_baseline, default_final) = default_windows(args.duration);
    let baseline = args.baseline_window.unwrap_or(default_baseline);
    let last = args.final_window.unwrap_or(default_final);
    let d = args.duration.as_secs_f64();
    anyhow::ensure!(
        baseline.to_s <= d && last.to_s <= d + 1e-9,
        "the windows must lie within --duration"
    );
    let dir = tempfile::TempDir::with_prefix("lqsm-soak-")?;
    let marks = dir.path().join("marks");
    std::fs::File::create(&marks)?;
    let wrapper: Vec<String> = args
        .server_wrapper
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let (mut server, url) = start_server(dir.path(), args.retention, &wrapper).await?;
    // Under a wrapper, the `lqsm` process is the one measured and stopped; the wrapper
    // ends when it does.
    let server_pid = if wrapper.is_empty() {
        server.id()
    } else {
        let program = this_program()?;
        process_running(server.id(), &program).ok_or_else(|| {
            anyhow::anyhow!(
                "no process runs {} under the server's wrapper",
                program.display()
            )
        })?
    };
    progress(
        output,
        &format!(
            "soak: lqsm server pid {server_pid} at {url}, data and logs in {}; {} of load",
            dir.path().display(),
            humantime::format_duration(args.duration)
        ),
    );
    let client = Client::new(&url, None)?;
    let mut workers = VecDeque::new();
    for number in 0..args.workers {
        workers.push_back(start_worker(dir.path(), &url, number)?);
    }
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let active = client
            .cluster()
            .await
            .ok()
            .and_then(|c| c.workers.get(&api::WorkerState::Active).copied())
            .unwrap_or(0);
        if active >= args.workers {
            break;
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "only {active} of {} workers became active within 60 s; see the logs in {}",
            args.workers,
            dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let shared = Arc::new(Shared {
        started: Instant::now(),
        samples: Mutex::default(),
        errors: Mutex::default(),
        rss: Mutex::default(),
        jobs: Mutex::default(),
        completions: Mutex::default(),
        acknowledgements: Mutex::default(),
        twice: Mutex::default(),
        unexpected_runs: Mutex::default(),
        churn: Mutex::default(),
        recent: Mutex::default(),
    });
    let tag = format!("soak-{}", Uuid::now_v7().simple());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (end_tx, end_rx) = tokio::sync::watch::channel(false);
    let generators = start_load(&shared, &client, &marks, &tag, args.load, &stop_rx);
    let churn = start_churn(
        shared.clone(),
        dir.path().to_owned(),
        url.clone(),
        workers,
        args.churn_every,
        stop_rx.clone(),
    );
    // Memory every 2 s (at least 5 samples an interval), and the marks every second,
    // until everything has ended.
    let rss_every = (args.report_every / 5).min(Duration::from_secs(2));
    let sampler = {
        let (shared, mut end) = (shared.clone(), end_rx.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(rss_every);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = end.wait_for(|e| *e) => return,
                }
                if let Some(kib) = rss_kib(server_pid) {
                    let now = shared.now();
                    lock(&shared.rss).push((now, kib));
                }
            }
        })
    };
    let marks_reader = {
        let (shared, client, mut end) = (shared.clone(), client.clone(), end_rx.clone());
        let mut reader = MarksReader {
            path: marks.clone(),
            offset: 0,
            partial: String::new(),
        };
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = end.wait_for(|e| *e) => break,
                }
                reader.read_new(&shared, &client);
            }
            reader.read_new(&shared, &client);
        })
    };

    // One line per interval while the load runs.
    let mut intervals = Vec::new();
    let report_every = args.report_every.as_secs_f64();
    let count = (d / report_every).round().max(1.0) as usize;
    for index in 1..=count {
        let end = shared.started + Duration::from_secs_f64(report_every * index as f64);
        tokio::time::sleep_until(end.into()).await;
        let cluster = client.cluster().await.ok();
        let window = Window {
            from_s: report_every * (index - 1) as f64,
            to_s: report_every * index as f64,
        };
        let figures = interval(&shared, window, cluster.as_ref(), &dir.path().join("data"));
        progress(output, &interval_line(index, &figures));
        intervals.push(figures);
    }
    let load_seconds = shared.now();
    let _ = stop_tx.send(true);
    for generator in generators {
        let _ = generator.await;
    }
    let (mut workers, workers_stop_timeouts) = churn
        .await
        .map_err(|e| anyhow::anyhow!("the worker churn task failed: {e}"))?;

    // The backlog drains with the workers left running.
    progress(
        output,
        &format!(
            "soak: load stopped after {load_seconds:.0} s; {} acknowledged jobs to complete",
            shared.backlog()
        ),
    );
    let drain_until = Instant::now() + args.drain_timeout;
    while shared.backlog() > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Time for a job left behind by a killed worker to show a second completion.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lost_jobs_seen = describe_lost_jobs(&shared, &client).await;
    let _ = end_tx.send(true);
    let _ = marks_reader.await;
    let _ = sampler.await;
    // Completed-twice lookups still in flight.
    let lookups_until = Instant::now() + Duration::from_secs(10);
    while lock(&shared.twice).iter().any(|(_, lost)| lost.is_none())
        && Instant::now() < lookups_until
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for worker in &workers {
        signal(&worker.child, nix::sys::signal::Signal::SIGTERM);
    }
    for worker in &mut workers {
        stop_within(&mut worker.child, Duration::from_secs(30)).await;
    }
    signal_pid(server_pid, nix::sys::signal::Signal::SIGTERM);
    // A profiler wrapping the server may take a while to write its data out.
    let server_stop_timeout = if wrapper.is_empty() { 30 } else { 300 };
    stop_within(&mut server, Duration::from_secs(server_stop_timeout)).await;

    let criteria = criteria(&shared, &intervals, report_every, args, baseline, last);
    let totals = Totals {
        lost_jobs_seen,
        ..totals(&shared, workers_stop_timeouts)
    };
    let mut failures = Vec::new();
    if !criteria.rss_ok {
        failures.push(format!(
            "server memory grew {:.1}% from {:.1} MiB to {:.1} MiB (limit {:.0}%)",
            criteria.rss_growth * 100.0,
            criteria.rss_baseline_mib,
            criteria.rss_final_mib,
            args.max_rss_growth * 100.0
        ));
    }
    if !criteria.p99_ok {
        failures.push(format!(
            "p99 latency went from {:.1} ms to {:.1} ms ({:.2}x, limit {:.2}x)",
            criteria.p99_baseline_ms, criteria.p99_final_ms, criteria.p99_ratio, args.max_p99_ratio
        ));
    }
    if totals.errors > 0 {
        failures.push(format!("{} requests failed", totals.errors));
    }
    if totals.jobs_lost > 0 {
        failures.push(format!(
            "{} acknowledged jobs never completed; the server's view of some: {}",
            totals.jobs_lost,
            totals.lost_jobs_seen.join("; ")
        ));
    }
    if totals.completed_twice_otherwise > 0 {
        failures.push(format!(
            "{} jobs completed twice without a lost attempt",
            totals.completed_twice_otherwise
        ));
    }
    if totals.unexpected_runs > 0 {
        failures.push(format!(
            "{} cancelled or unacknowledged jobs ran",
            totals.unexpected_runs
        ));
    }
    if totals.jobs_acknowledged == 0 || totals.jobs_completed == 0 {
        failures.push("no job was acknowledged and completed: the run measured nothing".into());
    }
    let passed = failures.is_empty();
    let kept_dir = if args.keep_dir || !passed {
        Some(dir.keep())
    } else {
        None
    };
    let report = Report {
        duration_s: d,
        report_every_s: report_every,
        load: args.load,
        workers: args.workers,
        churn_every_s: args.churn_every.as_secs_f64(),
        retention_s: args.retention.as_secs_f64(),
        intervals,
        totals,
        criteria,
        passed,
        failures,
        kept_dir,
    };
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&report))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    print(output, &summary(&report), &report);
    Ok(if report.passed { 0 } else { 1 })
}

/// The server's view of up to 10 acknowledged jobs that never completed.
async fn describe_lost_jobs(shared: &Shared, client: &Client) -> Vec<String> {
    let lost: Vec<Uuid> = lock(&shared.jobs)
        .iter()
        .filter(|(_, j)| j.acknowledged && !j.to_cancel && j.runs == 0)
        .map(|(id, _)| *id)
        .take(10)
        .collect();
    let mut seen = Vec::with_capacity(lost.len());
    for id in lost {
        let text = match client.job(id).await {
            Ok(job) => {
                let attempts: Vec<String> = job
                    .attempts
                    .iter()
                    .map(|a| {
                        let outcome = a
                            .outcome
                            .map_or_else(|| "current".to_owned(), |o| o.to_string());
                        format!("#{} on {}: {outcome}", a.number, a.worker)
                    })
                    .collect();
                format!("{id}: {} [{}]", job.state, attempts.join(", "))
            }
            Err(e) => format!("{id}: {e}"),
        };
        seen.push(text);
    }
    seen
}

fn totals(shared: &Shared, workers_stop_timeouts: usize) -> Totals {
    let errors = lock(&shared.errors);
    let jobs = lock(&shared.jobs);
    let to_run = || jobs.values().filter(|j| !j.to_cancel);
    let twice = lock(&shared.twice);
    let churn = lock(&shared.churn);
    let churned = |what: Churn| churn.iter().filter(|(_, c)| *c == what).count();
    Totals {
        requests: lock(&shared.samples).len() + errors.len(),
        errors: errors.len(),
        first_errors: errors
            .iter()
            .take(10)
            .map(|(t, what, message)| format!("{t:.1} s, {what}: {message}"))
            .collect(),
        jobs_submitted: to_run().count(),
        jobs_acknowledged: to_run().filter(|j| j.acknowledged).count(),
        jobs_cancelled: jobs.values().filter(|j| j.to_cancel).count(),
        jobs_completed: to_run().filter(|j| j.acknowledged && j.runs > 0).count(),
        jobs_lost: to_run().filter(|j| j.acknowledged && j.runs == 0).count(),
        completed_twice: twice.len(),
        completed_twice_after_a_lost_attempt: twice
            .iter()
            .filter(|(_, lost)| *lost == Some(true))
            .count(),
        completed_twice_otherwise: twice.iter().filter(|(_, lost)| *lost != Some(true)).count(),
        unexpected_runs: lock(&shared.unexpected_runs).len(),
        workers_started: churned(Churn::Started),
        workers_stopped: churned(Churn::Stopped),
        workers_killed: churned(Churn::Killed),
        workers_stop_timeouts,
        lost_jobs_seen: Vec::new(),
    }
}

fn summary(report: &Report) -> String {
    let c = &report.criteria;
    let t = &report.totals;
    let mut text = format!(
        "soak {}: {:.0} s of load, retention {:.0} s, {} workers replaced every {:.0} s\n\
         memory: {:.1} MiB in {:.0}..{:.0} s, {:.1} MiB in {:.0}..{:.0} s: {:+.1}% (limit {:+.0}%) {}\n\
         p99 of all requests, median of the intervals': {:.1} ms, then {:.1} ms: {:.2}x (limit {:.2}x{}) {}\n\
         \x20 pooled over each window: {:.1} ms, then {:.1} ms\n",
        if report.passed { "PASSED" } else { "FAILED" },
        report.duration_s,
        report.retention_s,
        report.workers,
        report.churn_every_s,
        c.rss_baseline_mib,
        c.baseline_window.from_s,
        c.baseline_window.to_s,
        c.rss_final_mib,
        c.final_window.from_s,
        c.final_window.to_s,
        c.rss_growth * 100.0,
        c.max_rss_growth * 100.0,
        if c.rss_ok { "ok" } else { "FAILED" },
        c.p99_baseline_ms,
        c.p99_final_ms,
        c.p99_ratio,
        c.max_p99_ratio,
        if c.p99_slack_ms > 0.0 {
            format!(", or within {:.0} ms", c.p99_slack_ms)
        } else {
            String::new()
        },
        if c.p99_ok { "ok" } else { "FAILED" },
        c.pooled_p99_baseline_ms,
        c.pooled_p99_final_ms,
    );
    for (kind, (before, after)) in &c.p99_by_kind {
        text.push_str(&format!(
            "  p99 {kind}: {before:.1} ms, then {after:.1} ms\n"
        ));
    }
    text.push_str(&format!(
        "requests: {} ({} errors)\n\
         jobs: {} submitted, {} acknowledged, {} completed, {} lost, {} completed twice \
         ({} after a lost attempt, {} otherwise); {} submitted and cancelled while waiting, \
         {} unexpected runs\n\
         workers: {} started, {} stopped by SIGTERM ({} not within 60 s), {} killed with kill -9\n",
        t.requests,
        t.errors,
        t.jobs_submitted,
        t.jobs_acknowledged,
        t.jobs_completed,
        t.jobs_lost,
        t.completed_twice,
        t.completed_twice_after_a_lost_attempt,
        t.completed_twice_otherwise,
        t.jobs_cancelled,
        t.unexpected_runs,
        t.workers_started,
        t.workers_stopped,
        t.workers_stop_timeouts,
        t.workers_killed,
    ));
    for e in &t.first_errors {
        text.push_str(&format!("  error: {e}\n"));
    }
    for f in &report.failures {
        text.push_str(&format!("FAILED: {f}\n"));
    }
    if let Some(dir) = &report.kept_dir {
        text.push_str(&format!("data, logs and marks kept in {}\n", dir.display()));
    }
    text
}

/// One row per interval: memory, rates, and p50/p99 of all requests and of each kind.
fn csv(report: &Report) -> String {
    let mut header = vec![
        "end_s".to_owned(),
        "rss_mib".into(),
        "requests_per_s".into(),
        "errors".into(),
        "acknowledged".into(),
        "completed".into(),
        "backlog".into(),
        "jobs_held".into(),
        "journal_mib".into(),
        "all_p50_ms".into(),
        "all_p99_ms".into(),
    ];
    for kind in Kind::ALL {
        header.push(format!("{}_p50_ms", kind.name()));
        header.push(format!("{}_p99_ms", kind.name()));
    }
    let mut text = header.join(",") + "\n";
    for i in &report.intervals {
        let mut row = vec![
            format!("{:.0}", i.end_s),
            format!("{:.1}", i.rss_mib),
            format!("{:.2}", i.requests_per_s),
            i.errors.to_string(),
            i.acknowledged.to_string(),
            i.completed.to_string(),
            i.backlog.to_string(),
            i.jobs_held.map(|n| n.to_string()).unwrap_or_default(),
            format!("{:.1}", i.journal_mib),
            format!("{:.2}", i.all.p50_ms),
            format!("{:.2}", i.all.p99_ms),
        ];
        for kind in Kind::ALL {
            let l = i.kinds.get(kind.name()).copied().unwrap_or_default();
            row.push(format!("{:.2}", l.p50_ms));
            row.push(format!("{:.2}", l.p99_ms));
        }
        text.push_str(&(row.join(",") + "\n"));
    }
    text
}
