//! The install flow: from `installFeature` to a verified binary in place, a provisioned
//! interface, a checked config and a supervised, healthy process.
//!
//! The flow is a list of stages (`PIPELINE`) run in order by one task per instance. Every
//! status change goes through `Installer::transition`, which persists first and publishes
//! second. A stage that fails leaves the instance `FAILED` with the step, a code and a
//! message; at agent start, instances left mid-flow continue where their files say they are.

pub(crate) mod archive;
pub(crate) mod checksums;
pub(crate) mod elf;
mod fetch;
mod service;
mod update;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::catalogue::{Catalogue, Feature};
use crate::code::Code;
use crate::events::{Bus, EventKind, Progress, ProgressStatus};
use crate::ids::{self, LOCAL_ROUTER};
use crate::platform;
use crate::store::{Artifact, Instance, Status, Step, Store, StoreError};
use crate::supervisor::{Outcome, Supervisor};
use crate::util;
use crate::util::{Locked, RwLocked};
use crate::vif::{self, InterfaceFactory};
use fetch::{ArtifactDirs, ArtifactKey, Downloads, FetchRequest, FetchState, Phase};

/// A stage of the install flow. A new stage is added here; the runner and the recovery logic
/// stay as they are.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Download, verify and put the binary in place (statuses DOWNLOADING, VERIFYING,
    /// INSTALLING).
    Fetch,
    /// Give the instance its VLAN, address, routing table and (Linux) network namespace
    /// (status PROVISIONING), when its router has interfaces.
    Provision,
    /// Service user, directories, the generated config and the service's own check of it
    /// (status CONFIGURING), for features that run.
    Configure,
    /// Hand the process to the supervisor and wait until it is healthy (status STARTING).
    Start,
}

impl Stage {
    /// Its failpoint name: `install.{name}` fires just before the stage runs.
    fn name(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Provision => "provision",
            Stage::Configure => "configure",
            Stage::Start => "start",
        }
    }

    fn step(self) -> Step {
        match self {
            Stage::Fetch => Step::Downloading,
            Stage::Provision => Step::Provisioning,
            Stage::Configure => Step::Configuring,
            Stage::Start => Step::Starting,
        }
    }
}

const PIPELINE: &[Stage] = &[
    Stage::Fetch,
    Stage::Provision,
    Stage::Configure,
    Stage::Start,
];

/// Why a step failed: the step, a stable code for clients, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StepError {
    pub step: Step,
    pub code: Code,
    pub message: String,
}

impl StepError {
    pub(crate) fn new(step: Step, code: Code, message: String) -> StepError {
        StepError {
            step,
            code,
            message,
        }
    }

    /// The instance's record disappeared under a running step (it cannot: a store failure).
    pub(crate) fn vanished(step: Step) -> StepError {
        StepError::new(step, Code::StateError, "instance record vanished".into())
    }
}

/// A refused request, reported to the API client with `code` in `extensions.code`.
#[derive(Debug, Clone)]
pub(crate) struct RequestError {
    pub code: Code,
    pub message: String,
}

fn refuse(code: Code, message: impl Into<String>) -> RequestError {
    RequestError {
        code,
        message: message.into(),
    }
}

/// `INVALID_STATE`: what the instance is, and `hint` (what it must be instead).
fn wrong_state(inst: &Instance, hint: &str) -> RequestError {
    refuse(
        Code::InvalidState,
        format!("instance {} is {}{hint}", inst.id, inst.status.as_str()),
    )
}

impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => refuse(Code::NotFound, "no such instance"),
            other => refuse(Code::StateError, other.to_string()),
        }
    }
}

/// Paths under the data directory. Every path the agent writes is made here.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    base: PathBuf,
}

impl Layout {
    pub(crate) fn new(base: PathBuf) -> Layout {
        Layout { base }
    }

    pub(crate) fn state_db(&self) -> PathBuf {
        self.base.join("state.redb")
    }

    /// `{base}/features/{feature}/{version}`: binaries per version, so an update can roll back.
    fn feature_version(&self, feature: &str, version: &str) -> PathBuf {
        self.features_dir().join(feature).join(version)
    }

    fn artifact(&self, feature: &str, version: &str) -> ArtifactDirs {
        let dir = self.feature_version(feature, version);
        ArtifactDirs {
            download: dir.join("download"),
            bin: dir.join("bin"),
        }
    }

    fn features_dir(&self) -> PathBuf {
        self.base.join("features")
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.instances_dir().join(id)
    }

    fn instances_dir(&self) -> PathBuf {
        self.base.join("instances")
    }

    /// An empty directory, root's: each service's root file system is mounted on it inside
    /// the service's own mount namespace (the host never sees anything there).
    pub(crate) fn sandbox_root(&self) -> PathBuf {
        self.base.join("rootfs")
    }

    /// Sets the modes that keep services out of what is not theirs, for systems where they
    /// share the agent's view of the file system: the data dir and `instances/` can be
    /// passed through but not listed, the state and the catalogue copies are root's alone.
    pub(crate) fn protect(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let mode =
            |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        for (dir, m) in [
            (self.base.clone(), 0o711),
            (self.instances_dir(), 0o711),
            (self.features_dir(), 0o755),
            (self.base.join("catalogue"), 0o700),
            (self.sandbox_root(), 0o700),
        ] {
            match std::fs::DirBuilder::new().mode(m).create(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => mode(&dir, m)?,
            }
        }
        Ok(())
    }
}

/// What the installer is told: where the catalogue comes from (it reloads it), how downloads
/// are made and trusted, and how services are run.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub feed: crate::trust::Feed,
    pub supervisor: crate::supervisor::Settings,
}

pub(crate) struct InstallRequest {
    pub feature_id: String,
    pub router_id: String,
    pub name: String,
    pub settings: Option<Value>,
}

pub(crate) struct Installer {
    pub store: Store,
    pub bus: Bus,
    /// Swapped whole by `reload_catalogue`; work in flight keeps the `Feature` it cloned.
    catalogue: std::sync::RwLock<Arc<Catalogue>>,
    /// One reload at a time, so an older read never replaces a newer one.
    reloading: tokio::sync::Mutex<()>,
    /// What the catalogue is (re)loaded with, and how services are run.
    config: Settings,
    layout: Layout,
    downloads: Arc<Downloads>,
    pub interfaces: Arc<InterfaceFactory>,
    pub supervisor: Arc<Supervisor>,
    /// Starts waiting for their first health verdict.
    pending_starts: Mutex<HashMap<String, tokio::sync::oneshot::Sender<Outcome>>>,
    /// Latest progress per instance, for subscribers that arrive mid-install.
    progress: Mutex<HashMap<String, Progress>>,
    /// Held while artifacts are collected, and while a record starts using a version (a new
    /// instance, an update's target), so the collector never deletes a version in the moment
    /// between its look at the instances and its delete.
    artifacts_gate: tokio::sync::Mutex<()>,
}

impl Installer {
    pub(crate) fn new(
        store: Store,
        bus: Bus,
        catalogue: Catalogue,
        layout: Layout,
        cfg: Settings,
        interfaces: Arc<InterfaceFactory>,
        supervisor: Arc<Supervisor>,
    ) -> Installer {
        Installer {
            interfaces,
            supervisor,
            pending_starts: Mutex::new(HashMap::new()),
            downloads: Arc::new(Downloads::new(
                store.clone(),
                layout.clone(),
                cfg.feed.http.clone(),
                cfg.feed.policy.clone(),
            )),
            store,
            bus,
            catalogue: std::sync::RwLock::new(Arc::new(catalogue)),
            reloading: tokio::sync::Mutex::new(()),
            config: cfg,
            layout,
            progress: Mutex::new(HashMap::new()),
            artifacts_gate: tokio::sync::Mutex::new(()),
        }
    }

    /// The definition of `version` of an instance's feature: the catalogue's, else the one
    /// kept with the instance when the catalogue no longer lists that version.
    pub(crate) fn feature_for(&self, inst: &Instance, version: &str) -> Option<Feature> {
        self.catalogue()
            .feature_version(&inst.feature_id, version)
            .cloned()
            .or_else(|| inst.feature.clone().filter(|f| f.version == version))
    }

    /// The instance `id`, or `NOT_FOUND`.
    pub(crate) fn existing(&self, id: &str) -> Result<Instance, RequestError> {
        self.store
            .instance(id)?
            .ok_or_else(|| refuse(Code::NotFound, format!("no instance {id}")))
    }

    /// The catalogue in use now.
    pub(crate) fn catalogue(&self) -> Arc<Catalogue> {
        Arc::clone(&self.catalogue.read_locked())
    }

    /// Reads the catalogue again from its source under the trust policy. A catalogue that is
    /// refused (signature, serial, content) or unreachable changes nothing: the one in use
    /// stays and the error says why. Running instances are not touched; installs and updates
    /// already under way finish with the feature they started with.
    pub(crate) async fn reload_catalogue(&self) -> Result<Arc<Catalogue>, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let (feed, store, base) = (
            self.config.feed.clone(),
            self.store.clone(),
            self.layout.base.clone(),
        );
        let fresh = blocking(move || crate::trust::fresh_catalogue(&feed, &store, &base))
            .await
            .map(Arc::new)
            .inspect_err(|e| {
                log::error!(target: "api", "catalogue reload refused, keeping the one in use: {e}");
            })?;
        *self.catalogue.write_locked() = Arc::clone(&fresh);
        log::info!(target: "api", "catalogue reloaded: {} (serial {}, {} features)", fresh.source, fresh.serial, fresh.features.len());
        self.bus.publish(
            None,
            EventKind::CatalogueReloaded {
                source: fresh.source.clone(),
                serial: fresh.serial,
                signed_by: fresh.signed_by.clone(),
                features: fresh.features.len(),
            },
        );
        Ok(fresh)
    }

    /// Validates the request, records the instance as `QUEUED` and starts its install.
    /// Returns before any download starts.
    pub(crate) async fn install(
        self: &Arc<Self>,
        req: InstallRequest,
    ) -> Result<Instance, RequestError> {
        if !ids::is_instance_name(&req.name) {
            return Err(refuse(
                Code::InvalidName,
                format!(
                    "name {:?} must be 1-16 characters of a-z, 0-9 and '-', starting with a letter or digit",
                    req.name
                ),
            ));
        }
        let catalogue = self.catalogue();
        let feature = catalogue.feature(&req.feature_id).ok_or_else(|| {
            refuse(
                Code::UnknownFeature,
                format!(
                    "feature {:?} is not in the catalogue ({})",
                    req.feature_id, catalogue.source
                ),
            )
        })?;
        if req.router_id != LOCAL_ROUTER {
            let Some(router) = self.interfaces.router(&req.router_id) else {
                let known: Vec<&str> = std::iter::once(LOCAL_ROUTER)
                    .chain(
                        self.interfaces
                            .routers()
                            .map(|r| r.id.as_str())
                            .filter(|id| *id != LOCAL_ROUTER),
                    )
                    .collect();
                return Err(refuse(
                    Code::UnknownRouter,
                    format!(
                        "router {:?} is not configured (known: {})",
                        req.router_id,
                        known.join(", ")
                    ),
                ));
            };
            let id = router.id.clone();
            let factory = Arc::clone(&self.interfaces);
            blocking(move || {
                factory
                    .router(&id)
                    .map_or(Ok(()), vif::Router::check_reachable)
            })
            .await
            .map_err(|e| {
                refuse(
                    Code::UnreachableRouter,
                    format!("router {}: {e}", req.router_id),
                )
            })?;
        }
        let arch = platform::host_arch();
        if feature.asset(arch).is_none() {
            return Err(refuse(
                Code::UnsupportedArch,
                format!(
                    "{} {} has no verified asset for {arch} in the catalogue ({})",
                    feature.id, feature.version, catalogue.source
                ),
            ));
        }
        let settings = match req.settings {
            None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
            Some(v @ Value::Object(_)) => v,
            Some(_) => {
                return Err(refuse(
                    Code::InvalidSettings,
                    "settings must be a JSON object",
                ));
            }
        };
        feature.check_settings(&settings).map_err(|e| {
            refuse(
                Code::InvalidSettings,
                format!("{e} (see features {{ settingsSchema }})"),
            )
        })?;
        let id = util::random_hex(8).map_err(|e| refuse(Code::Internal, e.to_string()))?;
        let inst = Instance {
            version: feature.version.clone(),
            feature: Some(feature.for_arch(arch)),
            arch: arch.to_owned(),
            settings,
            ..Instance::queued(id, feature.id.clone(), req.router_id, req.name)
        };
        let store = self.store.clone();
        let record = inst.clone();
        let gate = self.artifacts_gate.lock().await;
        let inserted = blocking(move || store.insert_instance(&record)).await;
        drop(gate);
        inserted.map_err(|e| match e {
            StoreError::NameTaken => refuse(
                Code::NameTaken,
                format!(
                    "{} already has an instance named {:?}",
                    inst.feature_id, inst.name
                ),
            ),
            other => other.into(),
        })?;
        log::info!(target: "api", "instance {} ({} {:?}) queued", inst.id, inst.feature_id, inst.name);
        self.report(&inst, ProgressStatus::Queued, 0, None);
        self.spawn_pipeline(inst.id.clone());
        Ok(inst)
    }

    /// Continues every install an earlier run left unfinished.
    pub(crate) fn resume_interrupted(self: &Arc<Self>) -> Result<usize, StoreError> {
        let pending = self.store.instances_where(|i| i.status.is_resumable())?;
        for inst in &pending {
            log::info!(target: "download-manager", "instance {} was {} when the agent stopped; continuing", inst.id, inst.status.as_str());
            self.spawn_pipeline(inst.id.clone());
        }
        Ok(pending.len())
    }

    fn spawn_pipeline(self: &Arc<Self>, id: String) {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.run_pipeline(&id).await });
    }

    async fn run_pipeline(self: &Arc<Self>, id: &str) {
        let Ok(Some(mut inst)) = self.store.instance(id) else {
            log::error!(target: "api", "instance {id} vanished before its install ran");
            return;
        };
        let Some(feature) = self.feature_for(&inst, &inst.version) else {
            let e = StepError::new(
                Step::Downloading,
                Code::CatalogueChanged,
                format!(
                    "the catalogue no longer offers {} {}; install again",
                    inst.feature_id, inst.version
                ),
            );
            self.fail(&inst, &e).await;
            return;
        };
        for stage in PIPELINE {
            if let Err(m) = crate::failpoint::hit(&format!("install.{}", stage.name())) {
                self.fail(&inst, &StepError::new(stage.step(), Code::Injected, m))
                    .await;
                return;
            }
            let result = match stage {
                Stage::Fetch => self.fetch_stage(&inst, &feature).await,
                Stage::Provision => self.provision_stage(&inst).await,
                Stage::Configure if feature.runs() => self.configure_stage(&inst, &feature).await,
                Stage::Start if feature.runs() => self.start_stage(&inst, &feature).await,
                Stage::Configure | Stage::Start => Ok(inst.clone()),
            };
            match result {
                Ok(updated) => inst = updated,
                Err(e) => {
                    self.fail(&inst, &e).await;
                    return;
                }
            }
        }
        if let Err(m) = crate::failpoint::hit("install.finish") {
            self.fail(&inst, &StepError::new(Step::Starting, Code::Injected, m))
                .await;
            return;
        }
        let (status, reason) = if feature.runs() {
            (Status::Running, "service healthy")
        } else {
            (Status::Installed, "binary verified and in place")
        };
        if let Some(done) = self
            .transition(&inst.id, status, Some(reason), |_| {})
            .await
        {
            self.announce_installed(&done);
        }
    }

    /// Download, verification and placement, shared with every other install of the same
    /// artifact. Instance statuses follow the job's phases.
    async fn fetch_stage(&self, inst: &Instance, feature: &Feature) -> Result<Instance, StepError> {
        let (artifact, status, bytes) = self.fetch_artifact(inst, feature, true).await?;
        let updated = self
            .transition(&inst.id, status, None, move |i| {
                i.sha256 = Some(artifact.sha256.clone());
                i.binary_path = Some(artifact.binary_path.clone());
                i.verified_by = Some(artifact.verified_by.clone());
            })
            .await
            .ok_or_else(|| StepError::vanished(Step::Installing))?;
        self.report(&updated, ProgressStatus::Completed, bytes, Some(bytes));
        Ok(updated)
    }

    /// Gets `feature`'s verified binary in place (joining a running download of it), reporting
    /// progress for `inst`; with `track_status` the instance's status follows the job's phases
    /// (an install), without it the status stays what it is (an update).
    async fn fetch_artifact(
        &self,
        inst: &Instance,
        feature: &Feature,
        track_status: bool,
    ) -> Result<(Artifact, Status, u64), StepError> {
        let asset = feature.asset(&inst.arch).cloned().ok_or_else(|| {
            StepError::new(
                Step::Downloading,
                Code::UnsupportedArch,
                format!(
                    "the catalogue has no {} asset for {}",
                    inst.arch, feature.id
                ),
            )
        })?;
        let mut rx = self.downloads.fetch(FetchRequest {
            key: ArtifactKey {
                feature: feature.id.clone(),
                version: feature.version.clone(),
                arch: inst.arch.clone(),
            },
            asset,
            binary: feature.binary.clone(),
        });
        let mut status = inst.status;
        loop {
            let state: FetchState = rx.borrow_and_update().clone();
            if track_status {
                let target = match state.phase {
                    Phase::Downloading => Status::Downloading,
                    Phase::Verifying => Status::Verifying,
                    Phase::Extracting => Status::Installing,
                };
                status = self.advance(&inst.id, status, target).await;
            }
            match state.outcome {
                Some(Ok(artifact)) => return Ok((artifact, status, state.bytes)),
                Some(Err(e)) => return Err(e),
                None => {}
            }
            let status_now = match state.phase {
                Phase::Downloading => ProgressStatus::Downloading,
                Phase::Verifying => ProgressStatus::Verifying,
                Phase::Extracting => ProgressStatus::Extracting,
            };
            self.report(inst, status_now, state.bytes, state.total);
            if rx.changed().await.is_err() {
                return Err(StepError::new(
                    Step::Downloading,
                    Code::Internal,
                    "the download job ended without a result".into(),
                ));
            }
        }
    }

    /// Creates the instance's interface on its router (nothing for a local router without
    /// interfaces). The factory rolls back whatever it made when a step fails.
    async fn provision_stage(&self, inst: &Instance) -> Result<Instance, StepError> {
        if self.interfaces.router(&inst.router_id).is_none() {
            return Ok(inst.clone());
        }
        let inst = self
            .transition(&inst.id, Status::Provisioning, None, |_| {})
            .await
            .ok_or_else(|| StepError::vanished(Step::Provisioning))?;
        let factory = Arc::clone(&self.interfaces);
        let owner = inst.clone();
        blocking(move || {
            factory.create(&vif::Owner {
                instance_id: &owner.id,
                feature_id: &owner.feature_id,
                name: &owner.name,
                router_id: &owner.router_id,
            })
        })
        .await
        .map_err(|e| StepError::new(Step::Provisioning, e.code(), e.to_string()))?;
        Ok(inst)
    }

    /// Moves the instance forward through the fetch statuses up to `target` (each one
    /// visible, even when the job went past it between two looks), or straight back when a
    /// download restarted.
    async fn advance(&self, id: &str, mut status: Status, target: Status) -> Status {
        const ORDER: [Status; 3] = [Status::Downloading, Status::Verifying, Status::Installing];
        while status != target {
            let next = if status < target {
                ORDER
                    .iter()
                    .copied()
                    .find(|s| *s > status)
                    .unwrap_or(target)
            } else {
                target
            };
            if self.transition(id, next, None, |_| {}).await.is_none() {
                break;
            }
            status = next;
        }
        status
    }

    /// The single way an instance's record changes: persist, then publish.
    async fn transition(
        &self,
        id: &str,
        to: Status,
        reason: Option<&str>,
        change: impl FnOnce(&mut Instance) + Send + 'static,
    ) -> Option<Instance> {
        let store = self.store.clone();
        let key = id.to_owned();
        let result = blocking(move || {
            store.update_instance(&key, |i| {
                i.status = to;
                change(i);
            })
        })
        .await;
        match result {
            Ok((before, after)) => {
                if before.status != after.status {
                    log::info!(target: "api", "instance {id}: {} -> {}", before.status.as_str(), after.status.as_str());
                    self.bus.publish(
                        Some(id),
                        EventKind::StatusChanged {
                            from: before.status,
                            to: after.status,
                            reason: reason.map(str::to_owned),
                        },
                    );
                }
                Some(after)
            }
            Err(e) => {
                log::error!(target: "api", "instance {id}: cannot record status {}: {e}", to.as_str());
                None
            }
        }
    }

    async fn fail(&self, inst: &Instance, e: &StepError) {
        log::warn!(target: "api", "instance {} failed at {}: {} ({})", inst.id, e.step.as_str(), e.message, e.code);
        let (step, code, message) = (e.step, e.code, e.message.clone());
        let Some(failed) = self
            .transition(&inst.id, Status::Failed, Some(&e.message), move |i| {
                i.failed_step = Some(step);
                i.error_code = Some(code.to_string());
                i.error = Some(message);
            })
            .await
        else {
            return;
        };
        let (bytes, total) = self
            .progress_of(&inst.id)
            .map_or((0, None), |p| (p.bytes_downloaded, p.total_bytes));
        let status = if e.code == Code::ChecksumMismatch {
            ProgressStatus::VerificationFailed
        } else {
            ProgressStatus::Failed
        };
        self.report(&failed, status, bytes, total);
        self.bus.publish(
            Some(&inst.id),
            EventKind::InstallFailed {
                step: e.step.as_str(),
                code: e.code.to_string(),
                error: e.message.clone(),
            },
        );
    }

    /// Publishes `service.install.progress` for one instance unless nothing changed.
    fn report(&self, inst: &Instance, status: ProgressStatus, bytes: u64, total: Option<u64>) {
        #[allow(clippy::cast_precision_loss)]
        let percent = match (status, total) {
            (ProgressStatus::Completed, _) => 100.0,
            (_, Some(t)) if t > 0 => ((bytes as f64 / t as f64) * 1000.0).round() / 10.0,
            _ => 0.0,
        };
        let p = Progress {
            instance_id: inst.id.clone(),
            feature_id: inst.feature_id.clone(),
            status,
            percent,
            bytes_downloaded: bytes,
            total_bytes: total,
        };
        {
            let mut map = self.progress.locked();
            if map.get(&inst.id) == Some(&p) {
                return;
            }
            map.insert(inst.id.clone(), p.clone());
        }
        self.bus
            .publish(Some(&inst.id), EventKind::InstallProgress(p));
    }

    /// The latest progress of an instance: what was last reported, else what its status says.
    pub(crate) fn progress_of(&self, id: &str) -> Option<Progress> {
        if let Some(p) = self.progress.locked().get(id) {
            return Some(p.clone());
        }
        let inst = self.store.instance(id).ok()??;
        let status = match inst.status {
            Status::Queued => ProgressStatus::Queued,
            Status::Downloading => ProgressStatus::Downloading,
            Status::Verifying => ProgressStatus::Verifying,
            Status::Installing => ProgressStatus::Extracting,
            Status::Failed
                if inst.error_code.as_deref() == Some(Code::ChecksumMismatch.as_str()) =>
            {
                ProgressStatus::VerificationFailed
            }
            Status::Failed => ProgressStatus::Failed,
            _ => ProgressStatus::Completed,
        };
        Some(Progress {
            instance_id: inst.id,
            feature_id: inst.feature_id,
            status,
            percent: if status == ProgressStatus::Completed {
                100.0
            } else {
                0.0
            },
            bytes_downloaded: 0,
            total_bytes: None,
        })
    }

    /// `unpinFeature`: forgets the first-verified digests of a feature (one version or all),
    /// so that a changed artifact can be installed. Logged: it weakens a protection.
    pub(crate) fn unpin(
        &self,
        feature: &str,
        version: Option<&str>,
    ) -> Result<usize, RequestError> {
        let n = crate::trust::unpin(&self.store, feature, version)
            .map_err(|e| refuse(Code::StateError, e))?;
        log::warn!(target: "api", "pins of {feature} {} cleared on request ({n} removed)", version.unwrap_or("(all versions)"));
        Ok(n)
    }

    /// Removes an instance that is not mid-install: its record, its directory, and the
    /// feature version's files when no other instance uses them.
    pub(crate) async fn uninstall(&self, id: &str) -> Result<(), RequestError> {
        let inst = self.existing(id)?;
        if !matches!(
            inst.status,
            Status::Installed | Status::Failed | Status::Running | Status::Stopped
        ) {
            return Err(wrong_state(
                &inst,
                "; it can be uninstalled once it is INSTALLED, RUNNING, STOPPED or FAILED",
            ));
        }
        self.transition(id, Status::Uninstalling, Some("uninstall requested"), |i| {
            i.desired_running = false;
        })
        .await;
        self.finish_uninstall(inst).await
    }

    /// Agent start: uninstalls an earlier run began are finished (each step is idempotent).
    pub(crate) async fn resume_uninstalls(&self) -> Result<usize, StoreError> {
        let pending = self
            .store
            .instances_where(|i| i.status == Status::Uninstalling)?;
        for inst in &pending {
            log::info!(target: "api", "instance {} was being uninstalled when the agent stopped; finishing", inst.id);
            let id = inst.id.clone();
            self.kill_leftover(inst);
            if let Err(e) = self.finish_uninstall(inst.clone()).await {
                log::error!(target: "api", "instance {id}: cannot finish its uninstall: {}", e.message);
            }
        }
        Ok(pending.len())
    }

    /// Process, interface, files, record; in that order, each step safe to repeat.
    async fn finish_uninstall(&self, inst: Instance) -> Result<(), RequestError> {
        let id = inst.id.as_str();
        // The process first (SIGTERM, grace, SIGKILL, cgroup), then the network, then files.
        self.supervisor.remove(id).await;
        self.kill_leftover(&inst);
        crate::failpoint::hit("uninstall.stopped").map_err(|m| refuse(Code::Injected, m))?;
        let factory = Arc::clone(&self.interfaces);
        let owner = inst.id.clone();
        blocking(move || factory.remove(&owner))
            .await
            .map_err(|e| {
                refuse(
                    e.code(),
                    format!("cannot remove the interface of {id}: {e}"),
                )
            })?;
        crate::failpoint::hit("uninstall.unprovisioned").map_err(|m| refuse(Code::Injected, m))?;
        let store = self.store.clone();
        let layout = self.layout.clone();
        let record = inst.clone();
        blocking(move || -> Result<(), StoreError> {
            // Files before the record: a crash in between leaves UNINSTALLING to finish.
            remove_dir(&layout.instance_dir(&record.id));
            if let Some(uid) = record.uid {
                store.release_uid(uid)?;
            }
            store.remove_instance(&record.id)
        })
        .await?;
        // The feature version's files go when no other instance uses them.
        let removed = self.collect_artifacts().await;
        let shared = !removed
            .iter()
            .any(|(f, v)| *f == inst.feature_id && *v == inst.version);
        self.progress.locked().remove(id);
        log::info!(target: "api", "instance {id} ({} {:?}) uninstalled{}", inst.feature_id, inst.name, if shared { "; binary kept for other instances" } else { "" });
        self.bus.publish(
            Some(id),
            EventKind::Uninstalled {
                feature_id: inst.feature_id.clone(),
                binary_removed: !shared,
            },
        );
        Ok(())
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!(target: "api", "cannot remove {}: {e}", dir.display());
    }
}

/// Runs blocking work (redb commits with fsync) off the runtime thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
