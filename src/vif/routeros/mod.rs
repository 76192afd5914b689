//! The RouterOS backend: the seed's four API commands, each tagged `comment=nnc:{instance}`,
//! undone by the `.id` RouterOS returned, in reverse:
//!
//! 1. `/interface/vlan/add =name=nnc-{feature}-{name} =vlan-id=N =interface={parent}`
//! 2. `/ip/address/add =address=10.99.N.1/24 =interface=nnc-{feature}-{name}`
//! 3. `/routing/table/add =name=nnc-{feature}-{name} =fib=`
//! 4. `/ip/route/add =dst-address=0.0.0.0/0 =gateway=10.99.N.2 =routing-table=nnc-{feature}-{name}`
//!
//! and four more for device routing (`routing`), which match nothing until a device is in the
//! instance's address list `nnc-{feature}-{name}`:
//!
//! 5. `/ip/route/add =dst-address=0.0.0.0/0 =blackhole=yes =distance=250 =routing-table=…`:
//!    when the service's route is gone or inactive, routed devices are dropped, not sent out
//!    through `main` (fail-closed);
//! 6. `/ip/firewall/mangle/add =chain=prerouting =src-address-list=… =action=mark-routing
//!    =new-routing-mark=… =passthrough=no`, first in its chain (`place-before` the owner's
//!    first prerouting rule), as are 7 and 8 in theirs;
//! 7. and 8. `/ip/firewall/nat/add =chain=dstnat =src-address-list=… =protocol=udp|tcp
//!    =dst-port=53 =action=dst-nat =to-addresses=10.99.N.2`: their DNS, to any address, goes
//!    to the service;
//! 9. and 10. `/ip/firewall/filter/add =chain=forward =src-address-list=…` (and one with
//!    `=dst-address-list=…`) `=connection-state=established,related =action=accept`, placed
//!    before the router's first `fasttrack-connection` rule (RouterOS's default config has
//!    one): FastTrack packets skip the firewall, mangle included, so a routed device's
//!    established connections would lose their routing mark and leave through `main`. The
//!    accept keeps them on the slow path; new connections still meet the owner's rules. A
//!    fasttrack rule added later, above them, is not noticed (documented). A segment without
//!    them (made before they existed, or removed or disabled since) gets them from reconcile
//!    at start (`mend`), which then removes its devices' connections: FastTrack took them.
//!
//! A routed device is an entry of that address list, tagged like the rest; `sync_lists` adds
//! the missing entries before it removes the stale ones, so a device moving to another
//! instance is in one of the two lists at every moment, then removes the connections the
//! added devices had (`/ip/firewall/connection/remove`): a FastTracked one would keep its
//! direct path.
//!
//! One connection is kept and reopened after any error that breaks it, so a rollback after a
//! dropped connection still runs. Removal by tag (`?comment=`) is the sweep that also finds an
//! object whose `add` reached the router but whose answer did not reach us.

pub(crate) mod api;
mod tls;

use std::sync::Mutex;

use api::{ApiError, Client, Endpoint};

use super::{Plan, Rollback, VifError};
use crate::util::Locked;

/// The menus we add to, in creation order; removal walks them backwards.
const MENUS: [&str; 7] = [
    "/interface/vlan",
    "/ip/address",
    "/routing/table",
    "/ip/route",
    "/ip/firewall/mangle",
    "/ip/firewall/nat",
    "/ip/firewall/filter",
];

/// Routed devices: entries of each instance's address list (removed before everything else).
const ADDRESS_LIST: &str = "/ip/firewall/address-list";

/// Undo of one step: remove the item with this `.id` from this menu.
pub(crate) struct Undo {
    menu: &'static str,
    id: String,
}

pub(crate) struct RouterOs {
    id: String,
    endpoint: Endpoint,
    parent: String,
    client: Mutex<Option<Client>>,
}

fn backend(e: &ApiError) -> VifError {
    match e {
        ApiError::Io(_) | ApiError::Fatal(_) => VifError::Unreachable(e.to_string()),
        _ => VifError::Backend(e.to_string()),
    }
}

impl RouterOs {
    pub(crate) fn new(id: String, endpoint: Endpoint, parent: String) -> RouterOs {
        RouterOs {
            id,
            endpoint,
            parent,
            client: Mutex::new(None),
        }
    }

    /// Runs `f` on the open connection, opening one when there is none; a connection that an
    /// error broke is dropped so the next call reconnects.
    fn with_client<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut guard = self.client.locked();
        if guard.is_none() {
            *guard = Some(Client::connect(&self.endpoint)?);
        }
        let client = guard
            .as_mut()
            .ok_or_else(|| ApiError::Io("no connection".into()))?;
        let result = f(client);
        if let Err(e) = &result
            && e.breaks_connection()
        {
            *guard = None;
        }
        result
    }

    /// A read or a removal can be repeated safely: once more on a fresh connection if the
    /// first attempt broke the old one.
    fn idempotent<T>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match self.with_client(&mut f) {
            Err(e) if e.breaks_connection() => self.with_client(f),
            other => other,
        }
    }

    /// Whether the API session (and so the password) is encrypted.
    pub(crate) fn tls(&self) -> bool {
        self.endpoint.tls.is_some()
    }

    pub(crate) fn reachable(&self) -> Result<(), VifError> {
        Client::connect(&self.endpoint).map(drop).map_err(|e| {
            VifError::Unreachable(format!(
                "{}:{}: {e}",
                self.endpoint.host, self.endpoint.port
            ))
        })
    }

    fn add(
        &self,
        plan: &Plan,
        menu: &'static str,
        attrs: &[(&str, &str)],
    ) -> Result<String, VifError> {
        let tag = plan.tag();
        let mut all: Vec<(&str, &str)> = attrs.to_vec();
        all.push(("comment", &tag));
        let reply = self
            .with_client(|c| c.call(&format!("{menu}/add"), &all, &[]))
            .map_err(|e| {
                let what = attrs
                    .first()
                    .map_or(String::new(), |(k, v)| format!(" {k}={v}"));
                let at = format!("router {}: {menu}/add{what}", self.id);
                match backend(&e) {
                    VifError::Backend(m) => VifError::Backend(format!("{at}: {m}")),
                    VifError::Unreachable(m) => VifError::Unreachable(format!("{at}: {m}")),
                    other => other,
                }
            })?;
        reply
            .done
            .get("ret")
            .cloned()
            .ok_or_else(|| VifError::Backend(format!("{menu}/add returned no .id")))
    }

    pub(crate) fn create(
        &self,
        plan: &Plan,
        rollback: &mut Rollback<Undo>,
    ) -> Result<Vec<String>, VifError> {
        let vlan = plan.vlan_id.to_string();
        let address = format!("{}/24", plan.router_addr);
        let gateway = plan.service_addr.to_string();
        let name = plan.alias.as_str();
        // The rules go first in their chains, before the owner's (a mangle `accept` or a
        // dstnat rule of theirs would otherwise take a routed device's packets first).
        // Static rules only: dynamic ones (UPnP's, a hotspot's) come and go.
        let fasttrack = self.first_fasttrack()?;
        let mangle_top =
            self.first_rule(MENUS[4], &[("chain", "prerouting"), ("dynamic", "false")])?;
        let nat_top = self.first_rule(MENUS[5], &[("chain", "dstnat"), ("dynamic", "false")])?;
        let steps: [(&'static str, Vec<(&str, &str)>); 10] = [
            (
                MENUS[0],
                vec![
                    ("name", name),
                    ("vlan-id", &vlan),
                    ("interface", &self.parent),
                ],
            ),
            (MENUS[1], vec![("address", &address), ("interface", name)]),
            (MENUS[2], vec![("name", name), ("fib", "")]),
            (
                MENUS[3],
                vec![
                    ("dst-address", "0.0.0.0/0"),
                    ("gateway", &gateway),
                    ("routing-table", name),
                ],
            ),
            (
                MENUS[3],
                vec![
                    ("dst-address", "0.0.0.0/0"),
                    ("blackhole", "yes"),
                    ("distance", "250"),
                    ("routing-table", name),
                ],
            ),
            (
                MENUS[4],
                vec![
                    ("chain", "prerouting"),
                    ("src-address-list", name),
                    ("action", "mark-routing"),
                    ("new-routing-mark", name),
                    ("passthrough", "no"),
                ]
                .into_iter()
                .chain(mangle_top.as_deref().map(|id| ("place-before", id)))
                .collect(),
            ),
            (MENUS[5], dns_nat(name, "udp", &gateway, nat_top.as_deref())),
            (MENUS[5], dns_nat(name, "tcp", &gateway, nat_top.as_deref())),
            (
                MENUS[6],
                no_fasttrack("src-address-list", name, fasttrack.as_deref()),
            ),
            (
                MENUS[6],
                no_fasttrack("dst-address-list", name, fasttrack.as_deref()),
            ),
        ];
        let mut ids = Vec::new();
        for (k, (menu, attrs)) in steps.iter().enumerate() {
            plan.step(k + 1)?;
            let id = self.add(plan, menu, attrs)?;
            rollback.push(
                format!("{menu} {id}"),
                Undo {
                    menu,
                    id: id.clone(),
                },
            );
            ids.push(id);
        }
        Ok(ids)
    }

    /// The router's first static `fasttrack-connection` rule (steps 9 and 10 go before it).
    fn first_fasttrack(&self) -> Result<Option<String>, VifError> {
        self.first_rule(
            MENUS[6],
            &[
                ("chain", "forward"),
                ("action", "fasttrack-connection"),
                ("dynamic", "false"),
            ],
        )
    }

    /// Gives an intact segment the accepts of steps 9 and 10 it lacks (one made before they
    /// existed, or whose accepts someone removed): added, nothing torn down, so its devices
    /// never go out meanwhile. Returns how many were added.
    pub(crate) fn mend(&self, plan: &Plan) -> Result<usize, VifError> {
        let tag = plan.tag();
        let name = plan.alias.as_str();
        let have = self
            .idempotent(|c| {
                c.call(
                    &format!("{}/print", MENUS[6]),
                    &[(
                        ".proplist",
                        ".id,src-address-list,dst-address-list,disabled",
                    )],
                    &[("comment", &tag)],
                )
            })
            .map_err(|e| backend(&e))?
            .rows;
        let mut mended = 0;
        let mut fasttrack = None;
        for key in ["src-address-list", "dst-address-list"] {
            let mut rows = have
                .iter()
                .filter(|r| r.get(key).map(String::as_str) == Some(name));
            if rows.clone().any(enabled) {
                continue;
            }
            match rows.next().and_then(|r| r.get(".id")) {
                // Disabled by someone: it is in its place, so it is enabled again.
                Some(id) => self.enable(MENUS[6], id)?,
                None => {
                    if fasttrack.is_none() {
                        fasttrack = Some(self.first_fasttrack()?);
                    }
                    let before = fasttrack.as_ref().and_then(Option::as_deref);
                    self.add(plan, MENUS[6], &no_fasttrack(key, name, before))?;
                }
            }
            mended += 1;
        }
        if mended > 0 {
            // What FastTrack took while the accepts were missing skips them for good.
            let devices = self.column(ADDRESS_LIST, "address", &[("list", name)])?;
            let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
            self.log_ended(self.end_connections(&devices));
        }
        Ok(mended)
    }

    /// `set =disabled=no` on the object `id` of `menu`.
    fn enable(&self, menu: &str, id: &str) -> Result<(), VifError> {
        self.idempotent(|c| {
            c.call(
                &format!("{menu}/set"),
                &[(".id", id), ("disabled", "no")],
                &[],
            )
        })
        .map(drop)
        .map_err(|e| backend(&e))
    }

    fn log_ended(&self, ended: Result<usize, VifError>) {
        match ended {
            Ok(0) => {}
            Ok(n) => {
                log::info!(target: "interface-factory", "router {}: removed {n} connection(s) the newly routed device(s) had", self.id);
            }
            Err(e) => {
                log::warn!(target: "interface-factory", "router {}: cannot remove the connections of the newly routed device(s) ({e}): a FastTracked one keeps its direct path until it ends", self.id);
            }
        }
    }

    /// The `.id` of the first rule of `menu` that matches `query`, if any.
    fn first_rule(&self, menu: &str, query: &[(&str, &str)]) -> Result<Option<String>, VifError> {
        Ok(self.column(menu, ".id", query)?.into_iter().next())
    }

    pub(crate) fn undo(&self, u: &Undo) -> Result<(), VifError> {
        self.remove_ids(u.menu, std::slice::from_ref(&u.id))
            .map(drop)
    }

    /// Removes `ids` from `menu`; returns how many it removed. One already gone is what an
    /// undo wants; RouterOS then removes none of the others, so they go one at a time.
    fn remove_ids(&self, menu: &str, ids: &[String]) -> Result<usize, VifError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let joined = ids.join(",");
        match self.idempotent(|c| c.call(&format!("{menu}/remove"), &[(".id", &joined)], &[])) {
            Ok(_) => Ok(ids.len()),
            Err(ApiError::Trap { message, .. }) if message.contains("no such item") => {
                if ids.len() == 1 {
                    return Ok(0);
                }
                ids.iter().try_fold(0, |n, id| {
                    Ok(n + self.remove_ids(menu, std::slice::from_ref(id))?)
                })
            }
            Err(e) => Err(backend(&e)),
        }
    }

    fn ids_tagged(&self, menu: &str, tag: &str) -> Result<Vec<String>, VifError> {
        self.column(menu, ".id", &[("comment", tag)])
    }

    /// The property `key` of the objects of `menu` that match `query`.
    fn column(
        &self,
        menu: &str,
        key: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<String>, VifError> {
        let reply = self
            .idempotent(|c| c.call(&format!("{menu}/print"), &[(".proplist", key)], query))
            .map_err(|e| backend(&e))?;
        Ok(reply
            .rows
            .into_iter()
            .filter_map(|mut r| r.remove(key))
            .collect())
    }

    /// Removes every object tagged for the instance: routed devices first, then the rules,
    /// routes, table and address, the VLAN last.
    pub(crate) fn remove(&self, plan: &Plan) -> Result<(), VifError> {
        let tag = plan.tag();
        for menu in std::iter::once(&ADDRESS_LIST).chain(MENUS.iter().rev()) {
            let ids = self.ids_tagged(menu, &tag)?;
            self.remove_ids(menu, &ids)?;
        }
        Ok(())
    }

    pub(crate) fn intact(&self, plan: &Plan) -> Result<bool, VifError> {
        let tag = plan.tag();
        // Two routes (the service's, the blackhole), two DNS rules (udp, tcp). The accepts
        // are not required: a segment made before they existed is not torn down for them
        // (which would let its devices out while it is made again).
        for (menu, n) in MENUS.into_iter().zip([1, 1, 1, 2, 1, 2, 0]) {
            if n == 0 {
                continue;
            }
            let reply = self
                .idempotent(|c| {
                    c.call(
                        &format!("{menu}/print"),
                        &[(".proplist", ".id,disabled")],
                        &[("comment", &tag)],
                    )
                })
                .map_err(|e| backend(&e))?;
            // A disabled object is as good as gone (a disabled mangle rule lets devices out).
            if reply.rows.iter().filter(|r| enabled(r)).count() < n {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(crate) fn tagged(&self) -> Result<Vec<(String, Option<u16>)>, VifError> {
        let mut found: Vec<(String, Option<u16>)> = Vec::new();
        for menu in MENUS.into_iter().chain([ADDRESS_LIST]) {
            let reply = self
                .idempotent(|c| {
                    c.call(
                        &format!("{menu}/print"),
                        &[(".proplist", ".id,comment,vlan-id")],
                        &[],
                    )
                })
                .map_err(|e| backend(&e))?;
            for row in reply.rows {
                let Some(id) = row.get("comment").and_then(|c| super::tag_in(c)) else {
                    continue;
                };
                let vlan = row.get("vlan-id").and_then(|v| v.parse().ok());
                match found.iter_mut().find(|(f, _)| f == id) {
                    Some(entry) => entry.1 = entry.1.or(vlan),
                    None => found.push((id.to_owned(), vlan)),
                }
            }
        }
        Ok(found)
    }

    /// Makes the tagged address-list entries exactly `want` (list, address, tag): missing ones
    /// are added first, stale ones removed after.
    pub(crate) fn sync_lists(&self, want: &[(String, String, String)]) -> Result<(), VifError> {
        let reply = self
            .idempotent(|c| {
                c.call(
                    &format!("{ADDRESS_LIST}/print"),
                    &[(".proplist", ".id,list,address,comment,disabled")],
                    &[],
                )
            })
            .map_err(|e| backend(&e))?;
        let have: Vec<(String, String, String, bool)> = reply
            .rows
            .into_iter()
            .filter(|r| r.get("comment").and_then(|c| super::tag_in(c)).is_some())
            .filter_map(|mut r| {
                let on = enabled(&r);
                Some((
                    r.remove(".id")?,
                    r.remove("list")?,
                    r.remove("address")?,
                    on,
                ))
            })
            .collect();
        let mut added = Vec::new();
        for (list, address, tag) in want {
            let mut same = have.iter().filter(|(_, l, a, _)| l == list && a == address);
            if same.clone().any(|(.., on)| *on) {
                continue;
            }
            // A disabled entry routes nothing: enabled again, as a device newly routed.
            if let Some((id, ..)) = same.next() {
                self.enable(ADDRESS_LIST, id)?;
                added.push(address.as_str());
                continue;
            }
            added.push(address.as_str());
            let attrs = [
                ("list", list.as_str()),
                ("address", address.as_str()),
                ("comment", tag.as_str()),
            ];
            self.with_client(|c| c.call(&format!("{ADDRESS_LIST}/add"), &attrs, &[]))
                .map_err(|e| match backend(&e) {
                    VifError::Backend(m) => VifError::Backend(format!(
                        "router {}: {ADDRESS_LIST}/add list={list} address={address}: {m}",
                        self.id
                    )),
                    other => other,
                })?;
        }
        let stale: Vec<String> = have
            .into_iter()
            .filter(|(_, l, a, _)| !want.iter().any(|(wl, wa, _)| wl == l && wa == a))
            .map(|(id, ..)| id)
            .collect();
        self.remove_ids(ADDRESS_LIST, &stale)?;
        if !added.is_empty() {
            self.log_ended(self.end_connections(&added));
        }
        Ok(())
    }

    /// Removes the tracked connections from `devices` (addresses or blocks, as in the address
    /// lists): one FastTracked before the device was routed skips the firewall, mangle
    /// included, and would go on leaving through `main`. Connections to the router itself
    /// stay (WinBox, WebFig), DNS to it does not.
    fn end_connections(&self, devices: &[&str]) -> Result<usize, VifError> {
        let blocks: Vec<(u32, u32)> = devices.iter().filter_map(|d| block(d)).collect();
        let own: Vec<String> = self
            .idempotent(|c| c.call("/ip/address/print", &[(".proplist", "address")], &[]))
            .map_err(|e| backend(&e))?
            .rows
            .into_iter()
            .filter_map(|mut r| {
                let a = r.remove("address")?;
                Some(a.split('/').next().unwrap_or_default().to_owned())
            })
            .collect();
        // "192.0.2.10:40000" (TCP, UDP) or "192.0.2.10" (ICMP).
        let host = |a: &str| a.rsplit_once(':').map_or(a, |(h, _)| h).to_owned();
        let ends = |r: &std::collections::BTreeMap<String, String>| {
            let from = r
                .get("src-address")
                .and_then(|a| host(a).parse::<std::net::Ipv4Addr>().ok());
            let to = r.get("dst-address").map(|a| host(a)).unwrap_or_default();
            let dns = r.get("dst-address").is_some_and(|a| a.ends_with(":53"));
            from.is_some_and(|f| blocks.iter().any(|(net, mask)| u32::from(f) & mask == *net))
                && (dns || !own.contains(&to))
        };
        // Filtered as it streams: a busy router's table is far larger than what is kept. At
        // most BATCH per print, and the routing lock is not held for more than BUDGET.
        const BATCH: usize = 5_000;
        const BUDGET: std::time::Duration = std::time::Duration::from_secs(10);
        let started = std::time::Instant::now();
        let mut removed = 0;
        loop {
            let reply = self
                .idempotent(|c| {
                    let mut kept = 0;
                    c.call_keeping(
                        "/ip/firewall/connection/print",
                        &[(".proplist", ".id,src-address,dst-address")],
                        &[],
                        &mut |r| {
                            let keep = kept < BATCH && ends(r);
                            kept += usize::from(keep);
                            keep
                        },
                    )
                })
                .map_err(|e| backend(&e))?;
            let ids: Vec<String> = reply
                .rows
                .into_iter()
                .filter_map(|mut r| r.remove(".id"))
                .collect();
            for chunk in ids.chunks(100) {
                if started.elapsed() > BUDGET {
                    log::warn!(target: "interface-factory", "router {}: stopped removing connections after {removed} (10 s): the rest keep their path until they end", self.id);
                    return Ok(removed);
                }
                removed += self.remove_ids("/ip/firewall/connection", chunk)?;
            }
            if ids.len() < BATCH {
                return Ok(removed);
            }
        }
    }
}

/// Whether a printed object is enabled (RouterOS prints `disabled=true` or `false`).
fn enabled(row: &std::collections::BTreeMap<String, String>) -> bool {
    !matches!(
        row.get("disabled").map(String::as_str),
        Some("true" | "yes")
    )
}

/// "192.0.2.10" or "192.0.2.0/24" as (network, mask).
fn block(text: &str) -> Option<(u32, u32)> {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Some((
        u32::from(addr.parse::<std::net::Ipv4Addr>().ok()?) & mask,
        mask,
    ))
}

const _: () = assert!(crate::configgen::DNS_PORT == 9053, "dns_nat's to-ports");

/// Steps 9 and 10: a routed device's established connections (from it: `src-address-list`,
/// to it: `dst-address-list`) accepted before FastTrack would take them.
fn no_fasttrack<'a>(
    side: &'a str,
    list: &'a str,
    before: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut attrs = vec![
        ("chain", "forward"),
        (side, list),
        ("connection-state", "established,related"),
        ("action", "accept"),
    ];
    attrs.extend(before.map(|id| ("place-before", id)));
    attrs
}

/// Steps 7 and 8: a routed device's DNS (`protocol`) to the service.
fn dns_nat<'a>(
    list: &'a str,
    protocol: &'a str,
    service: &'a str,
    before: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut attrs = vec![
        ("chain", "dstnat"),
        ("src-address-list", list),
        ("protocol", protocol),
        ("dst-port", "53"),
        ("action", "dst-nat"),
        ("to-addresses", service),
        // The DNS inbound every generator adds.
        ("to-ports", "9053"),
    ];
    attrs.extend(before.map(|id| ("place-before", id)));
    attrs
}
