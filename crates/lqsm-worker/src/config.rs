//! What a worker offers and how it behaves.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The resources a worker offers to the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Capacity {
    /// CPU cores (fractions allowed).
    pub cpus: f64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Indices of the GPUs offered (the values of `CUDA_VISIBLE_DEVICES`); their
    /// number is the GPU capacity.
    pub gpus: Vec<u32>,
    /// Named custom resources (`{"licence": 2}`).
    pub custom: BTreeMap<String, u64>,
}

impl Capacity {
    /// The registration's form of this capacity.
    pub(crate) fn to_wire(&self) -> lqsm_api::Resources {
        lqsm_api::Resources {
            cpu: Some(self.cpus),
            memory_mib: Some(self.memory_mib),
            gpu: Some(u32::try_from(self.gpus.len()).unwrap_or(u32::MAX)),
            custom: self.custom.clone(),
        }
    }
}

/// This machine's resources: cores from the scheduler's view of available
/// parallelism, memory from `/proc/meminfo` (`MemTotal`), GPUs from
/// `nvidia-smi --query-gpu=index --format=csv,noheader` when it is installed (none
/// otherwise). Nothing custom.
pub fn detect_capacity() -> Capacity {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_mib(&text))
        .unwrap_or(0);
    Capacity {
        cpus,
        memory_mib,
        gpus: detect_gpus(),
        custom: BTreeMap::new(),
    }
}

/// `MemTotal:  16318480 kB` → 15936.
fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// GPU indices reported by `nvidia-smi`; empty when it is missing, fails, or does not
/// answer within 5 s.
fn detect_gpus() -> Vec<u32> {
    let Ok(mut child) = Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return Vec::new();
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!("nvidia-smi failed or hung; offering no GPUs");
                return Vec::new();
            }
        }
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    parse_gpu_indices(&text)
}

fn parse_gpu_indices(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The unprivileged user command attempts run as, on a worker running as root
/// (`lqsm worker --run-as USER`): each command starts with the user's uid and primary
/// gid, no supplementary groups, and `HOME`, `USER` and `LOGNAME` of the user (unless
/// the job sets them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary group's gid.
    pub gid: u32,
    /// Its home directory.
    pub home: std::path::PathBuf,
}

/// Why `--run-as` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunAsError {
    /// No user of that name on this machine.
    #[error("no user `{0}` on this machine (see `getent passwd`)")]
    NoSuchUser(String),
    /// The user database could not be read.
    #[error("the user `{name}` cannot be looked up: {source}")]
    Lookup {
        /// The name asked for.
        name: String,
        /// The cause.
        source: nix::Error,
    },
}

impl RunAs {
    /// The user named `name`, from the system's user database.
    pub fn lookup(name: &str) -> Result<Self, RunAsError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|source| RunAsError::Lookup {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| RunAsError::NoSuchUser(name.to_owned()))?;
        Ok(Self {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }
}

/// Whom command attempts run as, given the worker's effective uid `euid` and the
/// `requested` user: `Ok((user, warning))`, the warning to log when there is one.
/// A worker running as root without a user runs commands as root (with a warning); a
/// user asked of a worker that is not root is refused, unless it is the worker's own
/// user (nothing to change, with a warning).
pub fn decide_run_as(
    euid: u32,
    requested: Option<RunAs>,
    serves_commands: bool,
) -> Result<(Option<RunAs>, Option<String>), String> {
    match requested {
        None if euid == 0 && serves_commands => Ok((
            None,
            Some("this worker runs as root and so do its command jobs: start it with `--run-as USER` (an unprivileged user) to run them as that user".to_owned()),
        )),
        None => Ok((None, None)),
        Some(user) if euid == 0 => Ok((Some(user), None)),
        Some(user) if user.uid == euid => Ok((
            None,
            Some(format!(
                "--run-as {}: this worker already runs as that user; nothing to change",
                user.name
            )),
        )),
        Some(user) => Err(format!(
            "--run-as {}: only a worker running as root can run commands as another user (this one runs as uid {euid}); start it as root, or leave --run-as out",
            user.name
        )),
    }
}

/// How a worker connects, what it offers and how it runs attempts. Start from
/// [`WorkerConfig::new`] and change the fields you need.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The server's base URL (`http://127.0.0.1:7420`).
    pub server: String,
    /// Bearer token with the `worker` role, when the server requires tokens.
    pub token: Option<String>,
    /// PEM CA certificates trusted, besides the system's, for an `https://` server.
    pub ca_file: Option<std::path::PathBuf>,
    /// A name for people (default: the host name).
    pub name: String,
    /// What it offers (default: [`detect_capacity`]).
    pub capacity: Capacity,
    /// Labels jobs select on.
    pub labels: BTreeMap<String, String>,
    /// Whether it runs command jobs (default true).
    pub serves_commands: bool,
    /// The queues whose jobs it runs, each with those under it (default: empty,
    /// every queue). The server checks the paths when the worker registers.
    pub queues: Vec<String>,
    /// Longest wait of one poll for new work (default 2 s; keep it well below the
    /// server's heartbeat timeout, 20 s by default).
    pub poll_wait: Duration,
    /// When an attempt finishes during a long-poll at least this old, the poll is
    /// replaced by a new one carrying the report (default 25 ms). See the crate docs.
    pub cut_short_after: Duration,
    /// Between SIGTERM and SIGKILL when a command is stopped (default 10 s).
    pub kill_grace: Duration,
    /// Most bytes of a command's output uploaded, the last ones (default 1 MiB).
    pub log_cap_bytes: usize,
    /// On shutdown, how long running attempts may take to finish before they are
    /// stopped (default 60 s).
    pub drain_grace: Duration,
    /// Longest wait between reconnection attempts (default 5 s).
    pub backoff_cap: Duration,
    /// Whether to try cgroup v2 memory limits for commands (default true).
    pub memory_limits: bool,
    /// The memory check, for machines without cgroup v2 limits (default false): the
    /// supervisor of a command attempt that has no cgroup samples the resident memory
    /// of the attempt's processes together (about every 100 ms) and kills them all
    /// once it exceeds the attempt's memory request, as YARN's NodeManager does; the
    /// attempt fails with `memory_exceeded`. A peak shorter than the sampling period
    /// can be missed, and memory shared between the processes counts once for each.
    /// Needs `supervise_commands`. An attempt with a cgroup keeps the kernel's
    /// `memory.max` enforcement.
    pub memory_check: bool,
    /// Whether every command attempt runs under a supervisor process that kills
    /// all its processes when the worker dies, even by SIGKILL (default true). It
    /// needs [`crate::supervisor::run_if_asked`] called first thing in `main`; turn
    /// it off only where a command outliving a killed worker is acceptable.
    pub supervise_commands: bool,
    /// The signal a command gets when its soft time limit (`soft_timeout_ms`) passes
    /// (default SIGUSR1, as Celery's `SoftTimeLimitExceeded` arrives).
    pub soft_timeout_signal: nix::sys::signal::Signal,
    /// The user command attempts run as, when the worker runs as root (default: none,
    /// the worker's own; see [`decide_run_as`]). Needs `supervise_commands`.
    pub run_as: Option<RunAs>,
}

impl WorkerConfig {
    /// Defaults for a worker of the server at `server`, offering this machine's
    /// resources ([`detect_capacity`]).
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            token: None,
            ca_file: None,
            name: host_name(),
            capacity: detect_capacity(),
            labels: BTreeMap::new(),
            serves_commands: true,
            queues: Vec::new(),
            poll_wait: Duration::from_secs(2),
            cut_short_after: Duration::from_millis(25),
            kill_grace: Duration::from_secs(10),
            log_cap_bytes: 1024 * 1024,
            drain_grace: Duration::from_secs(60),
            backoff_cap: Duration::from_secs(5),
            memory_limits: true,
            memory_check: false,
            supervise_commands: true,
            soft_timeout_signal: nix::sys::signal::Signal::SIGUSR1,
            run_as: None,
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_mib() {
        let text = "MemFree: 10 kB\nMemTotal:       16318480 kB\n";
        assert_eq!(mem_total_mib(text), Some(15936));
        assert_eq!(mem_total_mib("nothing"), None);
    }

    #[test]
    fn gpu_indices_are_parsed_one_a_line() {
        assert_eq!(parse_gpu_indices("0\n1\n 3 \n"), vec![0, 1, 3]);
        assert!(parse_gpu_indices("").is_empty());
    }

    fn nobody() -> RunAs {
        RunAs {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            home: "/nonexistent".into(),
        }
    }

    #[test]
    fn only_root_changes_user_and_root_without_a_user_is_warned_about() {
        let (user, warning) = decide_run_as(0, Some(nobody()), true).expect("root may");
        assert_eq!(user, Some(nobody()));
        assert_eq!(warning, None);
        let (user, warning) = decide_run_as(0, None, true).expect("root may run as itself");
        assert_eq!(user, None);
        assert!(warning.expect("a warning").contains("--run-as USER"));
        // A worker of function handlers only runs no command as anyone.
        assert_eq!(decide_run_as(0, None, false).expect("fine"), (None, None));
        let refused = decide_run_as(1000, Some(nobody()), true).expect_err("not root");
        assert!(
            refused.contains("only a worker running as root"),
            "{refused}"
        );
        assert!(refused.contains("uid 1000"), "{refused}");
        let (user, warning) = decide_run_as(65534, Some(nobody()), true).expect("itself");
        assert_eq!(user, None);
        assert!(
            warning
                .expect("a warning")
                .contains("already runs as that user")
        );
    }

    #[test]
    fn run_as_looks_users_up_and_names_an_unknown_one() {
        let root = RunAs::lookup("root").expect("root exists everywhere");
        assert_eq!((root.uid, root.gid), (0, 0));
        let err = RunAs::lookup("lqsm-surely-no-such-user").expect_err("unknown");
        assert!(
            err.to_string()
                .contains("no user `lqsm-surely-no-such-user`"),
            "{err}"
        );
    }

    #[test]
    fn detected_capacity_has_cores_and_memory() {
        let capacity = detect_capacity();
        assert!(capacity.cpus >= 1.0);
        assert!(capacity.memory_mib > 0);
    }
}
