//! System packages: a binary the router's own package manager installs (OpenWrt's `apk` on
//! 25.12, `opkg` on 24.10, Debian's `apt`), for services no upstream builds statically for
//! every router (tor). The manager verifies its repository's signatures; the agent runs it
//! with a timeout, keeps the tail of what it printed for the error, and records whether it
//! installed the package itself (only then is it removed again, when nothing uses it).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A package manager this system has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Manager {
    Apk,
    Opkg,
    Apt,
}

impl Manager {
    /// The catalogue's key for this manager's package name.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Manager::Apk => "apk",
            Manager::Opkg => "opkg",
            Manager::Apt => "apt",
        }
    }

    pub(crate) fn from_key(k: &str) -> Option<Manager> {
        [Manager::Apk, Manager::Opkg, Manager::Apt]
            .into_iter()
            .find(|m| m.key() == k)
    }

    /// The first of apk, opkg, apt-get found in `PATH` (OpenWrt 25.12 has apk, 24.10 opkg).
    pub(crate) fn detect() -> Option<Manager> {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let has = |tool: &str| std::env::split_paths(&path).any(|d| d.join(tool).is_file());
        [
            (Manager::Apk, "apk"),
            (Manager::Opkg, "opkg"),
            (Manager::Apt, "apt-get"),
        ]
        .into_iter()
        .find(|(_, tool)| has(tool))
        .map(|(m, _)| m)
    }
}

/// Longest a manager may run for one command.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(600);
/// What is kept of a command's output (for the error and the log).
const OUTPUT_TAIL: usize = 8 << 10;

/// The installed version of `name`, if it is installed.
pub(crate) fn installed_version(m: Manager, name: &str) -> Result<Option<String>, String> {
    let out = match m {
        Manager::Apt => run(
            "dpkg-query",
            &["-W", "-f=${db:Status-Abbrev}|${Version}", name],
            TIMEOUT,
        ),
        Manager::Apk => run("apk", &["list", "--installed", name], TIMEOUT),
        Manager::Opkg => run("opkg", &["list-installed", name], TIMEOUT),
    };
    let text = match (m, out) {
        (_, Ok(t)) => t,
        // dpkg-query exits 1 for a package it has never heard of.
        (Manager::Apt, Err(e)) if e.contains(": exit status: 1:") => return Ok(None),
        (_, Err(e)) => return Err(e),
    };
    Ok(parse_version(m, name, &text))
}

fn parse_version(m: Manager, name: &str, text: &str) -> Option<String> {
    match m {
        // "ii |0.4.8.16-1" (the status's first letters: desired install, state installed)
        Manager::Apt => text
            .lines()
            .find_map(|l| l.strip_prefix("ii |"))
            .map(|v| v.trim().to_owned()),
        // "tor-0.4.8.16-r1 x86_64 {tor} (BSD-3-Clause) [installed]"
        // (`tor-geoip-…` is another package: a version starts with a digit).
        Manager::Apk => text.lines().find_map(|l| {
            let first = l.split_whitespace().next()?;
            let v = first.strip_prefix(name)?.strip_prefix('-')?;
            (l.contains("[installed]") && v.starts_with(|c: char| c.is_ascii_digit()))
                .then(|| v.to_owned())
        }),
        // "tor - 0.4.8.16-1"
        Manager::Opkg => text.lines().find_map(|l| {
            let (n, v) = l.split_once(" - ")?;
            (n.trim() == name).then(|| v.split(" - ").next().unwrap_or(v).trim().to_owned())
        }),
    }
}

/// What `ensure` did.
#[derive(Debug, Clone)]
pub(crate) struct Ensured {
    pub version: String,
    /// False when the package was already installed: then it is never removed by the agent.
    pub installed_by_agent: bool,
}

/// Installs `name` unless it is installed already (the indexes refreshed first: on a router
/// they live in RAM and are gone after a reboot).
pub(crate) fn ensure(m: Manager, name: &str) -> Result<Ensured, String> {
    let _one = one_at_a_time();
    if let Some(version) = installed_version(m, name)? {
        log::info!(target: "package-manager", "{} package {name} {version} is installed already", m.key());
        return Ok(Ensured {
            version,
            installed_by_agent: false,
        });
    }
    let steps: [(&str, Vec<&str>); 2] = match m {
        Manager::Apt => [
            ("apt-get", vec!["update", "-q"]),
            (
                "apt-get",
                vec!["install", "-y", "-q", "--no-install-recommends", name],
            ),
        ],
        Manager::Apk => [("apk", vec!["update"]), ("apk", vec!["add", name])],
        Manager::Opkg => [("opkg", vec!["update"]), ("opkg", vec!["install", name])],
    };
    for (tool, args) in &steps {
        let out = run(tool, args, TIMEOUT)?;
        log::debug!(target: "package-manager", "{tool} {}: {}", args.join(" "), out.trim_end());
    }
    let version = installed_version(m, name)?
        .ok_or_else(|| format!("{} reported success but {name} is not installed", m.key()))?;
    quiet_service(name);
    log::info!(target: "package-manager", "installed {} package {name} {version}", m.key());
    Ok(Ensured {
        version,
        installed_by_agent: true,
    })
}

/// A package's own daemon, which its maintainer scripts start and enable (OpenWrt's init
/// script, Debian's systemd unit), is stopped and disabled: the agent runs the binary itself,
/// confined; the system's copy would run as root outside the sandbox, at every boot. Only for
/// packages the agent installed (a package the system had keeps its owner's setup).
fn quiet_service(name: &str) {
    let init = format!("/etc/init.d/{name}");
    let mut quieted = Vec::new();
    if std::path::Path::new(&init).is_file() {
        for verb in ["stop", "disable"] {
            if run(&init, &[verb], Duration::from_secs(60)).is_ok() {
                quieted.push(format!("{init} {verb}"));
            }
        }
    }
    if std::path::Path::new("/run/systemd/system").is_dir() {
        let unit = format!("{name}.service");
        if run(
            "systemctl",
            &["disable", "--now", &unit],
            Duration::from_secs(60),
        )
        .is_ok()
        {
            quieted.push(format!("systemctl disable --now {unit}"));
        }
    }
    if !quieted.is_empty() {
        log::info!(target: "package-manager", "{name}: the package's own service is off ({})", quieted.join(", "));
    }
}

/// Removes `name` (only called for packages the agent installed and nothing uses).
pub(crate) fn remove(m: Manager, name: &str) -> Result<(), String> {
    let _one = one_at_a_time();
    let (tool, args): (&str, Vec<&str>) = match m {
        Manager::Apt => ("apt-get", vec!["remove", "-y", "-q", name]),
        Manager::Apk => ("apk", vec!["del", name]),
        Manager::Opkg => ("opkg", vec!["remove", name]),
    };
    run(tool, &args, TIMEOUT).map(|out| {
        log::info!(target: "package-manager", "removed {} package {name}: {}", m.key(), out.lines().last().unwrap_or(""));
    })
}

/// Package managers take a lock of their own and fail when it is held: the agent's own
/// installs and removals wait for each other instead.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `tool args` in a process group of its own (what it starts dies with it at the
/// timeout), stdout and stderr together; the tail of that output, or an error ending with it.
fn run(tool: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let what = format!("{tool} {}", args.join(" "));
    // Output goes to an unlinked temporary file, not a pipe: a daemon a maintainer script
    // starts may keep the descriptor for ever, and nothing here waits for it to close.
    let out = output_file().map_err(|e| format!("{what}: {e}"))?;
    let mut child = Command::new(tool)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| format!("{what}: {e}"))?)
        .stderr(out.try_clone().map_err(|e| format!("{what}: {e}"))?)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if started.elapsed() > timeout => {
                // SAFETY: signalling the group our own, not yet reaped, child leads.
                unsafe { nix::libc::kill(-(child.id() as i32), nix::libc::SIGKILL) };
                let _ = child.wait();
                break Err(format!("{what}: killed after {} s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => break Err(format!("{what}: {e}")),
        }
    };
    let out = tail_of(out);
    match status {
        Ok(s) if s.success() => Ok(out),
        Ok(s) => Err(format!("{what}: {s}: {}", out.trim_end())),
        Err(e) => Err(format!("{e}: {}", out.trim_end())),
    }
}

/// A temporary file already unlinked (it goes when the last descriptor closes).
fn output_file() -> std::io::Result<std::fs::File> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        ".nnc-package-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

/// The last `OUTPUT_TAIL` bytes written to `f`.
fn tail_of(mut f: std::fs::File) -> String {
    use std::io::Seek;
    let len = f.seek(std::io::SeekFrom::End(0)).unwrap_or(0);
    let from = len.saturating_sub(OUTPUT_TAIL as u64);
    let mut tail = Vec::new();
    let _ = f
        .seek(std::io::SeekFrom::Start(from))
        .and_then(|_| (&mut f).take(OUTPUT_TAIL as u64).read_to_end(&mut tail));
    String::from_utf8_lossy(&tail).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_each_managers_listing() {
        assert_eq!(
            parse_version(Manager::Apt, "tor", "ii |0.4.8.16-1~d12.1"),
            Some("0.4.8.16-1~d12.1".into())
        );
        assert_eq!(parse_version(Manager::Apt, "tor", "rc |0.4.8.16-1"), None);
        assert_eq!(
            parse_version(
                Manager::Apk,
                "tor",
                "tor-geoip-0.4.8-r1 x86_64 {tor} (BSD) [installed]\ntor-0.4.8.16-r1 x86_64 {tor} (BSD-3-Clause) [installed]"
            ),
            Some("0.4.8.16-r1".into())
        );
        assert_eq!(
            parse_version(Manager::Opkg, "tor", "tor-geoip - 1\ntor - 0.4.8.16-1\n"),
            Some("0.4.8.16-1".into())
        );
        assert_eq!(parse_version(Manager::Opkg, "tor", ""), None);
    }
}
