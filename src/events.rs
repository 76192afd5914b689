//! Typed events and the broadcast bus every GraphQL subscription reads from.
//!
//! Producers publish only after the state an event describes is durable (see `store`).
//! Each event carries a sequence number so a client can tell when it missed some.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::store::{InterfaceRecord, Status};
use crate::util::{self, Locked};

/// State of a managed process (separate from the instance's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ProcState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Crashed,
    Backoff,
}

impl ProcState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProcState::Starting => "STARTING",
            ProcState::Running => "RUNNING",
            ProcState::Stopping => "STOPPING",
            ProcState::Stopped => "STOPPED",
            ProcState::Crashed => "CRASHED",
            ProcState::Backoff => "BACKOFF",
        }
    }
}

/// What `service.install.progress` reports, also the `installProgress` subscription item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, async_graphql::Enum)]
#[serde(rename_all = "snake_case")]
#[graphql(rename_items = "snake_case")]
pub(crate) enum ProgressStatus {
    Queued,
    Downloading,
    Verifying,
    VerificationFailed,
    Extracting,
    Completed,
    Failed,
}

impl ProgressStatus {
    pub(crate) fn is_terminal(self) -> bool {
        matches!(
            self,
            ProgressStatus::Completed | ProgressStatus::Failed | ProgressStatus::VerificationFailed
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Progress {
    pub instance_id: String,
    pub feature_id: String,
    pub status: ProgressStatus,
    pub percent: f64,
    pub bytes_downloaded: u64,
    pub total_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub(crate) enum EventKind {
    InstallProgress(Progress),
    /// Every instance status change, with the reason when there is one.
    StatusChanged {
        from: Status,
        to: Status,
        reason: Option<String>,
    },
    ServiceInstalled {
        feature_id: String,
        version: String,
        sha256: String,
        verified_by: String,
    },
    InstallFailed {
        step: &'static str,
        code: String,
        error: String,
    },
    Uninstalled {
        feature_id: String,
        binary_removed: bool,
    },
    InterfaceCreated(InterfaceRecord),
    InterfaceRemoved(InterfaceRecord),
    /// An update finished: the new version is proven (healthy, when it runs).
    ServiceUpdated {
        feature_id: String,
        from: String,
        to: String,
        sha256: String,
    },
    /// An update failed; the previous version is back.
    UpdateRolledBack {
        from: String,
        to: String,
        step: &'static str,
        error: String,
    },
    /// A managed process changed state (STARTING, RUNNING, CRASHED, BACKOFF ...).
    ProcessStateChanged {
        from: ProcState,
        to: ProcState,
        reason: Option<String>,
    },
    /// Only in one subscriber's stream: it fell so far behind that `missed` events were
    /// dropped for it (the sequence numbers show which).
    Missed {
        missed: u64,
    },
    /// `reloadCatalogue` put a new catalogue in use (no instance).
    CatalogueReloaded {
        source: String,
        serial: u64,
        signed_by: Option<String>,
        features: usize,
    },
    /// An update check found a newer release of a feature (no instance; `instances` are the
    /// ones it is newer for).
    UpdateAvailable {
        feature_id: String,
        version: String,
        current: String,
        instances: Vec<String>,
    },
    /// A device is routed through the event's instance (moved from another one, or new).
    DeviceRouted {
        device: String,
        moved_from: Option<String>,
    },
    /// A device is no longer routed through the event's instance (moved, or sent direct).
    DeviceUnrouted {
        device: String,
        moved_to: Option<String>,
    },
    /// A subscription was fetched: how many servers are usable, how many links were not,
    /// and whether the servers changed (then the service runs on the new ones).
    SubscriptionRefreshed {
        servers: usize,
        skipped: usize,
        changed: bool,
    },
    /// A subscription refresh changed nothing: why (the service runs on as it was).
    SubscriptionFailed {
        code: &'static str,
        error: String,
    },
    ServiceCrashed {
        exit_code: Option<i32>,
        signal: Option<i32>,
        restart_count: u32,
        /// None when the crash-loop limit ended the restarts.
        next_backoff_ms: Option<u64>,
    },
}

impl EventKind {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            EventKind::InstallProgress(_) => "service.install.progress",
            EventKind::StatusChanged { .. } => "instance.status.changed",
            EventKind::ServiceInstalled { .. } => "service.installed",
            EventKind::InstallFailed { .. } => "service.install.failed",
            EventKind::Uninstalled { .. } => "service.uninstalled",
            EventKind::InterfaceCreated(_) => "interface.created",
            EventKind::InterfaceRemoved(_) => "interface.removed",
            EventKind::ProcessStateChanged { .. } => "service.state.changed",
            EventKind::ServiceUpdated { .. } => "service.updated",
            EventKind::UpdateRolledBack { .. } => "service.update.rolled_back",
            EventKind::ServiceCrashed { .. } => "service.crashed",
            EventKind::Missed { .. } => "events.missed",
            EventKind::CatalogueReloaded { .. } => "catalogue.reloaded",
            EventKind::UpdateAvailable { .. } => "update.available",
            EventKind::DeviceRouted { .. } => "device.routed",
            EventKind::DeviceUnrouted { .. } => "device.unrouted",
            EventKind::SubscriptionRefreshed { .. } => "subscription.refreshed",
            EventKind::SubscriptionFailed { .. } => "subscription.failed",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub instance_id: Option<String>,
    pub kind: EventKind,
}

impl Event {
    pub(crate) fn payload(&self) -> Value {
        let mut v = match &self.kind {
            EventKind::InstallProgress(p) => serde_json::to_value(p).unwrap_or(Value::Null),
            EventKind::StatusChanged { from, to, reason } => {
                json!({ "from": from.as_str(), "to": to.as_str(), "reason": reason })
            }
            EventKind::ServiceInstalled {
                feature_id,
                version,
                sha256,
                verified_by,
            } => json!({
                "featureId": feature_id, "version": version,
                "sha256": sha256, "verifiedBy": verified_by,
            }),
            EventKind::InstallFailed { step, code, error } => {
                json!({ "step": step, "code": code, "error": error })
            }
            EventKind::Uninstalled {
                feature_id,
                binary_removed,
            } => json!({ "featureId": feature_id, "binaryRemoved": binary_removed }),
            EventKind::InterfaceCreated(r) | EventKind::InterfaceRemoved(r) => json!({
                "router": r.router_id, "interface": r.name, "alias": r.alias, "vlanId": r.vlan_id,
                "address": r.address, "serviceAddress": r.service_address,
                "routingTable": r.routing_table,
            }),
            EventKind::ServiceUpdated {
                feature_id,
                from,
                to,
                sha256,
            } => json!({ "featureId": feature_id, "from": from, "to": to, "sha256": sha256 }),
            EventKind::UpdateRolledBack {
                from,
                to,
                step,
                error,
            } => json!({ "from": from, "to": to, "step": step, "error": error }),
            EventKind::ProcessStateChanged { from, to, reason } => {
                json!({ "from": from.as_str(), "to": to.as_str(), "reason": reason })
            }
            EventKind::Missed { missed } => json!({ "missed": missed }),
            EventKind::CatalogueReloaded {
                source,
                serial,
                signed_by,
                features,
            } => json!({
                "source": source, "serial": serial, "signedBy": signed_by, "features": features,
            }),
            EventKind::UpdateAvailable {
                feature_id,
                version,
                current,
                instances,
            } => json!({
                "featureId": feature_id, "version": version, "current": current, "instances": instances,
            }),
            EventKind::DeviceRouted { device, moved_from } => {
                json!({ "device": device, "movedFrom": moved_from })
            }
            EventKind::DeviceUnrouted { device, moved_to } => {
                json!({ "device": device, "movedTo": moved_to })
            }
            EventKind::SubscriptionRefreshed {
                servers,
                skipped,
                changed,
            } => json!({ "servers": servers, "skipped": skipped, "changed": changed }),
            EventKind::SubscriptionFailed { code, error } => {
                json!({ "code": code, "error": error })
            }
            EventKind::ServiceCrashed {
                exit_code,
                signal,
                restart_count,
                next_backoff_ms,
            } => json!({
                "exitCode": exit_code, "signal": signal, "restartCount": restart_count,
                "nextBackoffMs": next_backoff_ms,
            }),
        };
        if let (Value::Object(map), Some(id)) = (&mut v, &self.instance_id) {
            map.insert("instanceId".into(), Value::String(id.clone()));
        }
        v
    }
}

/// Fan-out of events to every subscriber. Cloning shares the same bus.
#[derive(Clone)]
pub(crate) struct Bus {
    tx: broadcast::Sender<Arc<Event>>,
    // A Mutex, not an AtomicU64: 32-bit MIPS has no 64-bit atomics.
    seq: Arc<Mutex<u64>>,
}

impl Bus {
    pub(crate) fn new(capacity: usize) -> Bus {
        let (tx, _) = broadcast::channel(capacity);
        Bus {
            tx,
            seq: Arc::new(Mutex::new(0)),
        }
    }

    pub(crate) fn publish(&self, instance_id: Option<&str>, kind: EventKind) {
        let mut seq = self.seq.locked();
        *seq += 1;
        let event = Event {
            seq: *seq,
            at_ms: util::now_ms(),
            instance_id: instance_id.map(str::to_owned),
            kind,
        };
        log::debug!(target: "api", "event #{} {} {}", event.seq, event.kind.name(), event.payload());
        // Sending under the lock keeps sequence numbers in channel order.
        let _ = self.tx.send(Arc::new(event));
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}
