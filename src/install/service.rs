//! The installer's service stages and controls: CONFIGURING (directories, service user, the
//! generated config and the service's own check of it), STARTING (handing the process to the
//! supervisor and waiting until its health probe passes), and start/stop/restart afterwards.
//!
//! Instance status follows the service: RUNNING once healthy, FAILED (step `running`) when
//! the supervisor gives up, STOPPED when the user stops it. After an agent restart, instances
//! the user wants running are started again: a process that outlived the old agent (it should
//! not: every service gets SIGKILL when the agent dies) is killed first.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Installer, RequestError, StepError, blocking, refuse};
use crate::catalogue::{self, Feature, HealthSpec};
use crate::configgen::{self, Context};
use crate::events::EventKind;
use crate::store::{Instance, Status, Step};
use crate::supervisor::{HealthCheck, Limits, Outcome, Probe, ServiceDef, SpawnSpec};

/// A checker that runs longer than this is killed and the config refused.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Paths of one instance.
pub(crate) struct InstancePaths {
    pub root: PathBuf,
    pub config: PathBuf,
    pub data: PathBuf,
    pub logs: PathBuf,
}

impl Installer {
    pub(crate) fn instance_paths(&self, id: &str) -> InstancePaths {
        let root = self.layout.instance_dir(id);
        InstancePaths {
            config: root.join("config"),
            data: root.join("data"),
            logs: root.join("logs"),
            root,
        }
    }

    /// Hooks the supervisor's outcomes to instance statuses.
    pub(crate) fn attach_supervisor(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.supervisor.set_listener(move |id, outcome| {
            let Some(this) = weak.upgrade() else { return };
            if let Outcome::Started(pid) = outcome {
                this.record_pid(id, pid);
                return;
            }
            let pending = this
                .pending_starts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(id);
            if let Some(tx) = pending {
                let _ = tx.send(outcome);
                return;
            }
            let id = id.to_owned();
            tokio::spawn(async move { this.service_outcome(&id, outcome).await });
        });
    }

    /// What a supervised service did after its start: back to health, or given up on.
    async fn service_outcome(&self, id: &str, outcome: Outcome) {
        match outcome {
            Outcome::Healthy => {
                if let Ok(Some(inst)) = self.store.instance(id)
                    && inst.status != Status::Running
                    && inst.desired_running
                {
                    self.transition(id, Status::Running, Some("service healthy"), |i| {
                        clear_failure(i);
                    })
                    .await;
                }
            }
            Outcome::Failed(reason) => {
                if let Ok(Some(inst)) = self.store.instance(id) {
                    let e = StepError::new(Step::Running, "SERVICE_FAILED", reason);
                    self.fail(&inst, &e).await;
                }
            }
            Outcome::Stopped | Outcome::Started(_) => {}
        }
    }

    /// Writes the instance's config (if its feature has a generator) and lets the service
    /// check it. Nothing runs unless the check passes.
    pub(super) async fn configure_stage(
        &self,
        inst: &Instance,
        feature: &Feature,
    ) -> Result<Instance, StepError> {
        let inst = self
            .transition(&inst.id, Status::Configuring, None, |_| {})
            .await
            .ok_or_else(|| StepError::vanished(Step::Configuring))?;
        let uid = self
            .store
            .allocate_uid(self.config.supervisor.uid_range, &inst.id)
            .map_err(|e| {
                StepError::new(
                    Step::Configuring,
                    "STATE_ERROR",
                    format!("no service user: {e}"),
                )
            })?;
        let paths = self.instance_paths(&inst.id);
        let (ctx, _) = self.context(&inst, &paths);
        let generator = feature.generator();
        let record = inst.clone();
        let config = blocking(move || -> Result<Option<PathBuf>, StepError> {
            prepare_dirs(&paths, uid)?;
            let Some(generator) = generator else {
                return Ok(None);
            };
            let rendered = generator
                .render(&ctx, &record.settings)
                .map_err(|e| StepError::new(Step::Configuring, "CONFIG_INVALID", e))?;
            let file = paths.config.join(generator.file_name());
            write_config(&file, &rendered.text)?;
            Ok(Some(file))
        })
        .await?;
        let check = feature.service.as_ref().and_then(|s| s.check.clone());
        let check_args = match (&config, check, feature.generator()) {
            (Some(c), Some(t), _) => Some(configgen::expand(&t, c)),
            (Some(c), None, Some(g)) => Some(g.check_args(c)),
            _ => None,
        };
        if let (Some(args), Some(binary)) = (check_args, inst.binary_path.clone()) {
            let cwd = self.instance_paths(&inst.id).data;
            blocking(move || run_check(Path::new(&binary), &args, uid, &cwd)).await?;
        }
        self.transition(&inst.id, Status::Configuring, None, move |i| {
            i.uid = Some(uid)
        })
        .await
        .ok_or_else(|| StepError::vanished(Step::Configuring))
    }

    /// The generator's view of the instance: where it listens and its routing mark.
    pub(super) fn context(
        &self,
        inst: &Instance,
        paths: &InstancePaths,
    ) -> (Context, Option<PathBuf>) {
        let iface = self.interfaces.interface(&inst.id).ok().flatten();
        let listen = iface
            .as_ref()
            .and_then(|r| r.service_address.parse::<Ipv4Addr>().ok())
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4);
        let ctx = Context {
            listen,
            mark: iface
                .as_ref()
                .filter(|r| r.kind == "linux")
                .map(|r| 1000 + u32::from(r.vlan_id)),
            data_dir: paths.data.clone(),
            log_dir: paths.logs.clone(),
        };
        let netns = iface.and_then(|r| r.netns).map(PathBuf::from);
        (ctx, netns)
    }

    /// Everything the supervisor needs to run the instance's service.
    pub(super) fn service_def(
        &self,
        inst: &Instance,
        feature: &Feature,
    ) -> Result<ServiceDef, StepError> {
        let err = |m: String| StepError::new(Step::Starting, "START_FAILED", m);
        let paths = self.instance_paths(&inst.id);
        let (ctx, netns) = self.context(inst, &paths);
        let uid = inst
            .uid
            .ok_or_else(|| err("the instance has no service user".into()))?;
        let binary = PathBuf::from(
            inst.binary_path
                .clone()
                .ok_or_else(|| err("no binary in place".into()))?,
        );
        let svc = feature.service.clone().unwrap_or_default();
        let generator = feature.generator();
        let rendered = match generator {
            Some(g) => Some(g.render(&ctx, &inst.settings).map_err(err)?),
            None => None,
        };
        let config = generator.map(|g| paths.config.join(g.file_name()));
        let args = match (&svc.args, generator, &config) {
            (Some(t), _, Some(c)) => configgen::expand(t, c),
            (Some(t), _, None) => t.clone(),
            (None, Some(g), Some(c)) => g.run_args(c),
            _ => return Err(err(format!("{} has no way to run", feature.id))),
        };
        let mut keep_caps: Vec<u32> = svc
            .capabilities
            .iter()
            .filter_map(|c| catalogue::capability(c))
            .collect();
        // A routing mark needs CAP_NET_ADMIN; the service has it only inside its own namespace.
        if rendered.as_ref().is_some_and(|r| r.needs_net_admin) && netns.is_some() {
            keep_caps.push(12);
        }
        let probe = match (&svc.health, &rendered) {
            (Some(HealthSpec::Tcp(port)), _) => Probe::Tcp(SocketAddr::new(ctx.listen, *port)),
            (Some(HealthSpec::Exec(cmd)), _) => Probe::Exec(cmd.clone()),
            (None, Some(r)) => Probe::Tcp(SocketAddr::new(ctx.listen, r.health_port)),
            (None, None) => return Err(err(format!("{} has no health probe", feature.id))),
        };
        let setting = |k: &str| inst.settings.get(k);
        let defaults = &self.config.supervisor.limits;
        let limits = Limits {
            memory_max: setting("memoryMax")
                .and_then(Value::as_u64)
                .or(svc.memory_max)
                .unwrap_or(defaults.memory_max),
            pids_max: setting("pidsMax")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok())
                .or(svc.pids_max)
                .unwrap_or(defaults.pids_max),
            cpu_max: setting("cpuMax")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or(svc.cpu_max)
                .unwrap_or_else(|| defaults.cpu_max.clone()),
        };
        let mut hostname = format!("nnc-{}-{}", inst.feature_id, inst.name);
        hostname.truncate(63);
        Ok(ServiceDef {
            instance_id: inst.id.clone(),
            spawn: SpawnSpec {
                read_only: binary.parent().map(Path::to_path_buf).into_iter().collect(),
                program: binary,
                args,
                env: vec![
                    ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
                    ("HOME".into(), paths.data.display().to_string()),
                ],
                cwd: paths.data.clone(),
                netns,
                hostname,
                uid,
                gid: uid,
                keep_caps,
                cgroup: None,
                isolate: true,
                // A private /tmp would hide the service's own files if they live under /tmp.
                private_tmp: !paths.root.starts_with("/tmp"),
            },
            limits,
            health: HealthCheck {
                probe,
                interval: self.config.supervisor.probe_interval,
                timeout: self.config.supervisor.probe_timeout,
                threshold: self.config.supervisor.probe_threshold,
                startup_timeout: self.config.supervisor.startup_timeout,
            },
            log_dir: paths.logs,
            start_attempts: None,
        })
    }

    /// Hands the service to the supervisor and waits until it is healthy (or given up on).
    pub(super) async fn start_stage(
        &self,
        inst: &Instance,
        feature: &Feature,
    ) -> Result<Instance, StepError> {
        let inst = self
            .transition(&inst.id, Status::Starting, None, |i| {
                i.desired_running = true
            })
            .await
            .ok_or_else(|| StepError::vanished(Step::Starting))?;
        self.kill_leftover(&inst);
        self.launch(&inst, feature, None).await?;
        Ok(inst)
    }

    /// Hands the service to the supervisor and waits for its first verdict: healthy, or
    /// given up on (after `attempts` crashes before its first healthy run, when given).
    pub(super) async fn launch(
        &self,
        inst: &Instance,
        feature: &Feature,
        attempts: Option<u32>,
    ) -> Result<(), StepError> {
        let mut def = self.service_def(inst, feature)?;
        def.start_attempts = attempts;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending_starts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(inst.id.clone(), tx);
        self.supervisor.start(def);
        match rx.await {
            Ok(Outcome::Healthy) => Ok(()),
            Ok(Outcome::Failed(reason)) => {
                Err(StepError::new(Step::Starting, "START_FAILED", reason))
            }
            Ok(Outcome::Stopped | Outcome::Started(_)) | Err(_) => Err(StepError::new(
                Step::Starting,
                "START_FAILED",
                "stopped before it became healthy".into(),
            )),
        }
    }

    /// Kills a process a previous agent left behind (recognised by PID and start time), and
    /// anything left in the instance's cgroup.
    pub(super) fn kill_leftover(&self, inst: &Instance) {
        if let Some((pid, start)) = inst.pid
            && process_start_time(pid) == Some(start)
        {
            log::warn!(target: "supervisor", "instance {}: killing pid {pid} left by an earlier agent", inst.id);
            // SAFETY: the PID and its start time match what we recorded for our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.supervisor.cgroups.kill_and_remove(&inst.id);
    }

    /// Records the PID of a started service (so a later agent can recognise a leftover).
    pub(crate) fn record_pid(&self, id: &str, pid: i32) {
        if let Some(start) = process_start_time(pid) {
            let store = self.store.clone();
            let id = id.to_owned();
            let _ = store.update_instance(&id, |i| i.pid = Some((pid, start)));
        }
    }

    /// Starts the services of instances the user wants running (agent start).
    pub(crate) fn restart_wanted(self: &Arc<Self>) -> Result<usize, crate::store::StoreError> {
        // STARTING instances are resumed with the rest of their install (resume_interrupted).
        let wanted = self.store.instances_where(|i| {
            i.desired_running && matches!(i.status, Status::Running | Status::Stopped)
        })?;
        for inst in &wanted {
            // Not RUNNING until it runs again: say so before the API answers anyone.
            let (before, _) = self
                .store
                .update_instance(&inst.id, |i| i.status = Status::Starting)?;
            self.bus.publish(
                Some(&inst.id),
                EventKind::StatusChanged {
                    from: before.status,
                    to: Status::Starting,
                    reason: Some("agent restarted".into()),
                },
            );
            let this = Arc::clone(self);
            let id = inst.id.clone();
            tokio::spawn(async move {
                if let Err(e) = this.start(&id).await {
                    log::error!(target: "supervisor", "instance {id}: cannot start again: {}", e.message);
                    // Not left STARTING: the status says it did not come back, and why.
                    let why = format!(
                        "cannot start again after the agent restarted: {}",
                        e.message
                    );
                    let reason = why.clone();
                    this.transition(&id, Status::Failed, Some(&reason), move |i| {
                        i.failed_step = Some(crate::store::Step::Starting);
                        i.error_code = Some(e.code.to_owned());
                        i.error = Some(why);
                    })
                    .await;
                }
            });
        }
        Ok(wanted.len())
    }

    /// `startInstance`: wants the service running and starts it.
    pub(crate) async fn start(&self, id: &str) -> Result<Instance, RequestError> {
        let inst = self
            .store
            .instance(id)?
            .ok_or_else(|| refuse("NOT_FOUND", format!("no instance {id}")))?;
        let feature = self.feature_for(&inst, &inst.version).ok_or_else(|| {
            refuse(
                "UNKNOWN_FEATURE",
                format!(
                    "{} {} is not in the catalogue, and the instance has no record of it",
                    inst.feature_id, inst.version
                ),
            )
        })?;
        if !feature.runs() {
            return Err(refuse(
                "NOT_A_SERVICE",
                format!("{} is not a service", feature.id),
            ));
        }
        let startable = matches!(
            inst.status,
            Status::Stopped | Status::Running | Status::Starting
        ) || (inst.status == Status::Failed
            && matches!(inst.failed_step, Some(Step::Running | Step::Starting)));
        if !startable {
            return Err(refuse(
                "INVALID_STATE",
                format!(
                    "instance {id} is {}; only a STOPPED, RUNNING or crashed instance can be started",
                    inst.status.as_str()
                ),
            ));
        }
        if self.supervisor.info(id).is_some_and(|p| p.pid.is_some()) {
            return Ok(inst);
        }
        self.start_stage(&inst, &feature)
            .await
            .map_err(|e| refuse(e.code, e.message.clone()))?;
        self.transition(id, Status::Running, Some("started"), |i| {
            clear_failure(i);
        })
        .await
        .ok_or_else(|| refuse("STATE_ERROR", "instance record vanished"))
    }

    /// `stopInstance`: stops the service and remembers that the user wants it stopped.
    pub(crate) async fn stop(&self, id: &str) -> Result<Instance, RequestError> {
        let inst = self
            .store
            .instance(id)?
            .ok_or_else(|| refuse("NOT_FOUND", format!("no instance {id}")))?;
        if !matches!(
            inst.status,
            Status::Running | Status::Starting | Status::Stopped | Status::Failed
        ) {
            return Err(refuse(
                "INVALID_STATE",
                format!("instance {id} is {}", inst.status.as_str()),
            ));
        }
        self.supervisor.stop(id).await;
        let status = if inst.status == Status::Failed {
            Status::Failed
        } else {
            Status::Stopped
        };
        self.transition(id, status, Some("stopped on request"), |i| {
            i.desired_running = false;
            i.pid = None;
        })
        .await
        .ok_or_else(|| refuse("STATE_ERROR", "instance record vanished"))
    }

    /// `restartInstance`: a new process (no crash counted), or a start if none runs.
    pub(crate) async fn restart(&self, id: &str) -> Result<Instance, RequestError> {
        if self.supervisor.restart(id) {
            return self
                .store
                .instance(id)?
                .ok_or_else(|| refuse("NOT_FOUND", format!("no instance {id}")));
        }
        self.start(id).await
    }

    /// Emits `service.installed` once an instance's flow is complete.
    pub(super) fn announce_installed(&self, done: &Instance) {
        self.bus.publish(
            Some(&done.id),
            EventKind::ServiceInstalled {
                feature_id: done.feature_id.clone(),
                version: done.version.clone(),
                sha256: done.sha256.clone().unwrap_or_default(),
                verified_by: done.verified_by.clone().unwrap_or_default(),
            },
        );
    }
}

/// Drops terminal colour sequences (`ESC [ ... letter`) that some checkers print.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Forgets why a service failed once it runs again. What the last update did (a rollback and
/// its reason) stays visible until the next update.
fn clear_failure(i: &mut Instance) {
    if i.failed_step != Some(Step::Updating) {
        i.failed_step = None;
        i.error = None;
        i.error_code = None;
    }
}

/// Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot.
pub(crate) fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn io_step(step: Step, path: &Path, e: &std::io::Error) -> StepError {
    StepError::new(step, "IO_ERROR", format!("{}: {e}", path.display()))
}

/// `config/` (root, world-readable), `data/` (the service user's, private), `logs/` (the
/// service user's: Tor writes its own log file there).
fn prepare_dirs(p: &InstancePaths, uid: u32) -> Result<(), StepError> {
    for (dir, mode, owned) in [
        (&p.root, 0o755, false),
        (&p.config, 0o755, false),
        (&p.data, 0o700, true),
        (&p.logs, 0o755, true),
    ] {
        std::fs::create_dir_all(dir).map_err(|e| io_step(Step::Configuring, dir, &e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_step(Step::Configuring, dir, &e))?;
        if owned {
            chown(dir, Some(uid), Some(uid)).map_err(|e| io_step(Step::Configuring, dir, &e))?;
        }
    }
    Ok(())
}

/// Writes a config file atomically, readable by the service user.
pub(super) fn write_config(file: &Path, text: &str) -> Result<(), StepError> {
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)))
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| io_step(Step::Configuring, file, &e))
}

/// Runs the service's own config check as the service user; its output is the error.
pub(super) fn run_check(
    binary: &Path,
    args: &[String],
    uid: u32,
    cwd: &Path,
) -> Result<(), StepError> {
    use std::os::unix::process::CommandExt;
    let fail = |m: String| StepError::new(Step::Configuring, "CONFIG_REJECTED", m);
    let child = std::process::Command::new(binary)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", cwd)
        .uid(uid)
        .gid(uid)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", binary.display())))?;
    let pid = child.id();
    // Output is collected on a thread so a chatty checker cannot fill a pipe and hang.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(CHECK_TIMEOUT) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(fail(e.to_string())),
        Err(_) => {
            // SAFETY: killing the checker we started (it is not reaped yet: the thread waits).
            unsafe { libc::kill(i32::try_from(pid).unwrap_or(0), libc::SIGKILL) };
            return Err(fail(format!(
                "{} did not finish checking the config in {} s",
                binary.display(),
                CHECK_TIMEOUT.as_secs()
            )));
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = strip_ansi(&text);
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(fail(format!(
        "{} rejected the generated config ({}): {}",
        binary
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        out.status,
        tail.join("\n")
    )))
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_codes_are_dropped_from_checker_output() {
        assert_eq!(
            super::strip_ansi("\u{1b}[31mFATAL\u{1b}[0m[0000] TLS required"),
            "FATAL[0000] TLS required"
        );
    }

    #[test]
    fn start_time_of_this_process_is_readable() {
        let pid = i32::try_from(std::process::id()).unwrap();
        assert!(super::process_start_time(pid).is_some());
        assert!(super::process_start_time(i32::MAX).is_none());
    }
}
