//! `updateInstance`: moves an instance to another catalogue version without ever leaving the
//! user without a working service.
//!
//! Order: stage the new binary (download + verify, shared with installs), render the config
//! for it into a staged file and let the *new* binary check it, and only then stop the old
//! process, swap the config (the old one kept as `.prev`) and record the new version with the
//! old one in `previous`. The new process gets one chance to become healthy. Healthy: the old
//! binary is deleted when no other instance uses it. Anything failing after the swap: the old
//! config and record come back and the old version starts again, with the reason in `error`.
//!
//! A crash at any point leaves an `UPDATING` record whose `previous` says what to go back to;
//! `recover_updates` at agent start rolls it back the same way (the staged files tell how far
//! the swap got). Unreferenced binaries are collected by `collect_artifacts`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Installer, RequestError, StepError, blocking, refuse, wrong_state};
use crate::catalogue::Feature;
use crate::code::Code;
use crate::events::{EventKind, ProgressStatus};
use crate::failpoint;
use crate::store::{Instance, Previous, Status, Step};

/// `config.json` → `config.next.json` (the extension kept: some checkers go by it).
pub(super) fn staged(file: &Path, tag: &str) -> PathBuf {
    let name = file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let staged = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.{tag}.{ext}"),
        _ => format!("{name}.{tag}"),
    };
    file.with_file_name(staged)
}

fn rename(from: &Path, to: &Path) -> Result<(), StepError> {
    std::fs::rename(from, to).map_err(|e| {
        StepError::new(
            Step::Updating,
            Code::IoError,
            format!("{} -> {}: {e}", from.display(), to.display()),
        )
    })
}

fn injected(name: &str) -> Result<(), StepError> {
    failpoint::hit(name).map_err(|m| StepError::new(Step::Updating, Code::Injected, m))
}

impl Installer {
    /// Validates an update request, marks the instance `UPDATING` and runs the update in the
    /// background. Returns the instance as recorded.
    pub(crate) async fn update(
        self: &Arc<Self>,
        id: &str,
        version: &str,
    ) -> Result<Instance, RequestError> {
        let _no_server_change = self.ops_gate.lock().await;
        let inst = self.existing(id)?;
        let updatable = matches!(
            inst.status,
            Status::Running | Status::Stopped | Status::Installed
        ) || (inst.status == Status::Failed
            && matches!(
                inst.failed_step,
                Some(Step::Running | Step::Starting | Step::Updating)
            ));
        if !updatable {
            return Err(wrong_state(
                &inst,
                "; only a RUNNING, STOPPED, INSTALLED or crashed instance can be updated",
            ));
        }
        if inst.version == version {
            return Err(refuse(
                Code::AlreadyAtVersion,
                format!("instance {id} already runs {} {version}", inst.feature_id),
            ));
        }
        let catalogue = self.catalogue();
        let feature = catalogue
            .feature_version(&inst.feature_id, version)
            .ok_or_else(|| {
                refuse(
                    Code::UnknownVersion,
                    format!(
                        "the catalogue offers {} in {}; not {version:?}",
                        inst.feature_id,
                        catalogue.versions(&inst.feature_id).join(", ")
                    ),
                )
            })?;
        if feature.asset(&inst.arch).is_none() {
            return Err(refuse(
                Code::UnsupportedArch,
                format!("{} {version} has no asset for {}", feature.id, inst.arch),
            ));
        }
        feature.check_settings(&inst.settings).map_err(|e| {
            refuse(
                Code::InvalidSettings,
                format!(
                    "the instance's settings do not fit {} {version}: {e}",
                    feature.id
                ),
            )
        })?;
        let previous = Previous {
            version: inst.version.clone(),
            target: version.to_owned(),
            sha256: inst.sha256.clone(),
            binary_path: inst.binary_path.clone(),
            verified_by: inst.verified_by.clone(),
            status: inst.status,
        };
        let reason = format!("update {} -> {version} requested", inst.version);
        let gate = self.artifacts_gate.lock().await;
        let updating = self
            .transition(id, Status::Updating, Some(&reason), move |i| {
                i.previous = Some(previous);
            })
            .await;
        drop(gate);
        let updating =
            updating.ok_or_else(|| refuse(Code::StateError, "cannot record the update"))?;
        log::info!(target: "api", "instance {id}: {reason}");
        let this = Arc::clone(self);
        let (record, target) = (updating.clone(), feature.clone());
        crate::util::spawn(async move { this.run_update(record, target).await });
        Ok(updating)
    }

    async fn run_update(&self, inst: Instance, target: Feature) {
        let Some(prev) = inst.previous.clone() else {
            return;
        };
        let old = self.feature_for(&inst, &prev.version);
        let config = target
            .generator()
            .map(|g| self.instance_paths(&inst.id).config.join(g.file_name()));
        let mut stopped = false;
        let result = self
            .update_steps(&inst, &target, config.as_deref(), &mut stopped)
            .await;
        match result {
            Ok(done) => {
                let cleanup = config.as_deref().map(|c| staged(c, "prev"));
                blocking(move || {
                    if let Some(p) = cleanup {
                        let _ = std::fs::remove_file(p);
                    }
                })
                .await;
                self.collect_artifacts().await;
                log::info!(target: "api", "instance {}: updated {} -> {}", inst.id, prev.version, done.version);
                self.bus.publish(
                    Some(&inst.id),
                    EventKind::ServiceUpdated {
                        feature_id: inst.feature_id.clone(),
                        from: prev.version.clone(),
                        to: done.version.clone(),
                        sha256: done.sha256.clone().unwrap_or_default(),
                    },
                );
            }
            Err(e) => {
                self.roll_back(
                    &inst,
                    old.as_ref(),
                    stopped,
                    config.as_deref(),
                    &target.version,
                    &e,
                )
                .await;
            }
        }
    }

    /// Stage, check, swap, start. `stopped` tells the caller whether the old process was
    /// stopped (before that, a failure leaves it running untouched).
    async fn update_steps(
        &self,
        inst: &Instance,
        target: &Feature,
        config: Option<&Path>,
        stopped: &mut bool,
    ) -> Result<Instance, StepError> {
        let prev = inst.previous.clone().ok_or_else(|| {
            StepError::new(
                Step::Updating,
                Code::StateError,
                "no previous version recorded".into(),
            )
        })?;
        if let Some(config) = config.map(Path::to_path_buf) {
            // Leftovers of an earlier update that died after its swap: not ours to restore.
            blocking(move || {
                let _ = std::fs::remove_file(staged(&config, "prev"));
                let _ = std::fs::remove_file(staged(&config, "next"));
            })
            .await;
        }
        let (artifact, _, bytes) = self.fetch_artifact(inst, target, false).await?;
        self.report(inst, ProgressStatus::Completed, bytes, Some(bytes));
        injected("update.staged")?;
        if let (Some(config), Some(generator)) = (config, target.generator()) {
            let paths = self.instance_paths(&inst.id);
            let (ctx, _) = self.context(inst, &paths);
            let rendered = generator
                .render(&ctx, &super::subscription::render_settings(inst))
                .map_err(|e| StepError::new(Step::Configuring, Code::ConfigInvalid, e))?;
            let next = staged(config, "next");
            let text = rendered.text;
            let file = next.clone();
            let uid = inst.uid.ok_or_else(|| {
                StepError::new(
                    Step::Configuring,
                    Code::StateError,
                    "the instance has no service user".into(),
                )
            })?;
            blocking(move || super::lifecycle::write_config(&file, &text, uid)).await?;
            let args = super::lifecycle::check_args(target, generator, &next);
            let binary = PathBuf::from(&artifact.binary_path);
            self.check_config(inst, target, binary, args).await?;
        }
        injected("update.checked")?;
        // From here on the old version is not running: every failure rolls back.
        *stopped = true;
        self.supervisor.stop(&inst.id).await;
        if let Some(config) = config {
            let (cur, prevf, next) = (
                config.to_path_buf(),
                staged(config, "prev"),
                staged(config, "next"),
            );
            blocking(move || {
                if cur.exists() {
                    rename(&cur, &prevf)?;
                }
                rename(&next, &cur)
            })
            .await?;
        }
        injected("update.swapped")?;
        let version = target.version.clone();
        let updated = self
            .transition(&inst.id, Status::Updating, None, move |i| {
                i.version = version;
                i.sha256 = Some(artifact.sha256.clone());
                i.binary_path = Some(artifact.binary_path.clone());
                i.verified_by = Some(artifact.verified_by.clone());
                i.pid = None;
            })
            .await
            .ok_or_else(|| StepError::vanished(Step::Updating))?;
        injected("update.recorded")?;
        // A crash-looping service is started too: the new version may be the fix.
        let runs = target.runs()
            && (prev.status == Status::Running
                || (prev.status == Status::Failed && inst.desired_running));
        if runs {
            self.launch(&updated, target, Some(1)).await?;
        }
        injected("update.started")?;
        let status = if runs {
            Status::Running
        } else if target.runs() {
            Status::Stopped
        } else {
            Status::Installed
        };
        let reason = format!("updated to {}", target.version);
        let kept = target.for_arch(&inst.arch);
        self.transition(&inst.id, status, Some(&reason), move |i| {
            i.feature = Some(kept);
            i.previous = None;
            i.failed_step = None;
            i.error = None;
            i.error_code = None;
        })
        .await
        .ok_or_else(|| StepError::vanished(Step::Updating))
    }

    /// Puts the previous version back: config, record, and its process if it was running and
    /// the update had stopped it.
    async fn roll_back(
        &self,
        inst: &Instance,
        old: Option<&Feature>,
        stopped: bool,
        config: Option<&Path>,
        to_version: &str,
        e: &StepError,
    ) {
        let Some(prev) = inst.previous.clone() else {
            return;
        };
        log::warn!(target: "api", "instance {}: update to {to_version} failed at {}: {}; rolling back to {}", inst.id, e.step.as_str(), e.message, prev.version);
        if stopped {
            self.supervisor.stop(&inst.id).await;
            self.kill_leftover(inst);
        }
        if let Some(config) = config.map(Path::to_path_buf) {
            blocking(move || restore_config(&config)).await;
        }
        let message = format!(
            "update to {to_version} failed at {}: {}; rolled back to {}",
            e.step.as_str(),
            e.message,
            prev.version
        );
        let restored = prev.clone();
        let Some(back) = self
            .transition(&inst.id, Status::Updating, None, move |i| {
                i.version = restored.version;
                i.sha256 = restored.sha256;
                i.binary_path = restored.binary_path;
                i.verified_by = restored.verified_by;
                i.pid = None;
            })
            .await
        else {
            return;
        };
        let mut status = prev.status;
        let mut message = message;
        if stopped && prev.status == Status::Running {
            let started = match old {
                Some(f) => self.launch(&back, f, None).await,
                None => Err(StepError::new(
                    Step::Updating,
                    Code::CatalogueChanged,
                    format!(
                        "the catalogue no longer offers {} {}",
                        inst.feature_id, prev.version
                    ),
                )),
            };
            if let Err(again) = started {
                status = Status::Failed;
                message = format!(
                    "{message}; the previous version did not start again either: {}",
                    again.message
                );
            }
        }
        let (code, text) = (e.code.to_string(), message.clone());
        self.transition(&inst.id, status, Some(&message), move |i| {
            i.previous = None;
            i.failed_step = Some(Step::Updating);
            i.error_code = Some(if status == Status::Failed {
                Code::UpdateFailed.to_string()
            } else {
                code
            });
            i.error = Some(text);
        })
        .await;
        self.collect_artifacts().await;
        self.bus.publish(
            Some(&inst.id),
            EventKind::UpdateRolledBack {
                from: to_version.to_owned(),
                to: prev.version,
                step: e.step.as_str(),
                error: e.message.clone(),
            },
        );
    }

    /// Agent start: an update interrupted by a crash is rolled back (its new version was not
    /// proven). Runs before services are started again.
    pub(crate) async fn recover_updates(&self) -> Result<usize, crate::store::StoreError> {
        let interrupted = self
            .store
            .instances_where(|i| i.status == Status::Updating)?;
        for inst in &interrupted {
            let Some(prev) = inst.previous.clone() else {
                continue;
            };
            log::warn!(target: "api", "instance {}: the agent stopped during an update; rolling back to {}", inst.id, prev.version);
            self.kill_leftover(inst);
            let feature = self
                .feature_for(inst, &prev.version)
                .or_else(|| self.catalogue().feature(&inst.feature_id).cloned());
            if let Some(g) = feature.as_ref().and_then(Feature::generator) {
                restore_config(&self.instance_paths(&inst.id).config.join(g.file_name()));
            }
            let message = format!(
                "the agent stopped during the update from {} to {}; rolled back to {}",
                prev.version, prev.target, prev.version
            );
            let (before, _) = self.store.update_instance(&inst.id, |i| {
                i.version = prev.version.clone();
                i.sha256 = prev.sha256.clone();
                i.binary_path = prev.binary_path.clone();
                i.verified_by = prev.verified_by.clone();
                i.status = prev.status;
                i.previous = None;
                i.pid = None;
                i.failed_step = Some(Step::Updating);
                i.error_code = Some(Code::UpdateInterrupted.to_string());
                i.error = Some(message.clone());
            })?;
            self.bus.publish(
                Some(&inst.id),
                EventKind::StatusChanged {
                    from: before.status,
                    to: prev.status,
                    reason: Some(message),
                },
            );
        }
        Ok(interrupted.len())
    }

    /// Deletes feature versions no instance uses (nor would roll back to): what an update
    /// or uninstall leaves behind, even when the agent died before it could clean up.
    /// Returns the `(feature, version)` pairs removed.
    pub(crate) async fn collect_artifacts(&self) -> Vec<(String, String)> {
        let _gate = self.artifacts_gate.lock().await;
        let store = self.store.clone();
        let layout = self.layout.clone();
        blocking(move || {
            let mut removed = Vec::new();
            let Ok(instances) = store.instances() else {
                return removed;
            };
            let used = |f: &str, v: &str| {
                instances.iter().any(|i| {
                    i.feature_id == f
                        && (i.version == v
                            || i.previous
                                .as_ref()
                                .is_some_and(|p| p.version == v || p.target == v))
                })
            };
            let root = layout.features_dir();
            let Ok(features) = std::fs::read_dir(&root) else {
                return removed;
            };
            for f in features.flatten() {
                let feature = f.file_name().to_string_lossy().into_owned();
                let Ok(versions) = std::fs::read_dir(f.path()) else {
                    continue;
                };
                for v in versions.flatten() {
                    let version = v.file_name().to_string_lossy().into_owned();
                    if used(&feature, &version) {
                        continue;
                    }
                    log::info!(target: "download-manager", "removing {feature} {version}: no instance uses it");
                    for arch in crate::platform::ARCH_KEYS {
                        let key = super::fetch::ArtifactKey {
                            feature: feature.clone(),
                            version: version.clone(),
                            arch: arch.to_owned(),
                        };
                        if let Ok(Some(a)) = store.artifact(&key.id()) {
                            remove_package(&store, &instances, &a);
                        }
                        let _ = store.remove_artifact(&key.id());
                        let _ = store.clear_download_state(&key.id());
                    }
                    super::uninstall::remove_dir(&v.path());
                    removed.push((feature.clone(), version));
                }
            }
            removed
        })
        .await
    }
}

/// Removes the system package behind an artifact nothing uses any more, when the agent
/// installed it and no instance's artifact (current or previous version) comes from it.
fn remove_package(
    store: &crate::store::Store,
    instances: &[crate::store::Instance],
    a: &crate::store::Artifact,
) {
    let Some(p) = a.package.as_ref().filter(|p| p.installed_by_agent) else {
        return;
    };
    let same = |key: String| {
        store
            .artifact(&key)
            .ok()
            .flatten()
            .and_then(|o| o.package)
            .is_some_and(|o| o.manager == p.manager && o.name == p.name)
    };
    let in_use = instances.iter().any(|i| {
        let key = |v: &str| format!("{}/{v}/{}", i.feature_id, i.arch);
        same(key(&i.version))
            || i.previous
                .as_ref()
                .is_some_and(|pr| same(key(&pr.version)) || same(key(&pr.target)))
    });
    let Some(m) = super::package::Manager::from_key(&p.manager) else {
        return;
    };
    if in_use {
        log::info!(target: "package-manager", "keeping {} package {}: another instance uses it", p.manager, p.name);
    } else if let Err(e) = super::package::remove(m, &p.name) {
        log::error!(target: "package-manager", "cannot remove {} package {}: {e}", p.manager, p.name);
    }
}

/// Brings a config back to the state before a swap: `.prev` (when present) is the old config;
/// a staged `.next` is dropped.
fn restore_config(config: &Path) {
    let (prev, next) = (staged(config, "prev"), staged(config, "next"));
    if prev.exists()
        && let Err(e) = std::fs::rename(&prev, config)
    {
        log::error!(target: "api", "cannot restore {}: {e}", config.display());
    }
    let _ = std::fs::remove_file(next);
}

#[cfg(test)]
mod tests {
    use super::staged;
    use std::path::Path;

    #[test]
    fn staged_names_keep_the_extension() {
        assert_eq!(
            staged(Path::new("/c/config.json"), "next"),
            Path::new("/c/config.next.json")
        );
        assert_eq!(
            staged(Path::new("/c/torrc"), "prev"),
            Path::new("/c/torrc.prev")
        );
        assert_eq!(
            staged(Path::new("/c/.hidden"), "next"),
            Path::new("/c/.hidden.next")
        );
    }
}
