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
//! network namespace; make mounts private, mount a private /tmp and a fresh /proc, remount
//! read-only what must not be written; set the hostname; wire stdio; drop the capability
//! bounding set; become the service user (keeping the listed capabilities as ambient ones);
//! `no_new_privs`; ask for SIGKILL if the agent dies; exec.
//!
//! All clones happen on one long-lived thread: the parent-death signal follows the *thread*
//! that created the child, and the agent's blocking-pool threads come and go.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

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
    /// Paths bind-mounted read-only in the service's mount namespace.
    pub read_only: Vec<PathBuf>,
    /// A cgroup v2 directory the child joins before anything else.
    pub cgroup: Option<PathBuf>,
    /// Run in new PID/mount/UTS/IPC namespaces (services); probes and checkers run without.
    pub isolate: bool,
    /// Mount a private tmpfs on /tmp (off when the service's own files live under /tmp).
    pub private_tmp: bool,
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
const STAGES: [&str; 17] = [
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
];

fn cstr(s: &[u8]) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError("a path or argument contains a NUL byte".into()))
}

fn cpath(p: &Path) -> Result<CString, SpawnError> {
    cstr(p.as_os_str().as_bytes())
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
    read_only: Vec<CString>,
    cgroup_procs: Option<PathBuf>,
    keep_mask: u64,
    last_cap: u32,
    isolate: bool,
    private_tmp: bool,
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
    Ok(Prepared {
        program: cpath(&spec.program)?,
        argv,
        argv_ptrs,
        envp,
        envp_ptrs,
        cwd: cpath(&spec.cwd)?,
        netns: spec.netns.as_deref().map(cpath).transpose()?,
        hostname: cstr(spec.hostname.as_bytes())?,
        read_only: spec
            .read_only
            .iter()
            .map(|p| cpath(p))
            .collect::<Result<_, _>>()?,
        cgroup_procs: spec.cgroup.as_ref().map(|c| c.join("cgroup.procs")),
        keep_mask: spec.keep_caps.iter().fold(0u64, |m, c| m | (1u64 << c)),
        last_cap: last_cap(),
        isolate: spec.isolate,
        private_tmp: spec.private_tmp,
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
#[cfg(not(target_arch = "arm"))]
use libc::{
    SYS_setgroups as SYS_SETGROUPS, SYS_setresgid as SYS_SETRESGID, SYS_setresuid as SYS_SETRESUID,
};
#[cfg(target_arch = "arm")]
use libc::{
    SYS_setgroups32 as SYS_SETGROUPS, SYS_setresgid32 as SYS_SETRESGID,
    SYS_setresuid32 as SYS_SETRESUID,
};

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
        if p.isolate {
            let none = c"none".as_ptr();
            if libc::mount(
                none,
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                fail(3);
            }
            if p.private_tmp
                && libc::mount(
                    c"tmpfs".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"size=16m,mode=1777".as_ptr().cast(),
                ) != 0
            {
                fail(4);
            }
            for path in &p.read_only {
                if libc::mount(
                    path.as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    fail(5);
                }
                let flags = libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV;
                if libc::mount(
                    none,
                    path.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ) != 0
                {
                    fail(6);
                }
            }
            // A /proc for the new PID namespace (the old one would show the agent's PIDs).
            if libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
            {
                fail(7);
            }
            // A /sys for the service's network namespace, so /sys/class/net lists its own
            // interfaces rather than the router's.
            if p.netns.is_some()
                && libc::mount(
                    c"sysfs".as_ptr(),
                    c"/sys".as_ptr(),
                    c"sysfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                    std::ptr::null(),
                ) != 0
            {
                fail(16);
            }
            if libc::sethostname(p.hostname.as_ptr(), p.hostname.as_bytes().len()) != 0 {
                fail(8);
            }
        }
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if devnull < 0
            || libc::dup2(devnull, 0) < 0
            || libc::dup2(stdout, 1) < 0
            || libc::dup2(stderr, 2) < 0
        {
            fail(9);
        }
        if libc::chdir(p.cwd.as_ptr()) != 0 {
            fail(10);
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
    let flags = if spec.isolate {
        libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC
    } else {
        0
    };
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
        return Err(SpawnError(format!(
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        )));
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
    tx.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
