//! Update checks: every `[updates] check_interval_secs` (default 6 h, as the seed's system;
//! 0 = never) the latest GitHub release of each feature with an `upstream` is read. A newer
//! version becomes an entry the catalogue offers (rendered from the upstream templates, so
//! `updateInstance` can move to it), `features { latestVersion }` and `instance {
//! updateAvailable }` say so, `update.available` is published once per version, and
//! instances with `autoUpdate` are updated through `updateInstance` (with its rollback). A
//! check alone never changes an instance; an automatic update that failed is not tried again
//! for the same version, unless its download failed (the network, the server): then at the
//! next checks, `MAX_ATTEMPTS` times in all.

use std::sync::Arc;
use std::time::Duration;

use crate::catalogue::{Feature, newer};
use crate::code::Code;
use crate::events::EventKind;
use crate::store::{Status, Step};
use crate::util::{Locked, RwLocked};

use super::{Installer, blocking};

/// `[updates]`.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Between checks; zero: no checks.
    pub check_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            check_interval: Duration::from_secs(6 * 3600),
        }
    }
}

/// Automatic updates to one version whose download failed: tried at this many checks.
const MAX_ATTEMPTS: u32 = 3;

/// What the checks found; the versions and the automatic updates tried are kept in redb too
/// (`restore_found` at start), the rest follows from them.
#[derive(Default)]
pub(crate) struct Found {
    /// Feature id -> the latest version its upstream publishes.
    latest: std::collections::BTreeMap<String, String>,
    /// Newer versions made into catalogue entries (kept across catalogue reloads).
    discovered: Vec<Feature>,
    /// (feature, instance, version) automatic updates already tried, and how many times.
    tried: std::collections::BTreeMap<(String, String, String), u32>,
}

impl Installer {
    /// The latest version an update check found for `feature` (none before the first check).
    pub(crate) fn latest_version(&self, feature: &str) -> Option<String> {
        self.found.locked().latest.get(feature).cloned()
    }

    /// Whether a check found a version of `feature` newer than `version`.
    pub(crate) fn update_available(&self, feature: &str, version: &str) -> bool {
        self.latest_version(feature)
            .is_some_and(|v| newer(&v, version))
    }

    /// Turns automatic updates of an instance on or off.
    pub(crate) fn set_auto_update(
        &self,
        id: &str,
        enabled: bool,
    ) -> Result<crate::store::Instance, super::RequestError> {
        self.existing(id)?;
        let (_, after) = self
            .store
            .update_instance(id, |i| i.auto_update = enabled)?;
        log::info!(target: "updates", "instance {id}: automatic updates {}", if enabled { "on" } else { "off" });
        Ok(after)
    }

    /// Entries found by checks that `fresh` (a reloaded catalogue) does not list itself.
    pub(super) fn discovered(&self) -> Vec<Feature> {
        self.found.locked().discovered.clone()
    }

    /// The features update checks look at: those with an upstream whose checksums no feed
    /// signs (a signed feed alone updates its features: a release found upstream would be
    /// vouched for by that release only).
    fn checked_features(&self) -> Vec<Feature> {
        self.catalogue()
            .current()
            .filter(|f| f.upstream.is_some())
            .filter(|f| f.assets.values().all(|a| a.checksums_sig.is_none()))
            .cloned()
            .collect()
    }

    /// At start: what earlier checks found, from redb, before the first check of this run
    /// (which may be hours away, or fail): the versions, their catalogue entries, the
    /// automatic updates tried.
    pub(crate) fn restore_found(&self) {
        let rows = match self.store.updates_found() {
            Ok(rows) => rows,
            Err(e) => {
                log::warn!(target: "updates", "cannot read what earlier update checks found: {e}");
                return;
            }
        };
        let features = self.checked_features();
        for (id, rec) in rows {
            let Some(f) = features.iter().find(|f| f.id == id) else {
                continue;
            };
            {
                let mut found = self.found.locked();
                found.latest.insert(id.clone(), rec.latest.clone());
                for (k, inst) in rec.tried.into_iter().enumerate() {
                    let n = rec.attempts.get(k).copied().unwrap_or(1);
                    found
                        .tried
                        .insert((id.clone(), inst, rec.latest.clone()), n);
                }
            }
            self.offer(f, &rec.latest);
        }
    }

    /// Makes `version` of `f`, newer than the catalogue's, an entry the catalogue offers.
    fn offer(&self, f: &Feature, version: &str) {
        let Some(u) = &f.upstream else { return };
        if !newer(version, &f.version) || self.catalogue().feature_version(&f.id, version).is_some()
        {
            return;
        }
        let entry = u.render(f, version);
        self.found.locked().discovered.push(entry.clone());
        let mut catalogue = self.catalogue.write_locked();
        *catalogue = Arc::new(catalogue.with(entry));
    }

    /// Writes what was found for `feature` to redb; a failure is logged (the next check
    /// finds it again).
    fn remember(&self, feature: &str) {
        let rec = {
            let found = self.found.locked();
            let Some(latest) = found.latest.get(feature) else {
                return;
            };
            let (tried, attempts) = found
                .tried
                .iter()
                .filter(|((f, _, v), _)| f == feature && v == latest)
                .map(|((_, i, _), n)| (i.clone(), *n))
                .unzip();
            crate::store::UpdateFound {
                latest: latest.clone(),
                tried,
                attempts,
            }
        };
        if let Err(e) = self.store.put_update_found(feature, &rec) {
            log::warn!(target: "updates", "{feature}: cannot keep what the update check found: {e}");
        }
    }

    /// Checks now and then every `interval`, for as long as the agent runs.
    pub(crate) async fn check_updates_forever(self: Arc<Self>, interval: Duration) {
        // The first check soon after start (a router that reboots daily still checks).
        tokio::time::sleep(interval.min(Duration::from_secs(60))).await;
        loop {
            self.check_updates().await;
            tokio::time::sleep(interval).await;
        }
    }

    pub(crate) async fn check_updates(self: &Arc<Self>) {
        for f in self.checked_features() {
            let Some(u) = f.upstream.clone() else {
                continue;
            };
            let Some((owner, repo)) = u.owner_repo().map(|(o, r)| (o.to_owned(), r.to_owned()))
            else {
                continue;
            };
            let downloads = Arc::clone(&self.downloads);
            let tag = match blocking(move || downloads.latest_tag(&owner, &repo)).await {
                Ok(t) => t,
                Err(e) => {
                    log::warn!(target: "updates", "{}: update check failed: {e}", f.id);
                    continue;
                }
            };
            let Some(version) = u.version_of(&tag) else {
                log::warn!(target: "updates", "{}: the latest release's tag {tag:?} does not fit {:?}", f.id, u.tag);
                continue;
            };
            let known = {
                let mut found = self.found.locked();
                let before = found.latest.insert(f.id.clone(), version.clone());
                before.as_deref() == Some(version.as_str())
            };
            if !known {
                self.remember(&f.id);
            }
            if !newer(&version, &f.version) {
                log::debug!(target: "updates", "{}: {} is the latest release", f.id, f.version);
                continue;
            }
            self.offer(&f, &version);
            let instances: Vec<_> = self
                .store
                .instances()
                .unwrap_or_default()
                .into_iter()
                .filter(|i| i.feature_id == f.id && newer(&version, &i.version))
                .collect();
            if !known {
                log::info!(target: "updates", "{} {version} is out (the catalogue offers {})", f.id, f.version);
                self.bus.publish(
                    None,
                    EventKind::UpdateAvailable {
                        feature_id: f.id.clone(),
                        version: version.clone(),
                        current: f.version.clone(),
                        instances: instances.iter().map(|i| i.id.clone()).collect(),
                    },
                );
            }
            for inst in instances.iter().filter(|i| {
                i.auto_update
                    && matches!(
                        i.status,
                        Status::Running | Status::Stopped | Status::Installed
                    )
            }) {
                let key = (f.id.clone(), inst.id.clone(), version.clone());
                let before = self.found.locked().tried.get(&key).copied().unwrap_or(0);
                // Only a failed download is worth another try: a release that does not run
                // here will not start to at the next check.
                let download_failed = inst.failed_step == Some(Step::Updating)
                    && inst.error_code.as_deref() == Some(Code::DownloadFailed.as_str());
                if before >= MAX_ATTEMPTS || (before > 0 && !download_failed) {
                    continue;
                }
                if before > 0 {
                    log::info!(target: "updates", "instance {}: the automatic update to {version} failed downloading; trying again (attempt {} of {MAX_ATTEMPTS})", inst.id, before + 1);
                }
                self.found.locked().tried.insert(key, before + 1);
                // Kept before it runs: an update that takes the agent down is not tried again.
                self.remember(&f.id);
                match self.update(&inst.id, &version).await {
                    Ok(_) => {
                        log::info!(target: "updates", "instance {}: updating {} -> {version} automatically", inst.id, inst.version);
                    }
                    Err(e) => {
                        log::warn!(target: "updates", "instance {}: automatic update to {version} refused: {}", inst.id, e.message);
                    }
                }
            }
        }
    }
}
