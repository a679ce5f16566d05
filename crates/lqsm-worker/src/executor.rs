//! Runs one command attempt: a child process in its own process group, its stdout and
//! stderr captured together (the tail, up to a cap), a timeout, and stop orders.
//!
//! An attempt's processes end with it: when the main process exits, whatever it left
//! behind in its group is killed; on a timeout or a stop the whole group gets SIGTERM,
//! a grace period, then SIGKILL. If the future is dropped half-way the group is
//! killed too.
//!
//! With [`ExecOptions::supervisor`] set (as a worker does), the command runs under
//! an attempt supervisor ([`crate::supervisor`]), which also kills the processes that
//! left the group, and kills everything when the worker itself dies.
//!
//! An attempt is measured ([`CommandOutcome::usage`]) by its cgroup when it has one
//! (`memory.peak`, or the largest `memory.current` sampled, and `cpu.stat`), else by
//! its supervisor (the sampled sum of its processes' resident memory, and their CPU
//! time once reaped). A command run without either is not measured.

pub use crate::cgroup::AttemptCgroup;
use crate::config::RunAs;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};

/// Variables of the worker's own environment a job never sees.
const HIDDEN_ENV: &[&str] = &["LQSM_TOKEN"];

/// How long output may keep coming after the group was killed (a process that left
/// the group can hold the pipe open forever).
const SETTLE: Duration = Duration::from_secs(1);

/// How often to look whether a group whose leader exited still has live members.
const GROUP_CHECK: Duration = Duration::from_millis(20);

/// How often to sample an attempt cgroup's `memory.current`, on a kernel without
/// `memory.peak`.
const CGROUP_SAMPLE: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandSpec {
    /// Program and arguments; the program is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Variables added to (or replacing those of) the worker's environment.
    pub env: Vec<(String, String)>,
    /// Working directory; the worker's own when absent.
    pub cwd: Option<String>,
}

/// How to run it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOptions {
    /// Kill it after this long.
    pub timeout: Option<Duration>,
    /// After this long, send it this signal (its soft time limit): once, to its whole
    /// process group.
    pub soft_timeout: Option<(Duration, Signal)>,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Most bytes of output kept (the last ones).
    pub log_cap: usize,
    /// The program to run as the attempt's supervisor (a binary whose `main` calls
    /// [`crate::supervisor::run_if_asked`] first). Without one, the command is the
    /// worker's own child: a worker killed with SIGKILL leaves its processes running.
    pub supervisor: Option<PathBuf>,
    /// The user the command runs as (the worker must be root); needs `supervisor`,
    /// which drops to the user's identity just before it becomes the command.
    pub run_as: Option<RunAs>,
    /// The memory check: kill the attempt once the resident memory of its processes
    /// together exceeds this many MiB, as sampled by the supervisor about every 100 ms.
    /// Needs `supervisor`; ignored for an attempt with a cgroup, whose `memory.max`
    /// enforces its limit.
    pub memory_check_mib: Option<u64>,
    /// Where the output also goes as it comes, for the worker to upload while the
    /// attempt runs (protocol 8).
    pub live: Option<LiveOutput>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            timeout: None,
            soft_timeout: None,
            grace: Duration::from_secs(10),
            log_cap: 1024 * 1024,
            supervisor: None,
            run_as: None,
            memory_check_mib: None,
            live: None,
        }
    }
}

/// An attempt's output as it grows, shared between the attempt's task (which writes)
/// and the worker's loop (which uploads it while the attempt runs): the text so far,
/// decoded as the report's is (a byte that is not UTF-8 becomes U+FFFD; a character
/// still incomplete waits for its end), its last `cap` bytes kept, and offsets that
/// count the bytes of that text from its first.
#[derive(Clone, Debug)]
pub struct LiveOutput(std::sync::Arc<std::sync::Mutex<LiveText>>);

#[derive(Debug)]
struct LiveText {
    cap: usize,
    /// Where `text` starts.
    start: u64,
    text: VecDeque<u8>,
    /// The first bytes of a character whose end has not come yet.
    pending: Vec<u8>,
}

/// The same output (one attempt's), not equal contents.
impl PartialEq for LiveOutput {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for LiveOutput {}

impl LiveOutput {
    /// Keeps the last `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(LiveText {
            cap,
            start: 0,
            text: VecDeque::new(),
            pending: Vec::new(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveText> {
        // Whatever a panic left is still text: a preview at worst incomplete.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds bytes the attempt wrote.
    pub fn push(&self, bytes: &[u8]) {
        let mut live = self.lock();
        let mut input = std::mem::take(&mut live.pending);
        input.extend_from_slice(bytes);
        let mut rest = input.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    live.text.extend(text.as_bytes());
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    live.text.extend(valid);
                    match e.error_len() {
                        Some(bad) => {
                            live.text
                                .extend(char::REPLACEMENT_CHARACTER.to_string().as_bytes());
                            rest = &after[bad..];
                        }
                        None => {
                            live.pending = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        let excess = live.text.len().saturating_sub(live.cap);
        if excess > 0 {
            live.text.drain(..excess);
            live.start += excess as u64;
        }
    }

    /// Where the text so far ends: the offset of the next byte.
    pub fn end(&self) -> u64 {
        let live = self.lock();
        live.start + live.text.len() as u64
    }

    /// The text from offset `from` on (from the first byte kept when `from` is
    /// before it), at most its last `most` bytes, with the offset it starts at; `None`
    /// when nothing came after `from`.
    pub fn since(&self, from: u64, most: usize) -> Option<(u64, String)> {
        let live = self.lock();
        let end = live.start + live.text.len() as u64;
        if end <= from {
            return None;
        }
        let mut at = from.max(live.start).max(end.saturating_sub(most as u64));
        let skip = usize::try_from(at - live.start).unwrap_or(usize::MAX);
        let mut bytes: Vec<u8> = live.text.iter().skip(skip).copied().collect();
        // Start at a whole character.
        at += lqsm_api::skip_partial_character(&mut bytes) as u64;
        Some((at, String::from_utf8_lossy(&bytes).into_owned()))
    }
}

/// An order to an attempt in progress, sent through a `watch` channel. Orders only
/// escalate: `Run` → `Graceful` → `Now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Keep running.
    Run,
    /// SIGTERM, the grace period, then SIGKILL; the reason is reported.
    Graceful(String),
    /// SIGKILL at once; the reason is reported.
    Now(String),
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Its main process exited with this code.
    Exited(i32),
    /// Its main process was killed by this signal, not by the worker.
    Signalled(i32),
    /// It reached its timeout and was killed.
    TimedOut,
    /// It was stopped by an order, for this reason.
    Stopped(String),
    /// It could not be started.
    SpawnFailed(String),
}

/// What a command's processes used, together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// The peak of their memory, bytes: the cgroup's peak, or the largest sum of their
    /// resident memory sampled (peaks shorter than the sampling period can be missed).
    pub peak_memory_bytes: u64,
    /// Their CPU time, user and system, ms.
    pub cpu_ms: u64,
}

impl Usage {
    /// The peak memory in MiB, rounded up.
    pub fn peak_memory_mib(&self) -> u64 {
        self.peak_memory_bytes.div_ceil(1 << 20)
    }
}

/// What came of running a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutcome {
    /// How it ended.
    pub ending: Ending,
    /// Its stdout and stderr as they interleaved, the tail kept; when bytes were
    /// dropped a first line says how many.
    pub output: String,
    /// Whether something in it was killed for exceeding its memory limit: by the
    /// kernel in its cgroup, or by the supervisor's memory check
    /// ([`ExecOptions::memory_check_mib`]; then `memory_check` is set too).
    pub memory_exceeded: bool,
    /// Whether the memory check killed it.
    pub memory_check: bool,
    /// What it used, when it was measured (by its cgroup or its supervisor).
    pub usage: Option<Usage>,
}

impl CommandOutcome {
    fn spawn_failed(message: String) -> Self {
        Self {
            ending: Ending::SpawnFailed(message),
            output: String::new(),
            memory_exceeded: false,
            memory_check: false,
            usage: None,
        }
    }

    /// The last non-empty line of output, shortened to 200 characters.
    pub fn last_line(&self) -> &str {
        let line = self
            .output
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        match line.char_indices().nth(200) {
            Some((end, _)) => &line[..end],
            None => line,
        }
    }
}

/// Runs `spec` to its end. `stop` carries orders; a closed channel means no more
/// orders will come. With `cgroup`, the process runs inside it.
pub async fn run_command(
    spec: CommandSpec,
    opts: &ExecOptions,
    mut stop: watch::Receiver<Stop>,
    cgroup: Option<&AttemptCgroup>,
) -> CommandOutcome {
    let Some(program) = spec.argv.first() else {
        return CommandOutcome::spawn_failed("the command is empty (argv has no program)".into());
    };
    if let Some(supervisor) = &opts.supervisor {
        return run_supervised(&spec, opts, supervisor, stop, cgroup).await;
    }
    if let Some(user) = &opts.run_as {
        return CommandOutcome::spawn_failed(format!(
            "running a command as `{}` needs the attempt supervisor (supervise_commands)",
            user.name
        ));
    }
    let (reader, writer) = match std::io::pipe() {
        Ok(pipe) => pipe,
        Err(e) => return CommandOutcome::spawn_failed(format!("cannot create a pipe: {e}")),
    };
    let writer_too = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return CommandOutcome::spawn_failed(format!("cannot create a pipe: {e}")),
    };
    let mut cmd = match cgroup {
        // The shell moves itself into the cgroup before it becomes the program, so
        // nothing the program starts can escape the limit.
        Some(cg) => {
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.arg("-c")
                .arg("echo $$ > \"$0\" && exec \"$@\"")
                .arg(cg.procs_file())
                .args(&spec.argv);
            cmd
        }
        None => {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(&spec.argv[1..]);
            cmd
        }
    };
    for name in HIDDEN_ENV {
        cmd.env_remove(name);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_too)
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let spawned = cmd.spawn();
    // The command holds our copies of the pipe's write end: without them, end of
    // output means every process that could write is gone.
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let place = spec
                .cwd
                .as_deref()
                .map(|d| format!(" in `{d}`"))
                .unwrap_or_default();
            return CommandOutcome::spawn_failed(format!("cannot start `{program}`{place}: {e}"));
        }
    };
    let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return CommandOutcome::spawn_failed("the child exited before it could be watched".into());
    };
    let mut group = ProcessGroup {
        pgid: Pid::from_raw(pid),
        cgroup_kill: cgroup.and_then(AttemptCgroup::kill_file),
        done: false,
    };
    let mut reader = match tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
        Ok(r) => r,
        Err(e) => {
            group.kill();
            let _ = child.wait().await;
            return CommandOutcome::spawn_failed(format!("cannot read the command's output: {e}"));
        }
    };

    let mut output = TailBuffer::new(opts.log_cap);
    let mut buf = vec![0u8; 16 * 1024];
    let mut meter = cgroup.map(CgroupMeter::new);
    let timeout_at = opts.timeout.map(|t| Instant::now() + t);
    let mut soft_at = opts
        .soft_timeout
        .map(|(t, signal)| (Instant::now() + t, signal));
    // Why the worker is ending it, and when SIGKILL follows SIGTERM.
    let mut stopping: Option<(Ending, Instant)> = None;
    let mut killed_at: Option<Instant> = None;
    let mut status = None;
    let mut eof = false;
    let mut orders_open = true;
    loop {
        if status.is_some() && eof && !group.alive() {
            break;
        }
        if killed_at.is_some_and(|at| at.elapsed() >= SETTLE) && status.is_some() {
            // Killed a while ago and still not settled: something left the group
            // and holds the pipe; stop waiting for it.
            break;
        }
        tokio::select! {
            read = reader.read(&mut buf), if !eof => match read {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => {
                    output.push(&buf[..n]);
                    if let Some(live) = &opts.live {
                        live.push(&buf[..n]);
                    }
                }
            },
            exit = child.wait(), if status.is_none() => {
                status = Some(exit);
                if stopping.is_none() {
                    // Whatever it left behind goes with it.
                    group.kill();
                    killed_at = Some(Instant::now());
                }
            }
            () = sleep_until_opt(timeout_at), if stopping.is_none() && status.is_none() => {
                group.terminate();
                stopping = Some((Ending::TimedOut, Instant::now() + opts.grace));
            }
            () = sleep_until_opt(soft_at.map(|s| s.0)), if soft_at.is_some() && stopping.is_none() && status.is_none() => {
                if let Some((_, signal)) = soft_at.take() {
                    group.signal(signal);
                }
            }
            changed = stop.changed(), if orders_open => {
                if changed.is_err() {
                    orders_open = false;
                    continue;
                }
                let order = stop.borrow_and_update().clone();
                match order {
                    Stop::Run => {}
                    Stop::Graceful(reason) => {
                        if stopping.is_none() && killed_at.is_none() {
                            group.terminate();
                            stopping = Some((Ending::Stopped(reason), Instant::now() + opts.grace));
                        }
                    }
                    Stop::Now(reason) => {
                        if killed_at.is_none() {
                            group.kill();
                            killed_at = Some(Instant::now());
                        }
                        if stopping.is_none() && status.is_none() {
                            stopping = Some((Ending::Stopped(reason), Instant::now()));
                        }
                    }
                }
            }
            () = sleep_until_opt(stopping.as_ref().map(|s| s.1)), if stopping.is_some() && killed_at.is_none() => {
                group.kill();
                killed_at = Some(Instant::now());
            }
            () = sleep(GROUP_CHECK), if status.is_some() => {}
            () = sleep_until_opt(meter.as_ref().and_then(CgroupMeter::next_sample)) => {
                if let Some(meter) = &mut meter {
                    meter.sample();
                }
            }
        }
    }
    // The whole group is gone (or killed and given up on).
    group.done = true;
    let memory_exceeded = cgroup.is_some_and(AttemptCgroup::oom_killed);
    let usage = meter.and_then(|m| m.finish(None));
    let ending = match (stopping, status) {
        (Some((why, _)), _) => why,
        (None, Some(Ok(status))) => match (status.code(), status.signal()) {
            (Some(code), _) => Ending::Exited(code),
            (None, Some(signal)) => Ending::Signalled(signal),
            (None, None) => Ending::Exited(-1),
        },
        (None, Some(Err(e))) => Ending::SpawnFailed(format!("cannot learn how it ended: {e}")),
        (None, None) => Ending::SpawnFailed("it vanished".into()),
    };
    CommandOutcome {
        ending,
        output: output.finish(),
        memory_exceeded,
        memory_check: false,
        usage,
    }
}

/// Measures an attempt by its cgroup: `memory.peak` where the kernel keeps it, else
/// the largest `memory.current` sampled; `cpu.stat`'s `usage_usec`. Read before the
/// cgroup is removed.
struct CgroupMeter<'a> {
    cgroup: &'a AttemptCgroup,
    /// The largest `memory.current` seen, when there is no `memory.peak`.
    sampled: Option<u64>,
    /// When to sample `memory.current` next (a deadline, not a pause that every
    /// line of output would restart).
    next: Instant,
}

impl<'a> CgroupMeter<'a> {
    fn new(cgroup: &'a AttemptCgroup) -> Self {
        let sampled = (!cgroup.has_memory_peak()).then_some(0);
        Self {
            cgroup,
            sampled,
            next: Instant::now(),
        }
    }

    /// When `memory.current` is to be sampled next; never when the kernel keeps
    /// `memory.peak`.
    fn next_sample(&self) -> Option<Instant> {
        self.sampled.map(|_| self.next)
    }

    fn sample(&mut self) {
        if let (Some(peak), Some(now)) = (&mut self.sampled, self.cgroup.memory_current()) {
            *peak = (*peak).max(now);
        }
        self.next = Instant::now() + CGROUP_SAMPLE;
    }

    /// The usage: what the cgroup knows, completed by `fallback` (the supervisor's
    /// measurement) where it knows nothing.
    fn finish(mut self, fallback: Option<Usage>) -> Option<Usage> {
        self.sample();
        let peak = self
            .cgroup
            .memory_peak()
            .or(self.sampled)
            .or(fallback.map(|u| u.peak_memory_bytes));
        let cpu_ms = self
            .cgroup
            .cpu_usec()
            .map(|usec| usec / 1000)
            .or(fallback.map(|u| u.cpu_ms));
        match (peak, cpu_ms) {
            (None, None) => None,
            (peak, cpu_ms) => Some(Usage {
                peak_memory_bytes: peak.unwrap_or(0),
                cpu_ms: cpu_ms.unwrap_or(0),
            }),
        }
    }
}

/// What the stage that drops to another user's identity needs to know.
#[derive(Clone, Copy)]
struct RunAsStage<'a> {
    user: &'a RunAs,
    /// The worker's binary, started again as the stage.
    worker_binary: &'a Path,
    /// The root-only file holding the job's environment and directory.
    job_file: &'a Path,
}

/// The argv to start: the command itself; with `run_as`, behind the worker's binary
/// started to drop to the user's identity and become the command
/// ([`crate::supervisor::RUN_AS_ARG`]); with a cgroup, all that behind a shell that moves
/// itself into the cgroup (as root, before any identity is dropped) and becomes the rest,
/// so that nothing the program starts can escape the limit.
fn command_line(
    spec: &CommandSpec,
    cgroup: Option<&AttemptCgroup>,
    run_as: Option<RunAsStage<'_>>,
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = Vec::new();
    if let Some(cg) = cgroup {
        argv.extend([
            "/bin/sh".into(),
            "-c".into(),
            "echo $$ > \"$0\" && exec \"$@\"".into(),
            cg.procs_file().into(),
        ]);
    }
    if let Some(stage) = run_as {
        argv.extend([
            stage.worker_binary.into(),
            crate::supervisor::RUN_AS_ARG.into(),
            stage.user.uid.to_string().into(),
            stage.user.gid.to_string().into(),
            stage.job_file.into(),
        ]);
    }
    argv.extend(spec.argv.iter().map(OsString::from));
    argv
}

/// Writes what the command gets only once it runs as `user` — the job's environment
/// (after `HOME`, `USER` and `LOGNAME` set as `su -` does, so the job's own values win)
/// and directory — to a new file only its owner (root) may read, removed when dropped.
fn write_job_setting(spec: &CommandSpec, user: &RunAs) -> std::io::Result<tempfile::NamedTempFile> {
    let mut env = vec![
        ("HOME".to_owned(), user.home.to_string_lossy().into_owned()),
        ("USER".to_owned(), user.name.clone()),
        ("LOGNAME".to_owned(), user.name.clone()),
    ];
    env.extend(spec.env.iter().cloned());
    let setting = crate::supervisor::JobSetting {
        env,
        cwd: spec.cwd.clone(),
    };
    // Created new (never an existing file or link) with mode 0600.
    let mut file = tempfile::Builder::new()
        .prefix("lqsm-run-as-")
        .suffix(".json")
        .tempfile()?;
    serde_json::to_writer(&mut file, &setting).map_err(std::io::Error::other)?;
    std::io::Write::flush(&mut file)?;
    Ok(file)
}

/// Runs `spec` under an attempt supervisor (`supervisor`, started with the hidden
/// argument): orders go to it through a pipe, and it reports how the command ended
/// once every process of the attempt is gone. Dropping this future closes the
/// control socket, which makes the supervisor kill everything, as the worker's death
/// does.
async fn run_supervised(
    spec: &CommandSpec,
    opts: &ExecOptions,
    supervisor: &Path,
    mut stop: watch::Receiver<Stop>,
    cgroup: Option<&AttemptCgroup>,
) -> CommandOutcome {
    let program = spec.argv.first().map(String::as_str).unwrap_or_default();
    // Bounds the descriptors opened for attempts still waiting to start, too.
    let slot = SPAWN_SLOTS.acquire().await;
    // The output pipe, and one socket both ways to the supervisor: orders in,
    // status lines out (two descriptors kept per attempt, as many as a direct child
    // with its output pipe).
    let channels = (std::io::pipe(), std::os::unix::net::UnixStream::pair());
    let ((output_reader, output_writer), (control, supervisor_end)) = match channels {
        (Ok(output), Ok(control)) => (output, control),
        (Err(e), _) | (_, Err(e)) => {
            return CommandOutcome::spawn_failed(format!("cannot create a pipe: {e}"));
        }
    };
    let supervisor_end_too = match supervisor_end.try_clone() {
        Ok(end) => end,
        Err(e) => return CommandOutcome::spawn_failed(format!("cannot create a pipe: {e}")),
    };
    // The supervisor's child is the same binary, which `/proc/self/exe` names even once
    // an upgrade replaced the file; a cgroup's shell must be given the binary's path
    // (its own `/proc/self/exe` is the shell).
    let worker_binary = match &opts.run_as {
        Some(_) if cgroup.is_none() => Some(supervisor.to_path_buf()),
        Some(_) => match std::fs::canonicalize(supervisor) {
            Ok(path) => Some(path),
            Err(e) => {
                return CommandOutcome::spawn_failed(format!(
                    "cannot find the worker's binary ({}) to run the command as another user: {e}",
                    supervisor.display()
                ));
            }
        },
        None => None,
    };
    // With another user, the supervisor, a cgroup's shell and the stage that drops the
    // identity all run as root: none of them may see the job's environment (a job's
    // `LD_PRELOAD` or `GCONV_PATH` would run its code as root) nor enter its directory as
    // root. They get the worker's (operator's) environment; the job's, and its
    // directory, go through a root-only file to the stage, which applies them once it
    // is the user. The file goes when this attempt ends.
    let job_file = match &opts.run_as {
        Some(user) => match write_job_setting(spec, user) {
            Ok(file) => Some(file),
            Err(e) => {
                return CommandOutcome::spawn_failed(format!(
                    "cannot write the job's environment for the user `{}`: {e}",
                    user.name
                ));
            }
        },
        None => None,
    };
    let run_as = match (&opts.run_as, worker_binary.as_deref(), &job_file) {
        (Some(user), Some(worker_binary), Some(job_file)) => Some(RunAsStage {
            user,
            worker_binary,
            job_file: job_file.path(),
        }),
        _ => None,
    };
    // Without a cgroup, the supervisor measures the attempt's memory, and enforces its
    // limit when the memory check is on.
    let settings = crate::supervisor::SupervisorSettings {
        sample_memory: cgroup.is_none(),
        memory_limit_mib: opts.memory_check_mib.filter(|_| cgroup.is_none()),
    };
    let mut cmd = tokio::process::Command::new(supervisor);
    cmd.arg0(crate::supervisor::SUPERVISOR_NAME)
        .arg(crate::supervisor::SUPERVISOR_ARG)
        .arg(std::process::id().to_string())
        .arg(settings.to_arg())
        .args(command_line(spec, cgroup, run_as));
    for name in HIDDEN_ENV {
        cmd.env_remove(name);
    }
    if run_as.is_none() {
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
    }
    cmd.stdin(OwnedFd::from(supervisor_end))
        .stdout(OwnedFd::from(supervisor_end_too))
        .stderr(output_writer)
        // Its own group: a signal to the worker's group (Ctrl-C in a terminal)
        // must not kill the supervisor before it has killed the command.
        .process_group(0);
    let place = spec
        .cwd
        .as_deref()
        .map(|d| format!(" in `{d}`"))
        .unwrap_or_default();
    let spawned = spawn_off_the_runtime(cmd).await;
    drop(slot);
    let mut supervisor_process = match spawned {
        Ok(child) => child,
        Err(e) => {
            return CommandOutcome::spawn_failed(format!("cannot start `{program}`{place}: {e}"));
        }
    };
    let cgroup_kill = cgroup.and_then(AttemptCgroup::kill_file);
    let channels = (
        tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(output_reader)),
        control
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(control)),
    );
    let (mut output_pipe, (mut status_pipe, order_pipe)) = match channels {
        (Ok(output), Ok(control)) => (output, control.into_split()),
        (Err(e), _) | (_, Err(e)) => {
            // Our end of the control socket is closed: the supervisor kills
            // everything and exits.
            let _ = supervisor_process.wait().await;
            return CommandOutcome::spawn_failed(format!("cannot read the command's output: {e}"));
        }
    };
    let mut orders = SupervisorOrders {
        pipe: order_pipe,
        cgroup_kill,
    };

    let mut output = TailBuffer::new(opts.log_cap);
    let mut meter = cgroup.map(CgroupMeter::new);
    let mut status_text = Vec::new();
    let mut status_buf = [0u8; 256];
    let mut buf = vec![0u8; 16 * 1024];
    let timeout_at = opts.timeout.map(|t| Instant::now() + t);
    let mut soft_at = opts
        .soft_timeout
        .map(|(t, signal)| (Instant::now() + t, signal));
    let mut stopping: Option<(Ending, Instant)> = None;
    let mut killed = false;
    let mut exited: Option<(std::io::Result<std::process::ExitStatus>, Instant)> = None;
    let mut output_eof = false;
    let mut status_eof = false;
    let mut orders_open = true;
    loop {
        if let Some((_, at)) = &exited
            && status_eof
            && (output_eof || at.elapsed() >= SETTLE)
        {
            // Everything of the attempt is gone; output still open after that can
            // only be held by a process that was handed the pipe from outside.
            break;
        }
        tokio::select! {
            read = output_pipe.read(&mut buf), if !output_eof => match read {
                Ok(0) | Err(_) => output_eof = true,
                Ok(n) => {
                    output.push(&buf[..n]);
                    if let Some(live) = &opts.live {
                        live.push(&buf[..n]);
                    }
                }
            },
            read = status_pipe.read(&mut status_buf), if !status_eof => match read {
                Ok(0) | Err(_) => status_eof = true,
                Ok(n) => status_text.extend_from_slice(&status_buf[..n]),
            },
            exit = supervisor_process.wait(), if exited.is_none() => {
                exited = Some((exit, Instant::now()));
            }
            () = sleep_until_opt(timeout_at), if stopping.is_none() && exited.is_none() => {
                orders.terminate();
                stopping = Some((Ending::TimedOut, Instant::now() + opts.grace));
            }
            () = sleep_until_opt(soft_at.map(|s| s.0)), if soft_at.is_some() && stopping.is_none() && exited.is_none() => {
                if let Some((_, signal)) = soft_at.take() {
                    orders.signal(signal);
                }
            }
            changed = stop.changed(), if orders_open => {
                if changed.is_err() {
                    orders_open = false;
                    continue;
                }
                let order = stop.borrow_and_update().clone();
                match order {
                    Stop::Run => {}
                    Stop::Graceful(reason) => {
                        if stopping.is_none() && !killed && exited.is_none() {
                            orders.terminate();
                            stopping = Some((Ending::Stopped(reason), Instant::now() + opts.grace));
                        }
                    }
                    Stop::Now(reason) => {
                        if !killed {
                            orders.kill();
                            killed = true;
                        }
                        if stopping.is_none() && exited.is_none() {
                            stopping = Some((Ending::Stopped(reason), Instant::now()));
                        }
                    }
                }
            }
            () = sleep_until_opt(stopping.as_ref().map(|s| s.1)), if stopping.is_some() && !killed => {
                orders.kill();
                killed = true;
            }
            () = sleep(GROUP_CHECK), if exited.is_some() => {}
            () = sleep_until_opt(meter.as_ref().and_then(CgroupMeter::next_sample)) => {
                if let Some(meter) = &mut meter {
                    meter.sample();
                }
            }
        }
    }
    let report = SupervisorReport::parse(&String::from_utf8_lossy(&status_text));
    let memory_exceeded = report.memory_exceeded || cgroup.is_some_and(AttemptCgroup::oom_killed);
    let usage = match meter {
        Some(meter) => meter.finish(report.usage),
        None => report.usage,
    };
    if report.ending.is_none()
        && let Some(pid) = report.started
    {
        // The supervisor itself was killed before it could clean up: do what it
        // can no longer do for the command's group.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let ending = match (stopping, report.ending, exited) {
        (Some((why, _)), _, _) => why,
        (None, Some(SupervisedEnding::SpawnFailed(e)), _) => {
            Ending::SpawnFailed(format!("cannot start `{program}`{place}: {e}"))
        }
        (None, Some(SupervisedEnding::Ended(ending)), _) => ending,
        (None, None, Some((Ok(status), _))) => Ending::SpawnFailed(format!(
            "the attempt's supervisor ended without saying how the command ended ({status})"
        )),
        (None, None, Some((Err(e), _))) => Ending::SpawnFailed(format!(
            "cannot learn how the attempt's supervisor ended: {e}"
        )),
        (None, None, None) => Ending::SpawnFailed("it vanished".into()),
    };
    CommandOutcome {
        ending,
        output: output.finish(),
        memory_exceeded,
        memory_check: report.memory_exceeded,
        usage,
    }
}

/// Starting a process (a fork and an exec) blocks its thread for a millisecond or
/// more; a worker handed hundreds of attempts at once would hold the runtime's
/// threads with them and delay its polls — long enough, on a small machine, to make
/// it fence itself. So processes start on the blocking pool, a few at a time.
static SPAWN_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Starts `cmd` on the blocking pool, then drops it: it holds our copies of the
/// other pipe ends, and only the child may hold them (end of file then means it is
/// gone).
async fn spawn_off_the_runtime(
    mut cmd: tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    tokio::task::spawn_blocking(move || {
        let spawned = cmd.spawn();
        drop(cmd);
        spawned
    })
    .await
    .unwrap_or_else(|e| {
        Err(std::io::Error::other(format!(
            "the start was interrupted: {e}"
        )))
    })
}

/// The worker's end of a supervisor's control socket, for orders.
struct SupervisorOrders {
    pipe: tokio::net::unix::OwnedWriteHalf,
    cgroup_kill: Option<PathBuf>,
}

impl SupervisorOrders {
    /// SIGTERM to the command's process group.
    fn terminate(&mut self) {
        // One byte into an empty socket never blocks; a closed one means the
        // supervisor is already gone.
        let _ = self.pipe.try_write(b"T");
    }

    /// `signal` to the command's process group (its soft time limit): `S` and the
    /// signal's number, in one write.
    fn signal(&mut self, signal: Signal) {
        let _ = self.pipe.try_write(&[b'S', signal as i32 as u8]);
    }

    /// SIGKILL to every process of the attempt.
    fn kill(&mut self) {
        let _ = self.pipe.try_write(b"K");
        if let Some(file) = &self.cgroup_kill {
            // Also reaches processes that left the group but not the cgroup.
            let _ = std::fs::write(file, "1");
        }
    }
}

/// How the supervisor says the command ended.
enum SupervisedEnding {
    Ended(Ending),
    SpawnFailed(String),
}

/// What a supervisor wrote on its status pipe. A line it does not know is skipped
/// (a supervisor of a later release may say more).
struct SupervisorReport {
    /// The command's main process (and process group).
    started: Option<i32>,
    ending: Option<SupervisedEnding>,
    /// `usage PEAK_KIB CPU_MS`: what the attempt's processes used.
    usage: Option<Usage>,
    /// `memory-exceeded …`: the memory check killed the attempt.
    memory_exceeded: bool,
}

impl SupervisorReport {
    fn parse(text: &str) -> Self {
        let mut report = Self {
            started: None,
            ending: None,
            usage: None,
            memory_exceeded: false,
        };
        for line in text.lines() {
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            match word {
                "started" => report.started = rest.trim().parse().ok(),
                "usage" => {
                    let mut numbers = rest.split_whitespace().map(str::parse::<u64>);
                    if let (Some(Ok(peak_kib)), Some(Ok(cpu_ms))) = (numbers.next(), numbers.next())
                    {
                        report.usage = Some(Usage {
                            peak_memory_bytes: peak_kib.saturating_mul(1024),
                            cpu_ms,
                        });
                    }
                }
                "memory-exceeded" => report.memory_exceeded = true,
                "exited" => {
                    if let Ok(code) = rest.trim().parse() {
                        report.ending = Some(SupervisedEnding::Ended(Ending::Exited(code)));
                    }
                }
                "signalled" => {
                    if let Ok(signal) = rest.trim().parse() {
                        report.ending = Some(SupervisedEnding::Ended(Ending::Signalled(signal)));
                    }
                }
                "spawn-failed" => {
                    report.ending = Some(SupervisedEnding::SpawnFailed(rest.to_owned()));
                }
                _ => {}
            }
        }
        report
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The process group of one attempt; killed on drop unless it is known to be gone.
struct ProcessGroup {
    pgid: Pid,
    cgroup_kill: Option<PathBuf>,
    done: bool,
}

impl ProcessGroup {
    fn signal(&self, signal: Signal) {
        let _ = killpg(self.pgid, signal);
    }

    fn terminate(&self) {
        let _ = killpg(self.pgid, Signal::SIGTERM);
        // A stopped process handles SIGTERM only once continued.
        let _ = killpg(self.pgid, Signal::SIGCONT);
    }

    fn kill(&self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
        if let Some(file) = &self.cgroup_kill {
            // Also reaches processes that left the group but not the cgroup.
            let _ = std::fs::write(file, "1");
        }
    }

    /// Whether a live (not zombie) process is still in the group.
    fn alive(&self) -> bool {
        if killpg(self.pgid, None).is_err() {
            return false;
        }
        // Zombies answer signal 0 too; they are dead, only not yet reaped by init.
        group_has_live_member(self.pgid.as_raw())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if !self.done {
            self.kill();
        }
    }
}

/// Looks through /proc for a process of group `pgid` that is not a zombie; `true`
/// when /proc cannot tell (better to wait than to leave a process behind).
fn group_has_live_member(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, group)) = state_and_group(&stat)
            && group == pgid
            && state != 'Z'
            && state != 'X'
        {
            return true;
        }
    }
    false
}

/// State and process group from a `/proc/<pid>/stat` line: `pid (comm) S ppid pgrp …`;
/// `comm` may hold spaces and parentheses, so parse from the last `)`.
pub(crate) fn state_and_group(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, group))
}

/// Keeps the last `cap` bytes written to it.
struct TailBuffer {
    cap: usize,
    bytes: VecDeque<u8>,
    dropped: u64,
}

impl TailBuffer {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            bytes: VecDeque::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
        let excess = self.bytes.len().saturating_sub(self.cap);
        if excess > 0 {
            self.bytes.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    fn finish(mut self) -> String {
        let bytes = self.bytes.make_contiguous();
        let mut start = 0;
        if self.dropped > 0 {
            // The cut may have split a character: skip its continuation bytes.
            while start < bytes.len().min(3) && bytes[start] & 0b1100_0000 == 0b1000_0000 {
                start += 1;
            }
        }
        let text = String::from_utf8_lossy(&bytes[start..]);
        if self.dropped == 0 {
            return text.into_owned();
        }
        let dropped = self.dropped + start as u64;
        format!("[lqsm: {dropped} earlier bytes of output were dropped]\n{text}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn live_output_counts_the_text_decodes_as_the_report_does_and_keeps_the_end() {
        let live = LiveOutput::new(1024);
        live.push(b"one\n");
        // A character cut between two reads waits for its end; a bad byte is replaced.
        live.push(&"\u{e9}".as_bytes()[..1]);
        assert_eq!(live.since(0, usize::MAX), Some((0, "one\n".to_owned())));
        live.push(&"\u{e9}".as_bytes()[1..]);
        live.push(b"\xff!");
        let all = "one\n\u{e9}\u{fffd}!";
        assert_eq!(live.end(), all.len() as u64);
        assert_eq!(live.since(4, usize::MAX), Some((4, all[4..].to_owned())));
        assert_eq!(live.since(live.end(), usize::MAX), None);
        assert_eq!(
            live.since(0, 4),
            Some((all.len() as u64 - 4, all[all.len() - 4..].to_owned()))
        );
        let small = LiveOutput::new(4);
        small.push(b"0123456789");
        assert_eq!(small.since(0, usize::MAX), Some((6, "6789".to_owned())));
    }

    fn sh(script: &str) -> CommandSpec {
        CommandSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..CommandSpec::default()
        }
    }

    #[test]
    fn a_command_of_another_user_enters_its_cgroup_as_root_before_dropping_to_the_user() {
        let spec = sh("id -u");
        let cgroup = AttemptCgroup::at(PathBuf::from("/sys/fs/cgroup/lqsm/a1"));
        let user = RunAs {
            name: "nobody".into(),
            uid: 65534,
            gid: 65533,
            home: "/nonexistent".into(),
        };
        let stage = RunAsStage {
            user: &user,
            worker_binary: Path::new("/usr/bin/lqsm"),
            job_file: Path::new("/tmp/lqsm-run-as-1.json"),
        };
        let line: Vec<String> = command_line(&spec, Some(&cgroup), Some(stage))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            line,
            [
                "/bin/sh",
                "-c",
                "echo $$ > \"$0\" && exec \"$@\"",
                "/sys/fs/cgroup/lqsm/a1/cgroup.procs",
                "/usr/bin/lqsm",
                crate::supervisor::RUN_AS_ARG,
                "65534",
                "65533",
                "/tmp/lqsm-run-as-1.json",
                "/bin/sh",
                "-c",
                "id -u",
            ]
        );
        let plain: Vec<OsString> = command_line(&spec, None, None);
        assert_eq!(plain, ["/bin/sh", "-c", "id -u"]);
    }

    fn quick() -> ExecOptions {
        ExecOptions {
            timeout: Some(Duration::from_secs(20)),
            soft_timeout: None,
            grace: Duration::from_millis(300),
            log_cap: 1024 * 1024,
            supervisor: None,
            run_as: None,
            memory_check_mib: None,
            live: None,
        }
    }

    async fn run(spec: CommandSpec, opts: &ExecOptions) -> CommandOutcome {
        let (_tx, rx) = watch::channel(Stop::Run);
        run_command(spec, opts, rx, None).await
    }

    /// Whether a live process has this pid (zombies count as gone).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => state_and_group(&stat).is_some_and(|(s, _)| s != 'Z' && s != 'X'),
            Err(_) => false,
        }
    }

    fn pids_in(output: &str) -> Vec<i32> {
        output
            .lines()
            .filter_map(|l| l.strip_prefix("pid "))
            .map(|p| p.trim().parse().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn exit_codes_are_recorded() {
        let ok = run(sh("exit 0"), &quick()).await;
        assert_eq!(ok.ending, Ending::Exited(0));
        let failed = run(sh("echo first; echo 'it broke' >&2; exit 3"), &quick()).await;
        assert_eq!(failed.ending, Ending::Exited(3));
        assert_eq!(failed.last_line(), "it broke");
    }

    #[tokio::test]
    async fn stdout_and_stderr_are_captured_together_in_order() {
        let out = run(sh("echo one; echo two >&2; echo three"), &quick()).await;
        assert_eq!(out.output, "one\ntwo\nthree\n");
    }

    #[tokio::test]
    async fn output_beyond_the_cap_keeps_the_tail_and_says_what_was_dropped() {
        let opts = ExecOptions {
            log_cap: 1000,
            ..quick()
        };
        // 20,000 lines of "line N", then a last line.
        let out = run(
            sh("i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done; echo the end"),
            &opts,
        )
        .await;
        assert_eq!(out.ending, Ending::Exited(0));
        assert!(
            out.output.ends_with("line 19999\nthe end\n"),
            "{}",
            out.output
        );
        let (note, tail) = out.output.split_once('\n').unwrap();
        assert!(
            note.starts_with("[lqsm: ") && note.contains("dropped"),
            "{note}"
        );
        assert_eq!(tail.len(), 1000);
    }

    #[tokio::test]
    async fn environment_and_working_directory_are_the_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sh("echo \"$GREETING\"; pwd; echo \"token=${LQSM_TOKEN:-none}\"");
        spec.env = vec![("GREETING".into(), "hello there".into())];
        spec.cwd = Some(dir.path().to_str().unwrap().into());
        let out = run(spec, &quick()).await;
        let canonical = dir.path().canonicalize().unwrap();
        assert_eq!(
            out.output,
            format!("hello there\n{}\ntoken=none\n", canonical.display())
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_failure_naming_it() {
        let spec = CommandSpec {
            argv: vec!["/nonexistent/lqsm-test-program".into()],
            ..CommandSpec::default()
        };
        let out = run(spec, &quick()).await;
        match out.ending {
            Ending::SpawnFailed(message) => {
                assert!(
                    message.contains("/nonexistent/lqsm-test-program"),
                    "{message}"
                )
            }
            other => panic!("expected a spawn failure, got {other:?}"),
        }
        let empty = run(CommandSpec::default(), &quick()).await;
        assert!(matches!(empty.ending, Ending::SpawnFailed(_)));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group_even_processes_ignoring_sigterm() {
        let opts = ExecOptions {
            timeout: Some(Duration::from_millis(300)),
            soft_timeout: None,
            grace: Duration::from_millis(300),
            log_cap: 4096,
            supervisor: None,
            run_as: None,
            memory_check_mib: None,
            live: None,
        };
        // SIGTERM is ignored by the shell and, inherited, by both sleeps: only the
        // SIGKILL after the grace period can end them.
        let started = std::time::Instant::now();
        let out = run(
            sh("trap '' TERM; sleep 30 & echo pid $!; sleep 30 & echo pid $!; wait"),
            &opts,
        )
        .await;
        assert_eq!(out.ending, Ending::TimedOut);
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        let pids = pids_in(&out.output);
        assert_eq!(pids.len(), 2, "{}", out.output);
        for pid in pids {
            assert!(!alive(pid), "background process {pid} survived the timeout");
        }
    }

    #[tokio::test]
    async fn a_background_process_left_behind_by_a_finished_command_is_killed() {
        let out = run(sh("sleep 30 & echo pid $!; exit 0"), &quick()).await;
        assert_eq!(out.ending, Ending::Exited(0));
        let pids = pids_in(&out.output);
        assert_eq!(pids.len(), 1);
        assert!(!alive(pids[0]), "the leftover sleep survived");
    }

    #[tokio::test]
    async fn a_graceful_stop_lets_the_command_clean_up_within_the_grace() {
        let opts = ExecOptions {
            grace: Duration::from_secs(10),
            ..quick()
        };
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let script = format!(
            "trap 'echo cleaning up; exit 7' TERM; touch '{}'; while :; do sleep 0.05; done",
            ready.display()
        );
        let (tx, rx) = watch::channel(Stop::Run);
        let task = tokio::spawn(async move { run_command(sh(&script), &opts, rx, None).await });
        // The file appears once the trap is in place.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !ready.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the command never got ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = std::time::Instant::now();
        tx.send_replace(Stop::Graceful("cancelled".into()));
        let out = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.ending, Ending::Stopped("cancelled".into()));
        assert!(out.output.contains("cleaning up"), "{}", out.output);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn stop_now_kills_at_once_without_waiting_for_the_grace() {
        let opts = ExecOptions {
            grace: Duration::from_secs(30),
            ..quick()
        };
        let (tx, rx) = watch::channel(Stop::Run);
        let task = tokio::spawn(async move {
            run_command(sh("trap '' TERM; sleep 30"), &opts, rx, None).await
        });
        tx.send_replace(Stop::Now("worker shutting down".into()));
        let out = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("a kill does not wait for the 30 s grace")
            .unwrap();
        assert_eq!(out.ending, Ending::Stopped("worker shutting down".into()));
    }

    #[test]
    fn the_supervisors_status_lines_are_read_and_unknown_ones_skipped() {
        let report = SupervisorReport::parse(
            "started 1234\nsomething-new 1 2 3\nmemory-exceeded 92160 50\nusage 92160 340\nsignalled 9\n",
        );
        assert_eq!(report.started, Some(1234));
        assert!(report.memory_exceeded);
        assert_eq!(
            report.usage,
            Some(Usage {
                peak_memory_bytes: 90 << 20,
                cpu_ms: 340
            })
        );
        assert_eq!(report.usage.unwrap().peak_memory_mib(), 90);
        assert!(matches!(
            report.ending,
            Some(SupervisedEnding::Ended(Ending::Signalled(9)))
        ));
        // A supervisor that measured nothing, and a malformed line, say nothing.
        let report = SupervisorReport::parse("started 7\nusage lots 3\nexited 0\n");
        assert_eq!(report.usage, None);
        assert!(!report.memory_exceeded);
        assert!(matches!(
            report.ending,
            Some(SupervisedEnding::Ended(Ending::Exited(0)))
        ));
        // More numbers than it knows (a later release) still give the first two.
        let report = SupervisorReport::parse("usage 1 2 3\n");
        assert_eq!(
            report.usage,
            Some(Usage {
                peak_memory_bytes: 1024,
                cpu_ms: 2
            })
        );
    }

    #[test]
    fn a_cgroup_measures_from_memory_peak_or_the_largest_current_seen() {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = AttemptCgroup::at(dir.path().to_path_buf());
        std::fs::write(dir.path().join("memory.current"), "1000\n").unwrap();
        // No memory.peak (a kernel before 5.19): the largest sample counts.
        let mut meter = CgroupMeter::new(&cgroup);
        assert!(meter.next_sample().is_some());
        meter.sample();
        std::fs::write(dir.path().join("memory.current"), "5000\n").unwrap();
        meter.sample();
        std::fs::write(dir.path().join("memory.current"), "2000\n").unwrap();
        meter.sample();
        let supervisor = Usage {
            peak_memory_bytes: 1,
            cpu_ms: 77,
        };
        // No cpu.stat: the supervisor's CPU time fills in.
        assert_eq!(
            meter.finish(Some(supervisor)),
            Some(Usage {
                peak_memory_bytes: 5000,
                cpu_ms: 77
            })
        );
        std::fs::write(dir.path().join("memory.peak"), "9000\n").unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 123456\n").unwrap();
        let meter = CgroupMeter::new(&cgroup);
        assert_eq!(meter.next_sample(), None);
        assert_eq!(
            meter.finish(Some(supervisor)),
            Some(Usage {
                peak_memory_bytes: 9000,
                cpu_ms: 123
            })
        );
    }

    #[test]
    fn proc_stat_lines_with_odd_command_names_parse() {
        let line = "1234 (my (odd) prog) S 1 1230 1230 0 -1";
        assert_eq!(state_and_group(line), Some(('S', 1230)));
        assert_eq!(state_and_group("garbage"), None);
    }

    #[test]
    fn a_tail_cut_inside_a_character_does_not_start_with_garbage() {
        let mut tail = TailBuffer::new(4);
        tail.push("aé€".as_bytes()); // 1 + 2 + 3 bytes: the cut falls inside 'é'
        let text = tail.finish();
        assert!(text.ends_with('€'), "{text}");
        assert!(!text.contains('\u{FFFD}'), "{text}");
    }
}
