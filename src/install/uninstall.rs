//! Uninstall: process, device routes, interface, files, record — in that order, each step
//! safe to repeat, so an uninstall a crash interrupted is finished at the next start. The
//! routes go only after the service is gone and before its segment: until then a routed
//! device is refused, never sent out directly.

use std::path::Path;
use std::sync::Arc;

use crate::code::Code;
use crate::events::EventKind;
use crate::store::{Instance, Status, StoreError};
use crate::util::Locked;

use super::{Installer, RequestError, blocking, refuse, wrong_state};

impl Installer {
    /// Removes an instance that is not mid-install: its record, its directory, and the
    /// feature version's files when no other instance uses them.
    pub(crate) async fn uninstall(&self, id: &str) -> Result<(), RequestError> {
        let no_server_change = self.ops_gate.lock().await;
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
        drop(no_server_change);
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
    pub(super) async fn finish_uninstall(&self, inst: Instance) -> Result<(), RequestError> {
        let id = inst.id.as_str();
        // The process first (SIGTERM, grace, SIGKILL, cgroup), then the network, then files.
        self.supervisor.remove(id).await;
        self.kill_leftover(&inst);
        crate::failpoint::hit("uninstall.stopped").map_err(|m| refuse(Code::Injected, m))?;
        self.routing
            .call(crate::routing::Op::DropInstance(inst.id.clone()))
            .await
            .map_err(|e| {
                refuse(
                    e.code,
                    format!("cannot remove the device routes of {id}: {}", e.message),
                )
            })?;
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

pub(super) fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!(target: "api", "cannot remove {}: {e}", dir.display());
    }
}
