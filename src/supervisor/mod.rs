//! The supervisor: keeps each instance's service running, confined and observable.
//!
//! One task per managed process drives its state machine:
//!
//! ```text
//!  STARTING ──healthy──► RUNNING ──exit/unhealthy──► CRASHED ──► BACKOFF ──► STARTING
//!      │                    │                           │
//!      └──── stop ──► STOPPING ──► STOPPED               └─ crash-loop limit ─► (instance FAILED)
//! ```
//!
//! Backoff starts at 1 s and doubles up to 30 s; a run that lasted the stable window resets it.
//! Stopping sends SIGTERM, then SIGKILL after the grace period, then kills whatever is left in
//! the instance's cgroup. stdout/stderr go to a rotated log and to `logs` subscribers. The
//! service learns nothing from the agent but its arguments and environment.

mod cgroup;
mod health;
mod logs;
mod sandbox;
mod spawn;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, mpsc, oneshot};

pub(crate) use cgroup::{Cgroups, Limits};
pub(crate) use health::{HealthCheck, Probe};

pub(crate) use sandbox::{Isolation, Support, View, resolve_program, root_fs};
pub(crate) use spawn::{Holder, SpawnSpec, kill_uid, run as run_confined};

use crate::events::{Bus, EventKind, ProcState};
use crate::util::{self, Locked};

/// How services are run (`[supervisor]`), restarted and confined.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub cgroup_root: PathBuf,
    /// Service users are allocated from this uid (= gid) range.
    pub uid_range: [u32; 2],
    pub policy: Policy,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub probe_threshold: u32,
    pub startup_timeout: Duration,
    /// Default limits of a service's cgroup (a feature or the instance's settings may change them).
    pub limits: Limits,
}

/// What the API shows of a process.
#[derive(Debug, Clone)]
pub(crate) struct ProcessInfo {
    pub state: ProcState,
    pub pid: Option<i32>,
    pub restart_count: u32,
    pub last_exit_code: Option<i32>,
    pub last_signal: Option<i32>,
    pub started_at: Option<u64>,
    pub next_restart_at: Option<u64>,
    /// What confines the current (or last) process.
    pub isolation: Option<std::sync::Arc<Isolation>>,
}

/// Restart and logging policy (from config).
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run this long resets the backoff and the crash count.
    pub stable_after: Duration,
    /// Crashes in a row (without a stable run) after which the instance is FAILED.
    pub crash_limit: u32,
    pub stop_grace: Duration,
    pub log_max_bytes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            crash_limit: 5,
            stop_grace: Duration::from_secs(5),
            log_max_bytes: 1 << 20,
        }
    }
}

/// Everything needed to run one instance's service.
#[derive(Debug, Clone)]
pub(crate) struct ServiceDef {
    pub instance_id: String,
    pub spawn: SpawnSpec,
    pub limits: Limits,
    pub health: HealthCheck,
    pub log_dir: PathBuf,
    /// Give up after this many crashes before the first healthy run (an update's new version
    /// gets one chance); `None`: the policy's crash-loop limit applies.
    pub start_attempts: Option<u32>,
}

/// What the supervisor tells the installer about an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A process started with this PID (not yet healthy).
    Started(i32),
    /// The probe passed (after a start or a restart).
    Healthy,
    /// The crash-loop limit was reached, or the service cannot be started at all.
    Failed(String),
    /// Stopped on request.
    Stopped,
}

/// Lines of one stream that reach the log in a second; more are counted and dropped.
const LINES_PER_SEC: u32 = 2000;

/// One line a service printed.
#[derive(Debug, Clone)]
pub(crate) struct LogLine {
    pub instance_id: String,
    pub stream: &'static str,
    pub line: String,
    pub at_ms: u64,
}

enum Control {
    Stop(oneshot::Sender<()>),
    Restart,
}

struct Handle {
    info: Arc<Mutex<ProcessInfo>>,
    control: mpsc::UnboundedSender<Control>,
}

type Listener = Arc<dyn Fn(&str, Outcome) + Send + Sync>;

pub(crate) struct Supervisor {
    bus: Bus,
    pub cgroups: Cgroups,
    /// What this system lets services be confined with (probed at start).
    pub support: Support,
    policy: Policy,
    procs: Mutex<HashMap<String, Handle>>,
    logs: broadcast::Sender<LogLine>,
    listener: Mutex<Option<Listener>>,
}

impl Supervisor {
    pub(crate) fn new(bus: Bus, cgroups: Cgroups, policy: Policy, support: Support) -> Supervisor {
        Supervisor {
            bus,
            cgroups,
            support,
            policy,
            procs: Mutex::new(HashMap::new()),
            logs: broadcast::channel(1024).0,
            listener: Mutex::new(None),
        }
    }

    /// Who hears about instances becoming healthy, failing or stopping (the installer).
    pub(crate) fn set_listener(&self, f: impl Fn(&str, Outcome) + Send + Sync + 'static) {
        *self.listener.locked() = Some(Arc::new(f));
    }

    fn notify(&self, instance: &str, outcome: Outcome) {
        let listener = self.listener.locked().clone();
        if let Some(l) = listener {
            l(instance, outcome);
        }
    }

    pub(crate) fn subscribe_logs(&self) -> broadcast::Receiver<LogLine> {
        self.logs.subscribe()
    }

    pub(crate) fn info(&self, instance: &str) -> Option<ProcessInfo> {
        self.procs
            .locked()
            .get(instance)
            .map(|h| h.info.locked().clone())
    }

    /// The last `n` lines of a log directory, read off the runtime thread (the files are
    /// bounded by the rotation; at most twice `log_max_bytes` is read).
    pub(crate) async fn log_tail(&self, dir: PathBuf, n: usize) -> Result<Vec<String>, String> {
        let cap = self.policy.log_max_bytes.max(1024);
        crate::util::blocking(move || logs::tail(&dir, n, cap))
            .await
            .map_err(|e| format!("cannot read the log: {e}"))
    }

    /// What services get on this system.
    pub(crate) fn isolation(&self) -> Isolation {
        self.support.describe(self.cgroups.status())
    }

    /// What one process gets from `spec`.
    fn isolation_of(&self, spec: &SpawnSpec) -> Isolation {
        let mut i = Isolation::default();
        i.applied
            .extend(["service user", "no_new_privs", "capability bounding set"].map(String::from));
        for (flag, name) in sandbox::NAMESPACES {
            let has = if flag == libc::CLONE_NEWNET {
                spec.netns.is_some()
            } else {
                spec.namespaces & flag != 0
            };
            if has {
                i.applied.push(name.into());
            } else {
                let why = self
                    .support
                    .refused
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or_else(
                        || "the instance has no network segment of its own".to_owned(),
                        |(_, e)| format!("refused by this system: {e}"),
                    );
                i.missing.push((name.into(), why));
            }
        }
        if spec.root.is_some() {
            i.applied.push("minimal root".into());
        } else {
            i.missing.push((
                "minimal root".into(),
                "no mount namespace: file permissions protect other instances' files".into(),
            ));
        }
        if !spec.keep_caps.is_empty() {
            i.applied.push(format!(
                "user namespace owning its network (capabilities {:?} count only there)",
                spec.keep_caps
            ));
        } else if spec.userns {
            i.applied.push("user namespace (none below it)".into());
        } else {
            i.missing.push((
                "user namespace".into(),
                "refused by this system (so the service cannot make one either)".into(),
            ));
        }
        match (&spec.cgroup, self.cgroups.status()) {
            (Some(_), _) => i.applied.push("cgroup".into()),
            (None, Err(why)) => i.missing.push(("cgroup".into(), why.to_owned())),
            (None, Ok(())) => {}
        }
        if spec.cgroup.is_none() && !spec.rlimits.is_empty() {
            i.applied.push("rlimits (processes)".into());
        }
        i
    }

    /// Starts supervising `def` (replacing nothing: a running instance is left alone).
    pub(crate) fn start(self: &Arc<Self>, def: ServiceDef) {
        let mut procs = self.procs.locked();
        if let Some(h) = procs.get(&def.instance_id)
            && !h.control.is_closed()
        {
            return;
        }
        let info = Arc::new(Mutex::new(ProcessInfo {
            state: ProcState::Starting,
            pid: None,
            restart_count: 0,
            last_exit_code: None,
            last_signal: None,
            started_at: None,
            next_restart_at: None,
            isolation: None,
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        procs.insert(
            def.instance_id.clone(),
            Handle {
                info: Arc::clone(&info),
                control: tx,
            },
        );
        drop(procs);
        let this = Arc::clone(self);
        crate::util::spawn(async move { this.run(def, info, rx).await });
    }

    /// Stops an instance's process and waits until it is gone.
    pub(crate) async fn stop(&self, instance: &str) {
        let control = self.procs.locked().get(instance).map(|h| h.control.clone());
        if let Some(c) = control {
            let (tx, rx) = oneshot::channel();
            if c.send(Control::Stop(tx)).is_ok() {
                let _ = rx.await;
            }
        }
    }

    /// Forgets an instance (uninstall); its last process info goes with it.
    pub(crate) async fn remove(&self, instance: &str) {
        self.stop(instance).await;
        self.procs.locked().remove(instance);
    }

    /// Restarts a running instance's process (no crash counted).
    pub(crate) fn restart(&self, instance: &str) -> bool {
        self.procs
            .locked()
            .get(instance)
            .is_some_and(|h| h.control.send(Control::Restart).is_ok())
    }

    fn set_state(
        &self,
        id: &str,
        info: &Mutex<ProcessInfo>,
        to: ProcState,
        reason: Option<String>,
    ) {
        let from = {
            let mut i = info.locked();
            std::mem::replace(&mut i.state, to)
        };
        if from != to {
            log::info!(target: "supervisor", "instance {id}: {} -> {}{}", from.as_str(), to.as_str(), reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default());
            self.bus.publish(
                Some(id),
                EventKind::ProcessStateChanged { from, to, reason },
            );
        }
    }

    async fn run(
        self: Arc<Self>,
        def: ServiceDef,
        info: Arc<Mutex<ProcessInfo>>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let id = def.instance_id.clone();
        let log = match logs::RotatingLog::open(&def.log_dir, self.policy.log_max_bytes) {
            Ok(l) => Arc::new(Mutex::new(l)),
            Err(e) => {
                self.notify(
                    &id,
                    Outcome::Failed(format!(
                        "cannot open the log in {}: {e}",
                        def.log_dir.display()
                    )),
                );
                return;
            }
        };
        let mut backoff = self.policy.backoff_initial;
        let mut crashes_in_a_row = 0u32;
        let mut ever_healthy = false;
        loop {
            self.set_state(&id, &info, ProcState::Starting, None);
            let started = Instant::now();
            let run = self.run_once(&def, &info, &log, &mut control).await;
            let (code, signal, why) = match run {
                RunEnd::Stopped(reply) => {
                    self.set_state(
                        &id,
                        &info,
                        ProcState::Stopped,
                        Some("stopped on request".into()),
                    );
                    self.notify(&id, Outcome::Stopped);
                    let _ = reply.send(());
                    return;
                }
                RunEnd::Restart => {
                    backoff = self.policy.backoff_initial;
                    crashes_in_a_row = 0;
                    continue;
                }
                RunEnd::Crashed {
                    code,
                    signal,
                    why,
                    healthy,
                } => {
                    ever_healthy |= healthy;
                    (code, signal, why)
                }
            };
            {
                let mut i = info.locked();
                i.pid = None;
                i.last_exit_code = code;
                i.last_signal = signal;
                i.restart_count += 1;
            }
            self.set_state(&id, &info, ProcState::Crashed, Some(why.clone()));
            if started.elapsed() >= self.policy.stable_after {
                backoff = self.policy.backoff_initial;
                crashes_in_a_row = 0;
            }
            crashes_in_a_row += 1;
            let restart_count = info.locked().restart_count;
            let limit = match def.start_attempts {
                Some(n) if !ever_healthy => n,
                _ => self.policy.crash_limit,
            };
            if crashes_in_a_row >= limit {
                let tail = self
                    .log_tail(def.log_dir.clone(), 10)
                    .await
                    .unwrap_or_else(|e| vec![e])
                    .join("\n");
                let reason = format!(
                    "crashed {crashes_in_a_row} times in a row ({why}); last log lines:\n{tail}"
                );
                log::error!(target: "supervisor", "instance {id}: giving up: {why}");
                self.bus.publish(
                    Some(&id),
                    EventKind::ServiceCrashed {
                        exit_code: code,
                        signal,
                        restart_count,
                        next_backoff_ms: None,
                    },
                );
                self.set_state(
                    &id,
                    &info,
                    ProcState::Stopped,
                    Some("crash-loop limit reached".into()),
                );
                self.notify(&id, Outcome::Failed(reason));
                return;
            }
            let wait = backoff;
            backoff = (backoff * 2).min(self.policy.backoff_max);
            let next = util::now_ms() + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            info.locked().next_restart_at = Some(next);
            self.bus.publish(
                Some(&id),
                EventKind::ServiceCrashed {
                    exit_code: code,
                    signal,
                    restart_count,
                    next_backoff_ms: Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
                },
            );
            self.set_state(
                &id,
                &info,
                ProcState::Backoff,
                Some(format!("restart in {:.1} s", wait.as_secs_f64())),
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                msg = control.recv() => match msg {
                    Some(Control::Restart) => {}
                    other => {
                        info.locked().next_restart_at = None;
                        self.set_state(&id, &info, ProcState::Stopped, Some("stopped on request".into()));
                        self.notify(&id, Outcome::Stopped);
                        if let Some(Control::Stop(reply)) = other {
                            let _ = reply.send(());
                        }
                        return;
                    }
                },
            }
            info.locked().next_restart_at = None;
        }
    }

    /// One run of the process: start, probe, watch, until it exits or is told to stop.
    async fn run_once(
        &self,
        def: &ServiceDef,
        info: &Arc<Mutex<ProcessInfo>>,
        log: &Arc<Mutex<logs::RotatingLog>>,
        control: &mut mpsc::UnboundedReceiver<Control>,
    ) -> RunEnd {
        let id = &def.instance_id;
        let crashed = |why: String| RunEnd::Crashed {
            code: None,
            signal: None,
            why,
            healthy: false,
        };
        let mut spec = def.spawn.clone();
        match self.cgroups.leaf(id, &def.limits) {
            Ok(leaf) => spec.cgroup = leaf,
            Err(e) => return crashed(e),
        }
        spec.rlimits = rlimits(spec.cgroup.is_some(), &def.limits);
        info.locked().isolation = Some(std::sync::Arc::new(self.isolation_of(&spec)));
        // An exec probe is the service's code too: it runs in the service's cgroup, under
        // the same limits.
        let mut health = def.health.clone();
        if let Probe::Exec(probe) = &mut health.probe {
            probe.cgroup.clone_from(&spec.cgroup);
            probe.rlimits.clone_from(&spec.rlimits);
        }
        let pipes = spawn::output_pipe().and_then(|o| spawn::output_pipe().map(|e| (o, e)));
        let ((out_r, out_w), (err_r, err_w)) = match pipes {
            Ok(p) => p,
            Err(e) => return crashed(e.to_string()),
        };
        let child =
            match tokio::task::spawn_blocking(move || spawn::spawn(spec, out_w, err_w)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    self.pump_line(id, log, "agent", &e.0);
                    return crashed(e.0);
                }
                Err(e) => return crashed(format!("spawn task: {e}")),
            };
        let pid = child.pid;
        {
            let mut i = info.locked();
            i.pid = Some(pid);
            i.started_at = Some(util::now_ms());
        }
        log::info!(target: "supervisor", "instance {id}: started pid {pid}");
        self.notify(id, Outcome::Started(pid));
        self.pump(id, log, "stdout", out_r);
        self.pump(id, log, "stderr", err_r);
        // SAFETY: the pidfd is an OwnedFd moved into the AsyncFd, open for its whole life.
        let Ok(exit) = (unsafe {
            AsyncFd::register_with_interest(child.pidfd, tokio::io::Interest::READABLE)
        }) else {
            kill(pid, libc::SIGKILL);
            let _ = spawn::reap(pid);
            return crashed("cannot watch the process".into());
        };
        let netns = def.spawn.netns.clone();
        let started = Instant::now();
        let mut healthy = false;
        let mut failures = 0u32;
        // Probe often while starting (a service is up in well under a second), then at the
        // configured interval.
        let mut tick = tokio::time::interval(health.interval.min(Duration::from_millis(200)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = exit.readable() => {
                    // What it left in its group (no PID namespace) or cgroup goes with it.
                    spawn::kill_group(pid);
                    let (code, signal) = spawn::reap(pid);
                    sweep(&def.spawn);
                    self.clear_cgroup(id).await;
                    let why = match (code, signal) {
                        (Some(c), _) => format!("exited with code {c}"),
                        (_, Some(s)) => format!("killed by signal {s}"),
                        _ => "ended".into(),
                    };
                    return RunEnd::Crashed { code, signal, why, healthy };
                }
                msg = control.recv() => {
                    self.terminate(id, info, pid, &exit).await;
                    sweep(&def.spawn);
                    return match msg {
                        Some(Control::Restart) => RunEnd::Restart,
                        Some(Control::Stop(reply)) => RunEnd::Stopped(reply),
                        None => RunEnd::Stopped(oneshot::channel().0),
                    };
                }
                _ = tick.tick() => {
                    let check = health.clone();
                    let ns = netns.clone();
                    let result = crate::util::blocking(move || health::probe_once(&check, ns.as_ref())).await;
                    match (result, healthy) {
                        (Ok(()), false) => {
                            healthy = true;
                            failures = 0;
                            tick = tokio::time::interval_at(tokio::time::Instant::now() + health.interval, health.interval);
                            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            self.set_state(id, info, ProcState::Running, Some("health probe passed".into()));
                            self.notify(id, Outcome::Healthy);
                        }
                        (Ok(()), true) => failures = 0,
                        (Err(e), false) if started.elapsed() > health.startup_timeout => {
                            self.terminate(id, info, pid, &exit).await;
                            return crashed(format!("not healthy after {:.0} s: {e}", health.startup_timeout.as_secs_f64()));
                        }
                        (Err(_), false) => {}
                        (Err(e), true) => {
                            failures += 1;
                            log::warn!(target: "supervisor", "instance {id}: health probe failed ({failures}/{}): {e}", health.threshold);
                            if failures >= health.threshold {
                                self.terminate(id, info, pid, &exit).await;
                                return RunEnd::Crashed {
                                    code: None,
                                    signal: None,
                                    why: format!("unhealthy: {e}"),
                                    healthy: true,
                                };
                            }
                        }
                    }
                }
            }
        }
    }

    /// SIGTERM, SIGKILL after the grace period, then everything left in the cgroup.
    async fn terminate(
        &self,
        id: &str,
        info: &Mutex<ProcessInfo>,
        pid: i32,
        exit: &AsyncFd<OwnedFd>,
    ) {
        self.set_state(id, info, ProcState::Stopping, None);
        kill(pid, libc::SIGTERM);
        if tokio::time::timeout(self.policy.stop_grace, exit.readable())
            .await
            .is_err()
        {
            log::warn!(target: "supervisor", "instance {id}: pid {pid} ignored SIGTERM for {:.0} s; killing it", self.policy.stop_grace.as_secs_f64());
            kill(pid, libc::SIGKILL);
            let _ = exit.readable().await;
        }
        spawn::kill_group(pid);
        let (code, signal) = spawn::reap(pid);
        {
            let mut i = info.locked();
            i.pid = None;
            i.last_exit_code = code;
            i.last_signal = signal;
        }
        self.clear_cgroup(id).await;
    }

    /// Kills what is left in an instance's cgroup and removes it, off the runtime thread
    /// (a process stuck in the kernel can make that wait).
    async fn clear_cgroup(&self, id: &str) {
        let (cgroups, id) = (self.cgroups.clone(), id.to_owned());
        crate::util::blocking(move || cgroups.kill_and_remove(&id)).await;
    }

    fn pump_line(
        &self,
        id: &str,
        log: &Mutex<logs::RotatingLog>,
        stream: &'static str,
        line: &str,
    ) {
        if let Err(e) = log.locked().write_line(line) {
            log::warn!(target: "supervisor", "instance {id}: cannot write its log: {e}");
        }
        let _ = self.logs.send(LogLine {
            instance_id: id.to_owned(),
            stream,
            line: line.to_owned(),
            at_ms: util::now_ms(),
        });
    }

    /// Copies a child's output, line by line, to its log and to subscribers.
    fn pump(
        &self,
        id: &str,
        log: &Arc<Mutex<logs::RotatingLog>>,
        stream: &'static str,
        fd: OwnedFd,
    ) {
        let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return;
        };
        let (id, log, logs) = (id.to_owned(), Arc::clone(log), self.logs.clone());
        crate::util::spawn(async move {
            let mut pipe = pipe;
            // Whatever it prints, the agent holds at most one line of `MAX_LINE` bytes.
            let mut buf = vec![0u8; 8192];
            let mut splitter = logs::LineSplitter::default();
            // At most LINES_PER_SEC lines a second reach the log and subscribers: a service
            // printing bare newlines must not turn the runtime thread into its log writer.
            let (mut second, mut in_second, mut dropped) = (Instant::now(), 0u32, 0u64);
            let mut emit = |line: String| {
                if second.elapsed() >= Duration::from_secs(1) {
                    second = Instant::now();
                    in_second = 0;
                    if dropped > 0 {
                        let note = format!(
                            "[nnc-agent: dropped {dropped} lines over {LINES_PER_SEC} a second]"
                        );
                        dropped = 0;
                        let _ = log.locked().write_line(&note);
                    }
                }
                in_second += 1;
                if in_second > LINES_PER_SEC {
                    dropped += 1;
                    return;
                }
                if let Err(e) = log.locked().write_line(&line) {
                    log::warn!(target: "supervisor", "instance {id}: cannot write its log: {e}");
                }
                let _ = logs.send(LogLine {
                    instance_id: id.clone(),
                    stream,
                    line,
                    at_ms: util::now_ms(),
                });
            };
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                splitter.feed(&buf[..n], &mut emit);
                tokio::task::yield_now().await;
            }
            if splitter.pending() {
                splitter.end_line(&mut emit);
            }
        });
    }
}

enum RunEnd {
    Crashed {
        code: Option<i32>,
        signal: Option<i32>,
        why: String,
        healthy: bool,
    },
    Restart,
    Stopped(oneshot::Sender<()>),
}

/// Without a cgroup, the kernel's per-user process limit stands in for `pids.max` (each
/// instance has a user of its own). Memory has no such stand-in: RLIMIT_AS and RLIMIT_DATA
/// count address space a Go runtime reserves but never uses, and sing-box and Xray die at
/// start under them. Never a core dump.
// The resource numbers are `u32` with glibc and `c_int` with musl.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn rlimits(cgroup: bool, limits: &Limits) -> Vec<(u32, u64)> {
    let mut out = vec![(libc::RLIMIT_CORE as u32, 0)];
    if !cgroup {
        out.push((libc::RLIMIT_NPROC as u32, u64::from(limits.pids_max)));
    }
    out
}

/// Without a PID namespace, what left the service's process group still runs as its user.
fn sweep(spec: &SpawnSpec) {
    if spec.namespaces & libc::CLONE_NEWPID == 0 {
        spawn::kill_uid(spec.uid);
    }
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, signal) };
}
