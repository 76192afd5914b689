//! cgroup v2: one leaf per instance under a configurable root (`/sys/fs/cgroup/nnc`), with the
//! `memory`, `pids` and `cpu` controllers. A leaf caps what one service can take from the
//! router (`memory.max`, `pids.max`, `cpu.max`) and, when the service stops, lets the agent
//! kill everything it left behind (`cgroup.kill`, or each PID in `cgroup.procs` on kernels
//! before 5.14).
//!
//! Without cgroup v2 and those controllers (cgroup v1 systems, containers without delegation)
//! services run without limits; the agent says so once, and still kills them by PID namespace.

use std::path::{Path, PathBuf};

const CONTROLLERS: &str = "cgroup.controllers";
const SUBTREE_CONTROL: &str = "cgroup.subtree_control";
const PROCS: &str = "cgroup.procs";
const KILL: &str = "cgroup.kill";
const MEMORY_MAX: &str = "memory.max";
const PIDS_MAX: &str = "pids.max";
const CPU_MAX: &str = "cpu.max";
const WANTED: [&str; 3] = ["cpu", "memory", "pids"];

/// Limits for one leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    pub memory_max: u64,
    pub pids_max: u32,
    /// "QUOTA PERIOD" as cpu.max takes it.
    pub cpu_max: String,
}

/// The root under which leaves are made, once it is known to work.
#[derive(Debug, Clone)]
pub(crate) struct Cgroups {
    root: Option<PathBuf>,
    /// Why limits are off, when they are.
    off: Option<String>,
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

fn enable_controllers(dir: &Path) -> Result<(), String> {
    let have = std::fs::read_to_string(dir.join(CONTROLLERS))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let missing: Vec<&str> = WANTED
        .iter()
        .copied()
        .filter(|c| !have.split_whitespace().any(|h| h == *c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} lacks the {} controller(s)",
            dir.display(),
            missing.join(", ")
        ));
    }
    std::fs::write(dir.join(SUBTREE_CONTROL), "+cpu +memory +pids")
        .map_err(|e| format!("cannot enable controllers in {}: {e}", dir.display()))
}

impl Cgroups {
    /// Prepares `root` (creating it and enabling the controllers on the way), or explains why
    /// limits are off.
    pub(crate) fn new(root: &Path) -> Cgroups {
        match Self::prepare(root) {
            Ok(()) => {
                log::info!(target: "supervisor", "cgroup v2 limits under {}", root.display());
                Cgroups {
                    root: Some(root.to_owned()),
                    off: None,
                }
            }
            Err(why) => {
                log::warn!(target: "supervisor", "service resource limits are off: {why}; services get rlimits instead");
                Cgroups {
                    root: None,
                    off: Some(why),
                }
            }
        }
    }

    fn prepare(root: &Path) -> Result<(), String> {
        let parent = root.parent().ok_or("cgroup root has no parent")?;
        if !is_cgroup2(parent) {
            return Err(format!(
                "{} is not a cgroup v2 file system",
                parent.display()
            ));
        }
        enable_controllers(parent)?;
        std::fs::create_dir_all(root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        enable_controllers(root)
    }

    pub(crate) fn enabled(&self) -> bool {
        self.root.is_some()
    }

    /// `Err(why)` when limits are off.
    pub(crate) fn status(&self) -> Result<(), &str> {
        match &self.off {
            None => Ok(()),
            Some(why) => Err(why),
        }
    }

    /// Creates (or reuses) the leaf of `instance` with `limits`; `None` when limits are off.
    pub(crate) fn leaf(&self, instance: &str, limits: &Limits) -> Result<Option<PathBuf>, String> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let leaf = root.join(instance);
        std::fs::create_dir_all(&leaf)
            .map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
        for (file, value) in [
            (MEMORY_MAX, limits.memory_max.to_string()),
            (PIDS_MAX, limits.pids_max.to_string()),
            (CPU_MAX, limits.cpu_max.clone()),
        ] {
            std::fs::write(leaf.join(file), &value).map_err(|e| {
                format!("cannot write {value} to {}: {e}", leaf.join(file).display())
            })?;
        }
        Ok(Some(leaf))
    }

    /// Kills every process left in the leaf and removes it.
    pub(crate) fn kill_and_remove(&self, instance: &str) {
        let Some(root) = &self.root else {
            return;
        };
        let leaf = root.join(instance);
        if !leaf.exists() {
            return;
        }
        if std::fs::write(leaf.join(KILL), "1").is_err() {
            // Before Linux 5.14: one by one.
            for pid in std::fs::read_to_string(leaf.join(PROCS))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: sending a signal to a PID read from our own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&leaf).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        log::warn!(target: "supervisor", "cannot remove {}", leaf.display());
    }
}
