//! The transfer: one download streamed to its `.part` file, hashed as it is written, resumed
//! with `Range` + `If-Range` after a dropped connection, a stall or an agent restart, and
//! retried with backoff; bounded by the operator's cap and the disk's free space.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::catalogue::Asset;
use crate::code::Code;
use crate::store::{DownloadState, Step};
use crate::util::{self, human_bytes};

use super::verify::HashWriter;
use super::{Downloads, MAX_RETRY_DELAY, Reporter, StepError, io_step, store_step};

impl Downloads {
    /// Streams the asset into `part` until it is complete, resuming and retrying as needed.
    pub(super) fn download(
        &self,
        id: &str,
        asset: &Asset,
        part: &Path,
        rep: &mut Reporter<'_>,
    ) -> Result<Downloaded, StepError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(part)
            .map_err(|e| io_step(Step::Downloading, part, &e))?;
        let mut t = Transfer {
            id,
            url: &asset.url,
            part,
            have: file.metadata().map(|m| m.len()).unwrap_or(0),
            file,
            hasher: Sha256::new(),
            hashed: 0,
            resumed: false,
            state: self
                .store
                .download_state(id)
                .map_err(|e| store_step(Step::Downloading, &e))?
                .filter(|s| s.url == asset.url),
            // The operator's cap is a ceiling: a catalogue's size can only lower it.
            limit: asset
                .size
                .map_or(self.cfg.max_bytes, |s| s.min(self.cfg.max_bytes)),
        };
        if t.have > 0
            && t.state
                .as_ref()
                .and_then(DownloadState::validator)
                .is_none()
        {
            // Bytes without a validator cannot be resumed safely.
            t.truncate()?;
        }
        let mut failures = 0u32;
        loop {
            let before = t.have;
            match self.attempt(&mut t, rep) {
                Ok(()) => {
                    t.file
                        .sync_all()
                        .map_err(|e| io_step(Step::Downloading, part, &e))?;
                    return Ok(Downloaded {
                        digest: t.hasher.finalize().into(),
                        len: t.have,
                        resumed: t.resumed,
                    });
                }
                Err(Attempt::Fatal(e)) => {
                    if matches!(e.code, Code::TooLarge) {
                        let _ = fs::remove_file(part);
                        self.clear_state(id)?;
                    }
                    return Err(e);
                }
                Err(Attempt::Retry(why)) => {
                    failures = if t.have > before { 1 } else { failures + 1 };
                    if failures > self.cfg.retries {
                        return Err(StepError::new(
                            Step::Downloading,
                            Code::DownloadFailed,
                            format!(
                                "download of {} gave up after {failures} failed attempts at {} of {}: {why}",
                                asset.url,
                                human_bytes(t.have),
                                rep.total.map_or_else(|| "unknown size".into(), human_bytes)
                            ),
                        ));
                    }
                    let delay = self
                        .cfg
                        .retry_delay
                        .saturating_mul(1 << (failures - 1).min(16))
                        .min(MAX_RETRY_DELAY);
                    log::warn!(target: "download-manager", "{id}: {why}; resuming from byte {} in {:.1} s (attempt {}/{})", t.have, delay.as_secs_f64(), failures + 1, self.cfg.retries + 1);
                    std::thread::sleep(delay);
                }
            }
        }
    }

    /// One HTTP request. Returns Ok when the file is complete.
    fn attempt(&self, t: &mut Transfer<'_>, rep: &mut Reporter<'_>) -> Result<(), Attempt> {
        let id = t.id;
        let validator = t
            .state
            .as_ref()
            .and_then(DownloadState::validator)
            .map(str::to_owned);
        let resume_from = if t.have > 0 {
            validator.as_ref().map(|_| t.have)
        } else {
            None
        };
        if resume_from.is_some() && t.hashed != t.have {
            t.rehash().map_err(Attempt::Fatal)?;
        }
        let mut request = self.agent.get().get(t.url);
        if let (Some(from), Some(v)) = (resume_from, &validator) {
            request = request
                .header("Range", format!("bytes={from}-"))
                .header("If-Range", v.as_str());
        }
        let response =
            request
                .call()
                .map_err(|e| match crate::http_client::certificate_refused(&e) {
                    Some(why) => Attempt::Fatal(StepError::new(
                        Step::Downloading,
                        Code::DownloadFailed,
                        format!("download of {}: {why}", t.url),
                    )),
                    None => Attempt::Retry(describe_ureq(&e)),
                })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag");
        let total = match (status, resume_from) {
            (206, Some(from)) => {
                let known = t.state.as_ref().and_then(|s| s.total);
                let range = header("content-range");
                let parsed = parse_content_range(range.as_deref());
                let shown = range.as_deref().unwrap_or("(none)");
                let etag_changed = etag.is_some()
                    && t.state.as_ref().and_then(|s| s.etag.as_ref()) != etag.as_ref();
                let problem = match parsed {
                    None => Some(format!("unparseable Content-Range {shown}")),
                    Some((start, _, _)) if start != from => Some(format!(
                        "Content-Range {shown} does not start at the requested byte {from}"
                    )),
                    Some((_, end, t)) if end + 1 != t || known.is_some_and(|k| k != t) => {
                        Some(format!(
                            "Content-Range {shown} does not match the file's {} bytes",
                            known.map_or_else(|| "?".into(), |k| k.to_string())
                        ))
                    }
                    Some(_) if etag_changed => {
                        Some("the ETag changed but the server still sent a partial body".into())
                    }
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    log::warn!(target: "download-manager", "{id}: {problem}; starting again from byte 0");
                    t.truncate().map_err(Attempt::Fatal)?;
                    t.state = None;
                    self.clear_state(id).map_err(Attempt::Fatal)?;
                    return Err(Attempt::Retry(problem));
                }
                t.resumed = true;
                let total = parsed.map(|(_, _, t)| t);
                log::info!(target: "download-manager", "{id}: resuming at byte {from} of {}", total.unwrap_or(0));
                total
            }
            (200, _) => {
                if t.have > 0 {
                    log::warn!(target: "download-manager", "{id}: server sent the whole file instead of a range (validator changed or Range ignored); starting again from byte 0");
                    t.truncate().map_err(Attempt::Fatal)?;
                }
                let total = header("content-length").and_then(|v| v.parse::<u64>().ok());
                let new_state = DownloadState {
                    url: t.url.to_owned(),
                    etag: etag.clone(),
                    last_modified: header("last-modified"),
                    total,
                };
                self.store
                    .put_download_state(id, &new_state)
                    .map_err(|e| Attempt::Fatal(store_step(Step::Downloading, &e)))?;
                t.state = Some(new_state);
                total
            }
            (416, _) => {
                t.truncate().map_err(Attempt::Fatal)?;
                t.state = None;
                self.clear_state(id).map_err(Attempt::Fatal)?;
                return Err(Attempt::Retry("server refused the range (416)".into()));
            }
            (206, None) => {
                return Err(Attempt::Retry(
                    "server answered 206 to a request without Range".into(),
                ));
            }
            (408 | 429 | 500..=599, _) => {
                return Err(Attempt::Retry(format!("server answered {status}")));
            }
            _ => {
                return Err(Attempt::Fatal(StepError::new(
                    Step::Downloading,
                    Code::DownloadFailed,
                    format!("server answered {status} for {}", t.url),
                )));
            }
        };
        self.stream(t, response, total, rep)
    }

    /// Copies a response body onto the end of the part file, hashing as it goes.
    fn stream(
        &self,
        t: &mut Transfer<'_>,
        response: ureq::http::Response<ureq::Body>,
        total: Option<u64>,
        rep: &mut Reporter<'_>,
    ) -> Result<(), Attempt> {
        let (id, limit, part) = (t.id, t.limit, t.part);
        let by = if limit < self.cfg.max_bytes {
            "the catalogue's size for it"
        } else {
            "download.max_bytes; raise it if the asset is genuine"
        };
        let too_large = |n: u64| {
            Attempt::Fatal(StepError::new(
                Step::Downloading,
                Code::TooLarge,
                format!(
                    "download of {id} is {} but at most {} is allowed ({by})",
                    human_bytes(n),
                    human_bytes(limit)
                ),
            ))
        };
        if let Some(all) = total {
            if all > limit {
                return Err(too_large(all));
            }
            self.check_space(part, all.saturating_sub(t.have))?;
        }
        t.file
            .seek(SeekFrom::Start(t.have))
            .map_err(|e| Attempt::Fatal(io_step(Step::Downloading, part, &e)))?;
        rep.bytes(t.have, total, true);
        let mut body = response.into_body().into_reader();
        pump(t, &mut body, rep, total, too_large, |e, have| {
            describe_read_error(e, self.cfg.stall_timeout, have, total)
        })?;
        rep.bytes(t.have, total, true);
        match total {
            Some(all) if t.have < all => Err(Attempt::Retry(format!(
                "connection closed after {} of {all} bytes",
                t.have
            ))),
            Some(all) if t.have > all => {
                log::warn!(target: "download-manager", "{id}: received {} bytes, more than the announced {all}", t.have);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn check_space(&self, part: &Path, need: u64) -> Result<(), Attempt> {
        let dir = part.parent().unwrap_or(part);
        match util::short_of_space(dir, need) {
            None => Ok(()),
            Some(free) => Err(Attempt::Fatal(StepError::new(
                Step::Downloading,
                Code::DiskFull,
                format!(
                    "not enough free space in {}: the download needs {} more, {} is free",
                    dir.display(),
                    human_bytes(need.saturating_add(util::SPACE_MARGIN)),
                    human_bytes(free)
                ),
            ))),
        }
    }
}

pub(super) struct Downloaded {
    pub digest: [u8; 32],
    pub len: u64,
    pub resumed: bool,
}

/// A piece of the body: a buffer and how much of it is filled.
type Piece = (Vec<u8>, usize);

/// Pieces in flight, and the size of each: at most 128 KiB per download. Two are enough: the
/// hasher is the faster side, so one is filled while the other is hashed (64 KiB pieces
/// measured faster than 32 KiB ones: 1.13 against 1.28 times `curl | openssl dgst`).
const PIECES: usize = 2;
const PIECE: usize = 64 * 1024;

/// Copies the body onto the end of the part file and hashes it on a second thread: hashing
/// takes about as long as receiving and writing together (SHA-NI, 200 MiB: 0.1 s against
/// 0.15 s here), so the loop hands each written piece to the hasher and receives the next.
/// (A third thread for the writes measured no faster on two cores.) Returns when every
/// piece written is hashed: `t.have` and `t.hasher` then cover the same bytes, those on disk.
fn pump(
    t: &mut Transfer<'_>,
    body: &mut impl Read,
    rep: &mut Reporter<'_>,
    total: Option<u64>,
    too_large: impl Fn(u64) -> Attempt,
    read_error: impl Fn(&std::io::Error, u64) -> String,
) -> Result<(), Attempt> {
    let Transfer {
        file,
        hasher,
        have,
        part,
        limit,
        ..
    } = t;
    // The closure's return drops `to_hash`; the scope then waits for the hasher to finish.
    let result = std::thread::scope(|s| {
        let (to_hash, pieces) = sync_channel::<Piece>(PIECES);
        // Pieces go back empty on a channel of the same type (one instance of std's code).
        let (give_back, empty) = sync_channel::<Piece>(PIECES);
        std::thread::Builder::new()
            .name("nnc-sha256".into())
            .stack_size(32 * 1024)
            .spawn_scoped(s, move || {
                for (buf, n) in pieces {
                    hasher.update(&buf[..n]);
                    // Never blocks: it holds as many as there are buffers.
                    let _ = give_back.send((buf, 0));
                }
            })
            .map_err(|e| Attempt::Retry(format!("cannot start the hashing thread: {e}")))?;
        let mut writeback = Writeback::at(*have);
        let mut unallocated = PIECES;
        loop {
            let mut buf = match empty.try_recv() {
                Ok((buf, _)) => buf,
                Err(_) if unallocated > 0 => {
                    unallocated -= 1;
                    vec![0; PIECE]
                }
                Err(_) => empty.recv().map_or_else(|_| vec![0; PIECE], |(buf, _)| buf),
            };
            let (mut n, mut end, mut failed) = (0, false, None);
            while n < buf.len() {
                match body.read(&mut buf[n..]) {
                    Ok(0) => {
                        end = true;
                        break;
                    }
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if *have + n as u64 > *limit {
                return Err(too_large(*have + n as u64));
            }
            // What came before a read error is kept: a resume starts after it.
            file.write_all(&buf[..n])
                .map_err(|e| Attempt::Fatal(io_step(Step::Downloading, part, &e)))?;
            // The hasher only stops when `to_hash` is dropped: this cannot fail.
            let _ = to_hash.send((buf, n));
            *have += n as u64;
            writeback.wrote(file, *have);
            rep.bytes(*have, total, false);
            match failed {
                Some(e) => return Err(Attempt::Retry(read_error(&e, *have))),
                None if end => return Ok(()),
                None => {}
            }
        }
    });
    t.hashed = t.have;
    result
}

/// Writes a download's pages to disk while it comes in, instead of all at the final fsync:
/// each full `CHUNK` is handed to writeback at once, and the one before it is waited for. So
/// the disk works while the network does (the final fsync waits for one chunk at most), and a
/// router holds at most two chunks of dirty pages, not the whole binary. Advice only: a file
/// system without `sync_file_range` support leaves it all to the fsync, as before.
struct Writeback {
    /// Where the chunk being filled starts.
    start: u64,
    /// The chunk handed to writeback last, not waited for yet: (offset, length).
    pending: Option<(u64, u64)>,
}

impl Writeback {
    const CHUNK: u64 = 4 << 20;

    fn at(offset: u64) -> Writeback {
        Writeback {
            start: offset,
            pending: None,
        }
    }

    fn wrote(&mut self, file: &File, end: u64) {
        if end - self.start < Self::CHUNK {
            return;
        }
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let range = |(from, len): (u64, u64)| (from as libc::off64_t, len as libc::off64_t);
        let chunk = (self.start, end - self.start);
        // SAFETY: plain syscalls on an fd borrowed for the call; their errors are ignored
        // (advice: the final fsync is what makes the file durable).
        unsafe {
            let (from, len) = range(chunk);
            libc::sync_file_range(fd, from, len, libc::SYNC_FILE_RANGE_WRITE);
            if let Some(before) = self.pending {
                let (from, len) = range(before);
                libc::sync_file_range(
                    fd,
                    from,
                    len,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
        }
        self.pending = Some(chunk);
        self.start = end;
    }
}

/// One download in progress: the part file, how much of it there is and is hashed, the
/// server's validator for resuming, and the most it may grow to.
struct Transfer<'a> {
    id: &'a str,
    url: &'a str,
    part: &'a Path,
    file: File,
    have: u64,
    /// A hash of the part file's first `hashed` bytes.
    hasher: Sha256,
    hashed: u64,
    /// Whether the bytes came in more than one response (a resumed download).
    resumed: bool,
    /// ETag / Last-Modified and total of the first full response, kept in redb.
    state: Option<DownloadState>,
    limit: u64,
}

impl Transfer<'_> {
    fn truncate(&mut self) -> Result<(), StepError> {
        self.file
            .set_len(0)
            .map_err(|e| io_step(Step::Downloading, self.part, &e))?;
        self.have = 0;
        self.hasher = Sha256::new();
        self.hashed = 0;
        Ok(())
    }

    /// Hashes the bytes already on disk: needed once after an agent restart, never otherwise.
    fn rehash(&mut self) -> Result<(), StepError> {
        let part = self.part;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_step(Step::Downloading, part, &e))?;
        let mut hasher = Sha256::new();
        let copied = std::io::copy(
            &mut (&mut self.file).take(self.have),
            &mut HashWriter(&mut hasher),
        )
        .map_err(|e| io_step(Step::Downloading, part, &e))?;
        self.have = copied;
        self.hasher = hasher;
        self.hashed = copied;
        Ok(())
    }
}

enum Attempt {
    /// Worth another attempt (resuming from the bytes on disk).
    Retry(String),
    Fatal(StepError),
}

/// `bytes START-END/TOTAL` → (start, end, total).
fn parse_content_range(v: Option<&str>) -> Option<(u64, u64, u64)> {
    let rest = v?.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total) = (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end < total).then_some((start, end, total))
}

fn describe_ureq(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::HostNotFound => "host not found".into(),
        other => other.to_string(),
    }
}

fn describe_read_error(
    e: &std::io::Error,
    stall: Duration,
    have: u64,
    total: Option<u64>,
) -> String {
    let at = match total {
        Some(t) if t > 0 => format!("{} %", have * 100 / t),
        _ => format!("byte {have}"),
    };
    let timed_out = e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|i| i.downcast_ref::<ureq::Error>())
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)));
    if timed_out {
        format!("stalled: no data for {:.0} s at {at}", stall.as_secs_f64())
    } else {
        format!("connection lost at {at}: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range(Some("bytes 10-99/100")),
            Some((10, 99, 100))
        );
        assert_eq!(parse_content_range(Some("bytes 10-99/*")), None);
        assert_eq!(parse_content_range(Some("bytes 50-10/100")), None);
        assert_eq!(parse_content_range(Some("bytes 0-100/100")), None);
        assert_eq!(parse_content_range(Some("items 0-1/2")), None);
        assert_eq!(parse_content_range(None), None);
    }
}
