//! The install pipeline: its stages in order, the task that runs them for one instance, and
//! the fetch and provision stages (configure and start are in `lifecycle`).

use std::sync::Arc;

use crate::catalogue::Feature;
use crate::code::Code;
use crate::events::ProgressStatus;
use crate::store::{Artifact, Instance, Status, Step, StoreError};
use crate::vif;

use super::fetch::{ArtifactKey, FetchRequest, FetchState, Phase};
use super::{Installer, StepError, blocking};

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

impl Installer {
    /// Continues every install an earlier run left unfinished.
    pub(crate) fn resume_interrupted(self: &Arc<Self>) -> Result<usize, StoreError> {
        let pending = self.store.instances_where(|i| i.status.is_resumable())?;
        for inst in &pending {
            log::info!(target: "download-manager", "instance {} was {} when the agent stopped; continuing", inst.id, inst.status.as_str());
            self.spawn_pipeline(inst.id.clone());
        }
        Ok(pending.len())
    }

    pub(super) fn spawn_pipeline(self: &Arc<Self>, id: String) {
        let this = Arc::clone(self);
        crate::util::spawn(async move { this.run_pipeline(&id).await });
    }

    pub(super) async fn run_pipeline(self: &Arc<Self>, id: &str) {
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
    pub(super) async fn fetch_stage(
        &self,
        inst: &Instance,
        feature: &Feature,
    ) -> Result<Instance, StepError> {
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
    pub(super) async fn fetch_artifact(
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
    pub(super) async fn provision_stage(&self, inst: &Instance) -> Result<Instance, StepError> {
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
}
