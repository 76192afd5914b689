//! What confines a service, and what this system lets the agent use for it.
//!
//! A namespace is a kernel view a process gets of one kind of resource: its own PIDs (the
//! service is PID 1 and sees no other process), its own mount table (the file system it sees),
//! host name, System V IPC, network stack. A *user* namespace owns the others: a capability
//! held in it counts only for the namespaces it owns. Each instance's network namespace is
//! made inside a user namespace of its own (`vif/netlink.rs`), so a capability a feature
//! needs (CAP_NET_ADMIN for a TUN device, say) works in the service's network and nowhere
//! else; without that, the agent grants no capability at all.
//!
//! Some systems refuse namespaces (a MikroTik RouterOS container, a kernel built without
//! user namespaces, an agent whose bounding set lacks CAP_SYS_ADMIN). `Support::probe` tries
//! each kind once at start; services then get the strongest set available, and
//! `Isolation` says truthfully what applied and what is missing, and why.
//!
//! The file system a service sees, when it has a mount namespace, is a fresh read-only tmpfs
//! root (`RootFs`) holding only: the system's program and library directories and a few
//! `/etc` files, read-only; `/dev/{null,zero,full,random,urandom}`; a fresh `/proc`, `/sys` of
//! its own network, a private `/tmp`; its own `config` (read-only) and `data` (writable)
//! directories and its binary's directory (read-only), each at the path it has on the host.
//! Never the agent's data directory, its state, its token, another instance or the logs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Namespaces a service can get, as `clone(2)` flags, with the names reports use.
pub(crate) const NAMESPACES: [(i32, &str); 5] = [
    (libc::CLONE_NEWPID, "pid namespace"),
    (libc::CLONE_NEWNS, "mount namespace"),
    (libc::CLONE_NEWUTS, "uts namespace"),
    (libc::CLONE_NEWIPC, "ipc namespace"),
    (libc::CLONE_NEWNET, "network namespace"),
];

/// What this system allows, found once at start.
#[derive(Debug, Clone)]
pub(crate) struct Support {
    /// The namespace flags a new process may get here.
    pub flags: i32,
    /// Whether user namespaces can be made (capabilities are granted only inside one).
    pub user: bool,
    /// Each refused kind with the kernel's answer.
    pub refused: Vec<(&'static str, String)>,
}

impl Support {
    /// Tries each namespace kind in a throwaway child.
    pub(crate) fn probe() -> Support {
        let mut s = Support {
            flags: 0,
            user: false,
            refused: Vec::new(),
        };
        for (flag, name) in NAMESPACES
            .into_iter()
            .chain([(libc::CLONE_NEWUSER, "user namespace")])
        {
            match super::spawn::try_clone(flag) {
                Ok(()) if flag == libc::CLONE_NEWUSER => s.user = true,
                Ok(()) => s.flags |= flag,
                Err(e) => s.refused.push((name, e.to_string())),
            }
        }
        if !s.refused.is_empty() {
            log::warn!(target: "supervisor", "this system refuses some namespaces; services are confined without them: {}",
                s.refused.iter().map(|(n, e)| format!("{n} ({e})")).collect::<Vec<_>>().join(", "));
        }
        s
    }

    pub(crate) fn has(&self, flag: i32) -> bool {
        self.flags & flag == flag
    }

    /// What services get on this system.
    pub(crate) fn describe(&self, cgroups: Result<(), &str>) -> Isolation {
        let mut i = Isolation::default();
        i.applied
            .extend(["service user", "no_new_privs", "capability bounding set"].map(String::from));
        for (flag, name) in NAMESPACES {
            if self.has(flag) {
                i.applied.push(name.into());
            }
        }
        if self.has(libc::CLONE_NEWNS) {
            i.applied.push("minimal root".into());
        } else {
            i.missing.push((
                "minimal root".into(),
                "needs a mount namespace; file permissions protect other instances' files".into(),
            ));
        }
        if self.user {
            i.applied.push("user namespace".into());
        }
        for (name, why) in &self.refused {
            i.missing.push(((*name).into(), why.clone()));
        }
        match cgroups {
            Ok(()) => i.applied.push("cgroup".into()),
            Err(why) => {
                i.applied.push("rlimits (processes)".into());
                i.missing.push((
                    "cgroup".into(),
                    format!("{why}: no memory or cpu limit, processes limited per user"),
                ));
            }
        }
        i
    }
}

/// What confines one process: what applied, and what is missing with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Isolation {
    pub applied: Vec<String>,
    pub missing: Vec<(String, String)>,
}

/// One step of building the service's root, run in the child before `pivot_root`. Paths
/// are as the service will see them (the child prefixes the root's mount point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Dir(PathBuf),
    /// An empty file to bind a file onto.
    File(PathBuf),
    Link {
        target: PathBuf,
        at: PathBuf,
    },
    /// Bind the host's `src` at `at`: read-only unless `writable`; device nodes only with
    /// `devices`.
    Bind {
        src: PathBuf,
        at: PathBuf,
        writable: bool,
        devices: bool,
    },
    Tmpfs {
        at: PathBuf,
        options: &'static str,
    },
    Proc(PathBuf),
    Sysfs(PathBuf),
}

/// A service's root file system: mounted on `at` (an empty directory of the agent's), then
/// made the process's `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RootFs {
    pub at: PathBuf,
    pub ops: Vec<Op>,
}

/// Host directories a program may need to run (libraries, the loader, shells for probes).
const SYSTEM_DIRS: [&str; 7] = [
    "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/usr",
];
/// Files and directories of `/etc` that name resolution, TLS and time zones read. Nothing
/// secret lives in them.
const ETC: [&str; 16] = [
    "passwd",
    "group",
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "localtime",
    "services",
    "protocols",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
];
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// What a service's root holds besides the fixed system parts.
pub(crate) struct View<'a> {
    /// `(path, writable)`: its own directories and its binary's.
    pub own: &'a [(PathBuf, bool)],
    /// A `/sys` of its network namespace (only when it has one).
    pub sysfs: bool,
    /// `/dev/net/tun`, for a service granted CAP_NET_ADMIN in its own namespaces.
    pub tun: bool,
}

struct Builder {
    ops: Vec<Op>,
    dirs: BTreeSet<PathBuf>,
}

impl Builder {
    /// Every ancestor of `dir`, then `dir`, each once.
    fn dir(&mut self, dir: &Path) {
        let mut missing: Vec<&Path> = dir
            .ancestors()
            .filter(|a| *a != Path::new("/") && !self.dirs.contains(*a))
            .collect();
        missing.reverse();
        for d in missing {
            self.dirs.insert(d.to_owned());
            self.ops.push(Op::Dir(d.to_owned()));
        }
    }

    fn bind(&mut self, src: &Path, at: &Path, writable: bool, devices: bool) {
        if src.is_dir() {
            self.dir(at);
        } else {
            if let Some(parent) = at.parent() {
                self.dir(parent);
            }
            self.ops.push(Op::File(at.to_owned()));
        }
        self.ops.push(Op::Bind {
            src: src.to_owned(),
            at: at.to_owned(),
            writable,
            devices,
        });
    }
}

/// The root a service sees (see the module text), mounted on `at`.
pub(crate) fn root_fs(at: &Path, view: &View<'_>) -> RootFs {
    let mut b = Builder {
        ops: Vec::new(),
        dirs: BTreeSet::new(),
    };
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    b.ops.push(Op::Link {
                        target,
                        at: path.to_owned(),
                    });
                }
            }
            Ok(m) if m.is_dir() => b.bind(path, path, false, false),
            _ => {}
        }
    }
    b.dir(Path::new("/etc"));
    for name in ETC {
        let host = Path::new("/etc").join(name);
        // Bind what a link points at (OpenWrt's resolv.conf lives under /tmp).
        if let Ok(real) = std::fs::canonicalize(&host) {
            b.bind(&real, &host, false, false);
        }
    }
    b.dir(Path::new("/dev"));
    b.ops.push(Op::Tmpfs {
        at: "/dev".into(),
        options: "size=64k,mode=0755",
    });
    for d in DEVICES {
        let p = Path::new("/dev").join(d);
        if p.exists() {
            b.bind(&p, &p, true, true);
        }
    }
    if view.tun && Path::new("/dev/net/tun").exists() {
        b.bind(
            Path::new("/dev/net/tun"),
            Path::new("/dev/net/tun"),
            true,
            true,
        );
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        b.ops.push(Op::Link {
            target: target.into(),
            at: Path::new("/dev").join(name),
        });
    }
    b.dir(Path::new("/proc"));
    b.ops.push(Op::Proc("/proc".into()));
    if view.sysfs {
        b.dir(Path::new("/sys"));
        b.ops.push(Op::Sysfs("/sys".into()));
    }
    b.dir(Path::new("/tmp"));
    b.ops.push(Op::Tmpfs {
        at: "/tmp".into(),
        options: "size=16m,mode=1777",
    });
    // Last, so its own directories may live under /tmp or below a system directory's path.
    for (path, writable) in view.own {
        b.bind(path, path, *writable, false);
    }
    RootFs {
        at: at.to_owned(),
        ops: b.ops,
    }
}

/// `program` as a path: a bare name is looked up in the directories services search.
pub(crate) fn resolve_program(program: &str) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(program))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_holds_only_what_the_service_needs() {
        let base = std::env::temp_dir().join(format!("nnc-sbx-{}", std::process::id()));
        let inst = base.join("instances/ab");
        for d in ["data", "config", "logs"] {
            std::fs::create_dir_all(inst.join(d)).unwrap();
        }
        let own = [(inst.join("data"), true), (inst.join("config"), false)];
        let root = root_fs(
            &base.join("rootfs"),
            &View {
                own: &own,
                sysfs: true,
                tun: false,
            },
        );
        let binds: Vec<(&Path, bool)> = root
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Bind { at, writable, .. } => Some((at.as_path(), *writable)),
                _ => None,
            })
            .collect();
        // Writable: only its data directory and the device nodes.
        for (at, writable) in &binds {
            assert_eq!(
                *writable,
                at.starts_with("/dev") || *at == inst.join("data"),
                "{}",
                at.display()
            );
        }
        assert!(
            binds
                .iter()
                .all(|(at, _)| !at.starts_with(inst.join("logs"))
                    && *at != base
                    && *at != base.join("instances"))
        );
        // Parents come before children, and each directory once.
        let dirs: Vec<&PathBuf> = root
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Dir(d) => Some(d),
                _ => None,
            })
            .collect();
        let unique: BTreeSet<_> = dirs.iter().collect();
        assert_eq!(unique.len(), dirs.len());
        let pos = |p: &Path| dirs.iter().position(|d| d.as_path() == p);
        assert!(pos(&base).unwrap() < pos(&inst.join("data")).unwrap());
        assert!(root.ops.contains(&Op::Sysfs("/sys".into())));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn bare_program_names_are_found_on_the_search_path() {
        assert!(resolve_program("sh").is_absolute());
        assert_eq!(resolve_program("./x"), PathBuf::from("./x"));
    }
}
