//! The install flow: from `installFeature` to a verified binary in place, a provisioned
//! interface, a checked config and a supervised, healthy process.
//!
//! The flow is a list of stages (`PIPELINE`) run in order by one task per instance. Every
//! status change goes through `Installer::transition`, which persists first and publishes
//! second. A stage that fails leaves the instance `FAILED` with the step, a code and a
//! message; at agent start, instances left mid-flow continue where their files say they are.
//!
//! Where things are: `request` (installFeature checked and recorded), `pipeline` (the stages
//! and their runner), `fetch/` (download, verify, stage a binary), `lifecycle` (service user,
//! dirs, config, start/stop/restart), `update` (updateInstance and its rollback),
//! `uninstall`, `layout` (paths under the data dir); this file holds the state machine
//! (`transition`, `fail`, progress) that they all go through.

pub(crate) mod archive;
pub(crate) mod checksums;
pub(crate) mod elf;
mod fetch;
mod layout;
mod lifecycle;
pub(crate) mod package;
mod pipeline;
mod request;
mod subscription;
mod uninstall;
mod update;
pub(crate) mod updates;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::catalogue::{Catalogue, Feature};
use crate::code::Code;
use crate::events::{Bus, EventKind, Progress, ProgressStatus};
use crate::routing::Routing;
use crate::store::{Instance, Status, Step, Store, StoreError};
use crate::supervisor::{Outcome, Supervisor};
use crate::trust::TrustError;
use crate::util::{Locked, RwLocked};
use crate::vif::InterfaceFactory;
use fetch::Downloads;
pub(crate) use layout::Layout;
pub(crate) use request::InstallRequest;
pub(crate) use subscription::servers;

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

/// What the installer is told: where the catalogue comes from (it reloads it), how downloads
/// are made and trusted, and how services are run.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub feed: crate::trust::Feed,
    pub supervisor: crate::supervisor::Settings,
    pub routing: crate::routing::Settings,
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
    pub routing: Arc<Routing>,
    pub supervisor: Arc<Supervisor>,
    /// Starts waiting for their first health verdict.
    pending_starts: Mutex<HashMap<String, tokio::sync::oneshot::Sender<Outcome>>>,
    /// Latest progress per instance, for subscribers that arrive mid-install.
    progress: Mutex<HashMap<String, Progress>>,
    /// What update checks found.
    found: Mutex<updates::Found>,
    /// Held while artifacts are collected, and while a record starts using a version (a new
    /// instance, an update's target), so the collector never deletes a version in the moment
    /// between its look at the instances and its delete.
    artifacts_gate: tokio::sync::Mutex<()>,
    /// Held by a change of servers (refresh, `selectOutbound`) for its whole run, and by
    /// start, stop, update and uninstall requests while they check and change the status:
    /// neither sees the other's status half-changed.
    ops_gate: tokio::sync::Mutex<()>,
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
            routing: Arc::new(Routing::new(
                store.clone(),
                bus.clone(),
                Arc::clone(&interfaces),
                cfg.routing.clone(),
            )),
            interfaces,
            supervisor,
            pending_starts: Mutex::new(HashMap::new()),
            downloads: Arc::new(Downloads::new(
                store.clone(),
                layout.clone(),
                cfg.feed.http.clone(),
                cfg.feed.policy.clone(),
                cfg.feed.github.clone(),
            )),
            store,
            bus,
            catalogue: std::sync::RwLock::new(Arc::new(catalogue)),
            reloading: tokio::sync::Mutex::new(()),
            config: cfg,
            layout,
            progress: Mutex::new(HashMap::new()),
            artifacts_gate: tokio::sync::Mutex::new(()),
            ops_gate: tokio::sync::Mutex::new(()),
            found: Mutex::new(updates::Found::default()),
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
    pub(crate) async fn reload_catalogue(&self) -> Result<Arc<Catalogue>, TrustError> {
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
        // Newer versions update checks found stay offered, rendered again from the fresh
        // catalogue's entry (a feed that dropped the feature or its upstream drops them too).
        let fresh = self.discovered().into_iter().fold(fresh, |c, found| {
            let again = c
                .feature(&found.id)
                .and_then(|f| Some(f.upstream.as_ref()?.render(f, &found.version)));
            match again {
                Some(f) => Arc::new(c.with(f)),
                None => c,
            }
        });
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
        self.transition_dyn(id, to, reason, Box::new(change)).await
    }

    /// `transition`'s body, once for every kind of change (not one copy per call site).
    async fn transition_dyn(
        &self,
        id: &str,
        to: Status,
        reason: Option<&str>,
        change: Box<dyn FnOnce(&mut Instance) + Send>,
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
            .map_err(|e| refuse(e.code(), e.to_string()))?;
        log::warn!(target: "api", "pins of {feature} {} cleared on request ({n} removed)", version.unwrap_or("(all versions)"));
        Ok(n)
    }
}

/// Runs blocking work (redb commits with fsync) off the runtime thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    crate::util::blocking(f).await
}
