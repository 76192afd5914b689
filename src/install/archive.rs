//! Takes the one binary a catalogue names out of a tar.gz or zip archive, without trusting
//! the archive.
//!
//! The whole archive is scanned and refused if any entry could do harm were it unpacked:
//! absolute or `..` paths, symbolic and hard links, devices, FIFOs, duplicate names. Only the
//! named regular file is written, to a path the caller chose inside the data directory. The
//! decompressed stream is capped, so a gzip bomb stops at the cap instead of filling the
//! flash, and the member's declared size must fit the destination's free space (with the
//! download's margin) before a byte of it is written.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::catalogue::{ArchiveKind, is_safe_member};
use crate::code::Code;
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
    /// The binary does not fit the data dir's file system.
    DiskFull(String),
    Io(String),
}

impl ArchiveError {
    pub(crate) fn code(&self) -> Code {
        match self {
            ArchiveError::Unsafe(_) => Code::UnsafeArchive,
            ArchiveError::TooLarge(_) => Code::ArchiveTooLarge,
            ArchiveError::Invalid(_) => Code::ArchiveInvalid,
            ArchiveError::Missing(_) => Code::BinaryNotInArchive,
            ArchiveError::DiskFull(_) => Code::DiskFull,
            ArchiveError::Io(_) => Code::IoError,
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
            | ArchiveError::DiskFull(m)
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
/// hashes them on the way. Nothing is created unless the declared size fits under `cap` and
/// in the free space of `dest`'s file system.
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
    let dir = dest.parent().unwrap_or(dest);
    if let Some(free) = crate::util::short_of_space(dir, size) {
        return Err(ArchiveError::DiskFull(format!(
            "not enough free space in {} to unpack the binary: it needs {} (with {} kept free), {} is free; free some space and install again",
            dir.display(),
            human_bytes(size),
            human_bytes(crate::util::SPACE_MARGIN),
            human_bytes(free)
        )));
    }
    let out = HashingWriter {
        file: create_dest(dest)?,
        hasher: Sha256::new(),
        failed: false,
    };
    copy_into(src, out, dest, size)
}

fn copy_into(
    src: &mut dyn Read,
    mut out: HashingWriter,
    dest: &Path,
    size: u64,
) -> Result<[u8; 32], ArchiveError> {
    let copied = io::copy(&mut src.take(size + 1), &mut out).map_err(|e| {
        if out.failed {
            write_error(dest, &e)
        } else {
            read_error(e)
        }
    })?;
    if copied != size {
        return Err(ArchiveError::Invalid(format!(
            "binary declared {size} bytes but the archive holds {copied}"
        )));
    }
    out.file.sync_all().map_err(|e| write_error(dest, &e))?;
    Ok(out.hasher.finalize().into())
}

/// ENOSPC (another writer took the space after the check) is `DISK_FULL`, like the download's.
fn write_error(dest: &Path, e: &io::Error) -> ArchiveError {
    let m = format!("cannot write {}: {e}", dest.display());
    if e.raw_os_error() == Some(libc::ENOSPC) {
        ArchiveError::DiskFull(format!("{m}; free some space and install again"))
    } else {
        ArchiveError::Io(m)
    }
}

struct HashingWriter {
    file: File,
    hasher: Sha256,
    /// Set when the file refused a write, to tell a full disk from a corrupt archive.
    failed: bool,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf).inspect_err(|e| {
            self.failed = e.kind() != io::ErrorKind::Interrupted;
        })?;
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
    let gz = crate::gz::GzDecoder::new(BufReader::new(file));
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
            other => Some(format!(
                "of unsupported tar type {:?}",
                other.as_byte() as char
            )),
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

/// One central-directory entry of a zip archive, as far as we need it.
struct ZipEntry {
    name: Vec<u8>,
    method: u16,
    flags: u16,
    crc32: u32,
    compressed: u64,
    size: u64,
    /// Unix mode bits, when the archive was made on Unix.
    mode: Option<u32>,
    local_offset: u64,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

const ZIP_EOCD: u32 = 0x0605_4b50;
const ZIP_CENTRAL: u32 = 0x0201_4b50;
const ZIP_LOCAL: u32 = 0x0403_4b50;
/// Largest central directory we read into memory.
const ZIP_MAX_DIRECTORY: u64 = 16 << 20;

/// Reads the central directory: the end record (searched in the last 64 KiB + 22 bytes, where
/// the format puts it), then every entry it announces. Zip64 and multi-disk archives are
/// refused: release archives of a router service never need them.
fn zip_directory(file: &mut File) -> Result<Vec<ZipEntry>, ArchiveError> {
    use std::io::{Seek, SeekFrom};
    let invalid = |m: &str| ArchiveError::Invalid(format!("not a valid zip archive: {m}"));
    let io_err = |e: io::Error| ArchiveError::Io(format!("reading the zip: {e}"));
    let len = file.metadata().map_err(io_err)?.len();
    let tail_len = len.min(65_535 + 22);
    file.seek(SeekFrom::Start(len - tail_len)).map_err(io_err)?;
    let mut tail = vec![0u8; usize::try_from(tail_len).unwrap_or(0)];
    file.read_exact(&mut tail).map_err(io_err)?;
    let eocd = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| le32(&tail, i) == ZIP_EOCD)
        .ok_or_else(|| invalid("no end-of-central-directory record"))?;
    let e = &tail[eocd..];
    let (disk, cd_disk, entries) = (le16(e, 4), le16(e, 6), le16(e, 10));
    let (cd_size, cd_offset) = (u64::from(le32(e, 12)), u64::from(le32(e, 16)));
    if disk != 0 || cd_disk != 0 {
        return Err(invalid("multi-disk archives are not supported"));
    }
    if entries == 0xFFFF || cd_offset == 0xFFFF_FFFF || cd_size == 0xFFFF_FFFF {
        return Err(invalid("zip64 archives are not supported"));
    }
    if cd_size > ZIP_MAX_DIRECTORY || cd_offset + cd_size > len {
        return Err(invalid("central directory out of bounds"));
    }
    file.seek(SeekFrom::Start(cd_offset)).map_err(io_err)?;
    let mut cd = vec![0u8; usize::try_from(cd_size).unwrap_or(0)];
    file.read_exact(&mut cd).map_err(io_err)?;
    let mut out = Vec::with_capacity(usize::from(entries));
    let mut at = 0;
    for i in 0..entries {
        if at + 46 > cd.len() || le32(&cd, at) != ZIP_CENTRAL {
            return Err(invalid(&format!("central directory entry {i} is damaged")));
        }
        let (name_len, extra_len, comment_len) = (
            usize::from(le16(&cd, at + 28)),
            usize::from(le16(&cd, at + 30)),
            usize::from(le16(&cd, at + 32)),
        );
        let end = at + 46 + name_len + extra_len + comment_len;
        if end > cd.len() {
            return Err(invalid(&format!(
                "central directory entry {i} is truncated"
            )));
        }
        let made_on_unix = le16(&cd, at + 4) >> 8 == 3;
        let entry = ZipEntry {
            name: cd[at + 46..at + 46 + name_len].to_vec(),
            flags: le16(&cd, at + 8),
            method: le16(&cd, at + 10),
            crc32: le32(&cd, at + 16),
            compressed: u64::from(le32(&cd, at + 20)),
            size: u64::from(le32(&cd, at + 24)),
            mode: made_on_unix.then(|| le32(&cd, at + 38) >> 16),
            local_offset: u64::from(le32(&cd, at + 42)),
        };
        if entry.compressed == 0xFFFF_FFFF
            || entry.size == 0xFFFF_FFFF
            || entry.local_offset == 0xFFFF_FFFF
        {
            return Err(invalid("zip64 entries are not supported"));
        }
        out.push(entry);
        at = end;
    }
    Ok(out)
}

fn extract_zip(
    archive: &Path,
    member: &str,
    dest: &Path,
    cap: u64,
) -> Result<[u8; 32], ArchiveError> {
    use std::io::{Seek, SeekFrom};
    const S_IFMT: u32 = 0o170_000;
    const S_IFREG: u32 = 0o100_000;
    const S_IFDIR: u32 = 0o040_000;
    const S_IFLNK: u32 = 0o120_000;
    let mut file = File::open(archive)
        .map_err(|e| ArchiveError::Io(format!("cannot open {}: {e}", archive.display())))?;
    let entries = zip_directory(&mut file)?;
    let mut found: Option<&ZipEntry> = None;
    let mut declared_total = 0u64;
    for entry in &entries {
        let is_dir = entry.name.ends_with(b"/");
        let name = check_name(&entry.name, is_dir)?;
        let what = match entry.mode.map(|m| m & S_IFMT) {
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
        declared_total = declared_total.saturating_add(entry.size);
        if declared_total > cap {
            return Err(ArchiveError::TooLarge(format!(
                "archive expands beyond {} (declared sizes)",
                human_bytes(cap)
            )));
        }
        if name == member {
            if found.is_some() {
                return Err(ArchiveError::Unsafe(format!(
                    "archive lists '{member}' twice"
                )));
            }
            found = Some(entry);
        }
    }
    let entry =
        found.ok_or_else(|| ArchiveError::Missing(format!("archive has no file '{member}'")))?;
    if entry.flags & 1 != 0 {
        return Err(ArchiveError::Invalid(format!("'{member}' is encrypted")));
    }
    let io_err = |e: io::Error| ArchiveError::Io(format!("reading the zip: {e}"));
    let mut local = [0u8; 30];
    file.seek(SeekFrom::Start(entry.local_offset))
        .map_err(io_err)?;
    file.read_exact(&mut local).map_err(io_err)?;
    if le32(&local, 0) != ZIP_LOCAL {
        return Err(ArchiveError::Invalid(format!(
            "local header of '{member}' is damaged"
        )));
    }
    let skip = u64::from(le16(&local, 26)) + u64::from(le16(&local, 28));
    file.seek(SeekFrom::Current(i64::try_from(skip).unwrap_or(0)))
        .map_err(io_err)?;
    let raw = BufReader::new(file).take(entry.compressed);
    let (sha, crc) = match entry.method {
        0 => {
            let mut r = CrcReader {
                inner: raw,
                crc: crate::gz::Crc32::new(),
            };
            (copy_member(&mut r, dest, entry.size, cap)?, r.crc.sum())
        }
        8 => {
            let inflated = crate::gz::Inflate::new(raw);
            let mut r = CrcReader {
                inner: inflated,
                crc: crate::gz::Crc32::new(),
            };
            (copy_member(&mut r, dest, entry.size, cap)?, r.crc.sum())
        }
        m => {
            return Err(ArchiveError::Invalid(format!(
                "'{member}' uses compression method {m} (only stored and deflate are supported)"
            )));
        }
    };
    if crc != entry.crc32 {
        return Err(ArchiveError::Invalid(format!(
            "'{member}' fails its CRC-32 check"
        )));
    }
    Ok(sha)
}

/// Computes the CRC-32 of what passes through: zip stores the CRC of the uncompressed data.
struct CrcReader<R> {
    inner: R,
    crc: crate::gz::Crc32,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
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

    /// A stored (uncompressed) zip with one entry, as a minimal writer lays it out.
    fn stored_zip(name: &str, data: &[u8], crc: u32) -> Vec<u8> {
        let mut z = Vec::new();
        let n = u16::try_from(name.len()).unwrap();
        let len = u32::try_from(data.len()).unwrap();
        z.extend_from_slice(&ZIP_LOCAL.to_le_bytes());
        z.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        z.extend_from_slice(&crc.to_le_bytes());
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&n.to_le_bytes());
        z.extend_from_slice(&[0, 0]);
        z.extend_from_slice(name.as_bytes());
        z.extend_from_slice(data);
        let cd_offset = u32::try_from(z.len()).unwrap();
        z.extend_from_slice(&ZIP_CENTRAL.to_le_bytes());
        z.extend_from_slice(&[20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        z.extend_from_slice(&crc.to_le_bytes());
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&n.to_le_bytes());
        z.extend_from_slice(&[0; 8]);
        z.extend_from_slice(&(0o100_755u32 << 16).to_le_bytes());
        z.extend_from_slice(&0u32.to_le_bytes());
        z.extend_from_slice(name.as_bytes());
        let cd_size = u32::try_from(z.len()).unwrap() - cd_offset;
        z.extend_from_slice(&ZIP_EOCD.to_le_bytes());
        z.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
        z.extend_from_slice(&cd_size.to_le_bytes());
        z.extend_from_slice(&cd_offset.to_le_bytes());
        z.extend_from_slice(&[0, 0]);
        z
    }

    fn try_zip(bytes: &[u8]) -> Result<[u8; 32], ArchiveError> {
        let dir = std::env::temp_dir().join(format!(
            "nnc-zip-{}-{}",
            std::process::id(),
            crate::util::random_hex(4).unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.zip"), bytes).unwrap();
        let r = extract_member(
            &dir.join("a.zip"),
            ArchiveKind::Zip,
            "bin/x",
            &dir.join("out"),
            1 << 20,
        );
        std::fs::remove_dir_all(dir).unwrap();
        r
    }

    #[test]
    fn stored_zip_entries_extract_and_their_crc_is_checked() {
        let data = b"hello router";
        let mut crc = crate::gz::Crc32::new();
        crc.update(data);
        let sha = try_zip(&stored_zip("bin/x", data, crc.sum())).unwrap();
        assert_eq!(sha, <[u8; 32]>::from(sha2::Sha256::digest(data)));
        let e = try_zip(&stored_zip("bin/x", data, crc.sum() ^ 1)).unwrap_err();
        assert!(
            matches!(e, ArchiveError::Invalid(ref m) if m.contains("CRC-32")),
            "{e}"
        );
        assert!(matches!(
            try_zip(&stored_zip("other", data, 0)),
            Err(ArchiveError::Missing(_))
        ));
    }

    #[test]
    fn damaged_zips_are_invalid_not_panics() {
        let good = stored_zip("bin/x", b"abc", 0);
        for cut in [0, 10, 30, good.len() - 30, good.len() - 1] {
            assert!(try_zip(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut zip64 = good.clone();
        let at = zip64.len() - 6;
        zip64[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            matches!(try_zip(&zip64), Err(ArchiveError::Invalid(ref m)) if m.contains("zip64"))
        );
    }

    #[test]
    fn a_write_that_hits_enospc_is_disk_full_not_a_corrupt_archive() {
        // /dev/full answers every write with ENOSPC: the disk filling up under the copy.
        let out = HashingWriter {
            file: std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
            hasher: Sha256::new(),
            failed: false,
        };
        let data = vec![0u8; 1000];
        let e = copy_into(&mut &data[..], out, Path::new("/d/bin/.x.new"), 1000).unwrap_err();
        assert!(
            matches!(e, ArchiveError::DiskFull(ref m) if m.contains("/d/bin/.x.new")),
            "{e}"
        );
        assert_eq!(e.code(), Code::DiskFull);
    }

    #[test]
    fn a_member_larger_than_the_free_space_is_refused_before_it_is_created() {
        let dir = std::env::temp_dir().join(format!("nnc-space-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("out");
        let e = copy_member(&mut io::empty(), &dest, u64::MAX / 2, u64::MAX).unwrap_err();
        assert!(matches!(e, ArchiveError::DiskFull(_)), "{e}");
        assert!(!dest.exists());
        std::fs::remove_dir_all(dir).unwrap();
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
