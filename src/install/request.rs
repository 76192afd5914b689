//! `installFeature`: the request checked (name, feature, router, arch, settings) and recorded
//! as QUEUED before any work starts.

use std::sync::Arc;

use serde_json::Value;

use crate::code::Code;
use crate::events::ProgressStatus;
use crate::ids::{self, LOCAL_ROUTER};
use crate::platform;
use crate::store::{Instance, StoreError};
use crate::util;
use crate::vif;

use super::{Installer, RequestError, blocking, refuse};

/// What `installFeature` asks for.
pub(crate) struct InstallRequest {
    pub feature_id: String,
    pub router_id: String,
    pub name: String,
    pub settings: Option<Value>,
}

impl Installer {
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
        let secret = util::random_hex(16).map_err(|e| refuse(Code::Internal, e.to_string()))?;
        let inst = Instance {
            control_secret: Some(secret),
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
}
