//! The interface factory: gives each instance its own routable segment on its router — a VLAN,
//! the router's address 10.99.N.1/24, a routing table whose default route is the service at
//! 10.99.N.2 — and takes it away again, leaving nothing behind.
//!
//! `create` records the interface as CREATING before touching the router, performs the steps
//! with a LIFO undo stack (`Rollback`), sweeps anything tagged for the instance if a step
//! failed, and only then records ACTIVE. VLAN ids come from a per-router pool held in redb.
//! At start, `reconcile` rolls back what a crash left CREATING, removes tagged objects nobody
//! owns, and recreates (or marks BROKEN) ACTIVE interfaces whose objects vanished.
//!
//! Backends: `netlink` (the Linux router the agent runs on) and `routeros` (a MikroTik router
//! reached through its API). Everything here is blocking; callers run it off the runtime thread.

pub(crate) mod netlink;
pub(crate) mod routeros;
pub(crate) mod rtnl;
mod settings;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::code::Code;
use crate::events::{Bus, EventKind};
use crate::store::{IfStatus, InterfaceRecord, Store, StoreError};
use crate::util;
pub(crate) use netlink::{MARK_MASK, mark};
pub(crate) use settings::{LocalSettings, RouterSettings, VlanMode, routers};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VifError {
    /// Every VLAN id of the router's pool is in use.
    PoolExhausted { router: String, pool: [u16; 2] },
    /// The router cannot be reached or refused the login.
    Unreachable(String),
    /// A backend step failed (netlink error, RouterOS trap ...).
    Backend(String),
    /// A test asked for a failure here.
    Injected(String),
    /// The agent's own state could not be read or written.
    State(String),
}

impl VifError {
    pub(crate) fn code(&self) -> Code {
        match self {
            VifError::PoolExhausted { .. } => Code::VlanPoolExhausted,
            VifError::Unreachable(_) => Code::UnreachableRouter,
            VifError::Backend(_) | VifError::Injected(_) => Code::ProvisioningFailed,
            VifError::State(_) => Code::StateError,
        }
    }
}

impl std::fmt::Display for VifError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VifError::PoolExhausted { router, pool } => write!(
                f,
                "every VLAN id of router {router}'s pool {}-{} is in use",
                pool[0], pool[1]
            ),
            VifError::Unreachable(m)
            | VifError::Backend(m)
            | VifError::Injected(m)
            | VifError::State(m) => f.write_str(m),
        }
    }
}

impl From<StoreError> for VifError {
    fn from(e: StoreError) -> Self {
        VifError::State(e.to_string())
    }
}

/// A LIFO stack of undo actions: what a failed sequence must take back, newest first.
pub(crate) struct Rollback<U> {
    steps: Vec<(String, U)>,
}

impl<U> Rollback<U> {
    pub(crate) fn new() -> Rollback<U> {
        Rollback { steps: Vec::new() }
    }

    pub(crate) fn push(&mut self, what: String, undo: U) {
        self.steps.push((what, undo));
    }

    /// Undoes every step in reverse order, carrying on past failures; returns what could not
    /// be undone.
    pub(crate) fn run(mut self, mut undo: impl FnMut(&U) -> Result<(), VifError>) -> Vec<String> {
        let mut failed = Vec::new();
        while let Some((what, u)) = self.steps.pop() {
            match undo(&u) {
                Ok(()) => log::info!(target: "interface-factory", "rolled back {what}"),
                Err(e) => {
                    log::warn!(target: "interface-factory", "cannot roll back {what}: {e}");
                    failed.push(format!("{what}: {e}"));
                }
            }
        }
        failed
    }
}

/// Everything the backends need to build one instance's segment.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub instance_id: String,
    pub vlan_id: u16,
    /// `nnc-{feature}-{name}`: the VLAN name on RouterOS, the alias on Linux, the table name.
    pub alias: String,
    pub router_addr: Ipv4Addr,
    pub service_addr: Ipv4Addr,
}

impl Plan {
    fn new(
        instance_id: &str,
        feature: &str,
        name: &str,
        vlan_id: u16,
        subnet_base: Ipv4Addr,
    ) -> Plan {
        let [a, b, _, _] = subnet_base.octets();
        // The pool is validated to fit one octet, so the id is the subnet's third octet.
        let n = u8::try_from(vlan_id).unwrap_or(u8::MAX);
        Plan {
            instance_id: instance_id.to_owned(),
            vlan_id,
            alias: format!("nnc-{feature}-{name}"),
            router_addr: Ipv4Addr::new(a, b, n, 1),
            service_addr: Ipv4Addr::new(a, b, n, 2),
        }
    }

    /// `nnc:{instance}`: the tag every object carries so reconcile can find it.
    pub(crate) fn tag(&self) -> String {
        format!("nnc:{}", self.instance_id)
    }

    /// The Linux alias: the readable name and the tag.
    pub(crate) fn alias_tag(&self) -> String {
        format!("{} {}", self.alias, self.tag())
    }

    /// Failpoint at the start of step `k` (1-based) of `create`.
    pub(crate) fn step(&self, k: usize) -> Result<(), VifError> {
        crate::failpoint::hit(&format!("vif.create.{k}")).map_err(VifError::Injected)
    }
}

/// The instance id in a tag (`... nnc:0123456789abcdef ...`), if any.
pub(crate) fn tag_in(s: &str) -> Option<&str> {
    let at = s.find("nnc:")?;
    let id = s.get(at + 4..at + 20)?;
    crate::ids::is_instance_id(id).then_some(id)
}

pub(crate) enum Backend {
    Linux(netlink::Linux),
    RouterOs(routeros::RouterOs),
}

impl Backend {
    fn kind(&self) -> &'static str {
        match self {
            Backend::Linux(_) => "linux",
            Backend::RouterOs(_) => "routeros",
        }
    }

    /// Performs every step, undoing (in reverse) what was done if one fails. Returns the
    /// RouterOS `.id`s of what was made (empty on Linux).
    fn create(&self, plan: &Plan) -> Result<Vec<String>, (VifError, Vec<String>)> {
        match self {
            Backend::Linux(b) => {
                let mut rollback = Rollback::new();
                match b.create(plan, &mut rollback) {
                    Ok(()) => Ok(Vec::new()),
                    Err(e) => Err((e, rollback.run(|u| b.undo(u)))),
                }
            }
            Backend::RouterOs(b) => {
                let mut rollback = Rollback::new();
                match b.create(plan, &mut rollback) {
                    Ok(ids) => Ok(ids),
                    Err(e) => Err((e, rollback.run(|u| b.undo(u)))),
                }
            }
        }
    }

    fn remove(&self, plan: &Plan) -> Result<(), VifError> {
        match self {
            Backend::Linux(b) => b.remove(plan),
            Backend::RouterOs(b) => b.remove(plan),
        }
    }

    fn intact(&self, plan: &Plan) -> Result<bool, VifError> {
        match self {
            Backend::Linux(b) => b.intact(plan),
            Backend::RouterOs(b) => b.intact(plan),
        }
    }

    /// Adds what an intact segment lacks but can get without being made again.
    fn mend(&self, plan: &Plan) -> Result<usize, VifError> {
        match self {
            Backend::Linux(_) => Ok(0),
            Backend::RouterOs(b) => b.mend(plan),
        }
    }

    /// (instance id, VLAN id when known) of every object carrying a tag.
    fn tagged(&self) -> Result<Vec<(String, Option<u16>)>, VifError> {
        match self {
            Backend::Linux(b) => b.tagged(),
            Backend::RouterOs(b) => b.tagged(),
        }
    }

    fn reachable(&self) -> Result<(), VifError> {
        match self {
            Backend::Linux(_) => Ok(()),
            Backend::RouterOs(b) => b.reachable(),
        }
    }
}

/// One router the agent can provision on.
pub(crate) struct Router {
    pub id: String,
    pub pool: [u16; 2],
    pub subnet_base: Ipv4Addr,
    pub backend: Backend,
}

impl Router {
    pub(crate) fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Whether the agent talks to the router over TLS (`local` needs no network: false).
    pub(crate) fn tls(&self) -> bool {
        match &self.backend {
            Backend::Linux(_) => false,
            Backend::RouterOs(b) => b.tls(),
        }
    }

    /// Whether the router answers (RouterOS: connect and log in).
    pub(crate) fn check_reachable(&self) -> Result<(), VifError> {
        self.backend.reachable()
    }
}

/// What the agent knows about an instance that needs an interface.
pub(crate) struct Owner<'a> {
    pub instance_id: &'a str,
    pub feature_id: &'a str,
    pub name: &'a str,
    pub router_id: &'a str,
}

pub(crate) struct InterfaceFactory {
    store: Store,
    bus: Bus,
    routers: BTreeMap<String, Router>,
}

impl InterfaceFactory {
    pub(crate) fn new(store: Store, bus: Bus, routers: Vec<Router>) -> InterfaceFactory {
        InterfaceFactory {
            store,
            bus,
            routers: routers.into_iter().map(|r| (r.id.clone(), r)).collect(),
        }
    }

    pub(crate) fn router(&self, id: &str) -> Option<&Router> {
        self.routers.get(id)
    }

    pub(crate) fn routers(&self) -> impl Iterator<Item = &Router> {
        self.routers.values()
    }

    fn plan_for(&self, router: &Router, rec: &InterfaceRecord) -> Plan {
        let (feature, name) = rec
            .alias
            .strip_prefix("nnc-")
            .and_then(|r| r.split_once('-'))
            .unwrap_or(("", ""));
        let mut plan = Plan::new(
            &rec.instance_id,
            feature,
            name,
            rec.vlan_id,
            router.subnet_base,
        );
        plan.alias.clone_from(&rec.alias);
        plan
    }

    /// Creates the instance's interface, or returns it when it is already ACTIVE.
    pub(crate) fn create(&self, owner: &Owner<'_>) -> Result<InterfaceRecord, VifError> {
        let router = self.routers.get(owner.router_id).ok_or_else(|| {
            VifError::State(format!("router {} is not configured", owner.router_id))
        })?;
        if let Some(rec) = self.store.interface(owner.instance_id)? {
            if rec.status == IfStatus::Active {
                return Ok(rec);
            }
            // Left half-made by a crash: take it all away, then start again.
            self.take_down(router, &rec)?;
        }
        let vlan_id = self
            .store
            .allocate_vlan(&router.id, router.pool, owner.instance_id)
            .map_err(|e| match e {
                StoreError::PoolExhausted => VifError::PoolExhausted {
                    router: router.id.clone(),
                    pool: router.pool,
                },
                other => other.into(),
            })?;
        let plan = Plan::new(
            owner.instance_id,
            owner.feature_id,
            owner.name,
            vlan_id,
            router.subnet_base,
        );
        let mut rec = InterfaceRecord {
            instance_id: owner.instance_id.to_owned(),
            router_id: router.id.clone(),
            kind: router.kind().to_owned(),
            vlan_id,
            name: match router.backend {
                Backend::Linux(_) => netlink::names(vlan_id, owner.instance_id).bridge,
                Backend::RouterOs(_) => plan.alias.clone(),
            },
            alias: plan.alias.clone(),
            address: format!("{}/24", plan.router_addr),
            service_address: plan.service_addr.to_string(),
            routing_table: plan.alias.clone(),
            netns: match router.backend {
                Backend::Linux(ref l) => Some(
                    l.cfg
                        .netns_dir
                        .join(format!("nnc-{}", owner.instance_id))
                        .display()
                        .to_string(),
                ),
                Backend::RouterOs(_) => None,
            },
            status: IfStatus::Creating,
            objects: Vec::new(),
            error: None,
            updated_at: util::now_ms(),
        };
        self.store.put_interface(&rec)?;
        log::info!(target: "interface-factory", "instance {}: creating VLAN {vlan_id} on router {} ({})", owner.instance_id, router.id, router.kind());
        match router.backend.create(&plan) {
            Ok(objects) => {
                rec.status = IfStatus::Active;
                rec.objects = objects;
                rec.updated_at = util::now_ms();
                self.store.put_interface(&rec)?;
                log::info!(target: "interface-factory", "instance {}: {} ACTIVE ({} via {})", rec.instance_id, rec.name, rec.address, rec.service_address);
                self.bus.publish(
                    Some(&rec.instance_id),
                    EventKind::InterfaceCreated(rec.clone()),
                );
                Ok(rec)
            }
            Err((e, failed_undos)) => {
                // A step may have been applied although its answer was lost: sweep by tag.
                let swept = router.backend.remove(&plan);
                if failed_undos.is_empty() && swept.is_ok() {
                    self.store.remove_interface(&rec.instance_id)?;
                    self.store.release_vlan(&router.id, vlan_id)?;
                } else {
                    let left = failed_undos.join("; ");
                    log::error!(target: "interface-factory", "instance {}: rollback incomplete ({left}); reconcile will retry", rec.instance_id);
                    rec.error = Some(format!("rollback incomplete: {left}"));
                    self.store.put_interface(&rec)?;
                }
                Err(e)
            }
        }
    }

    /// Removes an instance's interface (all objects, in reverse) and frees its VLAN id.
    pub(crate) fn remove(&self, instance_id: &str) -> Result<(), VifError> {
        let Some(rec) = self.store.interface(instance_id)? else {
            return Ok(());
        };
        let router = self.routers.get(&rec.router_id).ok_or_else(|| {
            VifError::State(format!("router {} is no longer configured", rec.router_id))
        })?;
        self.take_down(router, &rec)?;
        log::info!(target: "interface-factory", "instance {instance_id}: {} removed, VLAN {} free", rec.name, rec.vlan_id);
        self.bus
            .publish(Some(instance_id), EventKind::InterfaceRemoved(rec));
        Ok(())
    }

    /// Marks the record REMOVING, removes every object, then forgets the record and the VLAN.
    fn take_down(&self, router: &Router, rec: &InterfaceRecord) -> Result<(), VifError> {
        let mut removing = rec.clone();
        removing.status = IfStatus::Removing;
        removing.updated_at = util::now_ms();
        self.store.put_interface(&removing)?;
        router.backend.remove(&self.plan_for(router, rec))?;
        self.store.remove_interface(&rec.instance_id)?;
        self.store.release_vlan(&router.id, rec.vlan_id)?;
        Ok(())
    }

    pub(crate) fn interface(&self, instance_id: &str) -> Result<Option<InterfaceRecord>, VifError> {
        Ok(self.store.interface(instance_id)?)
    }

    /// `interface`, shared with the store's copy (what queries read).
    pub(crate) fn interface_shared(
        &self,
        instance_id: &str,
    ) -> Result<Option<std::sync::Arc<InterfaceRecord>>, VifError> {
        Ok(self.store.interface_shared(instance_id)?)
    }

    /// RouterOS: makes router `router_id`'s tagged address-list entries (routed devices)
    /// exactly `want` (list, address, tag). Nothing to do on Linux (`routing` owns nft).
    pub(crate) fn sync_device_lists(
        &self,
        router_id: &str,
        want: &[(String, String, String)],
    ) -> Result<(), VifError> {
        match self.routers.get(router_id).map(|r| &r.backend) {
            Some(Backend::RouterOs(b)) => b.sync_lists(want),
            Some(Backend::Linux(_)) => Ok(()),
            None => Err(VifError::State(format!(
                "router {router_id} is not configured"
            ))),
        }
    }

    pub(crate) fn interfaces(&self) -> Result<Vec<InterfaceRecord>, VifError> {
        Ok(self.store.interfaces()?)
    }

    /// Repairs what an earlier run left: half-made interfaces are rolled back, tagged objects
    /// nobody owns are removed, ACTIVE interfaces whose objects vanished are recreated (or
    /// marked BROKEN when that fails). Unreachable routers are skipped and logged.
    pub(crate) fn reconcile(&self) {
        for router in self.routers.values() {
            if let Err(e) = self.reconcile_router(router) {
                log::warn!(target: "interface-factory", "router {}: reconcile skipped: {e}", router.id);
            }
        }
    }

    fn reconcile_router(&self, router: &Router) -> Result<(), VifError> {
        let records: Vec<InterfaceRecord> = self
            .store
            .interfaces()?
            .into_iter()
            .filter(|r| r.router_id == router.id)
            .collect();
        for rec in &records {
            match rec.status {
                IfStatus::Creating | IfStatus::Removing => {
                    log::warn!(target: "interface-factory", "instance {}: {} was left {:?}; rolling it back", rec.instance_id, rec.name, rec.status);
                    self.take_down(router, rec)?;
                }
                IfStatus::Active | IfStatus::Broken => {
                    let plan = self.plan_for(router, rec);
                    if router.backend.intact(&plan)? {
                        match router.backend.mend(&plan) {
                            Ok(0) => {}
                            Ok(n) => {
                                log::info!(target: "interface-factory", "instance {}: put back {n} rule(s) of {} that keep its routed devices' connections off FastTrack", rec.instance_id, rec.name);
                            }
                            Err(e) => {
                                log::warn!(target: "interface-factory", "instance {}: cannot put back the rules that keep its routed devices' connections off FastTrack: {e}", rec.instance_id);
                            }
                        }
                        continue;
                    }
                    log::warn!(target: "interface-factory", "instance {}: objects of {} vanished; recreating", rec.instance_id, rec.name);
                    let _ = router.backend.remove(&plan);
                    let mut fixed = rec.clone();
                    match router.backend.create(&plan) {
                        Ok(objects) => {
                            fixed.status = IfStatus::Active;
                            fixed.objects = objects;
                            fixed.error = None;
                        }
                        Err((e, _)) => {
                            let _ = router.backend.remove(&plan);
                            fixed.status = IfStatus::Broken;
                            fixed.error = Some(format!("recreating failed: {e}"));
                            log::error!(target: "interface-factory", "instance {}: {e}", rec.instance_id);
                        }
                    }
                    fixed.updated_at = util::now_ms();
                    self.store.put_interface(&fixed)?;
                }
            }
        }
        let known: Vec<String> = self
            .store
            .interfaces()?
            .into_iter()
            .map(|r| r.instance_id)
            .collect();
        for (id, vlan) in router.backend.tagged()? {
            if known.contains(&id) {
                continue;
            }
            log::warn!(target: "interface-factory", "router {}: removing objects tagged nnc:{id} that no record owns", router.id);
            let plan = Plan::new(&id, "", "", vlan.unwrap_or(0), router.subnet_base);
            router.backend.remove(&plan)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_undoes_in_reverse_and_reports_failures() {
        let mut rb = Rollback::new();
        for i in 1..=4 {
            rb.push(format!("step {i}"), i);
        }
        let mut order = Vec::new();
        let failed = rb.run(|i| {
            order.push(*i);
            if *i == 2 {
                Err(VifError::Backend("busy".into()))
            } else {
                Ok(())
            }
        });
        assert_eq!(order, [4, 3, 2, 1]);
        assert_eq!(failed, ["step 2: busy"]);
    }

    #[test]
    fn plans_address_the_vlan_subnet() {
        let p = Plan::new(
            "0123456789abcdef",
            "tor",
            "home",
            105,
            Ipv4Addr::new(10, 99, 0, 0),
        );
        assert_eq!(p.router_addr, Ipv4Addr::new(10, 99, 105, 1));
        assert_eq!(p.service_addr, Ipv4Addr::new(10, 99, 105, 2));
        assert_eq!(p.alias, "nnc-tor-home");
        assert_eq!(tag_in(&p.alias_tag()), Some("0123456789abcdef"));
        assert_eq!(tag_in("nnc:short"), None);
        assert_eq!(tag_in("no tag"), None);
    }
}
