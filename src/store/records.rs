//! Typed records kept in redb. Values are JSON so that a newer agent can read an older
//! record (new fields carry `#[serde(default)]`) and an operator can inspect the database.

use serde::{Deserialize, Serialize};

/// Where an instance is in its life. The install flow moves forward through these in order;
/// `FAILED` names the step in `Instance::failed_step`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, async_graphql::Enum,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub(crate) enum Status {
    Queued,
    Downloading,
    Verifying,
    Installing,
    Provisioning,
    Configuring,
    Starting,
    Running,
    /// Binary verified and in place, nothing started: the end of the flow while no later
    /// stage exists.
    Installed,
    Stopped,
    Failed,
    Uninstalling,
    /// Moving to another version; the previous one comes back if the new one fails.
    Updating,
}

impl Status {
    /// Statuses from which an interrupted install is continued at agent start.
    pub(crate) fn is_resumable(self) -> bool {
        matches!(
            self,
            Status::Queued
                | Status::Downloading
                | Status::Verifying
                | Status::Installing
                | Status::Provisioning
                | Status::Configuring
                | Status::Starting
        )
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "QUEUED",
            Status::Downloading => "DOWNLOADING",
            Status::Verifying => "VERIFYING",
            Status::Installing => "INSTALLING",
            Status::Provisioning => "PROVISIONING",
            Status::Configuring => "CONFIGURING",
            Status::Starting => "STARTING",
            Status::Running => "RUNNING",
            Status::Installed => "INSTALLED",
            Status::Stopped => "STOPPED",
            Status::Failed => "FAILED",
            Status::Uninstalling => "UNINSTALLING",
            Status::Updating => "UPDATING",
        }
    }
}

/// A step of the install flow, as reported in `failedStep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Step {
    Downloading,
    Verifying,
    Installing,
    Provisioning,
    Configuring,
    Starting,
    /// The service failed after it had started (crash-loop limit).
    Running,
    /// An update failed (and was rolled back).
    Updating,
}

impl Step {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Step::Downloading => "downloading",
            Step::Verifying => "verifying",
            Step::Installing => "installing",
            Step::Provisioning => "provisioning",
            Step::Configuring => "configuring",
            Step::Starting => "starting",
            Step::Running => "running",
            Step::Updating => "updating",
        }
    }
}

/// A subscription's servers (outbound objects of the settings schema) and when they came.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Fetched {
    pub servers: Vec<serde_json::Value>,
    pub at: u64,
    /// Its links that could not be used, and why (`line N: ...`).
    #[serde(default)]
    pub skipped: Vec<String>,
    /// The last refresh attempt (a failed one leaves `at` as it was).
    #[serde(default)]
    pub attempted: u64,
    /// SHA-256 (hex) of the body these servers came from.
    #[serde(default)]
    pub digest: String,
    /// SHA-256 of the last body that was refused (not tried again until it changes).
    #[serde(default)]
    pub rejected: Option<String>,
}

/// The servers and the pin an instance had before a reconfiguration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Servers {
    pub fetched: Option<Fetched>,
    pub selected: Option<String>,
}

/// One installed (or installing) copy of a feature, named by the user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Instance {
    pub id: String,
    pub feature_id: String,
    pub router_id: String,
    pub name: String,
    pub version: String,
    pub arch: String,
    #[serde(default)]
    pub settings: serde_json::Value,
    pub status: Status,
    #[serde(default)]
    pub failed_step: Option<Step>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    /// SHA-256 of the verified download (the archive, or the raw binary).
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub binary_path: Option<String>,
    #[serde(default)]
    pub verified_by: Option<String>,
    /// Whether the user wants its service running (kept across agent restarts).
    #[serde(default)]
    pub desired_running: bool,
    /// The unprivileged uid (and gid) its service runs as.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The service's last PID and its start time (clock ticks since boot), so that a process
    /// outliving a crashed agent can be recognised and killed at the next start.
    #[serde(default)]
    pub pid: Option<(i32, u64)>,
    /// While UPDATING: what to go back to if the new version fails.
    #[serde(default)]
    pub previous: Option<Previous>,
    /// The catalogue's definition of `version` (this arch's asset only), kept so that the
    /// instance can still be started, stopped and rolled back to after a catalogue that no
    /// longer lists its version (a reload, a new feed, a new built-in one).
    #[serde(default)]
    pub feature: Option<crate::catalogue::Feature>,
    /// What its routed devices do while the service is down.
    #[serde(default)]
    pub on_service_down: OnServiceDown,
    /// Update to a newer release as soon as an update check finds one (`setAutoUpdate`).
    #[serde(default)]
    pub auto_update: bool,
    /// The servers of its subscription as last fetched and accepted: its config is rendered
    /// from them (a restart needs no network).
    #[serde(default)]
    pub fetched: Option<Fetched>,
    /// The server `selectOutbound` pinned (None: the automatic choice).
    #[serde(default)]
    pub selected_outbound: Option<String>,
    /// While UPDATING for new servers or a new pin: what to go back to.
    #[serde(default)]
    pub reconfiguring: Option<Servers>,
    /// The secret of the service's control API (sing-box's Clash API, for latencies), made
    /// with the record; None for records older than it.
    #[serde(default)]
    pub control_secret: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

impl Instance {
    /// A new instance as `installFeature` records it: QUEUED, nothing done yet, created now.
    /// Callers fill in the version, arch, settings and definition with struct update syntax.
    pub(crate) fn queued(
        id: String,
        feature_id: String,
        router_id: String,
        name: String,
    ) -> Instance {
        let now = crate::util::now_ms();
        Instance {
            id,
            feature_id,
            router_id,
            name,
            version: String::new(),
            arch: String::new(),
            settings: serde_json::Value::Null,
            status: Status::Queued,
            failed_step: None,
            error: None,
            error_code: None,
            sha256: None,
            binary_path: None,
            verified_by: None,
            desired_running: false,
            uid: None,
            pid: None,
            previous: None,
            feature: None,
            on_service_down: OnServiceDown::Block,
            auto_update: false,
            fetched: None,
            selected_outbound: None,
            reconfiguring: None,
            control_secret: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// What a routed device's traffic does while its instance's service is not running.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub(crate) enum OnServiceDown {
    /// Refused (fail-closed): the default.
    #[default]
    Block,
    /// Sent out directly, only when the user asked for it.
    Direct,
}

/// A LAN device sent through an instance (`device` in its canonical spelling).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeviceRoute {
    pub device: String,
    pub instance_id: String,
    /// When it was routed through this instance (ms since the epoch).
    pub since: u64,
}

/// The version an update is replacing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Previous {
    pub version: String,
    /// The version being moved to (its binary must not be collected meanwhile).
    #[serde(default)]
    pub target: String,
    pub sha256: Option<String>,
    pub binary_path: Option<String>,
    pub verified_by: Option<String>,
    /// The status to return to (RUNNING, STOPPED or INSTALLED).
    pub status: Status,
}

/// What update checks found for one feature, so that a restart knows it before (or
/// without) its next check: the version `updateAvailable` compares with, and the instances
/// whose automatic update to it was tried (a failed one is not tried again at every start),
/// with how many times (records without `attempts` tried each once).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct UpdateFound {
    pub latest: String,
    #[serde(default)]
    pub tried: Vec<String>,
    #[serde(default)]
    pub attempts: Vec<u32>,
}

/// Resume information for a partial download; the bytes themselves are the `.part` file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct DownloadState {
    pub url: String,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub last_modified: Option<String>,
    #[serde(default)]
    pub total: Option<u64>,
}

impl DownloadState {
    /// The `If-Range` validator: a strong ETag, else Last-Modified (weak ETags may not be used).
    pub(crate) fn validator(&self) -> Option<&str> {
        match &self.etag {
            Some(e) if !e.starts_with("W/") => Some(e),
            _ => self.last_modified.as_deref(),
        }
    }
}

/// A verified binary in place, shared by every instance of the same feature+version+arch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Artifact {
    pub key: String,
    /// SHA-256 of the verified download.
    pub sha256: String,
    pub binary_path: String,
    /// SHA-256 of the binary as placed, to notice a file changed behind our back.
    pub binary_sha256: String,
    pub verified_by: String,
    /// The system package that put the binary there, when it came from one.
    #[serde(default)]
    pub package: Option<PackageRecord>,
}

/// A system package behind an artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PackageRecord {
    /// `apk`, `opkg` or `apt`.
    pub manager: String,
    pub name: String,
    pub version: String,
    /// Installed by the agent (removed again when no instance uses it); false when the
    /// system had it already (never removed by the agent).
    pub installed_by_agent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub(crate) enum IfStatus {
    /// Being made; a crash here is rolled back at the next start.
    Creating,
    Active,
    /// Being taken down; a crash here is finished at the next start.
    Removing,
    /// Its objects vanished and could not be recreated.
    Broken,
}

/// An instance's network segment on its router.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct InterfaceRecord {
    pub instance_id: String,
    pub router_id: String,
    /// Backend kind: `linux` or `routeros`.
    pub kind: String,
    pub vlan_id: u16,
    /// The interface that holds the router's address (Linux bridge, RouterOS VLAN).
    pub name: String,
    /// `nnc-{feature}-{name}`.
    pub alias: String,
    /// The router's address with prefix (`10.99.N.1/24`).
    pub address: String,
    /// The service's address (`10.99.N.2`).
    pub service_address: String,
    pub routing_table: String,
    /// The service's network namespace (Linux).
    #[serde(default)]
    pub netns: Option<String>,
    pub status: IfStatus,
    /// RouterOS `.id`s of the objects, in creation order.
    #[serde(default)]
    pub objects: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
    pub updated_at: u64,
}
