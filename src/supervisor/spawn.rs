//! Starting a service in its own namespaces, as an unprivileged user with only the
//! capabilities it needs.
//!
//! `clone(2)` with `CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC` makes the child
//! PID 1 of a fresh PID namespace (`unshare(CLONE_NEWPID)` in a `pre_exec` hook would only
//! move the child's *children*). Between clone and exec the child is a copy of a
//! multi-threaded process: it may only make raw system calls — no allocation, no locks — so
//! every path, argument and environment string is prepared as a C string before the clone,
//! and failures travel back to the parent as `(stage, errno)` through a close-on-exec pipe.
//!
//! Order in the child: wait until the parent has put it in its cgroup; join the service's
//! network namespace (and remember the user namespace that owns it); make mounts private,
//! build the service's root (`sandbox::RootFs`) on a tmpfs and `pivot_root` into it; set the
//! hostname; wire stdio; set resource limits; join the network's user namespace when the
//! service keeps capabilities (they then count only there); drop the capability bounding
//! set; become the service user (keeping the listed capabilities as ambient ones);
//! `no_new_privs`; a session of its own (so its group can be killed without a PID
//! namespace); ask for SIGKILL if the agent dies; exec.
//!
//! All clones happen on one long-lived thread: the parent-death signal follows the *thread*
//! that created the child, and the agent's blocking-pool threads come and go.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::sandbox::{Op, RootFs};

/// What to start and how to confine it.
#[derive(Debug, Clone)]
pub(crate) struct SpawnSpec {
    pub program: PathBuf,
    /// argv[0] is the program's file name; these follow it.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// A named network namespace to join (the instance's VIF), or the agent's own.
    pub netns: Option<PathBuf>,
    pub hostname: String,
    pub uid: u32,
    pub gid: u32,
    /// Capabilities (numbers, e.g. 12 for CAP_NET_ADMIN) the service keeps.
    pub keep_caps: Vec<u32>,
    /// A cgroup v2 directory the child joins before anything else.
    pub cgroup: Option<PathBuf>,
    /// New namespaces (`CLONE_NEW*` flags; the network one is joined, not made).
    pub namespaces: i32,
    /// The file system it sees (with a mount namespace); `None`: the host's.
    pub root: Option<RootFs>,
    /// `(RLIMIT_*, value)`, soft and hard: where no cgroup bounds it.
    pub rlimits: Vec<(u32, u64)>,
    /// Run inside a user namespace (the one owning its network namespace, else a fresh one
    /// mapping only its uid) in which no further user namespace can be made: so no process
    /// of the service ever holds a capability outside what the agent gave it.
    pub userns: bool,
}

/// A started child: its PID (in the agent's namespace) and a pidfd that becomes readable when
/// it exits.
pub(crate) struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

#[derive(Debug)]
pub(crate) struct SpawnError(pub String);

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Stages the child reports a failure at (the `stage` of the error pipe).
const STAGES: [&str; 23] = [
    "wait for the cgroup",
    "open the network namespace",
    "join the network namespace",
    "make mounts private",
    "mount /tmp",
    "bind the read-only paths",
    "remount them read-only",
    "mount /proc",
    "set the hostname",
    "wire stdio",
    "change directory",
    "drop capabilities",
    "switch to the service user",
    "keep capabilities",
    "set no_new_privs",
    "exec",
    "mount /sys",
    "forbid user namespaces below its own",
    "mount its root file system",
    "build its root file system",
    "pivot into its root file system",
    "set its resource limits",
    "join the user namespace of its network namespace",
];

fn cstr(s: &[u8]) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError("a path or argument contains a NUL byte".into()))
}

fn cpath(p: &Path) -> Result<CString, SpawnError> {
    cstr(p.as_os_str().as_bytes())
}

/// One root-building step with its paths as C strings (full paths under the mount point).
enum PreparedOp {
    Dir(CString),
    File(CString),
    Link(CString, CString),
    Bind {
        src: CString,
        at: CString,
        /// Flags of the read-only (or device-less) remount that follows the bind.
        remount: libc::c_ulong,
    },
    Tmpfs(CString, CString),
    Proc(CString),
    Sysfs(CString),
}

/// Everything the child needs, as raw pointers into memory owned by this struct.
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    netns: Option<CString>,
    hostname: CString,
    root: Option<(CString, Vec<PreparedOp>)>,
    cgroup_procs: Option<PathBuf>,
    keep_mask: u64,
    last_cap: u32,
    namespaces: i32,
    /// The user namespace to join (owned by the parent; the child inherits the descriptor).
    userns: Option<OwnedFd>,
    /// Keeps a fresh user namespace alive until the child has joined it.
    _holder: Option<Holder>,
    rlimits: Vec<(u32, u64)>,
    uid: u32,
    gid: u32,
    /// Failpoint `spawn.exec=error`: the child stalls before exec, as a child stuck on an
    /// inherited lock would.
    stall: bool,
}

/// Reads `/proc/sys/kernel/cap_last_cap` (the highest capability this kernel knows).
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// `NS_GET_USERNS` (`_IO(0xb7, 0x1)`): the user namespace that owns a namespace. MIPS encodes
/// "no data" as direction 1 at bit 29.
#[cfg(not(any(target_arch = "mips", target_arch = "mips64")))]
const NS_GET_USERNS: u32 = 0xb701;
#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
const NS_GET_USERNS: u32 = 0x2000_b701;

/// Whether the network namespace at `netns` is owned by a user namespace of its own (made
/// with it by `vif/netlink.rs`), rather than by the agent's.
pub(crate) fn has_own_userns(netns: &Path) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::File::from(owner_of(netns)?);
    let owner = owner.metadata().map_err(|e| e.to_string())?;
    let ours = std::fs::metadata("/proc/self/ns/user").map_err(|e| e.to_string())?;
    Ok((owner.dev(), owner.ino()) != (ours.dev(), ours.ino()))
}

/// The user namespace that owns the namespace at `ns` (close-on-exec).
fn owner_of(ns: &Path) -> Result<OwnedFd, String> {
    let file = std::fs::File::open(ns).map_err(|e| format!("{}: {e}", ns.display()))?;
    // SAFETY: an ioctl on a descriptor we own; it returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_USERNS as libc::Ioctl) };
    if fd < 0 {
        return Err(format!(
            "owner of {}: {}",
            ns.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the ioctl returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new user namespace mapping only `uid` and `gid` to themselves, held open by a child
/// until the returned `Holder` is dropped.
fn fresh_userns(uid: u32, gid: u32) -> std::io::Result<(OwnedFd, Holder)> {
    let holder = Holder::new(libc::CLONE_NEWUSER)?;
    std::fs::write(
        format!("/proc/{}/uid_map", holder.pid),
        format!("{uid} {uid} 1\n"),
    )?;
    std::fs::write(
        format!("/proc/{}/gid_map", holder.pid),
        format!("{gid} {gid} 1\n"),
    )?;
    let fd = std::fs::File::open(format!("/proc/{}/ns/user", holder.pid))?;
    Ok((OwnedFd::from(fd), holder))
}

fn prepare_root(root: &RootFs) -> Result<(CString, Vec<PreparedOp>), SpawnError> {
    let under = |p: &Path| {
        let mut full = root.at.as_os_str().as_bytes().to_vec();
        full.extend_from_slice(p.as_os_str().as_bytes());
        cstr(&full)
    };
    let mut ops = Vec::with_capacity(root.ops.len());
    for op in &root.ops {
        ops.push(match op {
            Op::Dir(p) => PreparedOp::Dir(under(p)?),
            Op::File(p) => PreparedOp::File(under(p)?),
            Op::Link { target, at } => PreparedOp::Link(cpath(target)?, under(at)?),
            Op::Bind {
                src,
                at,
                writable,
                devices,
            } => {
                let mut remount = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
                // What it can write it cannot run: programs come only from read-only places.
                remount |= if *writable {
                    libc::MS_NOEXEC
                } else {
                    libc::MS_RDONLY
                };
                if !devices {
                    remount |= libc::MS_NODEV;
                }
                PreparedOp::Bind {
                    src: cpath(src)?,
                    at: under(at)?,
                    remount,
                }
            }
            Op::Tmpfs { at, options } => PreparedOp::Tmpfs(under(at)?, cstr(options.as_bytes())?),
            Op::Proc(p) => PreparedOp::Proc(under(p)?),
            Op::Sysfs(p) => PreparedOp::Sysfs(under(p)?),
        });
    }
    Ok((cpath(&root.at)?, ops))
}

fn prepare(spec: &SpawnSpec) -> Result<Prepared, SpawnError> {
    let name = spec.program.file_name().map_or_else(
        || spec.program.as_os_str().as_bytes().to_vec(),
        |n| n.as_bytes().to_vec(),
    );
    let mut argv = vec![cstr(&name)?];
    for a in &spec.args {
        argv.push(cstr(a.as_bytes())?);
    }
    let envp = spec
        .env
        .iter()
        .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // A capability is only as narrow as the user namespace that owns it: without one of the
    // service's own (owning its network), none is granted.
    let netns_owner = match &spec.netns {
        Some(ns) if has_own_userns(ns).map_err(SpawnError)? => Some(ns),
        _ => None,
    };
    if !spec.keep_caps.is_empty() && netns_owner.is_none() {
        return Err(SpawnError(format!(
            "capabilities {:?} are granted only inside a user namespace that owns the service's own network namespace, and this instance has none (no network segment, or a system without user namespaces)",
            spec.keep_caps
        )));
    }
    let (userns, holder) = match (netns_owner, spec.userns) {
        (Some(ns), _) => (Some(owner_of(ns).map_err(SpawnError)?), None),
        (None, true) => {
            let (fd, holder) = fresh_userns(spec.uid, spec.gid)
                .map_err(|e| SpawnError(format!("a user namespace for the service: {e}")))?;
            (Some(fd), Some(holder))
        }
        (None, false) => (None, None),
    };
    Ok(Prepared {
        program: cpath(&spec.program)?,
        argv,
        argv_ptrs,
        envp,
        envp_ptrs,
        cwd: cpath(&spec.cwd)?,
        netns: spec.netns.as_deref().map(cpath).transpose()?,
        hostname: cstr(spec.hostname.as_bytes())?,
        root: spec.root.as_ref().map(prepare_root).transpose()?,
        cgroup_procs: spec.cgroup.as_ref().map(|c| c.join("cgroup.procs")),
        keep_mask: spec.keep_caps.iter().fold(0u64, |m, c| m | (1u64 << c)),
        last_cap: last_cap(),
        namespaces: spec.namespaces & !libc::CLONE_NEWNET,
        userns,
        _holder: holder,
        rlimits: spec.rlimits.clone(),
        uid: spec.uid,
        gid: spec.gid,
        stall: crate::failpoint::hit("spawn.exec").is_err(),
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SpawnError(format!(
            "pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

// The 32-bit-id credential calls (32-bit ARM also has 16-bit ones under the plain names).
use crate::util::Locked;
#[cfg(not(target_arch = "arm"))]
use libc::{
    SYS_setgroups as SYS_SETGROUPS, SYS_setresgid as SYS_SETRESGID, SYS_setresuid as SYS_SETRESUID,
};
#[cfg(target_arch = "arm")]
use libc::{
    SYS_setgroups32 as SYS_SETGROUPS, SYS_setresgid32 as SYS_SETRESGID,
    SYS_setresuid32 as SYS_SETRESUID,
};

/// Builds the service's root on a tmpfs at `at` and makes it `/`. Raw system calls only.
///
/// # Safety
/// Runs in the cloned child, in its own mount namespace.
unsafe fn enter_root(at: &CString, ops: &[PreparedOp]) -> Result<(), u32> {
    unsafe {
        let none = std::ptr::null();
        if libc::mount(
            c"tmpfs".as_ptr(),
            at.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"size=1m,mode=0755".as_ptr().cast(),
        ) != 0
        {
            return Err(18);
        }
        for op in ops {
            let ok = match op {
                PreparedOp::Dir(p) => {
                    libc::mkdir(p.as_ptr(), 0o755) == 0 || *libc::__errno_location() == libc::EEXIST
                }
                PreparedOp::File(p) => {
                    let fd = libc::open(
                        p.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                        0o644,
                    );
                    fd >= 0 && libc::close(fd) == 0
                }
                PreparedOp::Link(target, p) => libc::symlink(target.as_ptr(), p.as_ptr()) == 0,
                PreparedOp::Bind { src, at, remount } => {
                    libc::mount(
                        src.as_ptr(),
                        at.as_ptr(),
                        none,
                        libc::MS_BIND | libc::MS_REC,
                        none.cast(),
                    ) == 0
                        && libc::mount(none, at.as_ptr(), none, *remount, none.cast()) == 0
                }
                PreparedOp::Tmpfs(p, options) => {
                    libc::mount(
                        c"tmpfs".as_ptr(),
                        p.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        options.as_ptr().cast(),
                    ) == 0
                }
                PreparedOp::Proc(p) => {
                    // A /proc for the new PID namespace (the old one shows the agent's PIDs).
                    libc::mount(
                        c"proc".as_ptr(),
                        p.as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        none.cast(),
                    ) == 0
                }
                PreparedOp::Sysfs(p) => {
                    // Of the network namespace joined above: /sys/class/net lists its own.
                    libc::mount(
                        c"sysfs".as_ptr(),
                        p.as_ptr(),
                        c"sysfs".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                        none.cast(),
                    ) == 0
                }
            };
            if !ok {
                return Err(19);
            }
        }
        // pivot_root(".", "."): the old root ends up on top of the new one and is detached.
        // An initramfs root cannot be pivoted (EINVAL): there the new root is moved over
        // "/" and entered with chroot, as switch_root does; the service, without
        // CAP_SYS_CHROOT, cannot climb out of it.
        if libc::chdir(at.as_ptr()) != 0 {
            return Err(20);
        }
        let pivoted = libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0;
        let entered = if pivoted {
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH) == 0
        } else {
            *libc::__errno_location() == libc::EINVAL
                && libc::mount(
                    c".".as_ptr(),
                    c"/".as_ptr(),
                    none,
                    libc::MS_MOVE,
                    none.cast(),
                ) == 0
                && libc::chroot(c".".as_ptr()) == 0
        };
        if !entered
            || libc::chdir(c"/".as_ptr()) != 0
            || libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                none.cast(),
            ) != 0
        {
            return Err(20);
        }
        Ok(())
    }
}

/// The child between clone and exec. Only raw system calls on prepared memory.
///
/// # Safety
/// Runs in a freshly cloned process: no allocation, no locks, no Rust std I/O.
unsafe fn child(p: &Prepared, sync_r: RawFd, err_w: RawFd, stdout: RawFd, stderr: RawFd) -> ! {
    unsafe {
        let fail = |stage: u32| -> ! {
            let errno = *libc::__errno_location();
            let msg: [u32; 2] = [stage, errno as u32];
            libc::write(err_w, msg.as_ptr().cast(), 8);
            libc::_exit(127);
        };
        let mut byte = 0u8;
        if libc::read(sync_r, (&raw mut byte).cast(), 1) != 1 {
            fail(0);
        }
        if p.stall {
            loop {
                libc::pause();
            }
        }
        // Opened before the root changes: the host's /dev/null.
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if devnull < 0 {
            fail(9);
        }
        let userns = p.userns.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        if let Some(ns) = &p.netns {
            let fd = libc::open(ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                fail(1);
            }
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                fail(2);
            }
            libc::close(fd);
        }
        if p.namespaces & libc::CLONE_NEWNS != 0 {
            if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                fail(3);
            }
            if let Some((at, ops)) = &p.root
                && let Err(stage) = enter_root(at, ops)
            {
                fail(stage);
            }
        }
        if p.namespaces & libc::CLONE_NEWUTS != 0
            && libc::sethostname(p.hostname.as_ptr(), p.hostname.as_bytes().len()) != 0
        {
            fail(8);
        }
        if libc::dup2(devnull, 0) < 0 || libc::dup2(stdout, 1) < 0 || libc::dup2(stderr, 2) < 0 {
            fail(9);
        }
        if libc::chdir(p.cwd.as_ptr()) != 0 {
            fail(10);
        }
        // While still root: raising a hard limit needs CAP_SYS_RESOURCE.
        for (resource, value) in &p.rlimits {
            let limit: [u64; 2] = [*value, *value];
            if libc::syscall(
                libc::SYS_prlimit64,
                0,
                *resource,
                limit.as_ptr(),
                std::ptr::null::<u64>(),
            ) != 0
            {
                fail(21);
            }
        }
        // Joining a user namespace grants every capability *in it* and resets the bounding
        // set, so this comes before the drop below.
        if userns >= 0 {
            if libc::setns(userns, libc::CLONE_NEWUSER) != 0 {
                fail(22);
            }
            // No user namespace below this one, ever: one would hand the service every
            // capability over namespaces of its own (and, where the root is only chroot'ed,
            // CAP_SYS_CHROOT to climb out). The limit counts on every ancestor.
            let fd = libc::open(
                c"/proc/sys/user/max_user_namespaces".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd < 0 || libc::write(fd, c"0\n".as_ptr().cast(), 2) != 2 {
                fail(17);
            }
            libc::close(fd);
        }
        // The bounding set: what no exec can ever give back. Dropped one by one while we are
        // still root (CAP_SETPCAP).
        for cap in 0..=p.last_cap {
            if p.keep_mask & (1u64 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0
            {
                fail(11);
            }
        }
        if p.keep_mask != 0 && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            fail(12);
        }
        // Raw system calls, not libc's wrappers: those apply a credential change to every
        // thread the C library knows of (glibc's setxid, musl's __synccall), and in this
        // cloned copy those are the agent's threads, not ours; glibc then waits forever for
        // one that was exiting at clone time.
        if libc::syscall(SYS_SETGROUPS, 0, std::ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(SYS_SETRESGID, p.gid, p.gid, p.gid) != 0
            || libc::syscall(SYS_SETRESUID, p.uid, p.uid, p.uid) != 0
        {
            fail(12);
        }
        if p.keep_mask != 0 {
            // capset(2) v3: two 32-bit words per set.
            #[repr(C)]
            struct Header {
                version: u32,
                pid: i32,
            }
            #[repr(C)]
            #[derive(Clone, Copy)]
            struct Data {
                effective: u32,
                permitted: u32,
                inheritable: u32,
            }
            let header = Header {
                version: 0x2008_0522,
                pid: 0,
            };
            let lo = (p.keep_mask & 0xffff_ffff) as u32;
            let hi = (p.keep_mask >> 32) as u32;
            let data = [
                Data {
                    effective: lo,
                    permitted: lo,
                    inheritable: lo,
                },
                Data {
                    effective: hi,
                    permitted: hi,
                    inheritable: hi,
                },
            ];
            if libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) != 0 {
                fail(13);
            }
            for cap in 0..=p.last_cap {
                if p.keep_mask & (1u64 << cap) != 0
                    && libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        libc::c_ulong::from(cap),
                        0,
                        0,
                    ) != 0
                {
                    fail(13);
                }
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(14);
        }
        // A session and process group of its own: without a PID namespace, its group is
        // what a stop kills.
        libc::setsid();
        // Nothing but stdio survives the exec, whatever the agent itself inherited.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 1u32 << 2);
        // After the credential change, which would clear it.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::execve(
            p.program.as_ptr(),
            p.argv_ptrs.as_ptr(),
            p.envp_ptrs.as_ptr(),
        );
        fail(15);
    }
}

/// How long a cloned child may take to reach `execve`.
const EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn spawn_now(spec: &SpawnSpec, stdout: &OwnedFd, stderr: &OwnedFd) -> Result<Child, SpawnError> {
    let prepared = prepare(spec)?;
    let _ = (&prepared.argv, &prepared.envp);
    let (sync_r, sync_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut stack = vec![0u8; 256 * 1024];
    let flags = prepared.namespaces;
    let (sr, ew, so, se) = (
        sync_r.as_raw_fd(),
        err_w.as_raw_fd(),
        stdout.as_raw_fd(),
        stderr.as_raw_fd(),
    );
    extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` points at the tuple below, alive until the parent returns.
        let (p, sr, ew, so, se) =
            unsafe { &*arg.cast::<(&Prepared, RawFd, RawFd, RawFd, RawFd)>() };
        // SAFETY: we are the cloned child; `child` never returns.
        unsafe { child(p, *sr, *ew, *so, *se) }
    }
    let mut arg = (&prepared, sr, ew, so, se);
    // SAFETY: the stack is ours for the call; the child only reads `prepared` (copied address
    // space, no CLONE_VM) and execs or exits.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        libc::clone(
            entry,
            top.cast(),
            flags | libc::SIGCHLD,
            (&raw mut arg).cast(),
        )
    };
    if pid < 0 {
        return Err(SpawnError(format!(
            "clone: {}",
            std::io::Error::last_os_error()
        )));
    }
    drop(err_w);
    drop(sync_r);
    let release = (|| -> Result<(), SpawnError> {
        if let Some(procs) = &prepared.cgroup_procs {
            std::fs::write(procs, pid.to_string()).map_err(|e| {
                SpawnError(format!(
                    "cannot move the service into {}: {e}",
                    procs.display()
                ))
            })?;
        }
        // SAFETY: writing one byte from a live buffer to our own pipe.
        if unsafe { libc::write(sync_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
            return Err(SpawnError("cannot release the child".into()));
        }
        Ok(())
    })();
    drop(sync_w);
    let mut report = [0u8; 8];
    let mut got = 0usize;
    let deadline = std::time::Instant::now() + EXEC_TIMEOUT;
    let mut stuck = false;
    while got < 8 {
        // A child that neither execs nor reports must not hold the spawner forever.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd: err_r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: polling one live descriptor through a valid pollfd.
        let ready = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if ready == 0 {
            stuck = true;
            break;
        }
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        // SAFETY: reading into the remaining part of a live buffer.
        let n = unsafe {
            libc::read(
                err_r.as_raw_fd(),
                report[got..].as_mut_ptr().cast(),
                8 - got,
            )
        };
        if n <= 0 {
            break;
        }
        got += n.unsigned_abs();
    }
    if release.is_err() || got == 8 || stuck {
        let mut status = 0;
        // SAFETY: reaping our own child; it has exited or is killed first.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &raw mut status, 0);
        }
        release?;
        if stuck {
            return Err(SpawnError(format!(
                "starting {} failed: the child neither ran it nor reported an error within {} s; killed it",
                spec.program.display(),
                EXEC_TIMEOUT.as_secs()
            )));
        }
        let stage = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        let hint = if stage == 15 && errno == libc::EACCES {
            " (the service user must be able to reach it: is every directory above it world-executable?)"
        } else {
            ""
        };
        return Err(SpawnError(format!(
            "starting {} failed: cannot {}: {}{hint}",
            spec.program.display(),
            STAGES.get(stage).copied().unwrap_or("?"),
            std::io::Error::from_raw_os_error(errno)
        )));
    }
    // SAFETY: pidfd_open on our own live (or zombie) child.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let e = std::io::Error::last_os_error();
        // Not left running unwatched.
        kill_group(pid);
        reap(pid);
        return Err(SpawnError(format!("pidfd_open: {e}")));
    }
    // SAFETY: pidfd_open returned a new descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(i32::try_from(pidfd).unwrap_or(-1)) };
    Ok(Child { pid, pidfd })
}

type Request = (
    SpawnSpec,
    OwnedFd,
    OwnedFd,
    mpsc::Sender<Result<Child, SpawnError>>,
);

/// Starts `spec` with the given stdout/stderr, on the spawner thread.
pub(crate) fn spawn(
    spec: SpawnSpec,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<Child, SpawnError> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("nnc-spawner".into())
            .spawn(move || {
                for (spec, out, err, reply) in rx {
                    let _ = reply.send(spawn_now(&spec, &out, &err));
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.locked()
        .send((spec, stdout, stderr, reply_tx))
        .map_err(|_| SpawnError("the spawner thread is gone".into()))?;
    reply_rx
        .recv()
        .map_err(|_| SpawnError("the spawner thread is gone".into()))?
}

/// Reaps an exited child; returns (exit code, signal).
pub(crate) fn reap(pid: i32) -> (Option<i32>, Option<i32>) {
    let mut status = 0;
    // SAFETY: waiting for our own child, which has exited (its pidfd was readable).
    let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    if r != pid {
        return (None, None);
    }
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}

/// A pipe whose write end goes to a child's stdout/stderr.
pub(crate) fn output_pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    pipe()
}

/// SIGKILL to `pid` and to its process group (what it started, without a PID namespace).
/// Call it before reaping, while the PID cannot be reused.
pub(crate) fn kill_group(pid: i32) {
    // SAFETY: signalling our own child and the group it leads (it called setsid).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Whether a process may get the namespace `flag` here: a throwaway child tries.
pub(crate) fn try_clone(flag: i32) -> Result<(), std::io::Error> {
    extern "C" fn exit_now(_: *mut libc::c_void) -> libc::c_int {
        // SAFETY: the cloned child ends at once.
        unsafe { libc::_exit(0) }
    }
    let mut stack = vec![0u8; 16 * 1024];
    // SAFETY: a stack of ours for a child that only calls _exit.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        libc::clone(
            exit_now,
            top.cast(),
            flag | libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut status = 0;
    // SAFETY: reaping the child we just made.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
    Ok(())
}

/// How a process run to its end ended, and the last of what it printed.
pub(crate) struct Finished {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The last `keep` bytes of stdout and stderr together.
    pub output: Vec<u8>,
    pub timed_out: bool,
}

/// Runs `spec` (confined like a service) to its end: at most `timeout`, keeping the last
/// `keep` bytes it prints. Whatever it left behind in its group is killed. Blocking.
pub(crate) fn run(spec: SpawnSpec, timeout: Duration, keep: usize) -> Result<Finished, SpawnError> {
    let (out_r, out_w) = pipe()?;
    let err_w = out_w
        .try_clone()
        .map_err(|e| SpawnError(format!("pipe: {e}")))?;
    let child = spawn(spec, out_w, err_w)?;
    let deadline = Instant::now() + timeout;
    let mut output: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut pipe_open = true;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        let mut fds = [
            libc::pollfd {
                fd: child.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if pipe_open { out_r.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: polling live descriptors through a valid array.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) } < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            // SAFETY: reading into a live buffer from our pipe.
            let n = unsafe { libc::read(out_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match usize::try_from(n) {
                Ok(0) | Err(_) => pipe_open = false,
                Ok(n) => {
                    output.extend_from_slice(&buf[..n]);
                    let over = output.len().saturating_sub(keep);
                    output.drain(..over);
                }
            }
        }
        if fds[0].revents != 0 {
            break;
        }
    }
    if !timed_out {
        // What is still in the pipe, without waiting for a daemon that holds it open.
        // SAFETY: flags on our own descriptor.
        unsafe { libc::fcntl(out_r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        while pipe_open {
            // SAFETY: as above.
            let n = unsafe { libc::read(out_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match usize::try_from(n) {
                Ok(n) if n > 0 && output.len() < keep * 4 => output.extend_from_slice(&buf[..n]),
                _ => pipe_open = false,
            }
        }
        let over = output.len().saturating_sub(keep);
        output.drain(..over);
    }
    kill_group(child.pid);
    let (code, signal) = reap(child.pid);
    Ok(Finished {
        code,
        signal,
        output,
        timed_out,
    })
}

/// A child that sits in new namespaces (`flags`) until dropped, so their files under
/// `/proc/PID/ns/` can be bound or configured (a user namespace's id maps are written from
/// outside).
pub(crate) struct Holder {
    pub pid: i32,
    release: Option<OwnedFd>,
}

impl Holder {
    pub(crate) fn new(flags: i32) -> std::io::Result<Holder> {
        extern "C" fn wait_then_exit(arg: *mut libc::c_void) -> libc::c_int {
            // SAFETY: `arg` points at the pipe's two ends, copied with the address space.
            // Our copy of the write end goes first, so the parent's close is the end of file.
            unsafe {
                let [r, w] = *arg.cast::<[RawFd; 2]>();
                libc::close(w);
                let mut byte = 0u8;
                libc::read(r, (&raw mut byte).cast(), 1);
                libc::_exit(0)
            }
        }
        let (r, w) = pipe().map_err(|e| std::io::Error::other(e.0))?;
        let mut fd = [r.as_raw_fd(), w.as_raw_fd()];
        let mut stack = vec![0u8; 16 * 1024];
        // SAFETY: a stack of ours; the child only reads a pipe and exits.
        let pid = unsafe {
            let top = stack.as_mut_ptr().add(stack.len());
            libc::clone(
                wait_then_exit,
                top.cast(),
                flags | libc::SIGCHLD,
                (&raw mut fd).cast(),
            )
        };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Holder {
            pid,
            release: Some(w),
        })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.release.take());
        let mut status = 0;
        // SAFETY: our own child: killed (it may hold another holder's pipe open) and reaped.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, &raw mut status, 0);
        }
    }
}

/// SIGKILL to every process of `uid`. Each instance has a uid of its own, so where no PID
/// namespace (or cgroup) holds a service's processes together, this is what finds the ones
/// that left its process group: a child becomes that user and signals `-1`, which the kernel
/// applies to every process the user owns in one go (no scan that a forking process outruns).
pub(crate) fn kill_uid(uid: u32) {
    extern "C" fn as_user_kill_all(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: raw system calls in the cloned child; `arg` points at the uid.
        unsafe {
            let uid = *arg.cast::<u32>();
            if libc::syscall(SYS_SETRESGID, uid, uid, uid) == 0
                && libc::syscall(SYS_SETRESUID, uid, uid, uid) == 0
            {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(0)
        }
    }
    let mut uid = uid;
    let mut stack = vec![0u8; 16 * 1024];
    // SAFETY: a stack of ours for a child that only changes its ids, signals and exits.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        libc::clone(
            as_user_kill_all,
            top.cast(),
            libc::SIGCHLD,
            (&raw mut uid).cast(),
        )
    };
    if pid > 0 {
        let mut status = 0;
        // SAFETY: reaping the child we just made.
        unsafe { libc::waitpid(pid, &raw mut status, 0) };
    }
}
