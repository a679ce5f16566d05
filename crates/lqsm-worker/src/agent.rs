//! The poll loop: one task owns the worker's state (attempts, reports, GPU pool) and
//! talks to the server; attempts run in their own tasks and report back through a
//! channel.
//!
//! One poll is current at a time. It carries the heartbeat, every attempt running
//! and every report not yet acknowledged, and waits for work. Reports stay until a
//! poll that carried them is answered, so a network error or a server restart loses
//! none. When an attempt finishes during a long-poll, the poll is replaced by a new
//! one (the server answers the old one empty), so results reach the server at once.

use crate::cgroup::MemoryLimits;
use crate::context::AttemptContext;
use crate::executor::{self, CommandSpec, Ending, ExecOptions, LiveOutput, Stop};
use crate::handlers::{Call, CatchPanic, Handler, HandlerFuture, HandlerResult, panic_message};
use crate::{RunSummary, WorkerError};
use lqsm_api as api;
use lqsm_client::{Client, ClientError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use uuid::Uuid;

/// An attempt: its job and fencing token.
pub(crate) type AttemptKey = (Uuid, u64);

/// How many attempts the dedupe memory remembers beyond those running.
const REMEMBERED_ATTEMPTS: usize = 100_000;

/// Polls replaced but not yet answered; beyond this a finished attempt waits for the
/// current poll instead of replacing it.
const MAX_REPLACED_POLLS: usize = 4;

/// The oldest protocol this worker speaks, offered to a leader that refuses the current
/// one: 5 (`ending`; its polls then name no registration).
const OLDEST_PROTOCOL_SPOKEN: u32 = 5;

/// The protocol from which a report may carry `usage` and a failed one
/// `memory_exceeded`: an older server refuses both as unknown fields.
const USAGE_PROTOCOL: u32 = 7;

/// How often the new output of running attempts is uploaded (protocol 8): at most once
/// per this period, in one call for every attempt that wrote something since.
const LOG_UPLOAD_PERIOD: Duration = Duration::from_secs(1);

/// Most bytes of output one upload carries (the server takes bodies of 16 MiB by
/// default): an attempt that wrote more since its last upload sends its end.
const LOG_UPLOAD_BYTES: usize = 4 * 1024 * 1024;

/// How long reports may take to reach the server once everything has stopped.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// How long a kill-now waits for the killed attempts to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// The reason a fenced attempt is stopped with; such an attempt is not reported.
const FENCED: &str = "stopped by its worker: the server could not be reached for too long";

/// How long after the send time of its last answered call a worker cut off from
/// the server stops its attempts (fences itself), for a server heartbeat timeout of
/// `heartbeat_timeout`. The server declares the worker lost no earlier than its
/// heartbeat timeout after it received that call, which was after it was sent: so
/// fencing at the timeout less a margin ends the attempts before they can be run
/// elsewhere. The margin (a fifth of the timeout, at least 1 s and at most 3 s, and
/// never more than half of it) covers killing and reaping them on a loaded machine.
pub(crate) fn fence_after(heartbeat_timeout: Duration) -> Duration {
    let margin = (heartbeat_timeout / 5)
        .clamp(Duration::from_secs(1), Duration::from_secs(3))
        .min(heartbeat_timeout / 2);
    heartbeat_timeout - margin
}

/// The longest wait a worker asks of a long-poll when it fences after `fence`:
/// a quarter of it, so that a healthy worker, whose last answered poll may be one
/// whole long-poll old while the next one waits, is answered well before it would
/// fence.
pub(crate) fn longest_poll_wait(fence: Duration) -> Duration {
    fence / 4
}

/// Timing and limits the loop works with.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub poll_wait: Duration,
    pub cut_short_after: Duration,
    pub kill_grace: Duration,
    pub log_cap: usize,
    pub drain_grace: Duration,
    pub backoff_cap: Duration,
    pub serves_commands: bool,
    /// The program that supervises command attempts (see `crate::supervisor`).
    pub supervisor: Option<std::path::PathBuf>,
    /// The signal a command gets at its soft timeout.
    pub soft_timeout_signal: nix::sys::signal::Signal,
    /// The user commands run as (the worker runs as root).
    pub run_as: Option<crate::config::RunAs>,
    /// Whether the supervisor kills a command attempt (without a cgroup) whose
    /// processes' resident memory exceeds its request (`WorkerConfig::memory_check`).
    pub memory_check: bool,
}

/// A running attempt.
struct Running {
    /// Orders to the attempt's task.
    stop: watch::Sender<Stop>,
    /// GPU indices it holds, back to the pool when it ends.
    gpus: Vec<u32>,
    /// When it started, ms since the epoch (reported with its end).
    started_at_ms: u64,
    /// Where its progress (`update_state`) is read from.
    progress: Progress,
    /// Its output as it grows (commands), uploaded while it runs.
    output: Option<LiveOutput>,
    /// How much of `output` the server took: uploads resume from here.
    uploaded: u64,
    /// The server refused its output (the attempt is not current): no more uploads.
    upload_refused: bool,
}

/// Where a running attempt's reported state comes from.
enum Progress {
    /// A function handler's context.
    Handler(Arc<AttemptContext>),
    /// The file a command writes (`LQSM_PROGRESS_FILE`).
    File(std::path::PathBuf),
    /// Nowhere (no private directory for the file).
    None,
}

/// Makes a command's progress file, empty, owned by the user the command runs as (mode
/// 0600), so that the command may write it while the directory stays the worker's.
fn progress_file_for(file: &std::path::Path, user: &crate::config::RunAs) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    std::os::unix::fs::fchown(&created, Some(user.uid), Some(user.gid))
}

/// The most bytes of JSON a progress report may hold (the server keeps no more).
pub const MAX_PROGRESS_BYTES: usize = 4096;

impl Progress {
    /// The state last reported: a command's file as JSON, or as a string when it is not
    /// JSON; nothing when the file is empty, absent, a link, or over
    /// [`MAX_PROGRESS_BYTES`] (then the server would not keep it).
    fn read(&self) -> Option<serde_json::Value> {
        let value = match self {
            Progress::None => return None,
            Progress::Handler(context) => context.progress()?,
            Progress::File(path) => {
                use std::io::Read;
                use std::os::unix::fs::OpenOptionsExt;
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    // Never through a link, and never waiting on a pipe put there.
                    .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                    .open(path)
                    .ok()?;
                let mut bytes = Vec::with_capacity(256);
                file.take(MAX_PROGRESS_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
                    .ok()?;
                let text = String::from_utf8_lossy(&bytes);
                let text = text.trim();
                if text.is_empty() || bytes.len() > MAX_PROGRESS_BYTES {
                    return None;
                }
                serde_json::from_str(text)
                    .unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
            }
        };
        let size = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
        (size <= MAX_PROGRESS_BYTES).then_some(value)
    }
}

/// The exit code by which a command asks to be run again (`EX_TEMPFAIL` of sysexits.h:
/// a temporary failure, to be retried).
pub const RETRY_EXIT_CODE: i32 = 75;

/// An attempt's end, from its task.
pub(crate) struct Done {
    key: AttemptKey,
    result: api::AttemptResult,
    logs: Option<String>,
    /// What a command attempt used, when it was measured.
    usage: Option<api::AttemptUsage>,
}

/// The answer of a call made in the background.
enum Net {
    Registered {
        seq: u64,
        sent_at: Instant,
        result: Result<api::WorkerView, ClientError>,
    },
    Polled {
        seq: u64,
        sent_at: Instant,
        /// Reports numbered below this were in the poll.
        carried_below: u64,
        /// The registration the poll named.
        registration: Option<u64>,
        result: Result<api::PollResponse, ClientError>,
    },
    Drained(Result<api::WorkerView, ClientError>),
    /// An upload of running attempts' output was answered: each attempt sent with the
    /// offset its chunk reached.
    LogsUploaded {
        sent: Vec<(AttemptKey, u64)>,
        result: Result<api::LogChunksAnswer, ClientError>,
    },
}

/// The call the loop waits on.
struct Current {
    seq: u64,
    sent_at: Instant,
    /// A poll that waits for work (as opposed to a registration or a quick poll).
    long_poll: bool,
}

/// Finished attempts not yet acknowledged, numbered in order of finishing.
#[derive(Default)]
struct Reports {
    items: Vec<api::FinishedAttempt>,
    first_seq: u64,
}

impl Reports {
    fn push(&mut self, report: api::FinishedAttempt) {
        self.items.push(report);
    }

    /// The number the next report will get.
    fn end_seq(&self) -> u64 {
        self.first_seq + self.items.len() as u64
    }

    /// Drops every report numbered below `end`: a poll carrying them was answered
    /// (accepted or refused, they are done with).
    fn acknowledge_below(&mut self, end: u64) {
        let n = end
            .saturating_sub(self.first_seq)
            .min(self.items.len() as u64);
        self.items.drain(..n as usize);
        self.first_seq += n;
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The attempts already started, so that one handed out twice runs once.
pub(crate) struct SeenAttempts {
    set: HashSet<AttemptKey>,
    order: VecDeque<AttemptKey>,
    capacity: usize,
}

impl SeenAttempts {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Remembers `key`; false if it was already known.
    pub(crate) fn insert(&mut self, key: AttemptKey) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// Exponential backoff with jitter, so a fleet of workers does not reconnect in step.
struct Backoff {
    failures: u32,
    cap: Duration,
    rng: u64,
}

impl Backoff {
    fn new(cap: Duration, seed: u64) -> Self {
        Self {
            failures: 0,
            cap,
            rng: seed | 1,
        }
    }

    /// The wait before the next try: 100 ms doubling per failure up to the cap, of
    /// which a random half is taken off.
    fn next_delay(&mut self) -> Duration {
        let full = Duration::from_millis(100)
            .saturating_mul(1 << self.failures.min(16))
            .min(self.cap);
        self.failures = self.failures.saturating_add(1);
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let fraction = (z >> 11) as f64 / (1u64 << 53) as f64;
        full.mul_f64(0.5 + 0.5 * fraction)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The worker's state, owned by the poll loop.
pub(crate) struct Agent {
    client: Client,
    id: Uuid,
    registration: api::RegisterWorker,
    settings: Settings,
    handlers: HashMap<String, Handler>,
    handler_names: String,
    limits: Option<Arc<MemoryLimits>>,
    free_gpus: Vec<u32>,
    has_gpus: bool,
    running: HashMap<AttemptKey, Running>,
    /// A private directory (mode 0700) for the files of running commands.
    scratch: Option<tempfile::TempDir>,
    seen: SeenAttempts,
    reports: Reports,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    net_tx: mpsc::UnboundedSender<Net>,
    net_rx: mpsc::UnboundedReceiver<Net>,
    current: Option<Current>,
    calls: Vec<JoinHandle<()>>,
    next_seq: u64,
    /// The highest poll-answer number processed since registering (sent as `ack`).
    answers_seen: u64,
    /// The `ack` polls carry: `answers_seen` as of the last moment no replaced poll
    /// was still waiting for its answer. An answer to a replaced poll may arrive
    /// after one with a higher number; acknowledging the higher number before it
    /// did would make the server count the attempts of the late answer as lost.
    acked: u64,
    registered: bool,
    /// The number the server gave this worker's latest registration, which its polls
    /// name: a poll still out from before registering again is then refused by the
    /// server, not read as a list of what this registration runs. `None` from servers
    /// before protocol 6.
    registration_number: Option<u64>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    replace_at: Option<Instant>,
    replaced: usize,
    summary: RunSummary,
    /// The server's heartbeat timeout, learnt when registering (older servers do not
    /// say: then the worker cannot fence itself).
    heartbeat_timeout: Option<Duration>,
    /// When the last call the server answered was sent: the server has heard from
    /// this worker since at least then.
    last_contact: Option<Instant>,
    /// Attempts stopped because the server could not be reached; not reported.
    fenced: HashSet<AttemptKey>,
    /// An upload of output is on its way (one at a time).
    uploading: bool,
}

impl Agent {
    pub(crate) fn new(
        client: Client,
        registration: api::RegisterWorker,
        settings: Settings,
        handlers: HashMap<String, Handler>,
        limits: Option<Arc<MemoryLimits>>,
        gpus: Vec<u32>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (net_tx, net_rx) = mpsc::unbounded_channel();
        let mut names: Vec<&str> = handlers.keys().map(String::as_str).collect();
        names.sort_unstable();
        let handler_names = names.join(", ");
        let seed = registration.id.as_u128() as u64;
        Self {
            scratch: None,
            client,
            id: registration.id,
            backoff: Backoff::new(settings.backoff_cap, seed),
            registration,
            settings,
            handlers,
            handler_names,
            limits,
            has_gpus: !gpus.is_empty(),
            free_gpus: gpus,
            running: HashMap::new(),
            seen: SeenAttempts::new(REMEMBERED_ATTEMPTS),
            reports: Reports::default(),
            done_tx,
            done_rx,
            net_tx,
            net_rx,
            current: None,
            calls: Vec::new(),
            answers_seen: 0,
            acked: 0,
            next_seq: 0,
            registered: false,
            registration_number: None,
            retry_at: None,
            replace_at: None,
            replaced: 0,
            summary: RunSummary::default(),
            heartbeat_timeout: None,
            last_contact: None,
            fenced: HashSet::new(),
            uploading: false,
        }
    }

    /// Runs until `shutdown` (then drains) or a kill order, or until the server
    /// refuses this worker for good.
    pub(crate) async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
        mut kill: watch::Receiver<bool>,
    ) -> Result<RunSummary, WorkerError> {
        tokio::pin!(shutdown);
        let mut draining = false;
        let mut kill_open = true;
        let mut drain_deadline: Option<Instant> = None;
        let mut stopped_all = false;
        let mut flush_deadline: Option<Instant> = None;
        let mut upload_tick = tokio::time::interval(LOG_UPLOAD_PERIOD);
        upload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            if *kill.borrow() {
                self.kill_now().await;
                break Ok(());
            }
            // Whatever finished meanwhile rides on the next poll.
            while let Ok(done) = self.done_rx.try_recv() {
                self.on_done(done);
            }
            if draining && self.running.is_empty() {
                if self.reports.is_empty() {
                    break Ok(());
                }
                let deadline = *flush_deadline.get_or_insert(Instant::now() + FINAL_FLUSH);
                if Instant::now() >= deadline {
                    tracing::warn!(
                        reports = self.reports.items.len(),
                        "shutting down with attempts the server was not told about"
                    );
                    break Ok(());
                }
            }
            if self.current.is_none() && self.retry_at.is_none_or(|t| t <= Instant::now()) {
                self.retry_at = None;
                if self.registered {
                    let quick = draining && self.running.is_empty();
                    self.send_poll(if quick {
                        Duration::ZERO
                    } else {
                        self.long_poll_wait()
                    });
                } else {
                    self.send_registration();
                }
            }
            let fence_at = self.fence_deadline();
            tokio::select! {
                biased;
                changed = kill.changed(), if kill_open => {
                    if changed.is_err() {
                        kill_open = false;
                    }
                }
                () = &mut shutdown, if !draining => {
                    draining = true;
                    drain_deadline = Some(Instant::now() + self.settings.drain_grace);
                    self.begin_drain();
                }
                Some(net) = self.net_rx.recv() => {
                    if let Err(e) = self.on_net(net) {
                        break Err(e);
                    }
                }
                Some(done) = self.done_rx.recv() => self.on_done(done),
                _ = upload_tick.tick() => self.upload_logs(),
                () = sleep_until_opt(self.replace_at) => self.replace_current_poll(),
                () = sleep_until_opt(fence_at) => self.fence(),
                () = sleep_until_opt(self.retry_at), if self.current.is_none() => {}
                () = sleep_until_opt(drain_deadline), if !stopped_all => {
                    stopped_all = true;
                    tracing::warn!(
                        attempts = self.running.len(),
                        "drain grace over: stopping the attempts still running"
                    );
                    self.stop_all(Stop::Graceful("the worker shut down before it finished".into()));
                }
                () = sleep_until_opt(flush_deadline), if draining && self.running.is_empty() => {}
            }
        };
        if outcome.is_err() {
            // Refused for good: nothing may outlive the worker.
            self.kill_now().await;
        }
        for call in self.calls.drain(..) {
            call.abort();
        }
        self.summary.unreported = self.reports.items.len();
        outcome.map(|()| self.summary)
    }

    // --- talking to the server ---

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn spawn_call(&mut self, call: impl std::future::Future<Output = ()> + Send + 'static) {
        self.calls.retain(|c| !c.is_finished());
        self.calls.push(tokio::spawn(call));
    }

    fn send_registration(&mut self) {
        let seq = self.next_seq();
        let client = self.client.clone();
        let registration = self.registration.clone();
        let tx = self.net_tx.clone();
        let sent_at = Instant::now();
        self.spawn_call(async move {
            let result = client.register_worker(&registration).await;
            let _ = tx.send(Net::Registered {
                seq,
                sent_at,
                result,
            });
        });
        self.current = Some(Current {
            seq,
            sent_at,
            long_poll: false,
        });
    }

    fn send_poll(&mut self, wait: Duration) {
        let seq = self.next_seq();
        let request = api::PollRequest {
            running: self
                .running
                .iter()
                .map(|(&(job, token), running)| api::AttemptRef {
                    job,
                    token,
                    progress: running.progress.read(),
                })
                .collect(),
            finished: self.take_reports(),
            wait_ms: wait.as_millis() as u64,
            ack: Some(self.ack()),
            ending: Vec::new(),
            registration: self.registration_number,
        };
        let call = self.client.poll(self.id, &request);
        // The request is encoded: the reports stay here until acknowledged.
        self.reports.items = request.finished;
        let carried_below = self.reports.end_seq();
        let registration = request.registration;
        let tx = self.net_tx.clone();
        let sent_at = Instant::now();
        self.spawn_call(async move {
            let result = call.await;
            let _ = tx.send(Net::Polled {
                seq,
                sent_at,
                carried_below,
                registration,
                result,
            });
        });
        self.current = Some(Current {
            seq,
            sent_at,
            long_poll: !wait.is_zero(),
        });
        self.replace_at = None;
    }

    /// Uploads what running attempts wrote since their last upload, all in one call,
    /// when the server takes it (protocol 8) and no upload is on its way. A failed
    /// upload is not retried as such: the next one starts where the server's last
    /// answer left each attempt, so nothing is skipped or doubled.
    fn upload_logs(&mut self) {
        if self.uploading
            || !self.registered
            || self.registration.protocol < api::LIVE_LOGS_PROTOCOL
        {
            return;
        }
        let mut budget = LOG_UPLOAD_BYTES;
        let mut chunks = Vec::new();
        let mut sent = Vec::new();
        for (&(job, token), running) in &self.running {
            if running.upload_refused || budget == 0 {
                continue;
            }
            let Some(output) = &running.output else {
                continue;
            };
            let Some((offset, text)) = output.since(running.uploaded, budget) else {
                continue;
            };
            budget = budget.saturating_sub(text.len());
            sent.push(((job, token), offset + text.len() as u64));
            chunks.push(api::LogChunk {
                job,
                token,
                offset,
                text,
            });
        }
        if chunks.is_empty() {
            return;
        }
        self.uploading = true;
        let call = {
            let client = self.client.clone();
            let id = self.id;
            let body = api::LogChunks { chunks };
            async move { client.upload_logs(id, &body).await }
        };
        let tx = self.net_tx.clone();
        self.spawn_call(async move {
            let result = call.await;
            let _ = tx.send(Net::LogsUploaded { sent, result });
        });
    }

    fn on_logs_uploaded(
        &mut self,
        sent: Vec<(AttemptKey, u64)>,
        result: Result<api::LogChunksAnswer, ClientError>,
    ) {
        self.uploading = false;
        let answer = match result {
            Ok(answer) => answer,
            Err(e) => {
                // A preview: the next upload sends it again, and the report has it all.
                tracing::debug!(error = %e, "uploading running attempts' output failed");
                return;
            }
        };
        let refused: HashSet<AttemptKey> =
            answer.refused.iter().map(|r| (r.job, r.token)).collect();
        for (key, end) in sent {
            let Some(running) = self.running.get_mut(&key) else {
                continue;
            };
            if refused.contains(&key) {
                running.upload_refused = true;
            } else {
                running.uploaded = running.uploaded.max(end);
            }
        }
    }

    fn begin_drain(&mut self) {
        tracing::info!(worker = %self.id, running = self.running.len(), "draining: taking no new work");
        if !self.registered {
            return;
        }
        let client = self.client.clone();
        let id = self.id;
        let tx = self.net_tx.clone();
        self.spawn_call(async move {
            let _ = tx.send(Net::Drained(client.drain_worker(id).await));
        });
        // A long-poll waiting for work would only delay the end.
        if self.running.is_empty() {
            self.replace_current_poll();
        }
    }

    /// Makes the current long-poll stale so that the loop sends a new one at once.
    /// The server answers the stale one empty; if its answer was already on the way
    /// with assignments, they are started when it arrives: the new poll's `ack` tells
    /// the server that answer was not yet seen, so it does not count them as lost.
    fn replace_current_poll(&mut self) {
        self.replace_at = None;
        if self.current.as_ref().is_some_and(|c| c.long_poll) {
            self.current = None;
            self.replaced += 1;
        }
    }

    /// After an attempt finished: replace the current long-poll once it is old enough
    /// that an answer to it is unlikely to be on the way.
    fn hurry_report(&mut self) {
        let Some(current) = &self.current else {
            return;
        };
        if !current.long_poll || self.replace_at.is_some() || self.replaced >= MAX_REPLACED_POLLS {
            return;
        }
        self.replace_at = Some(current.sent_at + self.settings.cut_short_after);
    }

    /// The reports to send, as the protocol in use with the server allows: below
    /// version 7 without `usage` and `memory_exceeded`, which an older server refuses.
    fn take_reports(&mut self) -> Vec<api::FinishedAttempt> {
        let mut reports = std::mem::take(&mut self.reports.items);
        if self.registration.protocol < USAGE_PROTOCOL {
            for report in &mut reports {
                for_older_protocol(report);
            }
        }
        reports
    }

    fn on_net(&mut self, net: Net) -> Result<(), WorkerError> {
        match net {
            Net::Registered {
                seq,
                sent_at,
                result,
            } => {
                if self.current.as_ref().is_some_and(|c| c.seq == seq) {
                    self.current = None;
                }
                match result {
                    Ok(view) => {
                        tracing::info!(worker = %self.id, name = %view.name, "registered");
                        self.note_contact(sent_at);
                        self.learn_heartbeat_timeout(view.heartbeat_timeout_ms);
                        self.registered = true;
                        self.registration_number = view.registration;
                        // The server numbers its answers afresh for a new registration.
                        self.answers_seen = 0;
                        self.acked = 0;
                        // The backoff is reset by the first poll answered, not here: a
                        // registration that its polls keep undoing (stale_registration)
                        // must slow down, not repeat ten times a second.
                        Ok(())
                    }
                    Err(e) if e.is_transient() => {
                        self.retry_later(&e, "registration");
                        Ok(())
                    }
                    Err(ClientError::Api { error, .. })
                        if error.code == api::ErrorCode::IncompatibleProtocol
                            && self.registration.protocol > OLDEST_PROTOCOL_SPOKEN =>
                    {
                        // A leader of an older version (a rolling upgrade, a rollback):
                        // offer one version less, down to the oldest this worker speaks.
                        self.registration.protocol -= 1;
                        tracing::warn!(worker = %self.id, protocol = self.registration.protocol, error = %error.message, "the server speaks an older protocol: offering an older version");
                        Ok(())
                    }
                    Err(e) => Err(WorkerError::Refused(e)),
                }
            }
            Net::Polled {
                seq,
                sent_at,
                carried_below,
                registration,
                result,
            } => {
                let is_current = self.current.as_ref().is_some_and(|c| c.seq == seq);
                if is_current {
                    self.current = None;
                    self.replace_at = None;
                } else {
                    self.replaced = self.replaced.saturating_sub(1);
                }
                match result {
                    Ok(answer) => {
                        self.note_contact(sent_at);
                        self.on_answer(answer, carried_below, is_current);
                        Ok(())
                    }
                    Err(e) if !is_current => {
                        tracing::debug!(error = %e, "a replaced poll failed; its reports ride on the current one");
                        Ok(())
                    }
                    Err(e) if e.is_stale_registration() => {
                        // The server took nothing from it; its reports, still
                        // unacknowledged, go in the next poll.
                        if registration.is_some() && registration == self.registration_number {
                            // It named the number this worker holds, so the server has
                            // a later registration whose answer never came back (a
                            // registration retried while the first was on its way).
                            // Every poll would be refused: register again, not at once
                            // should that keep happening.
                            tracing::info!(worker = %self.id, "the server holds a later registration of this worker than it was told; registering again");
                            self.registered = false;
                            self.retry_later(&e, "poll");
                        } else {
                            tracing::debug!(error = %e, "a poll from before the latest registration was refused");
                        }
                        Ok(())
                    }
                    Err(ClientError::Api { status: 400, error })
                        if error.code == api::ErrorCode::UnknownField
                            && error.field.as_deref() == Some("registration")
                            && registration.is_some() =>
                    {
                        // A leader of protocol 5 (a rollback, or an older server in
                        // its place after a failover) does not take the number: poll
                        // without it, as version 5 does.
                        tracing::warn!(worker = %self.id, error = %error.message, "the server does not take `registration`: polling without it (protocol 5)");
                        self.registration_number = None;
                        Ok(())
                    }
                    Err(e) if e.is_register_again() => {
                        tracing::info!(worker = %self.id, "the server asks this worker to register again (it restarted or lost it); running attempts are kept");
                        self.registered = false;
                        Ok(())
                    }
                    Err(e @ (ClientError::Unauthorized { .. } | ClientError::Forbidden { .. })) => {
                        Err(WorkerError::Refused(e))
                    }
                    Err(e) => {
                        self.retry_later(&e, "poll");
                        Ok(())
                    }
                }
            }
            Net::Drained(result) => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "could not tell the server this worker drains; it stops taking work anyway");
                }
                Ok(())
            }
            Net::LogsUploaded { sent, result } => {
                self.on_logs_uploaded(sent, result);
                Ok(())
            }
        }
    }

    /// The server answered a call sent at `sent_at`: it heard from this worker then
    /// or later.
    fn note_contact(&mut self, sent_at: Instant) {
        self.last_contact = Some(self.last_contact.map_or(sent_at, |t| t.max(sent_at)));
    }

    fn learn_heartbeat_timeout(&mut self, heartbeat_timeout_ms: Option<u64>) {
        let learnt = heartbeat_timeout_ms
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis);
        if learnt.is_none() && self.heartbeat_timeout.is_none() {
            tracing::warn!(
                "the server does not tell its heartbeat timeout (an older version): this worker cannot stop its attempts when cut off from it, so a network partition may run a job twice"
            );
        }
        if let Some(timeout) = learnt
            && self.heartbeat_timeout != learnt
        {
            tracing::info!(
                heartbeat_timeout = ?timeout,
                fence_after = ?fence_after(timeout),
                "attempts are stopped if the server cannot be reached for the fence time"
            );
        }
        self.heartbeat_timeout = learnt;
    }

    /// How long a long-poll may wait: the configured wait, at most
    /// [`longest_poll_wait`] once the server's heartbeat timeout is known.
    fn long_poll_wait(&self) -> Duration {
        match self.heartbeat_timeout {
            Some(timeout) => self
                .settings
                .poll_wait
                .min(longest_poll_wait(fence_after(timeout))),
            None => self.settings.poll_wait,
        }
    }

    /// When the attempts must be stopped if the server stays silent; none while no
    /// attempt is left to stop.
    fn fence_deadline(&self) -> Option<Instant> {
        let timeout = self.heartbeat_timeout?;
        let contact = self.last_contact?;
        if self.running.keys().all(|key| self.fenced.contains(key)) {
            return None;
        }
        Some(contact + fence_after(timeout))
    }

    /// Self-fencing: the server has not answered for so long that it may soon
    /// declare this worker lost and run its attempts elsewhere. Kill them all now,
    /// and do not report them: to the server they are lost, and run again.
    fn fence(&mut self) {
        let silent = self.last_contact.map(|t| t.elapsed()).unwrap_or_default();
        let mut stopped = 0;
        for (key, running) in &self.running {
            if self.fenced.insert(*key) {
                stopped += 1;
                running
                    .stop
                    .send_if_modified(|stop| escalate(stop, Stop::Now(FENCED.into())));
            }
        }
        tracing::warn!(
            worker = %self.id,
            attempts = stopped,
            silent_for = ?silent,
            heartbeat_timeout = ?self.heartbeat_timeout,
            "no answer from the server for too long: killing this worker's attempts before the server may declare them lost and run them elsewhere"
        );
    }

    /// What the next poll acknowledges: every answer numbered up to it has been
    /// processed (see `acked`).
    fn ack(&mut self) -> u64 {
        if self.replaced == 0 {
            self.acked = self.answers_seen;
        }
        self.acked
    }

    fn retry_later(&mut self, error: &ClientError, what: &str) {
        let delay = self.backoff.next_delay();
        tracing::warn!(error = %error, retry_in = ?delay, "{what} failed; running attempts continue");
        self.retry_at = Some(Instant::now() + delay);
    }

    fn on_answer(&mut self, answer: api::PollResponse, carried_below: u64, is_current: bool) {
        self.reports.acknowledge_below(carried_below);
        for refused in &answer.refused {
            tracing::debug!(job = %refused.job, token = refused.token, reason = %refused.reason, "report refused");
        }
        for order in answer.kill {
            if let Some(running) = self.running.get(&(order.job, order.token)) {
                tracing::info!(job = %order.job, token = order.token, reason = %order.reason, "stopping an attempt on the server's order");
                let reason = format!("stopped on the server's order ({})", order.reason);
                running
                    .stop
                    .send_if_modified(|stop| escalate(stop, Stop::Graceful(reason)));
            }
        }
        // Assignments count even on a replaced poll: the server handed them over, and
        // the `ack` of later polls tells it which answers arrived.
        self.answers_seen = self.answers_seen.max(answer.seq);
        if is_current {
            self.backoff.reset();
        }
        for assignment in answer.assignments {
            self.start(assignment);
        }
    }

    // --- attempts ---

    /// Starts an assignment, unless it was started before.
    pub(crate) fn start(&mut self, assignment: api::Assignment) {
        let key = (assignment.job, assignment.token);
        if self.running.contains_key(&key) || !self.seen.insert(key) {
            tracing::warn!(job = %key.0, token = key.1, "the same attempt was assigned twice; it runs once");
            return;
        }
        self.summary.started += 1;
        let timeout = assignment.timeout_ms.map(Duration::from_millis);
        let soft_timeout = assignment.soft_timeout_ms.map(Duration::from_millis);
        match assignment.kind {
            api::JobKind::Function { handler, args } => {
                let Some(found) = self.handlers.get(&handler) else {
                    let message = format!(
                        "this worker has no handler `{handler}` (it serves: {})",
                        self.handler_names
                    );
                    self.finish_now(key, failed(message));
                    return;
                };
                // Handlers work on a tree: the arguments' text is parsed here, once.
                let args = match args.to_value() {
                    Ok(args) => args,
                    Err(e) => {
                        self.finish_now(key, failed(format!("the job's args are not JSON: {e}")));
                        return;
                    }
                };
                let (context, soft) = AttemptContext::new(assignment.job);
                let limits = Limits {
                    timeout,
                    soft_timeout,
                    soft,
                };
                // A job that receives its parents' results gets them with its own
                // arguments: `{"args": ..., "inputs": [...]}`.
                let args = match (assignment.inputs, assignment.inputs_path) {
                    (Some(inputs), _) => serde_json::json!({"args": args, "inputs": inputs}),
                    (None, Some(_)) => {
                        // Too large to come with the assignment: read them first.
                        let (client, handler, job) =
                            (self.client.clone(), found.clone(), assignment.job);
                        let call: HandlerFuture = Box::pin(async move {
                            let inputs = client
                                .job_inputs(job)
                                .await
                                .map_err(|e| format!("reading the parents' results failed: {e}"))?;
                            let args = serde_json::json!({"args": args, "inputs": inputs.inputs});
                            match handler.call(args) {
                                Call::Done(result) => result,
                                Call::Pending(call) => call.await,
                            }
                        });
                        self.spawn_function(key, call, context, limits);
                        return;
                    }
                    (None, None) => args,
                };
                // A handler may panic before it even returns its future.
                let call = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    context.enter(|| found.call(args))
                }));
                match call {
                    Ok(Call::Done(result)) => {
                        self.finish_now(key, handler_result(result, &context));
                    }
                    Ok(Call::Pending(call)) => self.spawn_function(key, call, context, limits),
                    Err(panic) => self.finish_now(key, failed(panic_message(panic.as_ref()))),
                }
            }
            api::JobKind::Command { argv, env, cwd } => {
                if !self.settings.serves_commands {
                    self.finish_now(key, failed("this worker does not run command jobs".into()));
                    return;
                }
                let gpus = self.take_gpus(assignment.resources.gpu);
                let mut env: Vec<(String, String)> = env.into_iter().collect();
                env.extend([
                    ("LQSM_JOB_ID".to_owned(), assignment.job.to_string()),
                    ("LQSM_ATTEMPT".to_owned(), assignment.attempt.to_string()),
                    ("LQSM_QUEUE".to_owned(), assignment.queue),
                    ("LQSM_CPUS".to_owned(), assignment.resources.cpu.to_string()),
                    (
                        "LQSM_MEMORY_MIB".to_owned(),
                        assignment.resources.memory_mib.to_string(),
                    ),
                ]);
                if self.has_gpus {
                    // Granted none: see none.
                    let visible: Vec<String> = gpus.iter().map(u32::to_string).collect();
                    env.push(("CUDA_VISIBLE_DEVICES".to_owned(), visible.join(",")));
                }
                // A command reports its state by writing it to this file, in a directory
                // only this worker's user may write to (a link planted there by another
                // user could otherwise make the worker read, or the job write, elsewhere).
                let run_as = self.settings.run_as.clone();
                let progress = self
                    .scratch_dir()
                    .map(|dir| {
                        dir.join(format!(
                            "progress-{}-{}.json",
                            assignment.job, assignment.attempt
                        ))
                    })
                    .filter(|file| match &run_as {
                        None => true,
                        Some(user) => progress_file_for(file, user)
                            .inspect_err(|e| {
                                tracing::warn!(error = %e, job = %assignment.job, "the command cannot report progress: its file cannot be made for its user");
                            })
                            .is_ok(),
                    });
                if let Some(file) = &progress {
                    env.push(("LQSM_PROGRESS_FILE".to_owned(), file.display().to_string()));
                }
                let spec = CommandSpec { argv, env, cwd };
                let limits = CommandLimits {
                    timeout,
                    soft_timeout,
                    memory_mib: assignment.resources.memory_mib,
                };
                self.spawn_command(key, spec, limits, gpus, progress);
            }
        }
    }

    /// The worker's private directory (mode 0700) for its commands' files, made at the
    /// first command (a worker that runs none leaves nothing behind, even when killed)
    /// and removed with the worker. When commands run as another user the directory
    /// is 0711: that user reaches the files made for it, and still lists, adds and
    /// replaces nothing there.
    fn scratch_dir(&mut self) -> Option<std::path::PathBuf> {
        if self.scratch.is_none() {
            let mode = if self.settings.run_as.is_some() {
                0o711
            } else {
                0o700
            };
            self.scratch = tempfile::Builder::new()
                .prefix("lqsm-worker-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
                .tempdir()
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "no private temporary directory: commands cannot report progress");
                })
                .ok();
        }
        self.scratch.as_ref().map(|dir| dir.path().to_owned())
    }

    fn take_gpus(&mut self, wanted: u32) -> Vec<u32> {
        let wanted = wanted as usize;
        if wanted == 0 {
            return Vec::new();
        }
        if wanted > self.free_gpus.len() {
            tracing::warn!(
                wanted,
                free = self.free_gpus.len(),
                "an attempt was granted more GPUs than are free here; it gets those that are"
            );
        }
        let split = self.free_gpus.len().saturating_sub(wanted);
        self.free_gpus.split_off(split)
    }

    fn finish_now(&mut self, key: AttemptKey, result: api::AttemptResult) {
        self.on_done(Done {
            key,
            result,
            logs: None,
            usage: None,
        });
    }

    fn spawn_function(
        &mut self,
        key: AttemptKey,
        call: HandlerFuture,
        context: Arc<AttemptContext>,
        limits: Limits,
    ) {
        let (stop_tx, mut stop_rx) = watch::channel(Stop::Run);
        self.running.insert(
            key,
            Running {
                stop: stop_tx,
                gpus: Vec::new(),
                started_at_ms: api::epoch_ms(),
                progress: Progress::Handler(context.clone()),
                // A handler runs in the worker's process: its output is not captured.
                output: None,
                uploaded: 0,
                upload_refused: false,
            },
        );
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let deadline = limits.timeout.map(|t| Instant::now() + t);
            let mut soft_at = limits.soft_timeout.map(|t| Instant::now() + t);
            let call = CatchPanic(Box::pin(context.clone().scope(call)));
            tokio::pin!(call);
            let result = loop {
                tokio::select! {
                    result = &mut call => break handler_result(result, &context),
                    () = sleep_until_opt(soft_at), if soft_at.is_some() => {
                        soft_at = None;
                        let _ = limits.soft.send(true);
                    }
                    () = sleep_until_opt(deadline) => break api::AttemptResult::TimedOut,
                    changed = stop_rx.changed() => {
                        if changed.is_err() {
                            // Nobody can stop it any more: let it finish.
                            break handler_result(call.await, &context);
                        }
                        let order = stop_rx.borrow_and_update().clone();
                        if let Stop::Graceful(reason) | Stop::Now(reason) = order {
                            break failed(reason);
                        }
                    }
                }
            };
            // A function shares the worker's process: nothing to measure it by.
            let _ = done.send(Done {
                key,
                result,
                logs: None,
                usage: None,
            });
        });
    }

    fn spawn_command(
        &mut self,
        key: AttemptKey,
        spec: CommandSpec,
        limits: CommandLimits,
        gpus: Vec<u32>,
        progress_file: Option<std::path::PathBuf>,
    ) {
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        let output = LiveOutput::new(self.settings.log_cap);
        self.running.insert(
            key,
            Running {
                stop: stop_tx,
                gpus,
                started_at_ms: api::epoch_ms(),
                progress: progress_file.clone().map_or(Progress::None, Progress::File),
                output: Some(output.clone()),
                uploaded: 0,
                upload_refused: false,
            },
        );
        let memory_mib = limits.memory_mib;
        let options = ExecOptions {
            timeout: limits.timeout,
            soft_timeout: limits
                .soft_timeout
                .map(|after| (after, self.settings.soft_timeout_signal)),
            grace: self.settings.kill_grace,
            log_cap: self.settings.log_cap,
            supervisor: self.settings.supervisor.clone(),
            run_as: self.settings.run_as.clone(),
            memory_check_mib: (self.settings.memory_check && memory_mib > 0).then_some(memory_mib),
            live: Some(output),
        };
        let limits = self.limits.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let cgroup = limits.and_then(|l| match l.attempt(&format!("a{}", key.1), memory_mib) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::warn!(error = %e, job = %key.0, "no memory limit for this attempt: cannot create its cgroup");
                    None
                }
            });
            let outcome = executor::run_command(spec, &options, stop_rx, cgroup.as_ref()).await;
            if let Some(file) = &progress_file {
                let _ = tokio::fs::remove_file(file).await;
            }
            if let Some(cg) = cgroup {
                let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
            }
            let result = command_result(&outcome, memory_mib);
            let usage = outcome.usage.map(|u| api::AttemptUsage {
                peak_memory_mib: u.peak_memory_mib(),
                cpu_ms: u.cpu_ms,
            });
            let logs = (!outcome.output.is_empty()).then_some(outcome.output);
            let _ = done.send(Done {
                key,
                result,
                logs,
                usage,
            });
        });
    }

    fn on_done(&mut self, done: Done) {
        let mut started_at_ms = None;
        if let Some(running) = self.running.remove(&done.key) {
            self.free_gpus.extend(running.gpus);
            started_at_ms = Some(running.started_at_ms);
        }
        if self.fenced.remove(&done.key) && done.result == failed(FENCED.to_owned()) {
            // Killed by the fence: the server will find it missing and run it again.
            // One that ended on its own before the kill is reported as it ended.
            self.summary.fenced += 1;
            return;
        }
        match &done.result {
            api::AttemptResult::Succeeded { .. } => self.summary.succeeded += 1,
            _ => self.summary.failed += 1,
        }
        self.reports.push(api::FinishedAttempt {
            job: done.key.0,
            token: done.key.1,
            result: done.result,
            logs: done.logs,
            started_at_ms,
            usage: done.usage,
        });
        self.hurry_report();
    }

    fn stop_all(&mut self, order: Stop) {
        for running in self.running.values() {
            running
                .stop
                .send_if_modified(|stop| escalate(stop, order.clone()));
        }
    }

    /// Kills every attempt's processes, waits briefly for them to be reaped, and tells
    /// the server what it can in a moment.
    async fn kill_now(&mut self) {
        self.summary.killed = self.running.len();
        self.stop_all(Stop::Now("the worker was killed".into()));
        let deadline = Instant::now() + KILL_WAIT;
        while !self.running.is_empty() {
            tokio::select! {
                Some(done) = self.done_rx.recv() => self.on_done(done),
                () = sleep_until(deadline) => break,
            }
        }
        if self.registered && !self.reports.is_empty() {
            let ack = self.ack();
            let finished = self.take_reports();
            let call = self.client.poll(
                self.id,
                &api::PollRequest {
                    running: Vec::new(),
                    finished,
                    wait_ms: 0,
                    ack: Some(ack),
                    ending: Vec::new(),
                    registration: self.registration_number,
                },
            );
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), call).await {
                self.reports = Reports::default();
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn reports(&self) -> &[api::FinishedAttempt] {
        &self.reports.items
    }

    #[cfg(test)]
    pub(crate) fn running_count(&self) -> usize {
        self.running.len()
    }

    #[cfg(test)]
    pub(crate) async fn next_done(&mut self) {
        if let Some(done) = self.done_rx.recv().await {
            self.on_done(done);
        }
    }
}

/// Orders only escalate: a graceful stop does not undo a kill.
fn escalate(current: &mut Stop, order: Stop) -> bool {
    let rank = |s: &Stop| match s {
        Stop::Run => 0,
        Stop::Graceful(_) => 1,
        Stop::Now(_) => 2,
    };
    if rank(&order) > rank(current) {
        *current = order;
        true
    } else {
        false
    }
}

/// Takes out of `report` what a server before protocol 7 does not know.
fn for_older_protocol(report: &mut api::FinishedAttempt) {
    report.usage = None;
    if let api::AttemptResult::Failed {
        memory_exceeded, ..
    } = &mut report.result
    {
        *memory_exceeded = false;
    }
}

fn failed(message: String) -> api::AttemptResult {
    api::AttemptResult::Failed {
        exit_code: None,
        message,
        retry: None,
        memory_exceeded: false,
    }
}

/// How a handler's call ended: a failure is a retry when the handler asked for one
/// ([`crate::retry`]).
fn handler_result(result: HandlerResult, context: &AttemptContext) -> api::AttemptResult {
    match result {
        Ok(value) => api::AttemptResult::Succeeded {
            result: Some(value),
            exit_code: None,
        },
        Err(message) => match context.take_retry() {
            Some(retry) => api::AttemptResult::Retry {
                countdown_ms: retry.countdown.map(|d| d.as_millis() as u64),
                message: retry.message,
            },
            None => failed(message),
        },
    }
}

/// A command attempt's limits.
struct CommandLimits {
    timeout: Option<Duration>,
    soft_timeout: Option<Duration>,
    memory_mib: u64,
}

/// A function attempt's time limits.
struct Limits {
    timeout: Option<Duration>,
    soft_timeout: Option<Duration>,
    /// Told when the soft limit has passed.
    soft: watch::Sender<bool>,
}

fn command_result(outcome: &executor::CommandOutcome, memory_mib: u64) -> api::AttemptResult {
    match &outcome.ending {
        Ending::Exited(0) => api::AttemptResult::Succeeded {
            result: None,
            exit_code: Some(0),
        },
        Ending::Exited(RETRY_EXIT_CODE) if !outcome.memory_exceeded => api::AttemptResult::Retry {
            countdown_ms: None,
            message: match outcome.last_line() {
                "" => format!("the command asked to be run again (exit code {RETRY_EXIT_CODE})"),
                last => format!("exit code {RETRY_EXIT_CODE}: {last}"),
            },
        },
        Ending::Exited(code) => {
            let last = outcome.last_line();
            let message = if outcome.memory_exceeded {
                format!("exit code {code} after exceeding its memory limit of {memory_mib} MiB")
            } else if last.is_empty() {
                format!("exit code {code} (no output)")
            } else {
                format!("exit code {code}: {last}")
            };
            api::AttemptResult::Failed {
                exit_code: Some(*code),
                message,
                retry: None,
                memory_exceeded: outcome.memory_exceeded,
            }
        }
        Ending::Signalled(signal) => {
            let name = nix::sys::signal::Signal::try_from(*signal)
                .map_or_else(|_| "unknown".to_owned(), |s| s.as_str().to_owned());
            let message = if outcome.memory_check {
                format!("killed for exceeding its memory limit of {memory_mib} MiB")
            } else if outcome.memory_exceeded {
                format!("killed by the kernel for exceeding its memory limit of {memory_mib} MiB")
            } else {
                format!("killed by signal {signal} ({name})")
            };
            api::AttemptResult::Failed {
                exit_code: None,
                message,
                retry: None,
                memory_exceeded: outcome.memory_exceeded,
            }
        }
        Ending::TimedOut => api::AttemptResult::TimedOut,
        Ending::Stopped(reason) => failed(reason.clone()),
        Ending::SpawnFailed(message) => failed(message.clone()),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn agent() -> Agent {
        let client = Client::new("http://127.0.0.1:9", None).unwrap();
        let registration = api::RegisterWorker {
            id: Uuid::now_v7(),
            name: "test".into(),
            capacity: api::Resources::default(),
            labels: Default::default(),
            serves_commands: true,
            queues: Default::default(),
            handlers: Vec::new(),
            protocol: api::WORKER_PROTOCOL,
        };
        let settings = Settings {
            poll_wait: Duration::from_secs(2),
            cut_short_after: Duration::from_millis(25),
            kill_grace: Duration::from_millis(200),
            log_cap: 1024,
            drain_grace: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(5),
            serves_commands: true,
            supervisor: None,
            soft_timeout_signal: nix::sys::signal::Signal::SIGUSR1,
            run_as: None,
            memory_check: false,
        };
        let handlers = crate::handlers::BUILTIN_HANDLERS
            .iter()
            .filter_map(|n| Some(((*n).to_owned(), Handler::builtin(n)?)))
            .collect();
        Agent::new(client, registration, settings, handlers, None, vec![0, 1])
    }

    fn assignment(kind: api::JobKind, token: u64) -> api::Assignment {
        api::Assignment {
            job: Uuid::now_v7(),
            token,
            attempt: 1,
            queue: "root.default".into(),
            kind,
            resources: api::ResourceFigures {
                cpu: 0.5,
                memory_mib: 64,
                gpu: 0,
                custom: Default::default(),
            },
            timeout_ms: None,
            soft_timeout_ms: None,
            inputs: None,
            inputs_path: None,
        }
    }

    fn echo(args: serde_json::Value) -> api::JobKind {
        api::JobKind::Function {
            handler: "lqsm.echo".into(),
            args: args.into(),
        }
    }

    #[tokio::test]
    async fn an_attempt_assigned_twice_runs_once() {
        let mut agent = agent();
        let a = assignment(echo(json!(1)), 7);
        agent.start(a.clone());
        agent.start(a.clone());
        assert_eq!(agent.reports().len(), 1);
        // Even after its report left, the same (job, token) is not run again.
        agent.reports.acknowledge_below(u64::MAX);
        agent.start(a);
        assert!(agent.reports().is_empty());
        assert_eq!(agent.summary.started, 1);
    }

    #[tokio::test]
    async fn a_new_token_for_the_same_job_is_a_new_attempt() {
        let mut agent = agent();
        let mut a = assignment(echo(json!(1)), 7);
        agent.start(a.clone());
        a.token = 8;
        agent.start(a);
        assert_eq!(agent.reports().len(), 2);
    }

    #[tokio::test]
    async fn an_unknown_handler_fails_naming_the_ones_served() {
        let mut agent = agent();
        agent.start(assignment(
            api::JobKind::Function {
                handler: "billing.nope".into(),
                args: json!(null).into(),
            },
            1,
        ));
        match &agent.reports()[0].result {
            api::AttemptResult::Failed { message, .. } => {
                assert!(message.contains("billing.nope"), "{message}");
                assert!(message.contains("lqsm.echo"), "{message}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_handler_that_panics_before_returning_a_future_fails_its_attempt() {
        let mut agent = agent();
        let custom: crate::handlers::CustomHandler =
            Arc::new(|_args| -> HandlerFuture { panic!("sync boom") });
        agent
            .handlers
            .insert("bad.sync".into(), Handler::Custom(custom));
        agent.start(assignment(
            api::JobKind::Function {
                handler: "bad.sync".into(),
                args: json!(null).into(),
            },
            1,
        ));
        match &agent.reports()[0].result {
            api::AttemptResult::Failed { message, .. } => {
                assert_eq!(message, "the handler panicked: sync boom")
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_command_sees_its_job_in_the_environment_and_its_gpus() {
        let mut agent = agent();
        let mut a = assignment(
            api::JobKind::Command {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo $LQSM_JOB_ID $LQSM_ATTEMPT $LQSM_QUEUE $LQSM_CPUS $LQSM_MEMORY_MIB gpus=$CUDA_VISIBLE_DEVICES $MINE".into(),
                ],
                env: [("MINE".to_owned(), "mine".to_owned())].into(),
                cwd: None,
            },
            3,
        );
        a.resources.gpu = 1;
        let job = a.job;
        agent.start(a);
        assert_eq!(agent.running_count(), 1);
        assert!(agent.free_gpus.len() == 1, "one of two GPUs is taken");
        tokio::time::timeout(Duration::from_secs(10), agent.next_done())
            .await
            .unwrap();
        assert_eq!(agent.free_gpus.len(), 2, "the GPU is back in the pool");
        let report = &agent.reports()[0];
        assert_eq!(
            report.result,
            api::AttemptResult::Succeeded {
                result: None,
                exit_code: Some(0)
            }
        );
        assert_eq!(
            report.logs.as_deref(),
            Some(format!("{job} 1 root.default 0.5 64 gpus=1 mine\n").as_str())
        );
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_exit_code_and_last_line() {
        let mut agent = agent();
        agent.start(assignment(
            api::JobKind::Command {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo no such table >&2; exit 4".into(),
                ],
                env: Default::default(),
                cwd: None,
            },
            1,
        ));
        tokio::time::timeout(Duration::from_secs(10), agent.next_done())
            .await
            .unwrap();
        assert_eq!(
            agent.reports()[0].result,
            api::AttemptResult::Failed {
                exit_code: Some(4),
                message: "exit code 4: no such table".into(),
                retry: None,
                memory_exceeded: false,
            }
        );
    }

    fn outcome(
        ending: Ending,
        memory_exceeded: bool,
        memory_check: bool,
    ) -> executor::CommandOutcome {
        executor::CommandOutcome {
            ending,
            output: "last words\n".into(),
            memory_exceeded,
            memory_check,
            usage: None,
        }
    }

    #[test]
    fn a_command_killed_for_its_memory_fails_with_memory_exceeded_naming_the_limit() {
        let by_check = command_result(&outcome(Ending::Signalled(9), true, true), 50);
        assert_eq!(
            by_check,
            api::AttemptResult::Failed {
                exit_code: None,
                message: "killed for exceeding its memory limit of 50 MiB".into(),
                retry: None,
                memory_exceeded: true,
            }
        );
        let by_kernel = command_result(&outcome(Ending::Signalled(9), true, false), 50);
        assert_eq!(
            by_kernel,
            api::AttemptResult::Failed {
                exit_code: None,
                message: "killed by the kernel for exceeding its memory limit of 50 MiB".into(),
                retry: None,
                memory_exceeded: true,
            }
        );
        // A process of it was killed, and the main one exited with an error.
        let exited = command_result(&outcome(Ending::Exited(1), true, false), 50);
        assert!(
            matches!(
                exited,
                api::AttemptResult::Failed {
                    exit_code: Some(1),
                    memory_exceeded: true,
                    ..
                }
            ),
            "{exited:?}"
        );
        let plain = command_result(&outcome(Ending::Signalled(9), false, false), 50);
        assert_eq!(
            plain,
            api::AttemptResult::Failed {
                exit_code: None,
                message: "killed by signal 9 (SIGKILL)".into(),
                retry: None,
                memory_exceeded: false,
            }
        );
    }

    #[tokio::test]
    async fn output_is_uploaded_only_to_a_server_of_protocol_8_from_where_it_took_it() {
        let mut agent = agent();
        agent.registered = true;
        let (stop, _) = watch::channel(Stop::Run);
        let output = LiveOutput::new(1024);
        let key = (Uuid::now_v7(), 3);
        agent.running.insert(
            key,
            Running {
                stop,
                gpus: Vec::new(),
                started_at_ms: 0,
                progress: Progress::None,
                output: Some(output.clone()),
                uploaded: 0,
                upload_refused: false,
            },
        );
        output.push(b"line 1\n");
        // The server refused version 8: the worker stepped down and uploads nothing.
        agent.registration.protocol = 7;
        agent.upload_logs();
        assert!(!agent.uploading);
        agent.registration.protocol = api::LIVE_LOGS_PROTOCOL;
        agent.upload_logs();
        assert!(agent.uploading, "an upload is on its way");
        // A failed upload leaves the offset: the next one sends the same bytes again.
        agent.on_logs_uploaded(
            vec![(key, 7)],
            Err(ClientError::Timeout {
                url: "http://127.0.0.1:9".into(),
                after: Duration::from_secs(30),
            }),
        );
        assert_eq!(agent.running[&key].uploaded, 0);
        agent.on_logs_uploaded(vec![(key, 7)], Ok(api::LogChunksAnswer::default()));
        assert_eq!(agent.running[&key].uploaded, 7);
        assert!(!agent.uploading);
        // Nothing new: nothing sent.
        agent.upload_logs();
        assert!(!agent.uploading);
        output.push(b"line 2\n");
        agent.upload_logs();
        assert!(agent.uploading);
        let refused = api::LogChunksAnswer {
            refused: vec![api::RefusedReport {
                job: key.0,
                token: key.1,
                reason: api::RefusalReason::StaleAttempt,
            }],
        };
        agent.on_logs_uploaded(vec![(key, 14)], Ok(refused));
        assert!(agent.running[&key].upload_refused);
        output.push(b"line 3\n");
        agent.upload_logs();
        assert!(!agent.uploading, "a refused attempt uploads no more");
    }

    #[tokio::test]
    async fn usage_and_memory_exceeded_go_only_to_a_server_of_protocol_7() {
        let mut agent = agent();
        let usage = api::AttemptUsage {
            peak_memory_mib: 90,
            cpu_ms: 340,
        };
        let result = api::AttemptResult::Failed {
            exit_code: None,
            message: "killed by the kernel for exceeding its memory limit of 50 MiB".into(),
            retry: None,
            memory_exceeded: true,
        };
        agent.on_done(Done {
            key: (Uuid::now_v7(), 1),
            result: result.clone(),
            logs: None,
            usage: Some(usage),
        });
        // A function is not measured: it shares the worker's process.
        agent.start(assignment(echo(json!(1)), 2));
        assert_eq!(agent.reports()[1].usage, None);
        let sent = agent.take_reports();
        assert_eq!(sent[0].usage, Some(usage));
        assert_eq!(sent[0].result, result);
        let json = serde_json::to_value(&sent[0]).unwrap();
        assert_eq!(json["usage"], json!({"peak_memory_mib": 90, "cpu_ms": 340}));
        assert_eq!(json["result"]["memory_exceeded"], json!(true));
        // The server refused version 7: the worker stepped down, and sends neither.
        agent.reports.items = sent;
        agent.registration.protocol = 6;
        let sent = agent.take_reports();
        assert_eq!(sent[0].usage, None);
        let json = serde_json::to_value(&sent[0]).unwrap();
        assert!(json.get("usage").is_none(), "{json}");
        assert!(json["result"].get("memory_exceeded").is_none(), "{json}");
        assert_eq!(
            json["result"]["message"],
            json!("killed by the kernel for exceeding its memory limit of 50 MiB")
        );
    }

    #[tokio::test]
    async fn a_command_asks_for_a_retry_with_exit_code_75_and_reports_progress_by_file() {
        let mut agent = agent();
        let a = assignment(
            api::JobKind::Command {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo '{\"pct\": 50}' > \"$LQSM_PROGRESS_FILE\"; while [ ! -e \"$LQSM_PROGRESS_FILE.go\" ]; do sleep 0.02; done; echo upstream down; exit 75".into(),
                ],
                env: Default::default(),
                cwd: None,
            },
            1,
        );
        let file = agent
            .scratch_dir()
            .unwrap()
            .join(format!("progress-{}-1.json", a.job));
        agent.start(a);
        let deadline = Instant::now() + Duration::from_secs(10);
        let progress = loop {
            if let Some(p) = agent
                .running
                .values()
                .next()
                .and_then(|r| r.progress.read())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "no progress from the command");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(progress, json!({"pct": 50}));
        std::fs::write(file.with_extension("json.go"), "").unwrap();
        tokio::time::timeout(Duration::from_secs(10), agent.next_done())
            .await
            .unwrap();
        let _ = std::fs::remove_file(file.with_extension("json.go"));
        assert_eq!(
            agent.reports()[0].result,
            api::AttemptResult::Retry {
                countdown_ms: None,
                message: "exit code 75: upstream down".into()
            }
        );
        assert!(
            !file.exists(),
            "the progress file is removed with the attempt"
        );
    }

    #[tokio::test]
    async fn a_handler_reports_progress_asks_for_a_retry_and_hears_its_soft_limit() {
        let mut agent = agent();
        let custom: crate::handlers::CustomHandler = Arc::new(|_args| -> HandlerFuture {
            Box::pin(async {
                crate::update_state(json!({"step": 1}));
                crate::soft_time_limit().await;
                Err(crate::retry(Some(Duration::from_secs(7)), "out of time").to_string())
            })
        });
        agent
            .handlers
            .insert("slow.step".into(), Handler::Custom(custom));
        let mut a = assignment(
            api::JobKind::Function {
                handler: "slow.step".into(),
                args: json!(null).into(),
            },
            1,
        );
        a.soft_timeout_ms = Some(100);
        a.timeout_ms = Some(10_000);
        agent.start(a);
        tokio::time::timeout(Duration::from_secs(10), agent.next_done())
            .await
            .unwrap();
        assert_eq!(
            agent.reports()[0].result,
            api::AttemptResult::Retry {
                countdown_ms: Some(7000),
                message: "out of time".into()
            }
        );
    }

    #[tokio::test]
    async fn a_function_past_its_timeout_reports_timed_out() {
        let mut agent = agent();
        let mut a = assignment(
            api::JobKind::Function {
                handler: "lqsm.sleep".into(),
                args: json!(30).into(),
            },
            1,
        );
        a.timeout_ms = Some(50);
        agent.start(a);
        tokio::time::timeout(Duration::from_secs(5), agent.next_done())
            .await
            .unwrap();
        assert_eq!(agent.reports()[0].result, api::AttemptResult::TimedOut);
    }

    #[tokio::test]
    async fn a_kill_order_stops_a_sleeping_function() {
        let mut agent = agent();
        let a = assignment(
            api::JobKind::Function {
                handler: "lqsm.sleep".into(),
                args: json!({"seconds": 30}).into(),
            },
            1,
        );
        let (job, token) = (a.job, a.token);
        agent.start(a);
        agent.on_answer(
            api::PollResponse {
                kill: vec![api::KillOrder {
                    job,
                    token,
                    reason: api::KillReason::Cancelled,
                }],
                ..Default::default()
            },
            0,
            true,
        );
        tokio::time::timeout(Duration::from_secs(5), agent.next_done())
            .await
            .unwrap();
        match &agent.reports()[0].result {
            api::AttemptResult::Failed { message, .. } => {
                assert!(message.contains("cancelled"), "{message}")
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn reports_are_dropped_only_once_a_poll_carrying_them_is_answered() {
        let mut reports = Reports::default();
        let report = |n: u64| api::FinishedAttempt {
            job: Uuid::nil(),
            token: n,
            result: api::AttemptResult::TimedOut,
            logs: None,
            usage: None,
            started_at_ms: None,
        };
        reports.push(report(1));
        reports.push(report(2));
        let carried = reports.end_seq();
        reports.push(report(3));
        reports.acknowledge_below(carried);
        assert_eq!(reports.items.len(), 1);
        assert_eq!(reports.items[0].token, 3);
        // An older answer arriving late changes nothing.
        reports.acknowledge_below(carried);
        assert_eq!(reports.items.len(), 1);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_secs(5), 42);
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let d = backoff.next_delay();
            assert!(d <= Duration::from_secs(5), "{d:?}");
        }
        assert!(backoff.next_delay() >= Duration::from_millis(2500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn fencing_leaves_room_before_the_heartbeat_timeout_and_polls_fit_in_it() {
        let secs = Duration::from_secs;
        // The default 20 s heartbeat: fence at 17 s (the server caps long-polls at 4 s).
        assert_eq!(fence_after(secs(20)), secs(17));
        // A 10 s heartbeat: fence at 8 s, long-polls of at most 2 s.
        assert_eq!(fence_after(secs(10)), secs(8));
        assert_eq!(longest_poll_wait(fence_after(secs(10))), secs(2));
        // The margin is at least a second and at most three…
        assert_eq!(fence_after(secs(4)), secs(3));
        assert_eq!(fence_after(secs(60)), secs(57));
        // …and never more than half a tiny timeout.
        assert_eq!(
            fence_after(Duration::from_millis(1000)),
            Duration::from_millis(500)
        );
    }

    #[tokio::test]
    async fn a_worker_silent_too_long_kills_its_attempts_and_does_not_report_them() {
        let mut agent = agent();
        assert_eq!(
            agent.fence_deadline(),
            None,
            "nothing runs: nothing to fence"
        );
        agent.learn_heartbeat_timeout(Some(2_000));
        agent.note_contact(Instant::now() - Duration::from_secs(10));
        agent.start(assignment(
            api::JobKind::Command {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "trap '' TERM; sleep 30".into(),
                ],
                env: Default::default(),
                cwd: None,
            },
            1,
        ));
        let deadline = agent.fence_deadline().expect("an attempt runs");
        assert!(deadline <= Instant::now(), "the fence time has passed");
        agent.fence();
        assert_eq!(agent.fence_deadline(), None, "fenced once");
        tokio::time::timeout(Duration::from_secs(5), agent.next_done())
            .await
            .expect("a fenced attempt is killed at once, not after a grace");
        assert_eq!(agent.running_count(), 0);
        assert!(
            agent.reports().is_empty(),
            "a fenced attempt is not reported: {:?}",
            agent.reports()
        );
        assert_eq!(agent.summary.fenced, 1);
    }

    #[tokio::test]
    async fn an_answer_moves_the_fence_time_to_when_its_call_was_sent() {
        let mut agent = agent();
        agent.learn_heartbeat_timeout(Some(10_000));
        agent.start(assignment(
            api::JobKind::Function {
                handler: "lqsm.sleep".into(),
                args: json!(30).into(),
            },
            1,
        ));
        let early = Instant::now() - Duration::from_secs(5);
        agent.note_contact(early);
        assert_eq!(agent.fence_deadline(), Some(early + Duration::from_secs(8)));
        // An answer to an older call (a replaced poll) does not move it back.
        agent.note_contact(early - Duration::from_secs(1));
        assert_eq!(agent.fence_deadline(), Some(early + Duration::from_secs(8)));
        let later = Instant::now();
        agent.note_contact(later);
        assert_eq!(agent.fence_deadline(), Some(later + Duration::from_secs(8)));
        // Long-polls shrink to fit the fence time (4 s: fence at 3 s, polls of
        // at most 0.75 s instead of the configured 2 s).
        agent.learn_heartbeat_timeout(Some(4_000));
        assert_eq!(agent.long_poll_wait(), Duration::from_millis(750));
    }

    #[tokio::test]
    async fn an_answer_is_not_acknowledged_while_an_earlier_one_may_still_arrive() {
        let mut agent = agent();
        let answer = |seq| api::PollResponse {
            seq,
            ..Default::default()
        };
        agent.on_answer(answer(1), 0, true);
        assert_eq!(agent.ack(), 1);
        // A poll was replaced; the current one is answered first, with number 3,
        // while the replaced one may still bring number 2.
        agent.replaced = 1;
        agent.on_answer(answer(3), 0, true);
        assert_eq!(agent.ack(), 1, "answer 2 may still be on its way");
        // The replaced poll's answer arrives: now everything up to 3 was seen.
        agent.replaced = 0;
        agent.on_answer(answer(2), 0, false);
        assert_eq!(agent.ack(), 3);
    }

    /// The answer to a poll numbered `seq` that named `registration`, refused with
    /// `status` and `code`, blaming `field`.
    fn refused_poll(
        seq: u64,
        registration: Option<u64>,
        status: u16,
        code: api::ErrorCode,
        field: &str,
    ) -> Net {
        Net::Polled {
            seq,
            sent_at: Instant::now(),
            carried_below: 0,
            registration,
            result: Err(ClientError::Api {
                status,
                error: api::ErrorDetail {
                    code,
                    message: "refused".into(),
                    field: Some(field.into()),
                },
            }),
        }
    }

    fn registered_as(agent: &mut Agent, number: u64) {
        agent.registered = true;
        agent.registration_number = Some(number);
        agent.current = Some(Current {
            seq: 1,
            sent_at: Instant::now(),
            long_poll: true,
        });
    }

    #[tokio::test]
    async fn a_stale_poll_makes_the_worker_register_again_only_if_it_named_the_held_number() {
        let mut agent = agent();
        // Sent before the worker registered again (it holds 9 now): dropped.
        registered_as(&mut agent, 9);
        let stale = api::ErrorCode::StaleRegistration;
        agent
            .on_net(refused_poll(1, Some(7), 409, stale, "registration"))
            .unwrap();
        assert!(agent.registered, "an older poll does not make it register");
        assert_eq!(agent.retry_at, None);
        // Naming 9, the number it holds: the server has a later registration the
        // worker never saw, and would refuse every poll. Register again, after a pause.
        registered_as(&mut agent, 9);
        agent
            .on_net(refused_poll(1, Some(9), 409, stale, "registration"))
            .unwrap();
        assert!(!agent.registered, "registers again");
        assert!(agent.retry_at.is_some(), "not in a tight loop");
    }

    #[tokio::test]
    async fn a_leader_of_an_older_protocol_is_offered_an_older_version_down_to_5() {
        let mut agent = agent();
        let refusal = |agent: &Agent| Net::Registered {
            seq: agent.current.as_ref().map_or(0, |c| c.seq),
            sent_at: Instant::now(),
            result: Err(ClientError::Api {
                status: 400,
                error: api::ErrorDetail {
                    code: api::ErrorCode::IncompatibleProtocol,
                    message: "this server speaks 1..=5".into(),
                    field: Some("protocol".into()),
                },
            }),
        };
        assert_eq!(agent.registration.protocol, api::WORKER_PROTOCOL);
        // One version less at each refusal, down to 5.
        for expected in (5..api::WORKER_PROTOCOL).rev() {
            agent.on_net(refusal(&agent)).unwrap();
            assert_eq!(agent.registration.protocol, expected);
            assert!(!agent.registered, "registers again at once, at {expected}");
        }
        let refused = agent.on_net(refusal(&agent));
        assert!(
            matches!(refused, Err(WorkerError::Refused(_))),
            "nothing older than 5 is spoken: {refused:?}"
        );
    }

    #[tokio::test]
    async fn a_leader_that_refuses_the_registration_number_is_polled_without_it() {
        let mut agent = agent();
        registered_as(&mut agent, 4);
        agent
            .on_net(refused_poll(
                1,
                Some(4),
                400,
                api::ErrorCode::UnknownField,
                "registration",
            ))
            .unwrap();
        assert_eq!(agent.registration_number, None, "polls name no number now");
        assert!(agent.registered);
        assert_eq!(agent.retry_at, None, "polls again at once");
    }

    #[test]
    fn the_dedupe_memory_is_bounded() {
        let mut seen = SeenAttempts::new(2);
        assert!(seen.insert((Uuid::nil(), 1)));
        assert!(!seen.insert((Uuid::nil(), 1)));
        assert!(seen.insert((Uuid::nil(), 2)));
        assert!(seen.insert((Uuid::nil(), 3)));
        assert_eq!(seen.set.len(), 2);
    }
}
