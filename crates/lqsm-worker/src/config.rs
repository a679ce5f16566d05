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
    /// Whether every command attempt runs under a supervisor process that kills
    /// all its processes when the worker dies, even by SIGKILL (default true). It
    /// needs [`crate::supervisor::run_if_asked`] called first thing in `main`; turn
    /// it off only where a command outliving a killed worker is acceptable.
    pub supervise_commands: bool,
    /// The signal a command gets when its soft time limit (`soft_timeout_ms`) passes
    /// (default SIGUSR1, as Celery's `SoftTimeLimitExceeded` arrives).
    pub soft_timeout_signal: nix::sys::signal::Signal,
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
            supervise_commands: true,
            soft_timeout_signal: nix::sys::signal::Signal::SIGUSR1,
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

    #[test]
    fn detected_capacity_has_cores_and_memory() {
        let capacity = detect_capacity();
        assert!(capacity.cpus >= 1.0);
        assert!(capacity.memory_mib > 0);
    }
}
