//! Device routing: LAN devices sent through an instance, fail-closed by construction.
//!
//! The routes are redb records (`device -> instance`); what the kernel holds is derived from
//! them and replaced whole at every change (`nft.rs`): one nftables transaction, so moving a
//! device from one instance to another has no moment in between, plus a lookup and a
//! refusing `ip rule` per IPv4 device by source (`source_rules`), which hold without the
//! nftables table. The policy rules that turn an instance's mark into "its table, or
//! refused" belong to its segment (`vif`), so they exist whether or not the agent, the
//! service or the routes' own rules are there.
//!
//! Order: a change is committed to redb first, then applied; when applying fails, the old
//! records are put back and applied again. At agent start the saved routes are applied
//! before any service starts (routes of instances that are gone are dropped).
//!
//! Only `unrouteDevices`, uninstall (after the service is gone), or `onServiceDown: DIRECT`
//! while the service is down send a device's traffic out directly.

mod conntrack;
pub(crate) mod device;
pub(crate) mod lan;
mod nft;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::code::Code;
use crate::events::{Bus, EventKind};
use crate::store::{DeviceRoute, IfStatus, OnServiceDown, Store};
use crate::util::{self, Locked};
use crate::vif::InterfaceFactory;
use device::Device;

/// A refused or failed routing request.
#[derive(Debug, Clone)]
pub(crate) struct RouteError {
    pub code: Code,
    pub message: String,
}

fn fail(code: Code, message: impl Into<String>) -> RouteError {
    RouteError {
        code,
        message: message.into(),
    }
}

impl From<crate::store::StoreError> for RouteError {
    fn from(e: crate::store::StoreError) -> Self {
        fail(Code::StateError, e.to_string())
    }
}

/// `[routing]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    /// A copy of the router's rules for the boot firewall to load before the agent starts
    /// (fw4: `/usr/share/nftables.d/ruleset-post/nnc-agent.nft`, the default where fw4 is).
    pub boot_rules: Option<PathBuf>,
}

pub(crate) struct Routing {
    settings: Settings,
    store: Store,
    bus: Bus,
    interfaces: Arc<InterfaceFactory>,
    /// Serialises changes; holds the instances whose service is running now (what an
    /// `onServiceDown: DIRECT` instance's devices depend on).
    up: Mutex<BTreeSet<String>>,
    /// What the last applied rules mark or refuse, as (VLAN id, or 0 for refused; device):
    /// a device new here has its tracked connections ended (`conntrack`). Empty at start and
    /// after a repair, when the kernel's state before is unknown.
    guarded: Mutex<Vec<(u16, Device)>>,
    /// Whether `watch` runs: from the first route on (an agent with nothing routed has
    /// nothing to put back, and keeps the thread's memory).
    watching: std::sync::atomic::AtomicBool,
}

/// A routing call, run off the runtime thread by [`Routing::call`] (it commits to redb and
/// runs nft). One enum rather than a closure per caller: each closure type would be a
/// separate copy of tokio's blocking-task machinery in the binary.
pub(crate) enum Op {
    Routes,
    DevicesOf(String),
    Route(String, Vec<String>),
    Unroute(Vec<String>),
    DropInstance(String),
    SetOnServiceDown(String, OnServiceDown),
    ServiceState(String, bool),
    Restore,
}

pub(crate) enum Reply {
    Routes(Vec<DeviceRoute>),
    Devices(Vec<String>),
    Instance(Box<crate::store::Instance>),
    Count(usize),
}

/// Parses every device of a request; the first bad one refuses it all.
pub(crate) fn parse_all(devices: &[String]) -> Result<Vec<Device>, RouteError> {
    if devices.is_empty() || devices.len() > 1024 {
        return Err(fail(
            Code::InvalidDevice,
            "give 1 to 1024 devices (IPv4 addresses, IPv4 CIDRs or MAC addresses)",
        ));
    }
    let mut out: Vec<Device> = Vec::new();
    for text in devices {
        let d = Device::parse(text).map_err(|m| fail(Code::InvalidDevice, m))?;
        if let Some(other) = out.iter().find(|o| **o != d && o.overlaps(&d)) {
            return Err(fail(
                Code::InvalidDevice,
                format!("{d} and {other} overlap: name each device once"),
            ));
        }
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

impl Routing {
    pub(crate) fn new(
        store: Store,
        bus: Bus,
        interfaces: Arc<InterfaceFactory>,
        settings: Settings,
    ) -> Routing {
        Routing {
            settings,
            store,
            bus,
            interfaces,
            up: Mutex::new(BTreeSet::new()),
            guarded: Mutex::new(Vec::new()),
            watching: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Runs `op` on a blocking thread.
    pub(crate) async fn call(self: &Arc<Self>, op: Op) -> Result<Reply, RouteError> {
        let this = Arc::clone(self);
        let reply = crate::util::blocking(move || this.run(op)).await;
        self.watch_if_routed();
        reply
    }

    /// Starts `watch` once something is routed (at start: before the routes are applied).
    pub(crate) fn watch_if_routed(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.watching.load(Ordering::Relaxed)
            || self.store.device_routes().map_or(true, |r| r.is_empty())
        {
            return;
        }
        if !self.watching.swap(true, Ordering::Relaxed) {
            watch::start(Arc::clone(self));
        }
    }

    fn run(&self, op: Op) -> Result<Reply, RouteError> {
        Ok(match op {
            Op::Routes => Reply::Routes(self.routes()?),
            Op::DevicesOf(id) => Reply::Devices(self.devices_of(&id)?),
            Op::Route(id, devices) => Reply::Routes(self.route(&id, &devices)?),
            Op::Unroute(devices) => Reply::Devices(self.unroute(&devices)?),
            Op::DropInstance(id) => {
                self.drop_instance(&id)?;
                Reply::Count(0)
            }
            Op::SetOnServiceDown(id, mode) => {
                Reply::Instance(Box::new(self.set_on_service_down(&id, mode)?))
            }
            Op::ServiceState(id, running) => {
                self.service_state(&id, running);
                Reply::Count(0)
            }
            Op::Restore => Reply::Count(self.restore()?),
        })
    }

    pub(crate) fn routes(&self) -> Result<Vec<DeviceRoute>, RouteError> {
        Ok(self.store.device_routes()?)
    }

    /// The devices routed through `instance_id`.
    pub(crate) fn devices_of(&self, instance_id: &str) -> Result<Vec<String>, RouteError> {
        Ok(self
            .store
            .device_routes()?
            .into_iter()
            .filter(|r| r.instance_id == instance_id)
            .map(|r| r.device)
            .collect())
    }

    /// Routes `devices` through `instance_id` (moving any routed through another instance).
    pub(crate) fn route(
        &self,
        instance_id: &str,
        devices: &[String],
    ) -> Result<Vec<DeviceRoute>, RouteError> {
        let wanted = parse_all(devices)?;
        let up = self.up.locked();
        let inst = self
            .store
            .instance(instance_id)?
            .ok_or_else(|| fail(Code::NotFound, format!("no instance {instance_id}")))?;
        if inst.status == crate::store::Status::Uninstalling {
            return Err(fail(
                Code::InvalidState,
                format!("instance {instance_id} is being uninstalled"),
            ));
        }
        let router = self.interfaces.router(&inst.router_id).ok_or_else(|| {
            fail(
                Code::UnknownRouter,
                format!("router {} is not configured", inst.router_id),
            )
        })?;
        if router.kind() == "routeros"
            && let Some(mac) = wanted.iter().find(|d| matches!(d, Device::Mac(_)))
        {
            return Err(fail(
                Code::RoutingUnsupported,
                format!(
                    "instance {instance_id} is on RouterOS router {}: route {mac} by its IPv4 address (MAC addresses are routed on Linux routers only)",
                    inst.router_id
                ),
            ));
        }
        match self.store.interface(instance_id)? {
            Some(rec) if rec.status == IfStatus::Active => {}
            other => {
                return Err(fail(
                    Code::InvalidState,
                    format!(
                        "instance {instance_id} ({}) has no active segment{}: devices can be routed once it is provisioned",
                        inst.status.as_str(),
                        other
                            .map(|r| format!(" (interface {:?})", r.status))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        let before = self.store.device_routes()?;
        for d in &wanted {
            if d.overlaps_block(router.subnet_base, 16) {
                return Err(fail(
                    Code::InvalidDevice,
                    format!(
                        "{d} is inside {}/16, the agent's own segments",
                        router.subnet_base
                    ),
                ));
            }
            for r in &before {
                let Ok(other) = Device::parse(&r.device) else {
                    continue;
                };
                if other != *d && other.overlaps(d) {
                    return Err(fail(
                        Code::InvalidDevice,
                        format!(
                            "{d} overlaps {}, routed through instance {}: unroute it first",
                            r.device, r.instance_id
                        ),
                    ));
                }
            }
        }
        let now = util::now_ms();
        let put: Vec<DeviceRoute> = wanted
            .iter()
            .map(|d| {
                let device = d.to_string();
                let since = before
                    .iter()
                    .find(|r| r.device == device && r.instance_id == instance_id)
                    .map_or(now, |r| r.since);
                DeviceRoute {
                    device,
                    instance_id: instance_id.to_owned(),
                    since,
                }
            })
            .collect();
        self.commit_and_apply(&before, &put, &[], &up)?;
        for r in &put {
            let from = before
                .iter()
                .find(|b| b.device == r.device)
                .map(|b| b.instance_id.clone());
            if from.as_deref() == Some(instance_id) {
                continue;
            }
            log::info!(target: "routing", "device {} routed through instance {instance_id}{}", r.device, from.as_ref().map(|f| format!(" (moved from {f})")).unwrap_or_default());
            if let Some(f) = &from {
                self.bus.publish(
                    Some(f),
                    EventKind::DeviceUnrouted {
                        device: r.device.clone(),
                        moved_to: Some(instance_id.to_owned()),
                    },
                );
            }
            self.bus.publish(
                Some(instance_id),
                EventKind::DeviceRouted {
                    device: r.device.clone(),
                    moved_from: from,
                },
            );
        }
        Ok(put)
    }

    /// Sends `devices` out directly again; returns those that were routed.
    pub(crate) fn unroute(&self, devices: &[String]) -> Result<Vec<String>, RouteError> {
        let wanted = parse_all(devices)?;
        let up = self.up.locked();
        let before = self.store.device_routes()?;
        let names: Vec<String> = wanted.iter().map(ToString::to_string).collect();
        let gone: Vec<DeviceRoute> = before
            .iter()
            .filter(|r| names.contains(&r.device))
            .cloned()
            .collect();
        self.remove_routes(&before, &gone, &up)?;
        Ok(gone.into_iter().map(|r| r.device).collect())
    }

    /// Uninstall, once the service is gone: its devices go out directly again.
    pub(crate) fn drop_instance(&self, instance_id: &str) -> Result<(), RouteError> {
        let mut up = self.up.locked();
        up.remove(instance_id);
        let before = self.store.device_routes()?;
        let gone: Vec<DeviceRoute> = before
            .iter()
            .filter(|r| r.instance_id == instance_id)
            .cloned()
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        self.remove_routes(&before, &gone, &up)
    }

    fn remove_routes(
        &self,
        before: &[DeviceRoute],
        gone: &[DeviceRoute],
        up: &BTreeSet<String>,
    ) -> Result<(), RouteError> {
        if gone.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = gone.iter().map(|r| r.device.clone()).collect();
        self.commit_and_apply(before, &[], &keys, up)?;
        for r in gone {
            log::info!(target: "routing", "device {} no longer routed through instance {}", r.device, r.instance_id);
            self.bus.publish(
                Some(&r.instance_id),
                EventKind::DeviceUnrouted {
                    device: r.device.clone(),
                    moved_to: None,
                },
            );
        }
        Ok(())
    }

    /// Commits the change, applies the result; on failure puts `before` back (records and
    /// kernel) and reports why.
    fn commit_and_apply(
        &self,
        before: &[DeviceRoute],
        put: &[DeviceRoute],
        remove: &[String],
        up: &BTreeSet<String>,
    ) -> Result<(), RouteError> {
        self.store.change_routes(put, remove)?;
        let after = self.store.device_routes()?;
        if let Err(e) = self.apply(&after, up, Some(before)) {
            log::error!(target: "routing", "applying the routes failed, putting the previous ones back: {e}");
            let touched: Vec<String> = put
                .iter()
                .map(|r| r.device.clone())
                .chain(remove.iter().cloned())
                .collect();
            let restore: Vec<DeviceRoute> = before
                .iter()
                .filter(|r| touched.contains(&r.device))
                .cloned()
                .collect();
            self.store.change_routes(&restore, &touched)?;
            if let Err(again) = self.apply(before, up, Some(&after)) {
                log::error!(target: "routing", "the previous routes could not be applied either: {again}");
            }
            return Err(fail(Code::RoutingFailed, e));
        }
        Ok(())
    }

    /// `onServiceDown` of an instance.
    pub(crate) fn set_on_service_down(
        &self,
        instance_id: &str,
        mode: OnServiceDown,
    ) -> Result<crate::store::Instance, RouteError> {
        let up = self.up.locked();
        let (before, after) = self
            .store
            .update_instance(instance_id, |i| i.on_service_down = mode)
            .map_err(|e| match e {
                crate::store::StoreError::NotFound => {
                    fail(Code::NotFound, format!("no instance {instance_id}"))
                }
                other => other.into(),
            })?;
        if before.on_service_down != mode {
            log::info!(target: "routing", "instance {instance_id}: onServiceDown {mode:?}");
            let routes = self.store.device_routes()?;
            if let Err(e) = self.apply(&routes, &up, Some(&[])) {
                let _ = self
                    .store
                    .update_instance(instance_id, |i| i.on_service_down = before.on_service_down);
                let _ = self.apply(&routes, &up, Some(&[]));
                return Err(fail(Code::RoutingFailed, e));
            }
        }
        Ok(after)
    }

    /// The supervisor says whether an instance's service runs; DIRECT instances follow it.
    pub(crate) fn service_state(&self, instance_id: &str, running: bool) {
        let mut up = self.up.locked();
        let changed = if running {
            up.insert(instance_id.to_owned())
        } else {
            up.remove(instance_id)
        };
        let direct = self
            .store
            .instance(instance_id)
            .ok()
            .flatten()
            .is_some_and(|i| i.on_service_down == OnServiceDown::Direct);
        if !changed || !direct {
            return;
        }
        let Ok(routes) = self.store.device_routes() else {
            return;
        };
        if !routes.iter().any(|r| r.instance_id == instance_id) {
            return;
        }
        log::info!(target: "routing", "instance {instance_id} (onServiceDown DIRECT): service {}; its devices go {}", if running { "running" } else { "down" }, if running { "through it" } else { "out directly" });
        if let Err(e) = self.apply(&routes, &up, Some(&[])) {
            log::error!(target: "routing", "instance {instance_id}: {e}");
        }
    }

    /// Another program deleted or changed the agent's nftables table (`watch`): puts the
    /// routes back as the records say.
    pub(crate) fn repair(&self) {
        let up = self.up.locked();
        let routes = match self.store.device_routes() {
            Ok(r) => r,
            Err(e) => {
                log::error!(target: "routing", "cannot read the device routes to repair them: {e}");
                return;
            }
        };
        if routes.is_empty() {
            return;
        }
        log::warn!(target: "routing", "another program deleted or changed the agent's nftables table (a `nft flush ruleset`?); putting back the rules of {} routed device(s)", routes.len());
        // Meanwhile MAC-routed devices went out directly: their connections end too.
        self.guarded.locked().clear();
        if let Err(e) = self.apply(&routes, &up, Some(&[])) {
            log::error!(target: "routing", "cannot put the agent's nftables table back: {e}");
        }
    }

    /// Agent start, before services start: drops routes of instances that are gone and puts
    /// the rest in place.
    pub(crate) fn restore(&self) -> Result<usize, RouteError> {
        let up = self.up.locked();
        let routes = self.store.device_routes()?;
        let orphans: Vec<String> = routes
            .iter()
            .filter(|r| self.store.instance(&r.instance_id).ok().flatten().is_none())
            .map(|r| r.device.clone())
            .collect();
        if !orphans.is_empty() {
            log::warn!(target: "routing", "dropping routes of instances that are gone: {}", orphans.join(", "));
            self.store.change_routes(&[], &orphans)?;
        }
        let routes = self.store.device_routes()?;
        match self.apply(&routes, &up, None) {
            Ok(()) => Ok(routes.len()),
            // Nothing routed: a system without nft (or nf_tables) has nothing to remove.
            Err(e) if routes.is_empty() => {
                log::debug!(target: "routing", "no routes; clearing the agent's table: {e}");
                Ok(0)
            }
            Err(e) => Err(fail(Code::RoutingFailed, e)),
        }
    }

    /// Puts the kernel's rules (and RouterOS routers' address lists) in the state `routes`
    /// describe. `also` are routes whose routers must be brought in line too (the state
    /// before a change: a router whose last route went away); `None` syncs every RouterOS
    /// router (at start).
    fn apply(
        &self,
        routes: &[DeviceRoute],
        up: &BTreeSet<String>,
        also: Option<&[DeviceRoute]>,
    ) -> Result<(), String> {
        let router_of = |id: &str| {
            self.store
                .instance(id)
                .ok()
                .flatten()
                .map_or_else(|| crate::ids::LOCAL_ROUTER.to_owned(), |i| i.router_id)
        };
        let is_routeros = |router: &str| {
            self.interfaces
                .router(router)
                .is_some_and(|r| r.kind() == "routeros")
        };
        let mut lists: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
        match also {
            Some(also) => {
                for r in routes.iter().chain(also) {
                    let router = router_of(&r.instance_id);
                    if is_routeros(&router) {
                        lists.entry(router).or_default();
                    }
                }
            }
            None => {
                for r in self.interfaces.routers().filter(|r| r.kind() == "routeros") {
                    lists.entry(r.id.clone()).or_default();
                }
            }
        }
        let mut by_instance: BTreeMap<&str, Vec<Device>> = BTreeMap::new();
        for r in routes {
            let router = router_of(&r.instance_id);
            if is_routeros(&router) {
                let rec = self
                    .store
                    .interface(&r.instance_id)
                    .map_err(|e| e.to_string())?;
                let direct = !up.contains(&r.instance_id) && self.is_direct(&r.instance_id);
                if let (Some(rec), false) = (rec, direct) {
                    lists.entry(router).or_default().push((
                        rec.alias.clone(),
                        r.device.clone(),
                        format!("nnc:{}", r.instance_id),
                    ));
                }
                continue;
            }
            if let Ok(d) = Device::parse(&r.device) {
                by_instance.entry(&r.instance_id).or_default().push(d);
            }
        }
        self.apply_linux(by_instance, up)?;
        for (router, want) in &lists {
            self.interfaces
                .sync_device_lists(router, want)
                .map_err(|e| format!("router {router}: {e}"))?;
        }
        Ok(())
    }

    fn is_direct(&self, id: &str) -> bool {
        self.store
            .instance(id)
            .ok()
            .flatten()
            .is_some_and(|i| i.on_service_down == OnServiceDown::Direct)
    }

    /// The local router's part: nft in the service namespaces and on the router.
    fn apply_linux(
        &self,
        by_instance: BTreeMap<&str, Vec<Device>>,
        up: &BTreeSet<String>,
    ) -> Result<(), String> {
        let mut groups = Vec::new();
        let mut refused = Vec::new();
        let mut namespaces: Vec<(PathBuf, Ipv4Addr)> = Vec::new();
        for (id, devices) in by_instance {
            let rec = self.store.interface(id).map_err(|e| e.to_string())?;
            let service = rec
                .as_ref()
                .and_then(|r| r.service_address.parse::<Ipv4Addr>().ok());
            let (Some(rec), Some(service)) = (rec, service) else {
                // No segment to send them to: refused, never direct.
                refused.extend(devices);
                continue;
            };
            let direct = !up.contains(id) && self.is_direct(id);
            if let Some(ns) = &rec.netns {
                namespaces.push((PathBuf::from(ns), service));
            }
            groups.push(nft::Group {
                vlan: rec.vlan_id,
                mark: crate::vif::mark(rec.vlan_id),
                bridge: rec.name.clone(),
                service,
                devices,
                direct,
            });
        }
        // The namespaces first: a device is marked only once its service side is ready.
        for (ns, service) in &namespaces {
            nft::apply(&nft::service_ruleset(*service), Some(ns))?;
        }
        source_rules(&groups, &refused)?;
        let rules = nft::router_ruleset(&groups, &refused, &nft::learned());
        nft::apply(&rules, None)?;
        self.end_connections_of_new(&groups, &refused);
        if let Some(path) = &self.settings.boot_rules {
            // The kernel has the rules already: a copy that cannot be written is reported,
            // not a reason to undo them.
            let keep = (!groups.is_empty() || !refused.is_empty()).then_some(&rules);
            if let Err(e) = keep_for_boot(path, keep) {
                log::error!(target: "routing", "cannot keep the rules for the boot firewall: {e}");
            }
        }
        Ok(())
    }
}

impl Routing {
    /// Ends the tracked connections of the devices the rules just applied mark or refuse and
    /// the previous ones did not (routed, moved, or back from DIRECT): an offloaded one would
    /// go on leaving directly. A failure is logged: the rules stand.
    fn end_connections_of_new(&self, groups: &[nft::Group], refused: &[Device]) {
        let now: Vec<(u16, Device)> = groups
            .iter()
            .filter(|g| !g.direct)
            .flat_map(|g| g.devices.iter().map(|d| (g.vlan, *d)))
            .chain(refused.iter().map(|d| (0, *d)))
            .collect();
        let fresh: Vec<Device> = {
            let mut guarded = self.guarded.locked();
            let fresh = now
                .iter()
                .filter(|k| !guarded.contains(k))
                .map(|(_, d)| *d)
                .collect();
            *guarded = now;
            fresh
        };
        if fresh.is_empty() {
            return;
        }
        match conntrack::end_connections(&fresh) {
            Ok((ended, refused)) => {
                if ended > 0 {
                    log::info!(target: "routing", "ended {ended} connection(s) the newly routed device(s) had (they would have kept their old path)");
                }
                if refused > 0 {
                    log::warn!(target: "routing", "the kernel would not end {refused} offloaded connection(s) of the newly routed device(s) (kernels before 5.10.182, 5.15.115 and 6.1.32 refuse): they keep their direct path until they end");
                }
            }
            Err(e) => {
                log::warn!(target: "routing", "cannot end the connections of the newly routed device(s) ({e}): a connection a flowtable offloaded keeps its direct path until it ends");
            }
        }
    }
}

/// The policy rules by source address of the IPv4 devices (MAC devices have only the mark):
/// `from D lookup <its table>`, then `from D prohibit`, so a routed address never reaches the
/// main table, nftables table or not (someone's `nft flush ruleset`). Devices of an instance
/// without a segment get only the refusing rule; those of a DIRECT instance that is down
/// none.
fn source_rules(groups: &[nft::Group], refused: &[Device]) -> Result<(), String> {
    use crate::vif::netlink::{DEVICE_RULE_PREFS, Netlink, Rule, Select};
    let [lookup, prohibit] = DEVICE_RULE_PREFS;
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    // A source rule also matches what the router itself sends from that address: a block
    // holding one of the router's own addresses (the whole LAN, say) keeps only the marks,
    // which see arriving packets alone, so the router still answers its LAN.
    let own = nl.local_addresses().map_err(|e| e.to_string())?;
    let v4 = |d: &Device| match *d {
        Device::V4 { net, prefix } => {
            let mine = own.iter().find(|a| d.holds(**a));
            if let Some(a) = mine {
                log::warn!(target: "routing", "{d} holds the router's own address {a}: routed by its marks only (no source rules)");
                return None;
            }
            Some(Select::From(net, prefix))
        }
        Device::Mac(_) => None,
    };
    let mut want = Vec::new();
    for g in groups.iter().filter(|g| !g.direct) {
        let table = Some(crate::vif::netlink::table(g.vlan));
        for select in g.devices.iter().filter_map(v4) {
            want.push(Rule {
                pref: lookup,
                select,
                table,
            });
            want.push(Rule {
                pref: prohibit,
                select,
                table: None,
            });
        }
    }
    for select in refused.iter().filter_map(v4) {
        want.push(Rule {
            pref: prohibit,
            select,
            table: None,
        });
    }
    nl.sync_rules(&DEVICE_RULE_PREFS, &want)
        .map_err(|e| e.to_string())
}

/// Writes the rules nft just accepted where the boot firewall loads them (through a temp
/// file, so it never reads half of them), or removes the file when nothing is routed. After
/// a reboot the segments are not there yet, so the guard rules refuse routed devices until
/// the agent has started.
fn keep_for_boot(path: &std::path::Path, rules: Option<&String>) -> Result<(), String> {
    use std::io::Write as _;
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let Some(rules) = rules else {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(e)),
            _ => Ok(()),
        };
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(b"# written by nnc-agent: its device-routing rules, loaded at boot\n")
        .and_then(|()| f.write_all(rules.as_bytes()))
        .and_then(|()| f.sync_all())
        .map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
