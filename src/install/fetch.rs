//! The download manager: gets one verified binary per feature+version+arch into place.
//!
//! Single-flight: every install of the same artifact watches the same job, so one GET goes on
//! the wire however many instances wait for it. A job streams to `{file}.part`, hashing as it
//! writes; it resumes with `Range` + `If-Range` after a dropped connection, a stall or an
//! agent restart (the validator and total are kept in redb, the bytes are the `.part` file).
//! Nothing becomes the binary until its hash matched, the archive was unpacked safely and its
//! ELF header fits this machine; then one `rename` puts it in place.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::checksums;
use super::elf::{self, Machine};
use super::{Layout, StepError, archive};
use crate::catalogue::{ArchiveKind, Asset};
use crate::code::Code;
use crate::http_client::Settings as HttpSettings;
use crate::store::{Artifact, DownloadState, Step, Store};
use crate::util::Locked;
use crate::util::{self, human_bytes};

/// Progress reports are sent at most this often (plus at every phase change).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Longest pause between attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// A checksums file larger than this is not a checksums file.
const CHECKSUMS_CAP: u64 = 1 << 20;

/// What an artifact job is identified by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ArtifactKey {
    pub feature: String,
    pub version: String,
    pub arch: String,
}

impl ArtifactKey {
    pub(crate) fn id(&self) -> String {
        format!("{}/{}/{}", self.feature, self.version, self.arch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Downloading,
    Verifying,
    Extracting,
}

/// The latest state of a job, as every waiting install sees it.
#[derive(Debug, Clone)]
pub(crate) struct FetchState {
    pub phase: Phase,
    pub bytes: u64,
    pub total: Option<u64>,
    pub outcome: Option<Result<Artifact, StepError>>,
}

/// What a job needs to know about the artifact.
#[derive(Debug, Clone)]
pub(crate) struct FetchRequest {
    pub key: ArtifactKey,
    pub asset: Asset,
    pub binary: String,
}

pub(crate) struct Downloads {
    store: Store,
    layout: Layout,
    cfg: HttpSettings,
    agent: ureq::Agent,
    machine: Machine,
    jobs: Mutex<HashMap<String, watch::Receiver<FetchState>>>,
    /// Keys that may sign checksums files.
    trust: crate::trust::Policy,
}

impl Downloads {
    pub(crate) fn new(
        store: Store,
        layout: Layout,
        cfg: HttpSettings,
        trust: crate::trust::Policy,
    ) -> Downloads {
        Downloads {
            trust,
            agent: crate::http_client::agent(&cfg),
            store,
            layout,
            cfg,
            machine: Machine::host(),
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// Joins the running job for this artifact, or starts one.
    pub(crate) fn fetch(self: &Arc<Self>, req: FetchRequest) -> watch::Receiver<FetchState> {
        let id = req.key.id();
        let mut jobs = self.jobs.locked();
        if let Some(rx) = jobs.get(&id) {
            log::info!(target: "download-manager", "{id}: joining the running download");
            return rx.clone();
        }
        let (tx, rx) = watch::channel(FetchState {
            phase: Phase::Downloading,
            bytes: 0,
            total: None,
            outcome: None,
        });
        jobs.insert(id.clone(), rx.clone());
        drop(jobs);
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // Removes the job from the map however the job ends (a panic included).
            struct Done<'a>(&'a Downloads, String);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    let mut jobs = self.0.jobs.locked();
                    jobs.remove(&self.1);
                }
            }
            let _done = Done(&this, id);
            let mut reporter = Reporter::new(&tx);
            let outcome = this.run(&req, &mut reporter);
            if let Err(e) = &outcome {
                log::warn!(target: "download-manager", "{}: {} failed: {}", req.key.id(), e.step.as_str(), e.message);
            }
            tx.send_modify(|s| s.outcome = Some(outcome));
        });
        rx
    }

    fn run(&self, req: &FetchRequest, rep: &mut Reporter<'_>) -> Result<Artifact, StepError> {
        let id = req.key.id();
        if let Some(artifact) = self.existing_artifact(&id)? {
            log::info!(target: "download-manager", "{id}: verified binary already in place");
            return Ok(artifact);
        }
        let (expected, mut verified_by) = self.expected_digest(&req.asset)?;
        let first = crate::trust::pinned(&self.store, &id)
            .map_err(|e| StepError::new(Step::Verifying, Code::StateError, e))?;
        if let Some(p) = &first {
            if *p != util::hex(&expected) {
                return Err(StepError::new(
                    Step::Verifying,
                    Code::PinMismatch,
                    format!(
                        "{id} was first verified as sha256 {p}; {verified_by} now says {}: refused until an operator clears the pin (unpinFeature)",
                        util::hex(&expected)
                    ),
                ));
            }
            verified_by.push_str("+tofu");
        }
        let dirs = self.layout.artifact(&req.key.feature, &req.key.version);
        for (dir, mode) in [(&dirs.download, 0o700), (&dirs.bin, 0o755)] {
            fs::create_dir_all(dir)
                .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(mode)))
                .map_err(|e| io_step(Step::Downloading, dir, &e))?;
        }
        let part = dirs
            .download
            .join(format!("{}.part", req.asset.file_name()));

        // A resumed download whose hash fails may have resumed onto a changed file: one fresh
        // download from byte 0 settles it before the install is declared failed.
        let mut fresh_retry = true;
        let digest = loop {
            let outcome = self.download(&id, &req.asset, &part, rep)?;
            rep.phase(Phase::Verifying, outcome.len, Some(outcome.len));
            if util::ct_eq(&outcome.digest, &expected) {
                break outcome.digest;
            }
            let _ = fs::remove_file(&part);
            self.clear_state(&id)?;
            if outcome.resumed && fresh_retry {
                log::warn!(target: "download-manager", "{id}: sha256 mismatch after a resumed download; downloading again from byte 0");
                fresh_retry = false;
                rep.phase(Phase::Downloading, 0, None);
                continue;
            }
            return Err(StepError::new(
                Step::Verifying,
                Code::ChecksumMismatch,
                format!(
                    "sha256 of {} is {}, expected {} (from {verified_by}); the download was deleted",
                    req.asset.file_name(),
                    util::hex(&outcome.digest),
                    util::hex(&expected)
                ),
            ));
        };

        rep.phase(Phase::Extracting, rep.bytes, rep.total);
        let binary = dirs.bin.join(&req.binary);
        let staged = dirs.bin.join(format!(".{}.new", req.binary));
        let placed = self
            .stage_binary(req, &part, &staged, digest)
            .and_then(|sha| {
                elf::check_file(&staged, self.machine)
                    .map(|()| sha)
                    .map_err(|m| StepError::new(Step::Installing, Code::WrongArch, m))
            });
        let binary_sha256 = match placed {
            Ok(sha) => sha,
            Err(e) => {
                let _ = fs::remove_file(&staged);
                if req.asset.archive != ArchiveKind::None {
                    let _ = fs::remove_file(&part);
                }
                self.clear_state(&id)?;
                return Err(e);
            }
        };
        install_file(&staged, &binary).map_err(|e| io_step(Step::Installing, &binary, &e))?;
        if req.asset.archive != ArchiveKind::None {
            let _ = fs::remove_file(&part);
        }
        let artifact = Artifact {
            key: id.clone(),
            sha256: util::hex(&digest),
            binary_path: binary.to_string_lossy().into_owned(),
            binary_sha256: util::hex(&binary_sha256),
            verified_by,
        };
        self.store
            .put_artifact(&artifact)
            .map_err(|e| store_step(Step::Installing, &e))?;
        if first.is_none() {
            crate::trust::pin(&self.store, &id, &artifact.sha256)
                .map_err(|e| StepError::new(Step::Installing, Code::StateError, e))?;
        }
        self.clear_state(&id)?;
        log::info!(target: "download-manager", "{id}: {} verified ({}) and installed at {}", req.asset.file_name(), artifact.verified_by, artifact.binary_path);
        Ok(artifact)
    }

    /// A recorded artifact counts only if the file is still there with the recorded hash.
    fn existing_artifact(&self, id: &str) -> Result<Option<Artifact>, StepError> {
        let Some(a) = self
            .store
            .artifact(id)
            .map_err(|e| store_step(Step::Downloading, &e))?
        else {
            return Ok(None);
        };
        match hash_file(Path::new(&a.binary_path)) {
            Ok(h) if util::hex(&h) == a.binary_sha256 => Ok(Some(a)),
            _ => {
                log::warn!(target: "download-manager", "{id}: binary at {} is missing or changed; fetching it again", a.binary_path);
                self.store
                    .remove_artifact(id)
                    .map_err(|e| store_step(Step::Downloading, &e))?;
                Ok(None)
            }
        }
    }

    /// `+signature:KEY` when the asset's checksums file is signed by a trusted key, `""` when
    /// it is not signed; an error when the signature is missing or bad.
    fn checksums_signer(&self, asset: &Asset, url: &str, text: &str) -> Result<String, StepError> {
        let Some(sig_url) = &asset.checksums_sig else {
            return Ok(String::new());
        };
        let sig = crate::http_client::get_small(&self.agent, sig_url, 4096).map_err(|e| {
            StepError::new(Step::Verifying, Code::SignatureUnavailable, e.to_string())
        })?;
        let key = crate::trust::check_signature(
            &format!("checksums file {url}"),
            text.as_bytes(),
            Some(&String::from_utf8_lossy(&sig)),
            &self.trust,
            true,
        )
        .map_err(|m| StepError::new(Step::Verifying, Code::BadSignature, m))?;
        Ok(key.map(|k| format!("+signature:{k}")).unwrap_or_default())
    }

    /// The digest the download must have, and what vouches for it.
    fn expected_digest(&self, asset: &Asset) -> Result<([u8; 32], String), StepError> {
        let pinned = asset.sha256.as_deref().and_then(util::parse_sha256_hex);
        let listed = match &asset.checksums {
            None => None,
            Some(url) => {
                let body = crate::http_client::get_small(&self.agent, url, CHECKSUMS_CAP).map_err(
                    |e| StepError::new(Step::Verifying, Code::ChecksumsUnavailable, e.to_string()),
                )?;
                let text = String::from_utf8(body).map_err(|_| {
                    StepError::new(
                        Step::Verifying,
                        Code::ChecksumsInvalid,
                        format!("checksums file {url} is not text"),
                    )
                })?;
                let digest = checksums::lookup(&text, asset.file_name()).map_err(|e| {
                    let code = match e {
                        checksums::ChecksumsError::NotListed { .. } => Code::ChecksumNotListed,
                        _ => Code::ChecksumsInvalid,
                    };
                    StepError::new(Step::Verifying, code, format!("{e} ({url})"))
                })?;
                Some((digest, self.checksums_signer(asset, url, &text)?))
            }
        };
        let (listed, sig) = listed.map_or((None, String::new()), |(d, s)| (Some(d), s));
        match (pinned, listed) {
            (Some(p), Some(l)) if p != l => Err(StepError::new(
                Step::Verifying,
                Code::ChecksumMismatch,
                format!(
                    "the catalogue pins {} for {} but the checksums file lists {}",
                    util::hex(&p),
                    asset.file_name(),
                    util::hex(&l)
                ),
            )),
            (Some(p), Some(_)) => Ok((p, format!("pin+checksums{sig}"))),
            (Some(p), None) => Ok((p, "pin".into())),
            (None, Some(l)) => Ok((l, format!("checksums{sig}"))),
            (None, None) => Err(StepError::new(
                Step::Verifying,
                Code::ChecksumMissing,
                "the catalogue gives no way to verify this asset".into(),
            )),
        }
    }

    /// Puts the verified download's binary at `staged`: a rename for a raw binary (whose
    /// hash is the download's), a safe extraction for an archive. Returns the binary's SHA-256.
    fn stage_binary(
        &self,
        req: &FetchRequest,
        part: &Path,
        staged: &Path,
        download_sha256: [u8; 32],
    ) -> Result<[u8; 32], StepError> {
        let asset = &req.asset;
        match (asset.archive, &asset.path) {
            (ArchiveKind::None, _) => fs::rename(part, staged)
                .map(|()| download_sha256)
                .map_err(|e| io_step(Step::Installing, staged, &e)),
            (kind, Some(member)) => {
                // `size` is the archive's, not what it unpacks to: only the operator's cap
                // bounds the extraction.
                archive::extract_member(part, kind, member, staged, self.cfg.max_bytes)
                    .map_err(|e| StepError::new(Step::Installing, e.code(), e.to_string()))
            }
            (_, None) => Err(StepError::new(
                Step::Installing,
                Code::ArchiveInvalid,
                "catalogue names no path inside the archive".into(),
            )),
        }
    }

    fn clear_state(&self, id: &str) -> Result<(), StepError> {
        self.store
            .clear_download_state(id)
            .map_err(|e| store_step(Step::Downloading, &e))
    }

    /// Streams the asset into `part` until it is complete, resuming and retrying as needed.
    fn download(
        &self,
        id: &str,
        asset: &Asset,
        part: &Path,
        rep: &mut Reporter<'_>,
    ) -> Result<Downloaded, StepError> {
        // The operator's cap is a ceiling: a catalogue's size can only lower it.
        let limit = asset
            .size
            .map_or(self.cfg.max_bytes, |s| s.min(self.cfg.max_bytes));
        let mut state = self
            .store
            .download_state(id)
            .map_err(|e| store_step(Step::Downloading, &e))?
            .filter(|s| s.url == asset.url);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(part)
            .map_err(|e| io_step(Step::Downloading, part, &e))?;
        let mut dl = Download {
            have: file.metadata().map(|m| m.len()).unwrap_or(0),
            hasher: Sha256::new(),
            hashed: 0,
            resumed: false,
        };
        if dl.have > 0 && state.as_ref().and_then(DownloadState::validator).is_none() {
            // Bytes without a validator cannot be resumed safely.
            dl.truncate(&mut file, part)?;
        }
        let mut failures = 0u32;
        loop {
            let before = dl.have;
            let result = self.attempt(id, asset, part, &mut file, &mut dl, &mut state, limit, rep);
            match result {
                Ok(()) => {
                    file.sync_all()
                        .map_err(|e| io_step(Step::Downloading, part, &e))?;
                    return Ok(Downloaded {
                        digest: dl.hasher.finalize().into(),
                        len: dl.have,
                        resumed: dl.resumed,
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
                    failures = if dl.have > before { 1 } else { failures + 1 };
                    if failures > self.cfg.retries {
                        return Err(StepError::new(
                            Step::Downloading,
                            Code::DownloadFailed,
                            format!(
                                "download of {} gave up after {failures} failed attempts at {} of {}: {why}",
                                asset.url,
                                human_bytes(dl.have),
                                rep.total.map_or_else(|| "unknown size".into(), human_bytes)
                            ),
                        ));
                    }
                    let delay = self
                        .cfg
                        .retry_delay
                        .saturating_mul(1 << (failures - 1).min(16))
                        .min(MAX_RETRY_DELAY);
                    log::warn!(target: "download-manager", "{id}: {why}; resuming from byte {} in {:.1} s (attempt {}/{})", dl.have, delay.as_secs_f64(), failures + 1, self.cfg.retries + 1);
                    std::thread::sleep(delay);
                }
            }
        }
    }

    /// One HTTP request. Returns Ok when the file is complete.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        id: &str,
        asset: &Asset,
        part: &Path,
        file: &mut File,
        dl: &mut Download,
        state: &mut Option<DownloadState>,
        limit: u64,
        rep: &mut Reporter<'_>,
    ) -> Result<(), Attempt> {
        let validator = state
            .as_ref()
            .and_then(DownloadState::validator)
            .map(str::to_owned);
        let resume_from = if dl.have > 0 {
            validator.as_ref().map(|_| dl.have)
        } else {
            None
        };
        if resume_from.is_some() && dl.hashed != dl.have {
            dl.rehash(file, part).map_err(Attempt::Fatal)?;
        }
        let mut request = self.agent.get(&asset.url);
        if let (Some(from), Some(v)) = (resume_from, &validator) {
            request = request
                .header("Range", format!("bytes={from}-"))
                .header("If-Range", v.as_str());
        }
        let response = request
            .call()
            .map_err(|e| Attempt::Retry(describe_ureq(&e)))?;
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
                let known = state.as_ref().and_then(|s| s.total);
                let range = header("content-range");
                let parsed = parse_content_range(range.as_deref());
                let shown = range.as_deref().unwrap_or("(none)");
                let etag_changed =
                    etag.is_some() && state.as_ref().and_then(|s| s.etag.as_ref()) != etag.as_ref();
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
                    dl.truncate(file, part).map_err(Attempt::Fatal)?;
                    *state = None;
                    self.clear_state(id).map_err(Attempt::Fatal)?;
                    return Err(Attempt::Retry(problem));
                }
                dl.resumed = true;
                let total = parsed.map(|(_, _, t)| t);
                log::info!(target: "download-manager", "{id}: resuming at byte {from} of {}", total.unwrap_or(0));
                total
            }
            (200, _) => {
                if dl.have > 0 {
                    log::warn!(target: "download-manager", "{id}: server sent the whole file instead of a range (validator changed or Range ignored); starting again from byte 0");
                    dl.truncate(file, part).map_err(Attempt::Fatal)?;
                }
                let total = header("content-length").and_then(|v| v.parse::<u64>().ok());
                let new_state = DownloadState {
                    url: asset.url.clone(),
                    etag: etag.clone(),
                    last_modified: header("last-modified"),
                    total,
                };
                self.store
                    .put_download_state(id, &new_state)
                    .map_err(|e| Attempt::Fatal(store_step(Step::Downloading, &e)))?;
                *state = Some(new_state);
                total
            }
            (416, _) => {
                dl.truncate(file, part).map_err(Attempt::Fatal)?;
                *state = None;
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
                    format!("server answered {status} for {}", asset.url),
                )));
            }
        };
        self.stream(id, response, part, file, dl, total, limit, rep)
    }

    /// Copies a response body onto the end of the part file, hashing as it goes.
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        id: &str,
        response: ureq::http::Response<ureq::Body>,
        part: &Path,
        file: &mut File,
        dl: &mut Download,
        total: Option<u64>,
        limit: u64,
        rep: &mut Reporter<'_>,
    ) -> Result<(), Attempt> {
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
        if let Some(t) = total {
            if t > limit {
                return Err(too_large(t));
            }
            self.check_space(part, t.saturating_sub(dl.have))?;
        }
        file.seek(SeekFrom::Start(dl.have))
            .map_err(|e| Attempt::Fatal(io_step(Step::Downloading, part, &e)))?;
        rep.bytes(dl.have, total, true);
        let mut body = response.into_body().into_reader();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Attempt::Retry(describe_read_error(
                        &e,
                        self.cfg.stall_timeout,
                        dl.have,
                        total,
                    )));
                }
            };
            if dl.have + n as u64 > limit {
                return Err(too_large(dl.have + n as u64));
            }
            file.write_all(&buf[..n])
                .map_err(|e| Attempt::Fatal(io_step(Step::Downloading, part, &e)))?;
            dl.hasher.update(&buf[..n]);
            dl.have += n as u64;
            dl.hashed = dl.have;
            rep.bytes(dl.have, total, false);
        }
        rep.bytes(dl.have, total, true);
        match total {
            Some(t) if dl.have < t => Err(Attempt::Retry(format!(
                "connection closed after {} of {t} bytes",
                dl.have
            ))),
            Some(t) if dl.have > t => {
                log::warn!(target: "download-manager", "{id}: received {} bytes, more than the announced {t}", dl.have);
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

struct Downloaded {
    digest: [u8; 32],
    len: u64,
    resumed: bool,
}

/// The part file as the job sees it: its length and a hash of its first `hashed` bytes.
struct Download {
    have: u64,
    hasher: Sha256,
    hashed: u64,
    resumed: bool,
}

impl Download {
    fn truncate(&mut self, file: &mut File, part: &Path) -> Result<(), StepError> {
        file.set_len(0)
            .map_err(|e| io_step(Step::Downloading, part, &e))?;
        self.have = 0;
        self.hasher = Sha256::new();
        self.hashed = 0;
        Ok(())
    }

    /// Hashes the bytes already on disk: needed once after an agent restart, never otherwise.
    fn rehash(&mut self, file: &mut File, part: &Path) -> Result<(), StepError> {
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io_step(Step::Downloading, part, &e))?;
        let mut hasher = Sha256::new();
        let copied = std::io::copy(
            &mut (&mut *file).take(self.have),
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

/// Throttles progress to the waiting installs: at most every 100 ms, and always on a change
/// of phase.
pub(crate) struct Reporter<'a> {
    tx: &'a watch::Sender<FetchState>,
    last: Option<Instant>,
    bytes: u64,
    total: Option<u64>,
}

impl<'a> Reporter<'a> {
    fn new(tx: &'a watch::Sender<FetchState>) -> Reporter<'a> {
        Reporter {
            tx,
            last: None,
            bytes: 0,
            total: None,
        }
    }

    fn phase(&mut self, phase: Phase, bytes: u64, total: Option<u64>) {
        self.bytes = bytes;
        self.total = total;
        self.last = Some(Instant::now());
        self.tx.send_modify(|s| {
            s.phase = phase;
            s.bytes = bytes;
            s.total = total;
        });
    }

    fn bytes(&mut self, bytes: u64, total: Option<u64>, force: bool) {
        self.bytes = bytes;
        self.total = total;
        if !force && self.last.is_some_and(|t| t.elapsed() < PROGRESS_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        self.tx.send_modify(|s| {
            s.bytes = bytes;
            s.total = total;
        });
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path)?, &mut HashWriter(&mut hasher))?;
    Ok(hasher.finalize().into())
}

/// chmod 0755, fsync, rename over the destination, fsync the directory.
fn install_file(staged: &Path, dest: &Path) -> std::io::Result<()> {
    let f = File::open(staged)?;
    f.set_permissions(fs::Permissions::from_mode(0o755))?;
    f.sync_all()?;
    fs::rename(staged, dest)?;
    if let Some(dir) = dest.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
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

fn io_step(step: Step, path: &Path, e: &std::io::Error) -> StepError {
    let code = if e.raw_os_error() == Some(nix::libc::ENOSPC) {
        Code::DiskFull
    } else {
        Code::IoError
    };
    StepError::new(step, code, format!("{}: {e}", path.display()))
}

fn store_step(step: Step, e: &crate::store::StoreError) -> StepError {
    StepError::new(step, Code::StateError, e.to_string())
}

/// Directories of one artifact.
pub(crate) struct ArtifactDirs {
    pub download: PathBuf,
    pub bin: PathBuf,
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
