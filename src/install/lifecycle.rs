//! The installer's service stages and controls: CONFIGURING (directories, service user, the
//! generated config and the service's own check of it), STARTING (handing the process to the
//! supervisor and waiting until its health probe passes), and start/stop/restart afterwards.
//!
//! Instance status follows the service: RUNNING once healthy, FAILED (step `running`) when
//! the supervisor gives up, STOPPED when the user stops it. After an agent restart, instances
//! the user wants running are started again: a process that outlived the old agent (it should
//! not: every service gets SIGKILL when the agent dies) is killed first.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Installer, RequestError, StepError, blocking, refuse, wrong_state};
use crate::catalogue::{self, Feature, HealthSpec};
use crate::code::Code;
use crate::configgen::{self, Context};
use crate::events::EventKind;
use crate::store::{Instance, Status, Step};
use crate::supervisor::{self, HealthCheck, Limits, Outcome, Probe, ServiceDef, SpawnSpec};
use crate::util::Locked;

/// The capability TUN devices need (granted only inside the service's own user namespace).
const CAP_NET_ADMIN: u32 = 12;

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
            let pending = this.pending_starts.locked().remove(id);
            if let Some(tx) = pending {
                let _ = tx.send(outcome);
                return;
            }
            let id = id.to_owned();
            crate::util::spawn(async move { this.service_outcome(&id, outcome).await });
        });
    }

    /// What a supervised service did after its start: back to health, or given up on.
    /// A flow that owns the instance (update, reconfigure, uninstall, an install's stages)
    /// is not overruled: an outcome of a start before it began (a restart still settling
    /// when an update is asked for) must not make an UPDATING instance RUNNING.
    async fn service_outcome(&self, id: &str, outcome: Outcome) {
        let settled = |s: Status| matches!(s, Status::Running | Status::Failed | Status::Stopped);
        match outcome {
            Outcome::Healthy => {
                if let Ok(Some(inst)) = self.store.instance(id)
                    && matches!(
                        inst.status,
                        Status::Failed | Status::Stopped | Status::Starting
                    )
                    && inst.desired_running
                {
                    self.transition(id, Status::Running, Some("service healthy"), |i| {
                        clear_failure(i);
                    })
                    .await;
                }
            }
            Outcome::Failed(reason) => {
                if let Ok(Some(inst)) = self.store.instance(id)
                    && settled(inst.status)
                {
                    let e = StepError::new(Step::Running, Code::ServiceFailed, reason);
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
        let inst = self.first_fetch(inst, feature).await?;
        let uid = self
            .store
            .allocate_uid(self.config.supervisor.uid_range, &inst.id)
            .map_err(|e| {
                StepError::new(
                    Step::Configuring,
                    Code::StateError,
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
                .render(&ctx, &super::subscription::render_settings(&record))
                .map_err(|e| StepError::new(Step::Configuring, Code::ConfigInvalid, e))?;
            let file = paths.config.join(generator.file_name());
            write_config(&file, &rendered.text, uid)?;
            Ok(Some(file))
        })
        .await?;
        let inst = self
            .transition(&inst.id, Status::Configuring, None, move |i| {
                i.uid = Some(uid)
            })
            .await
            .ok_or_else(|| StepError::vanished(Step::Configuring))?;
        let check = feature.service.as_ref().and_then(|s| s.check.clone());
        let check_args = match (&config, check, feature.generator()) {
            (Some(c), Some(t), _) => Some(configgen::expand(&t, c)),
            (Some(c), None, Some(g)) => Some(g.check_args(c)),
            _ => None,
        };
        if let (Some(args), Some(binary)) = (check_args, inst.binary_path.clone()) {
            self.check_config(&inst, feature, PathBuf::from(binary), args)
                .await?;
        }
        Ok(inst)
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
            // A routing mark set inside the service's namespace does not cross its veth (the
            // kernel clears it between namespaces), so it would only cost a capability.
            mark: None,
            data_dir: paths.data.clone(),
            transparent: iface.is_some(),
            control_secret: inst.control_secret.clone(),
        };
        let netns = iface.and_then(|r| r.netns).map(PathBuf::from);
        (ctx, netns)
    }

    /// How every process of an instance runs (its service, its config check, its exec
    /// probe): the strongest confinement this system allows (`supervisor::Support`), as the
    /// service user, seeing only its own directories and binaries.
    pub(super) fn confinement(
        &self,
        inst: &Instance,
        program: PathBuf,
        args: Vec<String>,
        keep_caps: Vec<u32>,
    ) -> Result<SpawnSpec, String> {
        let paths = self.instance_paths(&inst.id);
        let (_, netns) = self.context(inst, &paths);
        let uid = inst.uid.ok_or("the instance has no service user")?;
        let support = &self.supervisor.support;
        let namespaces = support.flags
            & (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC);
        let root = (namespaces & libc::CLONE_NEWNS != 0).then(|| {
            let mut own = vec![(paths.data.clone(), true), (paths.config.clone(), false)];
            let binaries = [
                inst.binary_path.as_deref().map(Path::new),
                Some(program.as_path()),
            ];
            for dir in binaries.into_iter().flatten().filter_map(Path::parent) {
                if dir.starts_with(self.layout.features_dir()) && !own.iter().any(|(d, _)| d == dir)
                {
                    own.push((dir.to_path_buf(), false));
                }
            }
            supervisor::root_fs(
                &self.layout.sandbox_root(),
                &supervisor::View {
                    own: &own,
                    sysfs: netns.is_some(),
                    tun: keep_caps.contains(&CAP_NET_ADMIN),
                },
            )
        });
        let mut hostname = format!("nnc-{}-{}", inst.feature_id, inst.name);
        hostname.truncate(63);
        Ok(SpawnSpec {
            program,
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
            namespaces,
            root,
            rlimits: Vec::new(),
            userns: support.user,
        })
    }

    /// Everything the supervisor needs to run the instance's service.
    pub(super) fn service_def(
        &self,
        inst: &Instance,
        feature: &Feature,
    ) -> Result<ServiceDef, StepError> {
        let err = |m: String| StepError::new(Step::Starting, Code::StartFailed, m);
        let paths = self.instance_paths(&inst.id);
        let (ctx, _) = self.context(inst, &paths);
        let binary = PathBuf::from(
            inst.binary_path
                .clone()
                .ok_or_else(|| err("no binary in place".into()))?,
        );
        let svc = feature.service.clone().unwrap_or_default();
        let generator = feature.generator();
        let rendered = match generator {
            Some(g) => Some(
                g.render(&ctx, &super::subscription::render_settings(inst))
                    .map_err(err)?,
            ),
            None => None,
        };
        let config = generator.map(|g| paths.config.join(g.file_name()));
        let args = match (&svc.args, generator, &config) {
            (Some(t), _, Some(c)) => configgen::expand(t, c),
            (Some(t), _, None) => t.clone(),
            (None, Some(g), Some(c)) => g.run_args(c),
            _ => return Err(err(format!("{} has no way to run", feature.id))),
        };
        let keep_caps: Vec<u32> = svc
            .capabilities
            .iter()
            .filter_map(|c| catalogue::capability(c))
            .collect();
        let spawn = self
            .confinement(inst, binary, args, keep_caps)
            .map_err(err)?;
        let probe = match (&svc.health, &rendered) {
            (Some(HealthSpec::Tcp(port)), _) => Probe::Tcp(SocketAddr::new(ctx.listen, *port)),
            (Some(HealthSpec::Exec(cmd)), _) => {
                let (program, args) = cmd
                    .split_first()
                    .ok_or_else(|| err("empty exec health probe".into()))?;
                let program = supervisor::resolve_program(program);
                Probe::Exec(Box::new(
                    self.confinement(inst, program, args.to_vec(), Vec::new())
                        .map_err(err)?,
                ))
            }
            (None, Some(r)) => Probe::Tcp(SocketAddr::new(ctx.listen, r.health_port)),
            (None, None) => return Err(err(format!("{} has no health probe", feature.id))),
        };
        Ok(ServiceDef {
            instance_id: inst.id.clone(),
            spawn,
            limits: self.limits(inst, feature),
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

    /// The cgroup limits of an instance: its settings, else its feature's, else the agent's.
    fn limits(&self, inst: &Instance, feature: &Feature) -> Limits {
        let svc = feature.service.clone().unwrap_or_default();
        let setting = |k: &str| inst.settings.get(k);
        let defaults = &self.config.supervisor.limits;
        Limits {
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
        }
    }

    /// Lets `binary` check a config with `args`, confined like the service (its namespaces,
    /// root, user, a cgroup of its own, a timeout, and whatever it started killed after):
    /// a checker parses the same hostile-influenced settings the service does. Its output
    /// (the last lines) is the error when it refuses.
    pub(super) async fn check_config(
        &self,
        inst: &Instance,
        feature: &Feature,
        binary: PathBuf,
        args: Vec<String>,
    ) -> Result<(), StepError> {
        let fail = |m: String| StepError::new(Step::Configuring, Code::ConfigRejected, m);
        let mut spec = self
            .confinement(inst, binary.clone(), args, Vec::new())
            .map_err(fail)?;
        let leaf = format!("{}-check", inst.id);
        let cgroups = self.supervisor.cgroups.clone();
        let limits = self.limits(inst, feature);
        let name = binary
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        // A checker may quote the config: its words never carry the settings' secrets on.
        let mut secrets = feature.secrets(&super::subscription::render_settings(inst));
        secrets.extend(inst.control_secret.clone());
        let generator = feature.generator();
        blocking(move || {
            spec.cgroup = cgroups.leaf(&leaf, &limits).map_err(fail)?;
            spec.rlimits = supervisor::rlimits(spec.cgroup.is_some(), &limits);
            let ran = crate::supervisor::run_confined(spec, CHECK_TIMEOUT, 16 * 1024);
            cgroups.kill_and_remove(&leaf);
            let end = ran.map_err(|e| fail(format!("cannot run {}: {e}", binary.display())))?;
            if end.timed_out {
                return Err(fail(format!(
                    "{} did not finish checking the config in {} s",
                    binary.display(),
                    CHECK_TIMEOUT.as_secs()
                )));
            }
            if end.code == Some(0) {
                return Ok(());
            }
            let text = strip_ansi(&String::from_utf8_lossy(&end.output));
            let text = configgen::scrub(&text, &secrets);
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let status = match (end.code, end.signal) {
                (Some(c), _) => format!("exit status: {c}"),
                (_, Some(s)) => format!("killed by signal {s}"),
                _ => "no status".into(),
            };
            let hint = generator
                .and_then(|g| g.explain_refusal(&text))
                .map_or_else(String::new, |h| format!("{h}. "));
            Err(fail(format!(
                "{hint}{name} rejected the generated config ({status}): {}",
                tail.join("\n")
            )))
        })
        .await
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
        self.refresh_files(inst, feature).await?;
        let mut def = self.service_def(inst, feature)?;
        def.start_attempts = attempts;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending_starts.locked().insert(inst.id.clone(), tx);
        self.supervisor.start(def);
        match rx.await {
            Ok(Outcome::Healthy) => Ok(()),
            Ok(Outcome::Failed(reason)) => {
                Err(StepError::new(Step::Starting, Code::StartFailed, reason))
            }
            Ok(Outcome::Stopped | Outcome::Started(_)) | Err(_) => Err(StepError::new(
                Step::Starting,
                Code::StartFailed,
                "stopped before it became healthy".into(),
            )),
        }
    }

    /// Before each start: the instance's directories get their modes again, and a config
    /// this agent would render differently (one an older agent wrote, with a routing mark or
    /// a log file in `logs/`) is written anew and checked before anything runs it.
    async fn refresh_files(&self, inst: &Instance, feature: &Feature) -> Result<(), StepError> {
        let Some(uid) = inst.uid else {
            return Ok(());
        };
        let paths = self.instance_paths(&inst.id);
        let (ctx, _) = self.context(inst, &paths);
        let rendered = match feature.generator() {
            Some(g) => Some((
                paths.config.join(g.file_name()),
                g.render(&ctx, &super::subscription::render_settings(inst))
                    .map_err(|e| StepError::new(Step::Starting, Code::ConfigInvalid, e))?
                    .text,
                g,
            )),
            None => None,
        };
        let dirs = InstancePaths {
            root: paths.root.clone(),
            config: paths.config.clone(),
            data: paths.data.clone(),
            logs: paths.logs.clone(),
        };
        let file = rendered.as_ref().map(|(f, t, _)| (f.clone(), t.clone()));
        let changed = blocking(move || -> Result<bool, StepError> {
            prepare_dirs(&dirs, uid)?;
            let Some((file, text)) = file else {
                return Ok(false);
            };
            if std::fs::read_to_string(&file).is_ok_and(|on_disk| on_disk == text) {
                return Ok(false);
            }
            write_config(&file, &text, uid)?;
            Ok(true)
        })
        .await?;
        if let (true, Some((file, _, generator)), Some(binary)) =
            (changed, rendered, inst.binary_path.clone())
        {
            log::info!(target: "supervisor", "instance {}: its config is rendered anew by this agent version; checking it", inst.id);
            let args = check_args(feature, generator, &file);
            self.check_config(inst, feature, PathBuf::from(binary), args)
                .await
                .map_err(|e| StepError::new(Step::Starting, e.code, e.message))?;
        }
        Ok(())
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
        if !self.supervisor.support.has(libc::CLONE_NEWPID)
            && let Some(uid) = inst.uid
        {
            supervisor::kill_uid(uid);
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
            crate::util::spawn(async move {
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
                        i.error_code = Some(e.code.to_string());
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
        let _no_server_change = self.ops_gate.lock().await;
        let inst = self.existing(id)?;
        let feature = self.feature_for(&inst, &inst.version).ok_or_else(|| {
            refuse(
                Code::UnknownFeature,
                format!(
                    "{} {} is not in the catalogue, and the instance has no record of it",
                    inst.feature_id, inst.version
                ),
            )
        })?;
        if !feature.runs() {
            return Err(refuse(
                Code::NotAService,
                format!("{} is not a service", feature.id),
            ));
        }
        let startable = matches!(
            inst.status,
            Status::Stopped | Status::Running | Status::Starting
        ) || (inst.status == Status::Failed
            && matches!(inst.failed_step, Some(Step::Running | Step::Starting)));
        if !startable {
            return Err(wrong_state(
                &inst,
                "; only a STOPPED, RUNNING or crashed instance can be started",
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
        .ok_or_else(|| refuse(Code::StateError, "instance record vanished"))
    }

    /// `stopInstance`: stops the service and remembers that the user wants it stopped.
    pub(crate) async fn stop(&self, id: &str) -> Result<Instance, RequestError> {
        let _no_server_change = self.ops_gate.lock().await;
        let inst = self.existing(id)?;
        if !matches!(
            inst.status,
            Status::Running | Status::Starting | Status::Stopped | Status::Failed
        ) {
            return Err(wrong_state(&inst, ""));
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
        .ok_or_else(|| refuse(Code::StateError, "instance record vanished"))
    }

    /// `restartInstance`: a new process (no crash counted), or a start if none runs.
    pub(crate) async fn restart(&self, id: &str) -> Result<Instance, RequestError> {
        if self.supervisor.restart(id) {
            return self.existing(id);
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
    StepError::new(step, Code::IoError, format!("{}: {e}", path.display()))
}

/// The instance's directories, so that other services cannot reach them even where they
/// share the agent's view of the file system: the instance dir and `config/` are root's with
/// the service's group (0750), `data/` is the service's alone (0700), `logs/` is root's alone
/// (0700: the agent writes the service's output there; the service never does).
fn prepare_dirs(p: &InstancePaths, uid: u32) -> Result<(), StepError> {
    use std::os::unix::fs::DirBuilderExt;
    for (dir, mode, owner) in [
        (&p.root, 0o750, (0, uid)),
        (&p.config, 0o750, (0, uid)),
        (&p.data, 0o700, (uid, uid)),
        (&p.logs, 0o700, (0, 0)),
    ] {
        let e = |e: std::io::Error| io_step(Step::Configuring, dir, &e);
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => return Err(e(err)),
            _ => {}
        }
        // Through a descriptor opened without following links: the directory is ours.
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir)
            .map_err(e)?;
        std::os::unix::fs::fchown(&fd, Some(owner.0), Some(owner.1)).map_err(e)?;
        fd.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(e)?;
    }
    Ok(())
}

/// Writes a config file atomically: root's, readable by the service's group only (0640).
/// How the service checks `file`: the catalogue's `service.check`, else the generator's.
pub(super) fn check_args(feature: &Feature, g: configgen::Generator, file: &Path) -> Vec<String> {
    match feature.service.as_ref().and_then(|s| s.check.clone()) {
        Some(t) => configgen::expand(&t, file),
        None => g.check_args(file),
    }
}

pub(super) fn write_config(file: &Path, text: &str, gid: u32) -> Result<(), StepError> {
    use std::io::Write;
    let tmp = file.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::os::unix::fs::fchown(&f, Some(0), Some(gid))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o640))?;
        std::fs::rename(&tmp, file)
    })()
    .map_err(|e| io_step(Step::Configuring, file, &e))
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
