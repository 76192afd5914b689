//! Health probes: a service is RUNNING only once its probe passes, and is restarted when the
//! probe fails `threshold` times in a row. A TCP probe connects to the service's port inside
//! its network namespace (on a short-lived thread that joins the namespace, so no pooled thread
//! ever ends up in a service's namespace); an exec probe runs a command and wants exit 0,
//! confined exactly like the service (same namespaces, root, user, no capabilities beyond
//! its own, cgroup-less but killed with its group at the timeout): a probe is the service's
//! code as much as the service is.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// Connect to this address (in the service's network namespace when it has one).
    Tcp(SocketAddr),
    /// Run this (the service's confinement, another program and arguments) and want exit
    /// code 0.
    Exec(Box<super::SpawnSpec>),
}

#[derive(Debug, Clone)]
pub(crate) struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures (after the first success) that make the service unhealthy.
    pub threshold: u32,
    /// How long a starting service may take to pass its first probe.
    pub startup_timeout: Duration,
}

/// Runs one probe; `Err` says why it failed.
pub(crate) fn probe_once(check: &HealthCheck, netns: Option<&PathBuf>) -> Result<(), String> {
    match &check.probe {
        Probe::Tcp(addr) => {
            let addr = *addr;
            let timeout = check.timeout;
            let connect = move || {
                TcpStream::connect_timeout(&addr, timeout)
                    .map(drop)
                    .map_err(|e| format!("connect {addr}: {e}"))
            };
            match netns {
                None => connect(),
                Some(ns) => {
                    let file =
                        std::fs::File::open(ns).map_err(|e| format!("{}: {e}", ns.display()))?;
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                                .map_err(|e| format!("setns: {e}"))?;
                            connect()
                        })
                        .join()
                        .unwrap_or_else(|_| Err("probe thread panicked".into()))
                    })
                }
            }
        }
        Probe::Exec(spec) => {
            let program = spec.program.display().to_string();
            let end = super::spawn::run((**spec).clone(), check.timeout, 512)
                .map_err(|e| format!("{program}: {e}"))?;
            match (end.timed_out, end.code, end.signal) {
                (true, _, _) => Err(format!("{program} did not finish in {:?}", check.timeout)),
                (false, Some(0), _) => Ok(()),
                (false, Some(c), _) => Err(format!("{program} exited with code {c}")),
                (false, _, Some(sig)) => Err(format!("{program} was killed by signal {sig}")),
                (false, None, None) => Err(format!("{program} ended without a status")),
            }
        }
    }
}
