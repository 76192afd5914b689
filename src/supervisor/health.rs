//! Health probes: a service is RUNNING only once its probe passes, and is restarted when the
//! probe fails `threshold` times in a row. A TCP probe connects to the service's port inside
//! its network namespace (on a short-lived thread that joins the namespace, so no pooled thread
//! ever ends up in a service's namespace); an exec probe runs a command and wants exit 0.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Connect to this address (in the service's network namespace when it has one).
    Tcp(SocketAddr),
    /// Run this command (the first element is the program) and want exit code 0.
    Exec(Vec<String>),
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
        Probe::Exec(cmd) => {
            let (program, args) = cmd.split_first().ok_or("empty exec probe")?;
            let mut child = std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("{program}: {e}"))?;
            let deadline = std::time::Instant::now() + check.timeout;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => return Ok(()),
                    Ok(Some(status)) => return Err(format!("{program} exited with {status}")),
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("{program} did not finish in {:?}", check.timeout));
                    }
                    Err(e) => return Err(format!("{program}: {e}")),
                }
            }
        }
    }
}
