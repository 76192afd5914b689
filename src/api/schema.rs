//! The GraphQL schema: what a LAN client can ask and do.
//!
//! Resolvers validate input and hand work to the installer; they never block the runtime
//! thread on disk or network. Every refusal carries a stable `extensions.code`.

use std::sync::Arc;

use async_graphql::{
    Context, ErrorExtensions, ID, Json, Object, Schema, SimpleObject, Subscription,
};
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::board::Board;
use crate::catalogue::Feature;
use crate::code::Code;
use crate::events::ProcState;
use crate::events::{Event, EventKind, Progress, ProgressStatus};
use crate::install::{InstallRequest, Installer, RequestError};
use crate::routing::{Op, Reply};
use crate::store::{self, IfStatus, InterfaceRecord, Status};
use crate::supervisor::{Isolation, LogLine, ProcessInfo};
use crate::util;

pub(crate) type AppSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// Deepest selection a client needs is `instances { ... }` plus a little; introspection (dev
/// only) needs more.
const MAX_DEPTH: usize = 8;
const MAX_DEPTH_DEV: usize = 16;
const MAX_COMPLEXITY: usize = 1_000;

pub(crate) fn build(installer: Arc<Installer>, board: Option<Board>, dev: bool) -> AppSchema {
    let builder = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(installer)
        .data(board.map(BoardObject))
        .limit_depth(if dev { MAX_DEPTH_DEV } else { MAX_DEPTH })
        .limit_complexity(MAX_COMPLEXITY)
        .limit_recursive_depth(32);
    if dev {
        builder.finish()
    } else {
        builder.disable_introspection().finish()
    }
}

/// The schema in SDL, as `nnc-agent schema` prints it (checked in as `schema.graphql`).
pub(crate) fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

pub(crate) fn error(code: Code, message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message.into()).extend_with(|_, e| e.set("code", code.as_str()))
}

impl From<RequestError> for async_graphql::Error {
    fn from(e: RequestError) -> Self {
        error(e.code, e.message)
    }
}

fn installer<'a>(ctx: &Context<'a>) -> &'a Arc<Installer> {
    ctx.data_unchecked::<Arc<Installer>>()
}

fn checked_id(id: &ID) -> async_graphql::Result<&str> {
    if crate::ids::is_instance_id(id) {
        Ok(id.as_str())
    } else {
        Err(error(
            Code::InvalidId,
            format!("{:?} is not an instance id (16 hex digits)", id.as_str()),
        ))
    }
}

impl From<crate::routing::RouteError> for async_graphql::Error {
    fn from(e: crate::routing::RouteError) -> Self {
        error(e.code, e.message)
    }
}

/// A routing call off the runtime thread.
async fn routing(ctx: &Context<'_>, op: Op) -> async_graphql::Result<Reply> {
    Ok(installer(ctx).routing.call(op).await?)
}

fn unexpected() -> async_graphql::Error {
    error(Code::Internal, "unexpected routing reply")
}

fn state_error(e: store::StoreError) -> async_graphql::Error {
    RequestError::from(e).into()
}

pub(crate) struct QueryRoot;

#[Object]
impl QueryRoot {
    /// Features of the catalogue, with whether this machine's architecture has an asset.
    async fn features(&self, ctx: &Context<'_>) -> Vec<FeatureObject> {
        let catalogue = installer(ctx).catalogue();
        catalogue
            .current()
            .map(|f| {
                FeatureObject(
                    f.clone(),
                    catalogue
                        .versions(&f.id)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                )
            })
            .collect()
    }

    async fn instances(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<InstanceObject>> {
        let list = installer(ctx)
            .store
            .instances_shared()
            .map_err(state_error)?;
        Ok(list.into_iter().map(InstanceObject).collect())
    }

    async fn instance(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<InstanceObject> {
        let id = checked_id(&id)?;
        match installer(ctx).store.instance(id).map_err(state_error)? {
            Some(i) => Ok(InstanceObject(Arc::new(i))),
            None => Err(error(Code::NotFound, format!("no instance {id}"))),
        }
    }

    /// Every LAN device routed through an instance.
    async fn device_routes(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<DeviceRouteObject>> {
        match routing(ctx, Op::Routes).await? {
            Reply::Routes(list) => Ok(list.into_iter().map(DeviceRouteObject).collect()),
            _ => Err(unexpected()),
        }
    }

    /// The LAN devices this router knows (DHCP leases, the IPv4 neighbour table): choices
    /// for `routeDevices`.
    async fn lan_devices(&self) -> Vec<LanDeviceObject> {
        util::blocking(crate::routing::lan::devices)
            .await
            .into_iter()
            .map(|d| LanDeviceObject {
                address: d.address.to_string(),
                mac: d.mac,
                hostname: d.hostname,
                source: d.source.into(),
                interface: d.interface,
            })
            .collect()
    }

    /// Routers instances can be installed on: `local` (this machine) and configured RouterOS
    /// routers, with whether each answers now.
    async fn routers(&self, ctx: &Context<'_>) -> Vec<RouterObject> {
        let factory = std::sync::Arc::clone(&installer(ctx).interfaces);
        crate::util::blocking(move || {
            let mut out = Vec::new();
            if factory.router(crate::ids::LOCAL_ROUTER).is_none() {
                out.push(RouterObject {
                    id: ID(crate::ids::LOCAL_ROUTER.into()),
                    kind: "linux".into(),
                    tls: false,
                    reachable: true,
                    error: None,
                });
            }
            for r in factory.routers() {
                let check = r.check_reachable();
                out.push(RouterObject {
                    id: ID(r.id.clone()),
                    kind: r.kind().into(),
                    tls: r.tls(),
                    reachable: check.is_ok(),
                    error: check.err().map(|e| e.to_string()),
                });
            }
            out
        })
        .await
    }

    /// Every instance's network segment.
    async fn interfaces(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<InterfaceObject>> {
        let list = installer(ctx)
            .interfaces
            .interfaces()
            .map_err(|e| error(e.code(), e.to_string()))?;
        Ok(list
            .into_iter()
            .map(|r| InterfaceObject(Arc::new(r)))
            .collect())
    }

    /// The last `tail` lines (default 100, at most 5000) an instance's service printed.
    async fn instance_logs(
        &self,
        ctx: &Context<'_>,
        id: ID,
        tail: Option<i32>,
    ) -> async_graphql::Result<Vec<String>> {
        let id = checked_id(&id)?;
        let inst = installer(ctx);
        if inst.store.instance(id).map_err(state_error)?.is_none() {
            return Err(error(Code::NotFound, format!("no instance {id}")));
        }
        let n = usize::try_from(tail.unwrap_or(100).clamp(1, 5000)).unwrap_or(100);
        let dir = inst.instance_paths(id).logs;
        inst.supervisor
            .log_tail(dir, n)
            .await
            .map_err(|e| error(Code::IoError, e))
    }

    /// The agent's own identity: version and the catalogue architecture key of this machine.
    async fn agent(&self, ctx: &Context<'_>) -> AgentObject {
        agent_object(ctx)
    }
}

fn agent_object(ctx: &Context<'_>) -> AgentObject {
    let current = installer(ctx).catalogue();
    AgentObject {
        version: env!("CARGO_PKG_VERSION").into(),
        arch: crate::platform::host_arch().into(),
        catalogue: current.source.clone(),
        catalogue_serial: current.serial,
        catalogue_signed_by: current.signed_by.clone(),
        board: ctx.data_unchecked::<Option<BoardObject>>().clone(),
        resource_limits: installer(ctx).supervisor.cgroups.enabled(),
        isolation: IsolationObject(Arc::new(installer(ctx).supervisor.isolation())),
    }
}

pub(crate) struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Queues an install and returns at once; follow it with `installProgress` or `events`.
    async fn install_feature(
        &self,
        ctx: &Context<'_>,
        feature_id: ID,
        router_id: ID,
        name: String,
        settings: Option<Json<Value>>,
    ) -> async_graphql::Result<InstallPayload> {
        let inst = installer(ctx)
            .install(InstallRequest {
                feature_id: feature_id.0,
                router_id: router_id.0,
                name,
                settings: settings.map(|j| j.0),
            })
            .await?;
        Ok(InstallPayload {
            instance_id: ID(inst.id),
        })
    }

    /// Starts an instance's service (and keeps it running across agent restarts).
    async fn start_instance(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<InstanceObject> {
        let id = checked_id(&id)?;
        Ok(InstanceObject(Arc::new(installer(ctx).start(id).await?)))
    }

    /// Stops an instance's service: SIGTERM, then SIGKILL after the grace period.
    async fn stop_instance(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<InstanceObject> {
        let id = checked_id(&id)?;
        Ok(InstanceObject(Arc::new(installer(ctx).stop(id).await?)))
    }

    /// Restarts an instance's service with a new process (no crash is counted).
    async fn restart_instance(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<InstanceObject> {
        let id = checked_id(&id)?;
        Ok(InstanceObject(Arc::new(installer(ctx).restart(id).await?)))
    }

    /// Reads the catalogue again from its source (`--catalogue`), under the same trust policy
    /// as at start, without restarting the agent or any service. When the new one is refused
    /// or unreachable the one in use stays, and the error (`CATALOGUE_REFUSED`) says why.
    async fn reload_catalogue(&self, ctx: &Context<'_>) -> async_graphql::Result<AgentObject> {
        installer(ctx)
            .reload_catalogue()
            .await
            .map_err(|e| error(Code::CatalogueRefused, e.to_string()))?;
        Ok(agent_object(ctx))
    }

    /// Clears the trust-on-first-use pins of a feature (one version, or every version), so
    /// that an artifact whose digest changed can be installed. Returns how many were cleared.
    async fn unpin_feature(
        &self,
        ctx: &Context<'_>,
        feature_id: ID,
        version: Option<String>,
    ) -> async_graphql::Result<i32> {
        if version
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.contains('/'))
        {
            return Err(error(
                Code::InvalidVersion,
                "version must be a plain version string",
            ));
        }
        if !crate::ids::is_feature_id(&feature_id) {
            return Err(error(
                Code::InvalidId,
                format!("{:?} is not a feature id", feature_id.as_str()),
            ));
        }
        let n = installer(ctx).unpin(&feature_id, version.as_deref())?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    /// Moves an instance to another version the catalogue offers (`features { versions }`).
    /// Returns at once with the instance UPDATING; the new binary is staged and verified, the
    /// config checked with it, and the new version must become healthy, or the previous
    /// version is put back (events `service.updated` / `service.update.rolled_back`).
    async fn update_instance(
        &self,
        ctx: &Context<'_>,
        id: ID,
        version: String,
    ) -> async_graphql::Result<InstanceObject> {
        let id = checked_id(&id)?;
        Ok(InstanceObject(Arc::new(
            installer(ctx).update(id, &version).await?,
        )))
    }

    /// Sends LAN devices (IPv4 addresses, IPv4 CIDRs, MAC addresses) through an instance,
    /// transparently: their TCP lands on the service's transparent inbound, every DNS query
    /// on its DNS, their IPv6 is refused. A device routed through another instance moves in
    /// one step. While the service is down they are refused (see `setOnServiceDown`).
    async fn route_devices(
        &self,
        ctx: &Context<'_>,
        instance_id: ID,
        devices: Vec<String>,
    ) -> async_graphql::Result<Vec<DeviceRouteObject>> {
        let id = checked_id(&instance_id)?.to_owned();
        match routing(ctx, Op::Route(id, devices)).await? {
            Reply::Routes(list) => Ok(list.into_iter().map(DeviceRouteObject).collect()),
            _ => Err(unexpected()),
        }
    }

    /// Sends devices out directly again; returns those that were routed.
    async fn unroute_devices(
        &self,
        ctx: &Context<'_>,
        devices: Vec<String>,
    ) -> async_graphql::Result<Vec<String>> {
        match routing(ctx, Op::Unroute(devices)).await? {
            Reply::Devices(list) => Ok(list),
            _ => Err(unexpected()),
        }
    }

    /// What an instance's routed devices do while its service is down: BLOCK (refused, the
    /// default) or DIRECT (sent out directly until it runs again).
    async fn set_on_service_down(
        &self,
        ctx: &Context<'_>,
        instance_id: ID,
        mode: store::OnServiceDown,
    ) -> async_graphql::Result<InstanceObject> {
        let id = checked_id(&instance_id)?.to_owned();
        match routing(ctx, Op::SetOnServiceDown(id, mode)).await? {
            Reply::Instance(inst) => Ok(InstanceObject(Arc::new(*inst))),
            _ => Err(unexpected()),
        }
    }

    /// Turns automatic updates on or off: with it on, an update check that finds a newer
    /// release runs `updateInstance` to it (rolled back like any update when it fails).
    async fn set_auto_update(
        &self,
        ctx: &Context<'_>,
        instance_id: ID,
        enabled: bool,
    ) -> async_graphql::Result<InstanceObject> {
        let id = checked_id(&instance_id)?;
        Ok(InstanceObject(Arc::new(
            installer(ctx).set_auto_update(id, enabled)?,
        )))
    }

    /// Pins one of an instance's servers (a tag from `instance { outbounds }`, or `auto` for
    /// the automatic choice). The new config is checked first, then the service restarts on
    /// it once; if it does not become healthy the previous choice is back.
    async fn select_outbound(
        &self,
        ctx: &Context<'_>,
        instance_id: ID,
        tag: String,
    ) -> async_graphql::Result<InstanceObject> {
        let id = checked_id(&instance_id)?;
        let inst = installer(ctx).select_outbound(id, &tag).await?;
        Ok(InstanceObject(Arc::new(inst)))
    }

    /// Measures the instance's servers now (sing-box's urltest, through each to the probe
    /// URL; at most 10 s) instead of at its next round: `outbounds { latencyMs }` then shows
    /// the results, and the automatic choice follows them. `INVALID_STATE` unless RUNNING
    /// with several servers on sing-box.
    async fn measure_outbounds(
        &self,
        ctx: &Context<'_>,
        instance_id: ID,
    ) -> async_graphql::Result<InstanceObject> {
        let id = checked_id(&instance_id)?;
        let inst = installer(ctx).measure_outbounds(id).await?;
        Ok(InstanceObject(Arc::new(inst)))
    }

    /// Fetches the instance's subscription now. The same servers change nothing; new ones
    /// are applied like `selectOutbound`; a failed fetch, parse or check changes nothing
    /// and says why (the error, `instance { error }`, event `subscription.failed`).
    async fn refresh_subscription(
        &self,
        ctx: &Context<'_>,
        instance_id: ID,
    ) -> async_graphql::Result<InstanceObject> {
        let id = checked_id(&instance_id)?;
        let inst = installer(ctx).refresh_subscription(id).await?;
        Ok(InstanceObject(Arc::new(inst)))
    }

    /// Removes an instance (its process, interface and files); the binary stays while another
    /// instance uses it.
    async fn uninstall_instance(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<UninstallPayload> {
        let id = checked_id(&id)?;
        installer(ctx).uninstall(id).await?;
        Ok(UninstallPayload {
            instance_id: ID(id.to_owned()),
        })
    }
}

pub(crate) struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Progress of one install: the current state first, then every change, ending with
    /// `completed`, `failed` or `verification_failed`.
    async fn install_progress(
        &self,
        ctx: &Context<'_>,
        instance_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = ProgressObject> + use<>> {
        let id = checked_id(&instance_id)?.to_owned();
        let installer = Arc::clone(installer(ctx));
        // Subscribe before reading the current state so no change falls in between.
        let mut rx = installer.bus.subscribe();
        let current = installer
            .progress_of(&id)
            .ok_or_else(|| error(Code::NotFound, format!("no instance {id}")))?;
        Ok(async_stream::stream! {
            let done = current.status.is_terminal();
            yield ProgressObject(current);
            if done {
                return;
            }
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if let (EventKind::InstallProgress(p), Some(iid)) = (&ev.kind, &ev.instance_id)
                            && *iid == id
                        {
                            let done = p.status.is_terminal();
                            yield ProgressObject(p.clone());
                            if done {
                                break;
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        log::warn!(target: "api", "installProgress subscriber lagged by {n} events");
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        })
    }

    /// Lines an instance's service prints, as it prints them.
    async fn logs(
        &self,
        ctx: &Context<'_>,
        instance_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = LogLineObject> + use<>> {
        let id = checked_id(&instance_id)?.to_owned();
        let mut rx = installer(ctx).supervisor.subscribe_logs();
        Ok(async_stream::stream! {
            loop {
                match rx.recv().await {
                    Ok(l) if l.instance_id == id => yield LogLineObject(l),
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        log::warn!(target: "api", "logs subscriber lagged by {n} lines");
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        })
    }

    /// Every event, or those of one instance.
    async fn events(
        &self,
        ctx: &Context<'_>,
        instance_id: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = EventObject> + use<>> {
        let filter = match &instance_id {
            Some(id) => Some(checked_id(id)?.to_owned()),
            None => None,
        };
        let mut rx = installer(ctx).bus.subscribe();
        Ok(async_stream::stream! {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if filter.is_none() || ev.instance_id == filter {
                            yield EventObject(ev);
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        log::warn!(target: "api", "events subscriber lagged by {n} events");
                        // Say so in the stream: a client must not believe it saw everything.
                        yield EventObject(Arc::new(crate::events::Event {
                            seq: 0,
                            at_ms: crate::util::now_ms(),
                            instance_id: None,
                            kind: crate::events::EventKind::Missed { missed: n },
                        }));
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        })
    }
}

#[derive(SimpleObject)]
pub(crate) struct InstallPayload {
    instance_id: ID,
}

#[derive(SimpleObject)]
pub(crate) struct UninstallPayload {
    instance_id: ID,
}

#[derive(SimpleObject)]
#[graphql(name = "Router")]
pub(crate) struct RouterObject {
    id: ID,
    /// `linux` (this machine) or `routeros`.
    kind: String,
    /// Whether the agent reaches the router's API over TLS; false for a RouterOS router means
    /// its password crosses the network in plain text (false for `local`, which needs none).
    tls: bool,
    reachable: bool,
    /// Why it is not reachable.
    error: Option<String>,
}

pub(crate) struct InterfaceObject(Arc<InterfaceRecord>);

#[Object(name = "Interface")]
impl InterfaceObject {
    async fn instance_id(&self) -> ID {
        ID(self.0.instance_id.clone())
    }
    async fn router_id(&self) -> ID {
        ID(self.0.router_id.clone())
    }
    /// The interface holding the router's address (Linux bridge `nnc{N}`, RouterOS VLAN).
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// `nnc-{feature}-{name}`.
    async fn alias(&self) -> &str {
        &self.0.alias
    }
    async fn vlan_id(&self) -> u16 {
        self.0.vlan_id
    }
    /// The router's address on the segment, `10.99.N.1/24`.
    async fn address(&self) -> &str {
        &self.0.address
    }
    /// The service's address, `10.99.N.2`.
    async fn service_address(&self) -> &str {
        &self.0.service_address
    }
    async fn routing_table(&self) -> &str {
        &self.0.routing_table
    }
    /// The service's network namespace (Linux).
    async fn netns(&self) -> Option<&str> {
        self.0.netns.as_deref()
    }
    async fn status(&self) -> IfStatus {
        self.0.status
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}

#[derive(SimpleObject)]
#[graphql(name = "Agent")]
pub(crate) struct AgentObject {
    version: String,
    arch: String,
    catalogue: String,
    /// The catalogue's serial (0 when it has none).
    catalogue_serial: u64,
    /// The trusted key (usign/signify key id, hex) that signed the catalogue, if signed.
    catalogue_signed_by: Option<String>,
    /// The board profile the agent was started with (`--board`), if any.
    board: Option<BoardObject>,
    /// Whether services get cgroup v2 limits (memory, pids, cpu) on this system.
    resource_limits: bool,
    /// What services are confined with on this system, and what it refuses (and why).
    isolation: IsolationObject,
}

/// What confines a service: what applies, and what is missing with the reason.
pub(crate) struct IsolationObject(Arc<Isolation>);

#[Object(name = "Isolation")]
impl IsolationObject {
    /// e.g. "service user", "no_new_privs", "pid namespace", "minimal root", "cgroup".
    async fn applied(&self) -> &[String] {
        &self.0.applied
    }
    async fn missing(&self) -> Vec<IsolationGap> {
        self.0
            .missing
            .iter()
            .map(|(what, why)| IsolationGap {
                what: what.clone(),
                why: why.clone(),
            })
            .collect()
    }
}

#[derive(SimpleObject)]
pub(crate) struct IsolationGap {
    what: String,
    why: String,
}

#[derive(Clone)]
pub(crate) struct BoardObject(Board);

#[Object(name = "Board")]
impl BoardObject {
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    async fn target(&self) -> &str {
        &self.0.target
    }
    async fn arch(&self) -> &str {
        &self.0.arch
    }
    async fn vlan_parent(&self) -> &str {
        &self.0.vlan.parent
    }
    async fn vlan_pool(&self) -> Vec<u16> {
        self.0.vlan.pool.to_vec()
    }
    async fn subnet_base(&self) -> String {
        self.0.vlan.subnet_base.to_string()
    }
    async fn cgroup_root(&self) -> String {
        self.0.cgroup.root.display().to_string()
    }
    async fn memory_max(&self) -> u64 {
        self.0.resources.memory_max
    }
    async fn pids_max(&self) -> u32 {
        self.0.resources.pids_max
    }
    async fn cpu_max(&self) -> &str {
        &self.0.resources.cpu_max
    }
}

pub(crate) struct FeatureObject(Feature, Vec<String>);

#[Object(name = "Feature")]
impl FeatureObject {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The current version (what installFeature installs).
    async fn version(&self) -> &str {
        &self.0.version
    }
    /// Every version the catalogue offers, current first (updateInstance targets).
    async fn versions(&self) -> &[String] {
        &self.1
    }
    async fn binary(&self) -> &str {
        &self.0.binary
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    /// Architecture keys the catalogue has an asset for.
    async fn arches(&self) -> Vec<&str> {
        self.0.assets.keys().map(String::as_str).collect()
    }
    /// Whether this machine's architecture has an asset: `installFeature` needs one.
    async fn supported(&self) -> bool {
        self.0.asset(crate::platform::host_arch()).is_some()
    }
    /// JSON Schema of the settings `installFeature` accepts for it: its config generator's
    /// own when it has one (the catalogue's `settingsSchema` may narrow that further: settings
    /// must match both), else the catalogue's.
    async fn settings_schema(&self) -> Option<Json<Value>> {
        self.0.schema().map(Json)
    }
    /// Whether installing it ends with a running service.
    async fn runs(&self) -> bool {
        self.0.runs()
    }
    /// The latest version its upstream publishes, as the last update check found it (null
    /// before the first check, or without an upstream).
    async fn latest_version(&self, ctx: &Context<'_>) -> Option<String> {
        installer(ctx).latest_version(&self.0.id)
    }
}

pub(crate) struct InstanceObject(Arc<store::Instance>);

#[Object(name = "Instance")]
impl InstanceObject {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn feature_id(&self) -> ID {
        ID(self.0.feature_id.clone())
    }
    async fn router_id(&self) -> ID {
        ID(self.0.router_id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn version(&self) -> &str {
        &self.0.version
    }
    async fn arch(&self) -> &str {
        &self.0.arch
    }
    async fn status(&self) -> Status {
        self.0.status
    }
    /// The step that failed (`downloading`, `verifying`, `installing` ...) when FAILED.
    async fn failed_step(&self) -> Option<&str> {
        self.0.failed_step.map(store::Step::as_str)
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    async fn error_code(&self) -> Option<&str> {
        self.0.error_code.as_deref()
    }
    /// SHA-256 of the verified download.
    async fn sha256(&self) -> Option<&str> {
        self.0.sha256.as_deref()
    }
    async fn binary_path(&self) -> Option<&str> {
        self.0.binary_path.as_deref()
    }
    /// What vouched for the download: `pin`, `checksums` or `pin+checksums`.
    async fn verified_by(&self) -> Option<&str> {
        self.0.verified_by.as_deref()
    }
    /// The settings it was installed with, secrets (`writeOnly` in the schema) redacted;
    /// null when its feature's definition is unknown.
    async fn settings(&self, ctx: &Context<'_>) -> Json<Value> {
        let feature = installer(ctx).feature_for(&self.0, &self.0.version);
        Json(feature.map_or(Value::Null, |f| f.redact(&self.0.settings)))
    }
    async fn created_at(&self) -> String {
        util::rfc3339(self.0.created_at)
    }
    async fn updated_at(&self) -> String {
        util::rfc3339(self.0.updated_at)
    }
    async fn progress(&self, ctx: &Context<'_>) -> Option<ProgressObject> {
        installer(ctx).progress_of(&self.0.id).map(ProgressObject)
    }
    /// The instance's service process, when it is supervised.
    async fn process(&self, ctx: &Context<'_>) -> Option<ProcessObject> {
        installer(ctx)
            .supervisor
            .info(&self.0.id)
            .map(ProcessObject)
    }
    /// What confines its current (or last) process; null before its first start.
    async fn isolation(&self, ctx: &Context<'_>) -> Option<IsolationObject> {
        installer(ctx)
            .supervisor
            .info(&self.0.id)
            .and_then(|p| p.isolation)
            .map(IsolationObject)
    }
    /// Whether the user wants its service running.
    async fn desired_running(&self) -> bool {
        self.0.desired_running
    }
    /// The LAN devices routed through it.
    async fn devices(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        match routing(ctx, Op::DevicesOf(self.0.id.clone())).await? {
            Reply::Devices(list) => Ok(list),
            _ => Err(unexpected()),
        }
    }
    /// What its routed devices do while its service is down.
    async fn on_service_down(&self) -> store::OnServiceDown {
        self.0.on_service_down
    }
    /// Whether an update check found a release newer than its version.
    async fn update_available(&self, ctx: &Context<'_>) -> bool {
        installer(ctx).update_available(&self.0.feature_id, &self.0.version)
    }
    /// Whether a newer release is installed automatically (`setAutoUpdate`).
    async fn auto_update(&self) -> bool {
        self.0.auto_update
    }
    /// Its servers when it has several (`settings.outbounds`, or its subscription's as last
    /// fetched), each under the tag `selectOutbound` takes. No secrets.
    /// `latencyMs` asks the service (sing-box: its urltest's last measurement; at most 2 s).
    async fn outbounds(&self, ctx: &Context<'_>) -> Vec<OutboundObject> {
        let list = crate::install::servers(&self.0);
        let pinned = self.0.selected_outbound.as_deref();
        let delays = if ctx.look_ahead().field("latencyMs").exists() {
            installer(ctx).latencies(&self.0).await
        } else {
            std::collections::HashMap::new()
        };
        crate::configgen::tags(&list)
            .into_iter()
            .zip(&list)
            .map(|(tag, o)| OutboundObject {
                selected: pinned == Some(tag.as_str()),
                latency_ms: delays.get(&tag).copied(),
                tag,
                kind: o["type"].as_str().unwrap_or_default().to_owned(),
                server: o["server"].as_str().unwrap_or_default().to_owned(),
                server_port: o["serverPort"].as_u64().unwrap_or_default(),
            })
            .collect()
    }
    /// The pinned server's tag, `auto` when none is (sing-box picks by latency, Xray the
    /// first), null without a list of servers.
    async fn selected_outbound(&self) -> Option<String> {
        let has_list = !crate::install::servers(&self.0).is_empty();
        has_list.then(|| {
            self.0
                .selected_outbound
                .clone()
                .unwrap_or_else(|| crate::configgen::AUTO.to_owned())
        })
    }
    /// Its subscription's last accepted fetch.
    async fn subscription(&self) -> Option<SubscriptionObject> {
        self.0.fetched.as_ref().map(|f| SubscriptionObject {
            fetched_at: util::rfc3339(f.at),
            servers: f.servers.len(),
            skipped: f.skipped.clone(),
        })
    }
    /// The instance's network segment, when its router has interfaces.
    async fn interface(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<InterfaceObject>> {
        let rec = installer(ctx)
            .interfaces
            .interface_shared(&self.0.id)
            .map_err(|e| error(e.code(), e.to_string()))?;
        Ok(rec.map(InterfaceObject))
    }
}

/// A device on the LAN, as the router's DHCP server or neighbour table knows it.
#[derive(SimpleObject)]
#[graphql(name = "LanDevice")]
pub(crate) struct LanDeviceObject {
    address: String,
    mac: String,
    hostname: Option<String>,
    /// `dhcp` (a lease) or `neighbour` (seen on the link).
    source: String,
    /// The link it was seen on.
    interface: Option<String>,
}

pub(crate) struct DeviceRouteObject(store::DeviceRoute);

#[Object(name = "DeviceRoute")]
impl DeviceRouteObject {
    /// The device as the agent spells it (normalised).
    async fn device(&self) -> &str {
        &self.0.device
    }
    async fn instance_id(&self) -> ID {
        ID(self.0.instance_id.clone())
    }
    /// When it was routed through this instance.
    async fn since(&self) -> String {
        util::rfc3339(self.0.since)
    }
}

pub(crate) struct ProcessObject(ProcessInfo);

#[Object(name = "Process")]
impl ProcessObject {
    async fn state(&self) -> ProcState {
        self.0.state
    }
    async fn pid(&self) -> Option<i32> {
        self.0.pid
    }
    async fn restart_count(&self) -> u32 {
        self.0.restart_count
    }
    async fn last_exit_code(&self) -> Option<i32> {
        self.0.last_exit_code
    }
    async fn last_signal(&self) -> Option<i32> {
        self.0.last_signal
    }
    async fn started_at(&self) -> Option<String> {
        self.0.started_at.map(util::rfc3339)
    }
    async fn next_restart_at(&self) -> Option<String> {
        self.0.next_restart_at.map(util::rfc3339)
    }
}

pub(crate) struct LogLineObject(LogLine);

#[Object(name = "LogLine")]
impl LogLineObject {
    async fn instance_id(&self) -> ID {
        ID(self.0.instance_id.clone())
    }
    /// `stdout`, `stderr`, or `agent` (a line the agent wrote, e.g. why a start failed).
    async fn stream(&self) -> &str {
        self.0.stream
    }
    async fn line(&self) -> &str {
        &self.0.line
    }
    async fn at(&self) -> String {
        util::rfc3339(self.0.at_ms)
    }
}

/// One of an instance's servers.
#[derive(async_graphql::SimpleObject)]
#[graphql(name = "Outbound")]
pub(crate) struct OutboundObject {
    tag: String,
    #[graphql(name = "type")]
    kind: String,
    server: String,
    server_port: u64,
    /// Pinned by `selectOutbound`.
    selected: bool,
    /// The last measured delay through it (sing-box's urltest); null when unknown or the
    /// last test failed.
    latency_ms: Option<u64>,
}

/// What an instance's subscription held when it was last fetched and accepted.
#[derive(async_graphql::SimpleObject)]
#[graphql(name = "Subscription")]
pub(crate) struct SubscriptionObject {
    fetched_at: String,
    /// Usable servers.
    servers: usize,
    /// The links that were not usable: `line N: why`.
    skipped: Vec<String>,
}

pub(crate) struct ProgressObject(Progress);

#[Object(name = "InstallProgress")]
impl ProgressObject {
    async fn instance_id(&self) -> ID {
        ID(self.0.instance_id.clone())
    }
    async fn feature_id(&self) -> ID {
        ID(self.0.feature_id.clone())
    }
    async fn status(&self) -> ProgressStatus {
        self.0.status
    }
    /// 0–100, one decimal.
    async fn percent(&self) -> f64 {
        self.0.percent
    }
    async fn bytes_downloaded(&self) -> u64 {
        self.0.bytes_downloaded
    }
    async fn total_bytes(&self) -> Option<u64> {
        self.0.total_bytes
    }
}

pub(crate) struct EventObject(Arc<Event>);

#[Object(name = "Event")]
impl EventObject {
    /// Increases by one per event on this agent: a gap means the subscriber missed some.
    async fn seq(&self) -> u64 {
        self.0.seq
    }
    /// `service.install.progress`, `service.installed`, `service.install.failed` ...
    #[graphql(name = "type")]
    async fn kind(&self) -> &str {
        self.0.kind.name()
    }
    async fn instance_id(&self) -> Option<ID> {
        self.0.instance_id.clone().map(ID)
    }
    async fn at(&self) -> String {
        util::rfc3339(self.0.at_ms)
    }
    async fn payload(&self) -> Json<Value> {
        Json(self.0.payload())
    }
}

#[cfg(test)]
mod tests {
    /// Clients generate their types from the checked-in SDL: it must be the schema served.
    #[test]
    fn checked_in_sdl_is_the_schema() {
        let checked_in = include_str!("../../schema.graphql");
        assert!(
            super::sdl() == checked_in,
            "schema.graphql differs from the schema: run `cargo run -- schema > schema.graphql` and review the diff"
        );
    }
}
