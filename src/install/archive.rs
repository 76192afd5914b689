//! Takes the one binary a catalogue names out of a tar.gz or zip archive, without trusting
//! the archive.
//!
//! The whole archive is scanned and refused if any entry could do harm were it unpacked:
//! absolute or `..` paths, symbolic and hard links, devices, FIFOs, duplicate names. Only the
//! named regular file is written, to a path the caller chose inside the data directory. The
//! decompressed stream is capped, so a gzip bomb stops at the cap instead of filling the
//! flash.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::catalogue::{ArchiveKind, is_safe_member};
use crate::util::human_bytes;

#[derive(Debug)]
pub(crate) enum ArchiveError {
    /// An entry that must never be unpacked (traversal, link, device ...).
    Unsafe(String),
    /// The archive or the binary is larger than allowed.
    TooLarge(String),
    /// Not a readable archive of the declared kind.
    Invalid(String),
    /// The catalogue's `path` is not in the archive.
    Missing(String),
    Io(String),
}

impl ArchiveError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ArchiveError::Unsafe(_) => "UNSAFE_ARCHIVE",
            ArchiveError::TooLarge(_) => "ARCHIVE_TOO_LARGE",
            ArchiveError::Invalid(_) => "ARCHIVE_INVALID",
            ArchiveError::Missing(_) => "BINARY_NOT_IN_ARCHIVE",
            ArchiveError::Io(_) => "IO_ERROR",
        }
    }
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveError::Unsafe(m)
            | ArchiveError::TooLarge(m)
            | ArchiveError::Invalid(m)
            | ArchiveError::Missing(m)
            | ArchiveError::Io(m) => f.write_str(m),
        }
    }
}

/// Writes archive member `member` to `dest` (created 0700, fsynced). At most `cap` bytes are
/// decompressed in total. Returns the SHA-256 of the member, computed while writing it.
pub(crate) fn extract_member(
    archive: &Path,
    kind: ArchiveKind,
    member: &str,
    dest: &Path,
    cap: u64,
) -> Result<[u8; 32], ArchiveError> {
    let result = match kind {
        ArchiveKind::TarGz => extract_tar_gz(archive, member, dest, cap),
        ArchiveKind::Zip => extract_zip(archive, member, dest, cap),
        ArchiveKind::None => Err(ArchiveError::Invalid("not an archive".into())),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

/// Normalises an entry name for comparison: drops leading `./` and a directory's trailing `/`.
fn normalise(name: &str) -> &str {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n.strip_suffix('/').unwrap_or(n)
}

fn check_name(raw: &[u8], is_dir: bool) -> Result<String, ArchiveError> {
    let name = String::from_utf8_lossy(raw).into_owned();
    let n = normalise(&name);
    if (is_dir && (n.is_empty() || n == ".")) || is_safe_member(n) {
        Ok(n.to_owned())
    } else {
        Err(ArchiveError::Unsafe(format!(
            "archive entry '{name}' escapes the target directory (absolute or '..' path)"
        )))
    }
}

fn create_dest(dest: &Path) -> Result<File, ArchiveError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(dest)
        .map_err(|e| ArchiveError::Io(format!("cannot create {}: {e}", dest.display())))
}

/// Copies exactly `size` bytes (the declared size) from `src` to `dest`, refusing more, and
/// hashes them on the way.
fn copy_member(
    src: &mut dyn Read,
    dest: &Path,
    size: u64,
    cap: u64,
) -> Result<[u8; 32], ArchiveError> {
    if size > cap {
        return Err(ArchiveError::TooLarge(format!(
            "binary is {} in the archive, over the {} limit",
            human_bytes(size),
            human_bytes(cap)
        )));
    }
    let mut out = HashingWriter {
        file: create_dest(dest)?,
        hasher: Sha256::new(),
    };
    let copied = io::copy(&mut src.take(size + 1), &mut out).map_err(read_error)?;
    if copied != size {
        return Err(ArchiveError::Invalid(format!(
            "binary declared {size} bytes but the archive holds {copied}"
        )));
    }
    out.file
        .sync_all()
        .map_err(|e| ArchiveError::Io(format!("cannot write {}: {e}", dest.display())))?;
    Ok(out.hasher.finalize().into())
}

struct HashingWriter {
    file: File,
    hasher: Sha256,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Marks the error a `Capped` reader raises, to tell a bomb from a corrupt stream.
#[derive(Debug)]
struct CapExceeded(u64);

impl std::fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "archive expands beyond {}", human_bytes(self.0))
    }
}

impl std::error::Error for CapExceeded {}

struct Capped<R> {
    inner: R,
    read: u64,
    cap: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.cap {
            return Err(io::Error::other(CapExceeded(self.cap)));
        }
        Ok(n)
    }
}

fn read_error(e: io::Error) -> ArchiveError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<CapExceeded>())
    {
        Some(cap) => ArchiveError::TooLarge(format!("{cap} (gzip bomb or oversized archive)")),
        None => ArchiveError::Invalid(format!("archive is corrupt: {e}")),
    }
}

fn extract_tar_gz(
    archive: &Path,
    member: &str,
    dest: &Path,
    cap: u64,
) -> Result<[u8; 32], ArchiveError> {
    use tar::EntryType;
    let file = File::open(archive)
        .map_err(|e| ArchiveError::Io(format!("cannot open {}: {e}", archive.display())))?;
    let gz = flate2::read::GzDecoder::new(BufReader::new(file));
    let mut tar = tar::Archive::new(Capped {
        inner: gz,
        read: 0,
        cap,
    });
    let mut found: Option<[u8; 32]> = None;
    for entry in tar.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        let kind = entry.header().entry_type();
        let raw = entry.path_bytes().into_owned();
        let name = check_name(&raw, kind == EntryType::Directory)?;
        let what = match kind {
            EntryType::Regular | EntryType::Continuous => None,
            EntryType::Directory => continue,
            EntryType::Symlink => Some(format!(
                "a symbolic link (to '{}')",
                entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default()
            )),
            EntryType::Link => Some("a hard link".to_owned()),
            EntryType::Char => Some("a character device".to_owned()),
            EntryType::Block => Some("a block device".to_owned()),
            EntryType::Fifo => Some("a FIFO".to_owned()),
            other => Some(format!("of unsupported type {other:?}")),
        };
        if let Some(what) = what {
            return Err(ArchiveError::Unsafe(format!(
                "archive entry '{name}' is {what}; only regular files are accepted"
            )));
        }
        if name == member {
            if found.is_some() {
                return Err(ArchiveError::Unsafe(format!(
                    "archive lists '{member}' twice"
                )));
            }
            let size = entry.header().size().map_err(|e| {
                ArchiveError::Invalid(format!("archive entry '{name}' has a bad size: {e}"))
            })?;
            found = Some(copy_member(&mut entry, dest, size, cap)?);
        }
    }
    found.ok_or_else(|| ArchiveError::Missing(format!("archive has no file '{member}'")))
}

fn extract_zip(
    archive: &Path,
    member: &str,
    dest: &Path,
    cap: u64,
) -> Result<[u8; 32], ArchiveError> {
    const S_IFMT: u32 = 0o170_000;
    const S_IFREG: u32 = 0o100_000;
    const S_IFDIR: u32 = 0o040_000;
    const S_IFLNK: u32 = 0o120_000;
    let file = File::open(archive)
        .map_err(|e| ArchiveError::Io(format!("cannot open {}: {e}", archive.display())))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| ArchiveError::Invalid(format!("not a valid zip archive: {e}")))?;
    let mut index = None;
    let mut declared_total = 0u64;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| ArchiveError::Invalid(format!("zip entry {i} is unreadable: {e}")))?;
        let mode = entry.unix_mode();
        let is_dir = entry.is_dir();
        let name = check_name(entry.name_raw(), is_dir)?;
        let what = match mode.map(|m| m & S_IFMT) {
            Some(S_IFLNK) => Some("a symbolic link"),
            Some(S_IFREG | S_IFDIR | 0) | None => None,
            Some(_) => Some("a device or FIFO"),
        };
        if let Some(what) = what {
            return Err(ArchiveError::Unsafe(format!(
                "archive entry '{name}' is {what}; only regular files are accepted"
            )));
        }
        if is_dir {
            continue;
        }
        declared_total = declared_total.saturating_add(entry.size());
        if declared_total > cap {
            return Err(ArchiveError::TooLarge(format!(
                "archive expands beyond {} (declared sizes)",
                human_bytes(cap)
            )));
        }
        if name == member {
            if index.is_some() {
                return Err(ArchiveError::Unsafe(format!(
                    "archive lists '{member}' twice"
                )));
            }
            index = Some(i);
        }
    }
    let i =
        index.ok_or_else(|| ArchiveError::Missing(format!("archive has no file '{member}'")))?;
    let mut entry = zip
        .by_index(i)
        .map_err(|e| ArchiveError::Invalid(format!("cannot read '{member}' from the zip: {e}")))?;
    let size = entry.size();
    copy_member(&mut entry, dest, size, cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_checked() {
        assert_eq!(check_name(b"./tor/tor", false).unwrap(), "tor/tor");
        assert_eq!(check_name(b"./", true).unwrap(), "");
        assert_eq!(check_name(b"dir/", true).unwrap(), "dir");
        for bad in [&b"../x"[..], b"/etc/passwd", b"a/../../b", b"./../x"] {
            assert!(
                matches!(check_name(bad, false), Err(ArchiveError::Unsafe(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn capped_reader_stops_at_the_cap() {
        let data = vec![0u8; 1000];
        let mut r = Capped {
            inner: &data[..],
            read: 0,
            cap: 999,
        };
        let e = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(matches!(read_error(e), ArchiveError::TooLarge(_)));
    }
}
