//! Small helpers shared by every module: time formatting, hex, base64, constant-time
//! comparison and randomness. Kept here so that no module grows its own copy.

use std::io::Read;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Locks that survive a panic elsewhere: the data a panicking thread left is still the best
/// there is (every writer keeps it consistent between statements), and the agent must not
/// stop serving because one task panicked.
pub(crate) trait Locked<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `Locked` for readers-writer locks.
pub(crate) trait RwLocked<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLocked<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Strict standard base64 (padded), as signatures and keys are written.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (ci, chunk) in s.chunks(4).enumerate() {
        let last = ci == s.len() / 4 - 1;
        let mut n = 0u32;
        let mut pad = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'=' if last && i >= 2 => {
                    pad += 1;
                    0
                }
                _ if pad > 0 => return None,
                _ => u32::try_from(ALPHABET.iter().position(|&a| a == c)?).ok()?,
            };
            n = n << 6 | v;
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// Base64 as share links and subscriptions carry it: the standard or the URL-safe alphabet,
/// padded or not, line breaks ignored.
pub(crate) fn base64_decode_lenient(s: &str) -> Option<Vec<u8>> {
    let mut t: String = s
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while t.ends_with('=') {
        t.pop();
    }
    while !t.len().is_multiple_of(4) {
        t.push('=');
    }
    base64_decode(&t)
}

/// A blocking job with its result's type erased: every `blocking` call runs through one
/// instantiation of tokio's blocking-task machinery instead of one per closure (that was
/// ~85 KB of the aarch64 binary for ~500 copies).
type Job = Box<dyn FnOnce() -> Box<dyn std::any::Any + Send> + Send>;

/// Runs `f` on tokio's blocking pool and waits for it without holding the runtime thread;
/// a panic in `f` is resumed here.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let job: Job = Box::new(move || Box::new(f()));
    match run_job(job).await.downcast::<T>() {
        Ok(v) => *v,
        Err(_) => unreachable!("a blocking job returns its own type"),
    }
}

async fn run_job(job: Job) -> Box<dyn std::any::Any + Send> {
    match tokio::task::spawn_blocking(job).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `tokio::spawn` for the agent's own tasks, boxed: one instantiation of tokio's task
/// machinery for all of them instead of one per future type.
pub(crate) fn spawn(
    f: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(f);
    tokio::spawn(f)
}

/// Milliseconds since the Unix epoch (the unit every record stores).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 UTC timestamp with millisecond precision, e.g. `2026-11-26T08:42:13.123Z`.
pub(crate) fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Parses exactly 64 hex digits (either case) into a SHA-256 digest.
pub(crate) fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// `n` random bytes from the kernel, as lowercase hex.
pub(crate) fn random_hex(n: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex(&buf))
}

/// Human-readable byte count for messages ("12.3 MiB").
pub(crate) fn human_bytes(n: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    if n >= 1 << 30 {
        format!("{:.1} GiB", f / f64::from(1u32 << 30))
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", f / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// Free space kept back beyond what a download or an extraction needs.
pub(crate) const SPACE_MARGIN: u64 = 1 << 20;

/// What is free on the file system holding `dir` when that is less than `need` plus
/// `SPACE_MARGIN`; `None` when there is room (or statvfs cannot tell).
pub(crate) fn short_of_space(dir: &std::path::Path, need: u64) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
    (free < need.saturating_add(SPACE_MARGIN)).then_some(free)
}

/// Writes a file by writing a sibling temp file and renaming it over the target.
pub(crate) fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// TOML into `T` through a JSON tree: basic_toml's parser is then instantiated once (for
/// `serde_json::Value`) instead of once per configuration type (-45 KB on aarch64). Syntax
/// errors keep basic_toml's line and column; type errors name the key (`api.max_connections`).
pub(crate) fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let tree: serde_json::Value = basic_toml::from_str(text).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{inner} for key `{path}`")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_refuses_junk() {
        for data in [&b""[..], b"E", b"Ed", b"Ed\x00", b"\xff\xfe\xfd\xfc"] {
            assert_eq!(base64_decode(&base64_encode(data)).unwrap(), data);
        }
        assert_eq!(base64_encode(b"Ed"), "RWQ=");
        for bad in ["RWQ", "R=WQ", "RW!=", "=AAA"] {
            assert!(base64_decode(bad).is_none(), "{bad}");
        }
        // Share links: URL-safe alphabet, no padding, line breaks.
        assert_eq!(base64_decode_lenient("-_8").unwrap(), b"\xfb\xff");
        assert_eq!(base64_decode_lenient("RWQ\n").unwrap(), b"Ed");
        assert_eq!(base64_decode_lenient("RWQ=").unwrap(), b"Ed");
        assert!(base64_decode_lenient("R").is_none() && base64_decode_lenient("RW!").is_none());
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_682_533_123), "2026-11-26T08:42:13.123Z");
    }

    #[test]
    fn hex_round_trips_and_rejects_bad_digests() {
        let d = [0xabu8; 32];
        assert_eq!(parse_sha256_hex(&hex(&d)), Some(d));
        assert_eq!(parse_sha256_hex(&hex(&d).to_uppercase()), Some(d));
        assert!(parse_sha256_hex("ab").is_none());
        assert!(parse_sha256_hex(&"g".repeat(64)).is_none());
        assert!(parse_sha256_hex(&"+a".repeat(32)).is_none());
    }

    #[test]
    fn ct_eq_compares_content_and_length() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
