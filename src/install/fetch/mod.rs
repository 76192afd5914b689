//! The download manager: gets one verified binary per feature+version+arch into place.
//!
//! Single-flight: every install of the same artifact watches the same job, so one GET goes on
//! the wire however many instances wait for it. A job streams to `{file}.part`, hashing as it
//! writes; it resumes with `Range` + `If-Range` after a dropped connection, a stall or an
//! agent restart (the validator and total are kept in redb, the bytes are the `.part` file).
//! Nothing becomes the binary until its hash matched, the archive was unpacked safely and its
//! ELF header fits this machine; then one `rename` puts it in place.
//!
//! Here: the single-flight registry of jobs and the job itself (`run`); `transfer` (HTTP,
//! resume, retries), `verify` (digests, checksums, signatures, pins), `staging` (extract,
//! ELF check, rename).

mod staging;
mod transfer;
mod verify;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::elf::{self, Machine};
use super::{Layout, StepError};
use crate::catalogue::{ArchiveKind, Asset};
use crate::code::Code;
use crate::http_client::Settings as HttpSettings;
use crate::store::{Artifact, Step, Store};
use crate::util::{self, Locked};

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
    agent: crate::http_client::LazyAgent,
    machine: Machine,
    jobs: Mutex<HashMap<String, watch::Receiver<FetchState>>>,
    /// Keys that may sign checksums files.
    trust: crate::trust::Policy,
    github: crate::github::Settings,
}

impl Downloads {
    pub(crate) fn new(
        store: Store,
        layout: Layout,
        cfg: HttpSettings,
        trust: crate::trust::Policy,
        github: crate::github::Settings,
    ) -> Downloads {
        Downloads {
            trust,
            github,
            agent: crate::http_client::LazyAgent::new(cfg.clone()),
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
        if let Some(names) = &req.asset.package {
            return self.run_package(req, names, rep);
        }
        let (expected, mut verified_by) = self.expected_digest(&req.asset)?;
        let pinned = self.check_pin(&id, &expected, &mut verified_by)?;
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
        let binary_sha256 = match self.stage_checked(req, &part, &staged, digest) {
            Ok(sha) => sha,
            Err(e) => {
                self.clear_state(&id)?;
                return Err(e);
            }
        };
        staging::install_file(&staged, &binary)
            .map_err(|e| io_step(Step::Installing, &binary, &e))?;
        if req.asset.archive != ArchiveKind::None {
            let _ = fs::remove_file(&part);
        }
        let artifact = Artifact {
            key: id.clone(),
            sha256: util::hex(&digest),
            binary_path: binary.to_string_lossy().into_owned(),
            binary_sha256: util::hex(&binary_sha256),
            verified_by,
            package: None,
        };
        self.store
            .put_artifact(&artifact)
            .map_err(|e| store_step(Step::Installing, &e))?;
        if !pinned {
            crate::trust::pin(&self.store, &id, &artifact.sha256)
                .map_err(|e| StepError::new(Step::Installing, e.code(), e.to_string()))?;
        }
        self.clear_state(&id)?;
        log::info!(target: "download-manager", "{id}: {} verified ({}) and installed at {}", req.asset.file_name(), artifact.verified_by, artifact.binary_path);
        Ok(artifact)
    }

    /// A system package: the manager this system has installs it (unless it is installed
    /// already), then its binary is checked like a download's. A binary that cannot run here
    /// takes the package away again when the agent installed it.
    fn run_package(
        &self,
        req: &FetchRequest,
        names: &std::collections::BTreeMap<String, String>,
        rep: &mut Reporter<'_>,
    ) -> Result<Artifact, StepError> {
        use crate::install::package::{self, Manager};
        let id = req.key.id();
        let m = Manager::detect().ok_or_else(|| {
            StepError::new(
                Step::Downloading,
                Code::NoPackageManager,
                format!("{} comes from a system package, and this system has none of apk, opkg, apt-get", req.key.feature),
            )
        })?;
        let name = names.get(m.key()).ok_or_else(|| {
            StepError::new(
                Step::Downloading,
                Code::NoPackageManager,
                format!(
                    "the catalogue names no {} package for {} (only {})",
                    m.key(),
                    req.key.feature,
                    names.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        if !self.trust.package_allowed(name) {
            return Err(StepError::new(
                Step::Downloading,
                Code::PackageNotAllowed,
                format!(
                    "the catalogue asks for the {} package {name}, which [trust] packages does not allow (it would run its maintainer scripts as root)",
                    m.key()
                ),
            ));
        }
        rep.phase(Phase::Downloading, 0, None);
        let ensured = package::ensure(m, name)
            .map_err(|e| StepError::new(Step::Downloading, Code::PackageFailed, e))?;
        rep.phase(Phase::Verifying, 0, None);
        // Distributions disagree on bin or sbin (OpenWrt's tor is in /usr/sbin, Debian's in
        // /usr/bin): the catalogue's path first, then the same name in the other system
        // binary directories.
        let named = PathBuf::from(req.asset.path.as_deref().unwrap_or_default());
        let file = named
            .file_name()
            .map(std::ffi::OsStr::to_os_string)
            .unwrap_or_default();
        let binary = std::iter::once(named.clone())
            .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(|d| Path::new(d).join(&file)))
            .find(|p| p.is_file())
            .unwrap_or(named);
        let checked = elf::check_file(&binary, self.machine)
            .map_err(|m| StepError::new(Step::Verifying, Code::WrongArch, m))
            .and_then(|()| {
                elf::check_runtime(&binary)
                    .map_err(|m| StepError::new(Step::Verifying, Code::WrongAbi, m))
            })
            .and_then(|()| {
                verify::hash_file(&binary).map_err(|e| io_step(Step::Verifying, &binary, &e))
            })
            .and_then(|sha| {
                // The version directory is what artifact collection walks.
                let dirs = self.layout.artifact(&req.key.feature, &req.key.version);
                fs::create_dir_all(&dirs.bin)
                    .map_err(|e| io_step(Step::Installing, &dirs.bin, &e))?;
                let artifact = Artifact {
                    key: id.clone(),
                    sha256: util::hex(&sha),
                    binary_path: binary.to_string_lossy().into_owned(),
                    binary_sha256: util::hex(&sha),
                    verified_by: format!("package:{}:{name}={}", m.key(), ensured.version),
                    package: Some(crate::store::PackageRecord {
                        manager: m.key().into(),
                        name: name.clone(),
                        version: ensured.version.clone(),
                        installed_by_agent: ensured.installed_by_agent,
                    }),
                };
                self.store
                    .put_artifact(&artifact)
                    .map_err(|e| store_step(Step::Installing, &e))?;
                Ok(artifact)
            });
        if checked.is_err() && ensured.installed_by_agent {
            if let Err(e) = package::remove(m, name) {
                log::error!(target: "package-manager", "{id}: cannot remove {name} again: {e}");
            }
        }
        let artifact = checked?;
        log::info!(target: "download-manager", "{id}: {} from {} package {name} {} ({})", artifact.binary_path, m.key(), ensured.version, if ensured.installed_by_agent { "installed" } else { "already installed" });
        Ok(artifact)
    }

    /// The tag of the latest release of a feature's upstream repository.
    pub(crate) fn latest_tag(&self, owner: &str, repo: &str) -> Result<String, String> {
        crate::github::latest_tag(self.agent.get(), &self.github, owner, repo)
            .map_err(|e| e.to_string())
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
        match verify::hash_file(Path::new(&a.binary_path)) {
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

    fn clear_state(&self, id: &str) -> Result<(), StepError> {
        self.store
            .clear_download_state(id)
            .map_err(|e| store_step(Step::Downloading, &e))
    }
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
