//! Memory limits through cgroup v2: when the worker may create cgroups with the memory
//! controller, every command attempt runs in its own cgroup with `memory.max` set to
//! the memory it was granted. Otherwise limits are not enforced, and the worker says
//! so once at start.

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

/// The worker's own cgroup v2 path (`/user.slice/...`), from /proc/self/cgroup.
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}
