//! A service's stdout and stderr, kept in `{instance}/logs/service.log` and rotated by size:
//! when the file would pass `max_bytes`, it becomes `service.log.1` (replacing the previous
//! one) and a new file starts, so at most `2 × max_bytes` stay on flash. Lines also go to
//! subscribers of the `logs` subscription.
//!
//! The agent is root and the service is not to be trusted, so the log directory belongs to
//! root alone (0700): the service never writes there (it prints; the agent writes). Every file
//! is still opened relative to the directory's descriptor with `O_NOFOLLOW | O_NONBLOCK` and
//! checked with `fstat` (a regular file, root's, one link), so a link, FIFO or hard link left
//! there by an older agent version (when the directory was the service's) is removed, never
//! followed, blocked on or appended to.

use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const FILE: &CStr = c"service.log";
const OLD: &CStr = c"service.log.1";

/// Longest line kept; the rest of a longer one is dropped and the log says how much.
pub(crate) const MAX_LINE: usize = 4096;

fn last_error(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn stat_at(dir: &OwnedFd, name: &CStr) -> Option<libc::stat> {
    // SAFETY: a zeroed stat for fstatat to fill; the name is a valid C string.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &raw mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ) == 0)
            .then_some(st)
    }
}

fn is_ours(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_uid == 0 && st.st_nlink == 1
}

/// Opens (creating it 0700) the log directory as root's: ownership and mode fixed through
/// the descriptor, and anything at our file names that is not our regular file removed.
pub(crate) fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("log path contains a NUL byte"))?;
    // SAFETY: open(2) on a valid C string; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_error(&dir.display().to_string()));
    }
    // SAFETY: open returned a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: changing owner and mode of the directory we hold open.
    if unsafe {
        libc::fchown(fd.as_raw_fd(), 0, 0) != 0 || libc::fchmod(fd.as_raw_fd(), 0o700) != 0
    } {
        return Err(last_error(&dir.display().to_string()));
    }
    for name in [FILE, OLD] {
        if stat_at(&fd, name).is_some_and(|st| !is_ours(&st)) {
            log::warn!(target: "supervisor", "{}: removing {} (not a log file of the agent's)", dir.display(), name.to_string_lossy());
            // SAFETY: unlinking a name inside the directory we hold.
            unsafe { libc::unlinkat(fd.as_raw_fd(), name.as_ptr(), 0) };
        }
    }
    Ok(fd)
}

/// Opens one of the log files for reading or appending, refusing anything but our own
/// regular file. `Ok(None)`: it does not exist.
fn open_file(dir: &OwnedFd, name: &CStr, append: bool) -> std::io::Result<Option<File>> {
    let flags = libc::O_NOFOLLOW
        | libc::O_NONBLOCK
        | libc::O_CLOEXEC
        | if append {
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT
        } else {
            libc::O_RDONLY
        };
    // SAFETY: openat(2) relative to a directory we hold; the result is checked.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o600) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::NotFound && !append {
            return Ok(None);
        }
        return Err(last_error(&name.to_string_lossy()));
    }
    // SAFETY: openat returned a new descriptor we own.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: a zeroed stat for fstat to fill on our own descriptor.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(file.as_raw_fd(), &raw mut st);
        st
    };
    if !is_ours(&st) {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file of the agent's; refusing it",
            name.to_string_lossy()
        )));
    }
    Ok(Some(file))
}

pub(crate) struct RotatingLog {
    dir: OwnedFd,
    max_bytes: u64,
    file: Option<File>,
    written: u64,
}

impl RotatingLog {
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> std::io::Result<RotatingLog> {
        let dir = open_dir(dir)?;
        let written = stat_at(&dir, FILE).map_or(0, |st| u64::try_from(st.st_size).unwrap_or(0));
        Ok(RotatingLog {
            dir,
            max_bytes: max_bytes.max(1024),
            file: None,
            written,
        })
    }

    /// Appends one line (a newline is added).
    pub(crate) fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.written + len > self.max_bytes && self.written > 0 {
            self.file = None;
            // SAFETY: renaming within the directory we hold.
            if unsafe {
                libc::renameat(
                    self.dir.as_raw_fd(),
                    FILE.as_ptr(),
                    self.dir.as_raw_fd(),
                    OLD.as_ptr(),
                )
            } != 0
            {
                return Err(last_error("rotate service.log"));
            }
            self.written = 0;
        }
        if self.file.is_none() {
            self.file = open_file(&self.dir, FILE, true)?;
        }
        if let Some(f) = self.file.as_mut() {
            // A single line longer than the whole budget is cut: the budget is the budget.
            let keep = usize::try_from(self.max_bytes.saturating_sub(1))
                .unwrap_or(usize::MAX)
                .min(line.len());
            let mut cut = keep;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            f.write_all(&line.as_bytes()[..cut])?;
            f.write_all(b"\n")?;
            self.written += cut as u64 + 1;
        }
        Ok(())
    }
}

/// The last `n` lines of an instance's log, across the rotation; at most `cap` bytes are
/// read from each file (its end).
pub(crate) fn tail(dir: &Path, n: usize, cap: u64) -> std::io::Result<Vec<String>> {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("log path contains a NUL byte"))?;
    // SAFETY: open(2) on a valid C string; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            // No log yet (the instance has not been configured).
            std::io::ErrorKind::NotFound => Ok(Vec::new()),
            _ => Err(e),
        };
    }
    // SAFETY: open returned a new descriptor we own.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut lines: Vec<String> = Vec::new();
    for name in [OLD, FILE] {
        // Only our own regular files are read: anything else there is skipped, unopened
        // unless it is a plain file, never waited on.
        if stat_at(&dir, name).is_none_or(|st| !is_ours(&st)) {
            continue;
        }
        let Some(mut f) = open_file(&dir, name, false)? else {
            continue;
        };
        let size = f.metadata()?.len();
        let start = size.saturating_sub(cap);
        f.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        f.take(cap).read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        let mut it = text.lines();
        if start > 0 {
            // The first line read from the middle of the file is partial.
            it.next();
        }
        lines.extend(it.map(str::to_owned));
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// Splits a service's output into lines of at most `MAX_LINE` bytes, whatever it prints:
/// the head of a longer line is kept (marked), the rest dropped and counted.
#[derive(Default)]
pub(crate) struct LineSplitter {
    line: Vec<u8>,
    /// Bytes of the current over-long line dropped so far.
    dropped: u64,
}

impl LineSplitter {
    /// Feeds a chunk; calls `emit` for every complete line (or cut head).
    pub(crate) fn feed(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(String)) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|b| *b == b'\n');
            let part = &chunk[..newline.unwrap_or(chunk.len())];
            chunk = newline.map_or(&[][..], |i| &chunk[i + 1..]);
            if self.dropped > 0 {
                self.dropped += part.len() as u64;
            } else {
                let room = MAX_LINE - self.line.len();
                self.line.extend_from_slice(&part[..part.len().min(room)]);
                if part.len() > room {
                    self.dropped = (part.len() - room) as u64;
                    let head = String::from_utf8_lossy(&self.line).into_owned();
                    emit(format!("{head} [line longer than {MAX_LINE} bytes: cut]"));
                    self.line.clear();
                }
            }
            if newline.is_some() {
                self.end_line(emit);
            }
        }
    }

    /// Ends the current line (a newline, or the end of the stream).
    pub(crate) fn end_line(&mut self, emit: &mut impl FnMut(String)) {
        if self.dropped > 0 {
            emit(format!(
                "[nnc-agent: dropped the last {} bytes of that line]",
                self.dropped
            ));
            self.dropped = 0;
        } else {
            let line = String::from_utf8_lossy(&self.line);
            emit(line.trim_end_matches('\r').to_owned());
        }
        self.line.clear();
    }

    pub(crate) fn pending(&self) -> bool {
        !self.line.is_empty() || self.dropped > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("nnc-logs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn rotation_keeps_the_budget_and_tail_spans_both_files() {
        let dir = temp("rot");
        let mut log = RotatingLog::open(&dir, 1024).unwrap();
        for i in 0..200 {
            log.write_line(&format!("line {i:04} {}", "x".repeat(20)))
                .unwrap();
        }
        let size = |n: &str| std::fs::metadata(dir.join(n)).map_or(0, |m| m.len());
        assert!(
            size("service.log") <= 1024 && size("service.log.1") <= 1024,
            "{} {}",
            size("service.log"),
            size("service.log.1")
        );
        // 33 lines fit a file; 200 = 6 × 33 + 2: the old file has 33, the current one 2.
        let t = tail(&dir, 30, 1 << 20).unwrap();
        assert_eq!(t.len(), 30);
        assert!(t.last().unwrap().starts_with("line 0199"));
        let numbers: Vec<u32> = t.iter().map(|l| l[5..9].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        assert_eq!(
            tail(&dir, 10_000, 1 << 20).unwrap().len(),
            (size("service.log") + size("service.log.1")) as usize / 31
        );
        // Reading only the end of each file never returns a partial first line.
        let short = tail(&dir, 10_000, 100).unwrap();
        assert!(short.iter().all(|l| l.len() == 30), "{short:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn links_fifos_and_hard_links_in_the_log_dir_are_removed_not_followed() {
        let dir = temp("planted");
        std::fs::create_dir_all(&dir).unwrap();
        let victim = temp("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("service.log")).unwrap();
        nix::unistd::mkfifo(&dir.join("service.log.1"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut log = RotatingLog::open(&dir, 1 << 20).unwrap();
        log.write_line("hello").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(tail(&dir, 10, 1 << 20).unwrap(), ["hello"]);
        // A hard link to a root-owned file is refused too (two links).
        drop(log);
        std::fs::remove_file(dir.join("service.log")).unwrap();
        std::fs::hard_link(&victim, dir.join("service.log")).unwrap();
        let mut log = RotatingLog::open(&dir, 1 << 20).unwrap();
        log.write_line("again").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_file(victim).unwrap();
    }

    #[test]
    fn long_lines_are_cut_and_counted_in_bounded_memory() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        let mut emit = |l: String| out.push(l);
        s.feed(b"short\nx", &mut emit);
        for _ in 0..1000 {
            s.feed(&[b'y'; 1000], &mut emit);
            assert!(s.line.len() <= MAX_LINE);
        }
        s.feed(b"z\nnext\n", &mut emit);
        assert_eq!(out[0], "short");
        assert!(out[1].starts_with("xyyy") && out[1].ends_with("cut]"));
        assert_eq!(
            out[1].len(),
            MAX_LINE + " [line longer than 4096 bytes: cut]".len()
        );
        assert_eq!(
            out[2],
            format!(
                "[nnc-agent: dropped the last {} bytes of that line]",
                1 + 1_000_000 + 1 - MAX_LINE
            )
        );
        assert_eq!(out[3], "next");
        assert!(!s.pending());
        let mut bad = Vec::new();
        s.feed(b"\xff\xfeok\r\n", &mut |l| bad.push(l));
        assert_eq!(bad, ["\u{fffd}\u{fffd}ok"]);
    }
}
