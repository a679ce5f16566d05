//! The per-attempt supervisor: a small process between the worker and a command, so
//! that no process of an attempt outlives the worker, however the worker dies.
//!
//! A process group alone cannot promise that: when the worker is killed with
//! SIGKILL (by a person, or by the kernel's OOM killer) nothing is left to signal the
//! group, and a command may leave its group anyway (`setsid`, a double fork). So
//! every command attempt runs under a supervisor, the worker's own binary started
//! again with a hidden first argument ([`SUPERVISOR_ARG`]). The supervisor:
//!
//! - makes itself a *child subreaper*, so that whatever the command starts — even a
//!   `setsid` daemon that double-forked — stays its descendant;
//! - notices the worker's death three ways: the end of its control socket to the
//!   worker (the kernel closes it whatever killed the worker, also when the worker
//!   died before the supervisor got going), a parent-death signal, and its parent
//!   process id changing;
//! - on the worker's death, on a kill order, or when the command's main process
//!   exits, SIGKILLs every descendant (found in /proc), reaps them until it has no
//!   child left, reports how the command ended and exits;
//! - measures the attempt: every descendant is reaped by it, so their CPU time
//!   accrues to its `getrusage(RUSAGE_CHILDREN)`; when asked (no cgroup measures the
//!   attempt), it also samples the resident memory of its descendants together about
//!   every 100 ms and keeps the peak, and with a memory limit (the worker's memory
//!   check) kills the whole tree once the sum exceeds it, as YARN's NodeManager does
//!   with its process-tree monitor. A peak shorter than the sampling period can be
//!   missed; `ru_maxrss`, the largest single process's peak, is a floor.
//!
//! Its file descriptors 0 and 1 are one socket to the worker: it reads orders on
//! 0 (`T`: SIGTERM to the command's process group; `K`: kill everything; end of
//! file: the worker is gone, kill everything) and writes status lines on 1
//! (`started PID`; `memory-exceeded USED_KIB LIMIT_MIB` when the memory check killed
//! the attempt; `usage PEAK_KIB CPU_MS` once everything is reaped; then one of
//! `exited CODE`, `signalled SIGNAL`, `spawn-failed MESSAGE`). The worker ignores a
//! line it does not know. 2 is the command's output, given to it as both its stdout
//! and stderr.
//!
//! A binary that runs a worker must call [`run_if_asked`] first thing in `main`:
//! `lqsm` does, and so must a program of one's own built on this crate
//! (see `examples/handlers.rs`).

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid, getppid};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The hidden first argument that turns a worker's binary into an attempt's
/// supervisor. Not meant to be typed by people.
pub const SUPERVISOR_ARG: &str = "__lqsm-attempt-supervisor";

/// The hidden first argument that makes a worker's binary drop to another user's
/// identity and become a command: `RUN_AS_ARG UID GID JOB_FILE PROGRAM ARGS...`. Started
/// (by the supervisor, behind the cgroup's shell when there is one) as root, it reads the
/// job's environment and working directory from `JOB_FILE` (written by the worker, owned
/// by root, mode 0600: never in argv, which every user can read, nor in the environment
/// of a process running as root, whose dynamic loader would obey `LD_PRELOAD` and the
/// like), sets no supplementary groups, the gid, then the uid, checks that nothing of
/// root is left, and only then enters the directory, applies the environment and executes
/// the program in place, so that the command keeps the process the supervisor watches.
/// Not meant to be typed.
pub const RUN_AS_ARG: &str = "__lqsm-run-as";

/// The name the supervisor shows in `ps`.
pub(crate) const SUPERVISOR_NAME: &str = "lqsm-attempt-supervisor";

/// Set once [`run_if_asked`] has been called in this process (and returned): the
/// binary can then serve as its own attempts' supervisor.
static HOOK_CALLED: AtomicBool = AtomicBool::new(false);

/// How often the supervisor looks whether its parent changed, in case both the
/// pipe and the parent-death signal were missed.
const PARENT_CHECK: Duration = Duration::from_millis(250);

/// While killing the tree, how long to wait for children to die between two sweeps.
const SWEEP_WAIT: Duration = Duration::from_millis(10);

/// How often the supervisor samples the resident memory of the attempt's processes,
/// when asked to.
const SAMPLE_PERIOD: Duration = Duration::from_millis(100);

/// A sample walks all of /proc: on a machine with very many processes the period
/// grows to this many times the time one walk took, so that sampling costs at most
/// about 2% of a core per attempt.
const SAMPLE_COST_FACTOR: u32 = 50;

/// What the worker asks of an attempt's supervisor besides running the command: the
/// argument after the worker's pid, words separated by commas (`-` for none). Words
/// it does not know are ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SupervisorSettings {
    /// Sample the resident memory of the attempt's processes (`sample-memory`), when
    /// no cgroup measures it.
    pub(crate) sample_memory: bool,
    /// Kill the attempt once its processes' resident memory together exceeds this many
    /// MiB (`memory-limit-mib=N`, the worker's memory check); implies sampling.
    pub(crate) memory_limit_mib: Option<u64>,
}

impl SupervisorSettings {
    /// The argument that says this.
    pub(crate) fn to_arg(self) -> String {
        let mut words = Vec::new();
        if self.sample_memory {
            words.push("sample-memory".to_owned());
        }
        if let Some(limit) = self.memory_limit_mib {
            words.push(format!("memory-limit-mib={limit}"));
        }
        if words.is_empty() {
            "-".to_owned()
        } else {
            words.join(",")
        }
    }

    fn parse(text: &str) -> Self {
        let mut settings = Self::default();
        for word in text.split(',') {
            if word == "sample-memory" {
                settings.sample_memory = true;
            } else if let Some(limit) = word.strip_prefix("memory-limit-mib=")
                && let Ok(limit) = limit.parse()
            {
                settings.memory_limit_mib = Some(limit);
                settings.sample_memory = true;
            }
        }
        settings
    }
}

/// Becomes an attempt's supervisor when this process was started as one (its first
/// argument is [`SUPERVISOR_ARG`]), and then never returns: it exits once the
/// attempt's processes are all gone. Otherwise returns at once, having noted that
/// this binary can supervise attempts.
///
/// Call it first thing in `main` of every binary that runs a worker with command
/// jobs, before starting threads or a runtime:
///
/// ```no_run
/// // First line of `main`:
/// lqsm_worker::supervisor::run_if_asked();
/// // … then start the runtime, build and run the worker …
/// ```
pub fn run_if_asked() {
    let mut args = std::env::args_os();
    let first = args.nth(1);
    if first.as_deref() == Some(OsStr::new(RUN_AS_ARG)) {
        let rest: Vec<OsString> = args.collect();
        std::process::exit(become_user(&rest));
    }
    if first.as_deref() != Some(OsStr::new(SUPERVISOR_ARG)) {
        HOOK_CALLED.store(true, Ordering::SeqCst);
        return;
    }
    let rest: Vec<OsString> = args.collect();
    // The worker may run without transparent huge pages (the `lqsm` binary turns them off
    // for itself); the command it runs gets the system's default, as if started by hand.
    let _ = nix::sys::prctl::set_thp_disable(false);
    std::process::exit(supervise(&rest));
}

/// What a command run as another user gets only once it runs as that user: written by
/// the worker to a root-only file, read by the [`RUN_AS_ARG`] stage.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct JobSetting {
    /// Variables set on top of the inherited (operator's) environment, later ones winning.
    pub(crate) env: Vec<(String, String)>,
    /// The directory to enter, as the user.
    pub(crate) cwd: Option<String>,
}

/// Runs `args` (`UID GID JOB_FILE PROGRAM ARGS...`) as that uid and gid, without
/// supplementary groups, with the environment and directory of `JOB_FILE`; returns only
/// when that failed, with the exit code saying so (126, as a shell does for a program it
/// cannot run), the reason written to the command's output.
fn become_user(args: &[OsString]) -> i32 {
    let mut output = std::io::stderr();
    let [uid, gid, job_file, program, program_args @ ..] = args else {
        let _ = writeln!(
            output,
            "lqsm: run-as: expected UID GID JOB_FILE PROGRAM [ARGS...]"
        );
        return 126;
    };
    let id = |text: &OsString| text.to_str().and_then(|t| t.parse::<u32>().ok());
    let (Some(uid), Some(gid)) = (id(uid), id(gid)) else {
        let _ = writeln!(output, "lqsm: run-as: the uid and gid must be numbers");
        return 126;
    };
    let setting = match read_job_setting(Path::new(job_file)) {
        Ok(setting) => setting,
        Err(e) => {
            let _ = writeln!(
                output,
                "lqsm: run-as: cannot read the job's settings from `{}`: {e}",
                Path::new(job_file).display()
            );
            return 126;
        }
    };
    if let Err(e) = drop_to(uid, gid) {
        let _ = writeln!(
            output,
            "lqsm: cannot run `{}` as uid {uid}, gid {gid}: {e}",
            program.to_string_lossy()
        );
        return 126;
    }
    // As the user: a directory the user may not enter fails here, not as root.
    if let Some(cwd) = &setting.cwd
        && let Err(e) = std::env::set_current_dir(cwd)
    {
        let _ = writeln!(
            output,
            "lqsm: cannot enter the working directory `{cwd}` as uid {uid}: {e}"
        );
        return 126;
    }
    let error = std::process::Command::new(program)
        .args(program_args)
        .envs(setting.env)
        .exec();
    let _ = writeln!(
        output,
        "lqsm: cannot run `{}` as uid {uid}, gid {gid}: {error}",
        program.to_string_lossy()
    );
    126
}

/// Reads the worker's [`JobSetting`] file and removes it, refusing one that anybody but
/// this (root) process's user owns or may read, or a link.
fn read_job_setting(path: &Path) -> std::io::Result<JobSetting> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "it is owned by uid {} with mode {:o}; expected this process's uid and no access for others",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    let setting =
        serde_json::from_reader(std::io::BufReader::new(file)).map_err(std::io::Error::other)?;
    // Read once: gone at once, not only when the attempt ends, as the job's secrets
    // must not stay on disk should the worker die meanwhile.
    let _ = std::fs::remove_file(path);
    Ok(setting)
}

/// Drops every group and then root's uid, and checks that the kernel really did: the
/// standard library ignores some `setgroups` failures, and a kept supplementary group
/// would hand the command the worker's access.
fn drop_to(uid: u32, gid: u32) -> Result<(), String> {
    use nix::unistd::{Gid, Uid};
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setgroups(&[])
        .map_err(|e| format!("cannot clear the supplementary groups: {e}"))?;
    nix::unistd::setgid(gid).map_err(|e| format!("cannot set the gid: {e}"))?;
    nix::unistd::setuid(uid).map_err(|e| format!("cannot set the uid: {e}"))?;
    let groups =
        nix::unistd::getgroups().map_err(|e| format!("cannot list the groups left: {e}"))?;
    if groups.iter().any(|g| *g != gid) {
        let left: Vec<String> = groups.iter().map(ToString::to_string).collect();
        return Err(format!(
            "supplementary groups are left after dropping them: {}",
            left.join(",")
        ));
    }
    let ids = nix::unistd::getresuid().map_err(|e| format!("cannot read the uids: {e}"))?;
    let gids = nix::unistd::getresgid().map_err(|e| format!("cannot read the gids: {e}"))?;
    if [ids.real, ids.effective, ids.saved] != [uid; 3]
        || [gids.real, gids.effective, gids.saved] != [gid; 3]
    {
        return Err("the uid or gid did not change everywhere (real, effective, saved)".into());
    }
    Ok(())
}

/// Whether [`run_if_asked`] was called in this process.
pub(crate) fn hook_called() -> bool {
    HOOK_CALLED.load(Ordering::SeqCst)
}

/// The supervisor's life: `args` are the worker's pid, its [`SupervisorSettings`],
/// then the command's argv.
fn supervise(args: &[OsString]) -> i32 {
    let mut status_out = std::io::stdout().lock();
    let mut report = |line: &str| {
        // Nobody may be reading any more (the worker died): nothing to do then.
        let _ = writeln!(status_out, "{line}");
        let _ = status_out.flush();
    };
    let Some((worker, argv)) = args.split_first() else {
        report("spawn-failed the supervisor was started without a command");
        return 2;
    };
    let Some(worker) = worker
        .to_str()
        .and_then(|p| p.parse::<i32>().ok())
        .map(Pid::from_raw)
    else {
        report("spawn-failed the supervisor was started without the worker's pid");
        return 2;
    };
    let Some((settings, argv)) = argv.split_first() else {
        report("spawn-failed the supervisor was started without its settings");
        return 2;
    };
    let settings = SupervisorSettings::parse(&settings.to_string_lossy());
    let Some((program, program_args)) = argv.split_first() else {
        report("spawn-failed the command is empty (argv has no program)");
        return 2;
    };
    let wake = match Wake::install() {
        Ok(wake) => wake,
        Err(e) => {
            report(&format!(
                "spawn-failed the attempt's supervisor cannot watch signals: {e}"
            ));
            return 2;
        }
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        report(&format!(
            "spawn-failed the attempt's supervisor cannot become a subreaper: {e}"
        ));
        return 2;
    }
    // SIGUSR1 is caught (it only wakes the loop), so the signal cannot kill the
    // supervisor before it has cleaned up.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGUSR1);
    if getppid() != worker {
        // The worker died before the parent-death signal was armed.
        return 0;
    }
    let output = match std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|out| Ok((out.try_clone()?, out)))
    {
        Ok(pair) => pair,
        Err(e) => {
            report(&format!(
                "spawn-failed cannot hand the command its output pipe: {e}"
            ));
            return 2;
        }
    };
    let spawned = std::process::Command::new(program)
        .args(program_args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(output.0))
        .stderr(Stdio::from(output.1))
        .process_group(0)
        .spawn();
    let child = match spawned {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(e) => {
            report(&format!("spawn-failed {e}"));
            return 0;
        }
    };
    report(&format!("started {child}"));

    let mut tree = Tree {
        child,
        main_status: None,
    };
    let orders = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => Some(std::fs::File::from(fd)),
        Err(_) => None,
    };
    let mut meter = settings.sample_memory.then(MemoryMeter::new);
    let mut next_sample = Instant::now();
    loop {
        tree.reap_ready();
        if tree.main_status.is_some() {
            break;
        }
        if getppid() != worker {
            // Orphaned: the worker is gone, and with it whoever wanted a result.
            tree.kill_all();
            return 0;
        }
        let mut wait = PARENT_CHECK;
        if let Some(meter) = &mut meter {
            let now = Instant::now();
            if now >= next_sample {
                let used = meter.sample();
                next_sample = now + meter.period;
                if let Some(limit) = settings.memory_limit_mib
                    && used > limit.saturating_mul(1 << 20)
                {
                    let used_kib = used.div_ceil(1024);
                    report(&format!("memory-exceeded {used_kib} {limit}"));
                    let _ = writeln!(
                        std::io::stderr(),
                        "lqsm: the attempt's processes used {} MiB of memory together, above its limit of {limit} MiB: killing them",
                        used.div_ceil(1 << 20)
                    );
                    let _ = killpg(child, Signal::SIGKILL);
                    kill_descendants();
                    break;
                }
            }
            wait = wait.min(next_sample.saturating_duration_since(now));
        }
        match wait_for_order(orders.as_ref(), &wake, wait) {
            Order::None => {}
            Order::Terminate => {
                let _ = killpg(child, Signal::SIGTERM);
                // A stopped process handles SIGTERM only once continued.
                let _ = killpg(child, Signal::SIGCONT);
            }
            Order::Kill => {
                let _ = killpg(child, Signal::SIGKILL);
                kill_descendants();
            }
            Order::Signal(signal) => {
                let _ = killpg(child, signal);
            }
            Order::WorkerGone => {
                tree.kill_all();
                return 0;
            }
        }
    }
    // The main process ended: whatever it left behind goes with it.
    tree.kill_all();
    // Everything is reaped, so all of the attempt's CPU time is counted.
    if let Ok(usage) = getrusage(UsageWho::RUSAGE_CHILDREN) {
        let usec = |t: nix::sys::time::TimeVal| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(t.tv_usec()).unwrap_or(0)
        };
        let cpu_ms = (usec(usage.user_time()) + usec(usage.system_time())) / 1000;
        // The largest single process's peak (KiB) is a floor for the sum's.
        let largest_kib = u64::try_from(usage.max_rss()).unwrap_or(0);
        let sampled_kib = meter.map_or(0, |m| m.peak.div_ceil(1024));
        report(&format!("usage {} {cpu_ms}", sampled_kib.max(largest_kib)));
    }
    match tree.main_status {
        Some(WaitStatus::Exited(_, code)) => report(&format!("exited {code}")),
        Some(WaitStatus::Signaled(_, signal, _)) => report(&format!("signalled {}", signal as i32)),
        _ => report("exited -1"),
    }
    0
}

/// What the worker asked for, if anything.
enum Order {
    None,
    /// A signal of the worker's choosing (the soft time limit's).
    Signal(Signal),
    Terminate,
    Kill,
    WorkerGone,
}

/// Waits up to `wait` for an order from the worker or a signal (a child ended, the
/// parent died), whichever comes first.
fn wait_for_order(orders: Option<&std::fs::File>, wake: &Wake, wait: Duration) -> Order {
    let mut fds = vec![PollFd::new(wake.reader.as_fd(), PollFlags::POLLIN)];
    if let Some(file) = orders {
        fds.push(PollFd::new(file.as_fd(), PollFlags::POLLIN));
    }
    // Rounded up: a wait of 0.4 ms must not become a busy loop of zero-length polls.
    let millis = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(0) | Err(_) => return Order::None,
        Ok(_) => {}
    }
    let orders_ready = fds
        .get(1)
        .and_then(PollFd::revents)
        .is_some_and(|r| !r.is_empty());
    drop(fds);
    wake.drain();
    let Some(mut file) = orders.filter(|_| orders_ready) else {
        return Order::None;
    };
    let mut buf = [0u8; 64];
    match file.read(&mut buf) {
        Ok(0) => Order::WorkerGone,
        Ok(n) => {
            let got = &buf[..n];
            if got.contains(&b'K') {
                Order::Kill
            } else if got.contains(&b'T') {
                Order::Terminate
            } else if let Some(at) = got.iter().position(|b| *b == b'S')
                && let Some(&number) = got.get(at + 1)
                && let Ok(signal) = Signal::try_from(i32::from(number))
            {
                Order::Signal(signal)
            } else {
                Order::None
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Order::None,
        // A broken control socket means the same as its end.
        Err(_) => Order::WorkerGone,
    }
}

/// The command's main process and how it ended, once it has.
struct Tree {
    child: Pid,
    main_status: Option<WaitStatus>,
}

impl Tree {
    /// Reaps every child that has ended; true while some child is still alive.
    fn reap_ready(&mut self) -> bool {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return true,
                Ok(status) => {
                    if status.pid() == Some(self.child)
                        && matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..))
                    {
                        self.main_status = Some(status);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }

    /// SIGKILLs every descendant and reaps until none is left. As a subreaper the
    /// supervisor inherits every orphan below it, so "no child left" means no
    /// process of the attempt is left.
    fn kill_all(&mut self) {
        // No child at all means nothing is left, without reading /proc: the usual
        // case of a command that exited leaving nothing behind.
        while self.reap_ready() {
            kill_descendants();
            std::thread::sleep(SWEEP_WAIT);
        }
    }
}

/// The resident memory of the attempt's processes together, sampled.
#[derive(Clone, Copy)]
struct MemoryMeter {
    page_size: u64,
    /// The largest sum sampled, bytes.
    peak: u64,
    /// Until the next sample.
    period: Duration,
}

impl MemoryMeter {
    fn new() -> Self {
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|size| u64::try_from(size).ok())
            .unwrap_or(4096);
        Self {
            page_size,
            peak: 0,
            period: SAMPLE_PERIOD,
        }
    }

    /// The resident memory of every process below this one together, bytes; keeps
    /// the peak, and spaces samples out when a walk of /proc is slow.
    fn sample(&mut self) -> u64 {
        let started = Instant::now();
        let used = descendants_of(getpid())
            .into_iter()
            .filter_map(|pid| {
                let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
                resident_pages(&statm)
            })
            .sum::<u64>()
            .saturating_mul(self.page_size);
        self.peak = self.peak.max(used);
        self.period = SAMPLE_PERIOD.max(started.elapsed() * SAMPLE_COST_FACTOR);
        used
    }
}

/// The resident pages from a `/proc/<pid>/statm` line: `size resident shared …`.
fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// SIGKILLs every process below this one.
fn kill_descendants() {
    for pid in descendants_of(getpid()) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// The processes below `root`, from the parent links in /proc.
fn descendants_of(root: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(parent) = parent_in_stat(&stat) {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut next = vec![root.as_raw()];
    while let Some(pid) = next.pop() {
        if let Some(below) = children.get(&pid) {
            for &child in below {
                found.push(Pid::from_raw(child));
                next.push(child);
            }
        }
    }
    found
}

/// The parent pid from a `/proc/<pid>/stat` line: `pid (comm) S ppid …`; `comm`
/// may hold spaces and parentheses, so parse from the last `)`.
fn parent_in_stat(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// A self-pipe written to on SIGCHLD and on the parent-death signal, so that the
/// supervisor's wait wakes for either without a race.
struct Wake {
    reader: OwnedFd,
}

impl Wake {
    fn install() -> std::io::Result<Self> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGCHLD, writer.try_clone()?)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGUSR1, writer)?;
        Ok(Self {
            reader: OwnedFd::from(reader),
        })
    }

    fn drain(&self) {
        let Ok(fd) = self.reader.try_clone() else {
            return;
        };
        let mut stream = UnixStream::from(fd);
        let mut buf = [0u8; 64];
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_from_stat_lines_with_odd_command_names() {
        assert_eq!(
            parent_in_stat("1234 (my (odd) prog) S 77 1230 1230 0"),
            Some(77)
        );
        assert_eq!(parent_in_stat("garbage"), None);
    }

    #[test]
    fn resident_pages_are_read_from_statm() {
        assert_eq!(resident_pages("5678 1234 300 1 0 700 0\n"), Some(1234));
        assert_eq!(resident_pages("5678"), None);
        assert_eq!(resident_pages(""), None);
    }

    #[test]
    fn settings_travel_as_one_argument_and_unknown_words_are_ignored() {
        let none = SupervisorSettings::default();
        assert_eq!(none.to_arg(), "-");
        assert_eq!(SupervisorSettings::parse("-"), none);
        let sample = SupervisorSettings {
            sample_memory: true,
            memory_limit_mib: None,
        };
        assert_eq!(sample.to_arg(), "sample-memory");
        assert_eq!(SupervisorSettings::parse(&sample.to_arg()), sample);
        let check = SupervisorSettings {
            sample_memory: true,
            memory_limit_mib: Some(50),
        };
        assert_eq!(check.to_arg(), "sample-memory,memory-limit-mib=50");
        assert_eq!(SupervisorSettings::parse(&check.to_arg()), check);
        // A limit alone means sampling; a word of a later release is skipped.
        assert_eq!(
            SupervisorSettings::parse("something-new=3,memory-limit-mib=50"),
            check
        );
        assert_eq!(
            SupervisorSettings::parse("memory-limit-mib=lots"),
            SupervisorSettings::default()
        );
    }
}
