//! Memory limits through cgroup v2: when the worker may create cgroups with the memory
//! controller, every command attempt runs in its own cgroup with `memory.max` set to
//! the memory it was granted. Otherwise limits are not enforced (unless the worker's
//! memory check samples the attempt's processes instead, see [`crate::supervisor`]), and
//! the worker says so once at start.
//!
//! An attempt's cgroup also measures it: its peak memory (`memory.peak`, or the largest
//! `memory.current` seen on a kernel older than 5.19) and its CPU time (`cpu.stat`),
//! read before the cgroup is removed.

use std::path::{Path, PathBuf};
use uuid::Uuid;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup under which this worker makes one cgroup per command attempt.
#[derive(Debug)]
pub(crate) struct MemoryLimits {
    group: PathBuf,
}

impl MemoryLimits {
    /// Finds a place for per-attempt cgroups: under the worker's own cgroup, or at
    /// the top of the hierarchy. The error says why neither works.
    pub(crate) fn detect(worker: Uuid) -> Result<Self, String> {
        let root = Path::new(CGROUP_ROOT);
        if !root.join("cgroup.controllers").is_file() {
            return Err(format!(
                "cgroup v2 is not mounted at {CGROUP_ROOT} (this machine uses cgroup v1 or none)"
            ));
        }
        let name = format!("lqsm-{}", worker.simple());
        let mut bases = Vec::new();
        if let Some(own) = own_cgroup() {
            bases.push(root.join(own.trim_start_matches('/')));
        }
        bases.push(root.to_path_buf());
        let mut why = Vec::new();
        for base in bases {
            match Self::try_under(&base, &name) {
                Ok(limits) => return Ok(limits),
                Err(e) => why.push(format!("{}: {e}", base.display())),
            }
        }
        Err(format!(
            "cannot create a cgroup with the memory controller ({})",
            why.join("; ")
        ))
    }

    fn try_under(base: &Path, name: &str) -> Result<Self, String> {
        let group = base.join(name);
        std::fs::create_dir_all(&group).map_err(|e| format!("mkdir {name}: {e}"))?;
        let cleanup = |e: String| {
            let _ = std::fs::remove_dir(&group);
            e
        };
        if !group.join("memory.max").exists() {
            // The memory controller must be on in the parent's subtree.
            std::fs::write(base.join("cgroup.subtree_control"), "+memory")
                .map_err(|e| cleanup(format!("enabling the memory controller: {e}")))?;
            if !group.join("memory.max").exists() {
                return Err(cleanup("no memory controller in the new cgroup".into()));
            }
        }
        // Our group holds no processes, so its children may have the controller.
        std::fs::write(group.join("cgroup.subtree_control"), "+memory")
            .map_err(|e| cleanup(format!("enabling memory for attempts: {e}")))?;
        let limits = Self { group };
        // Prove it on a probe before promising anything.
        let probe = limits
            .attempt("probe", 64)
            .map_err(|e| format!("probe cgroup: {e}"))?;
        probe.remove();
        Ok(limits)
    }

    /// A cgroup for one attempt limited to `memory_mib` MiB (0: no limit).
    pub(crate) fn attempt(&self, name: &str, memory_mib: u64) -> std::io::Result<AttemptCgroup> {
        let dir = self.group.join(name);
        std::fs::create_dir_all(&dir)?;
        let limit = if memory_mib == 0 {
            "max".to_owned()
        } else {
            (memory_mib * 1024 * 1024).to_string()
        };
        if let Err(e) = std::fs::write(dir.join("memory.max"), limit) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        // Without this the limit would push memory to swap rather than end the job.
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        Ok(AttemptCgroup { dir })
    }
}

impl Drop for MemoryLimits {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.group);
    }
}

/// The cgroup of one command attempt.
#[derive(Debug)]
pub struct AttemptCgroup {
    dir: PathBuf,
}

impl AttemptCgroup {
    /// A cgroup at `dir`, made by nothing (for tests of what refers to it).
    #[cfg(test)]
    pub(crate) fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The file a process writes its pid to in order to enter.
    pub(crate) fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// `cgroup.kill` (Linux 5.14+): writing 1 kills everything inside.
    pub(crate) fn kill_file(&self) -> Option<PathBuf> {
        let file = self.dir.join("cgroup.kill");
        file.exists().then_some(file)
    }

    /// Whether the kernel killed a process inside for exceeding `memory.max`.
    pub(crate) fn oom_killed(&self) -> bool {
        let Ok(events) = std::fs::read_to_string(self.dir.join("memory.events")) else {
            return false;
        };
        events
            .lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
    }

    /// Whether the kernel keeps the cgroup's peak memory use (`memory.peak`, Linux
    /// 5.19+); without it the executor samples [`Self::memory_current`].
    pub(crate) fn has_memory_peak(&self) -> bool {
        self.dir.join("memory.peak").exists()
    }

    /// The most memory the cgroup's processes used together since it was made, bytes
    /// (`memory.peak`).
    pub(crate) fn memory_peak(&self) -> Option<u64> {
        parse_bytes(&std::fs::read_to_string(self.dir.join("memory.peak")).ok()?)
    }

    /// The memory its processes use now, bytes (`memory.current`).
    pub(crate) fn memory_current(&self) -> Option<u64> {
        parse_bytes(&std::fs::read_to_string(self.dir.join("memory.current")).ok()?)
    }

    /// The CPU time its processes used, user and system, microseconds (`cpu.stat`'s
    /// `usage_usec`).
    pub(crate) fn cpu_usec(&self) -> Option<u64> {
        cpu_usage_usec(&std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?)
    }

    /// Removes the (empty) cgroup; a few tries, as the kernel may lag behind the
    /// last process's exit.
    pub(crate) fn remove(self) {
        for _ in 0..20 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        tracing::warn!(cgroup = %self.dir.display(), "cannot remove an attempt's cgroup");
    }
}

/// A file of one number of bytes (`memory.peak`, `memory.current`): `123456\n`.
fn parse_bytes(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `usage_usec` of a `cpu.stat` file: lines of `KEY VALUE`, `usage_usec` the user and
/// system time together.
fn cpu_usage_usec(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        if key == "usage_usec" {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The worker's own cgroup v2 path (`/user.slice/...`), from /proc/self/cgroup.
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_files_and_cpu_stat_are_parsed() {
        assert_eq!(parse_bytes("94371840\n"), Some(94_371_840));
        assert_eq!(parse_bytes("max\n"), None);
        assert_eq!(parse_bytes(""), None);
        let stat = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n\
                    nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n";
        assert_eq!(cpu_usage_usec(stat), Some(1_234_567));
        // Only the exact key counts, wherever it is.
        assert_eq!(
            cpu_usage_usec("core_sched.force_idle_usec 5\nusage_usec 42\n"),
            Some(42)
        );
        assert_eq!(cpu_usage_usec("user_usec 1\nsystem_usec 2\n"), None);
        assert_eq!(cpu_usage_usec("usage_usec lots\n"), None);
    }

    #[test]
    fn an_attempts_cgroup_is_measured_from_its_files() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cgroup = AttemptCgroup::at(dir.path().to_path_buf());
        assert!(!cgroup.has_memory_peak());
        assert_eq!(cgroup.memory_peak(), None);
        assert_eq!(cgroup.cpu_usec(), None);
        std::fs::write(dir.path().join("memory.peak"), "104857600\n").expect("written");
        std::fs::write(dir.path().join("memory.current"), "4096\n").expect("written");
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 250000\nuser_usec 200000\nsystem_usec 50000\n",
        )
        .expect("written");
        assert!(cgroup.has_memory_peak());
        assert_eq!(cgroup.memory_peak(), Some(100 << 20));
        assert_eq!(cgroup.memory_current(), Some(4096));
        assert_eq!(cgroup.cpu_usec(), Some(250_000));
    }
}
