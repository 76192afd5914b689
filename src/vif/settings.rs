//! What the agent is told about its routers (`[vlan]`, `[[routers]]`), and the routers made
//! from it.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::routeros::api::Endpoint;
use super::{Backend, Router};

/// How the local router makes each instance's segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VlanMode {
    /// No interfaces: services listen on loopback (a development machine).
    Off,
    /// An 802.1Q VLAN on the parent interface.
    Vlan,
    /// A veth pair instead of the VLAN (kernels without 8021q, tests).
    Veth,
}

/// The local router's segments (`[vlan]`).
#[derive(Debug, Clone)]
pub(crate) struct LocalSettings {
    pub mode: VlanMode,
    pub parent: String,
    pub pool: [u16; 2],
    /// `a.b.0.0`: instance N gets `a.b.N.0/24`.
    pub subnet_base: Ipv4Addr,
    pub netns_dir: PathBuf,
    pub rt_tables: PathBuf,
}

/// A RouterOS router reached through its API (`[[routers]]`).
#[derive(Debug, Clone)]
pub(crate) struct RouterSettings {
    pub id: String,
    pub endpoint: Endpoint,
    pub parent: String,
    pub pool: [u16; 2],
}

/// The routers interfaces can be made on: the local one (unless its VLAN mode is off) and
/// every configured RouterOS router. With `userns_ids` (the service uid
/// range), each instance's network namespace is made in a user namespace of its own mapping it.
pub(crate) fn routers(
    local: &LocalSettings,
    remote: &[RouterSettings],
    userns_ids: Option<[u32; 2]>,
) -> Vec<Router> {
    let mut out = Vec::new();
    let segment = match local.mode {
        VlanMode::Off => None,
        VlanMode::Vlan => Some(super::netlink::Segment::Vlan {
            parent: local.parent.clone(),
        }),
        VlanMode::Veth => Some(super::netlink::Segment::Veth),
    };
    if let Some(segment) = segment {
        out.push(Router {
            id: crate::ids::LOCAL_ROUTER.to_owned(),
            pool: local.pool,
            subnet_base: local.subnet_base,
            backend: Backend::Linux(super::netlink::Linux {
                cfg: super::netlink::LinuxConfig {
                    segment,
                    netns_dir: local.netns_dir.clone(),
                    rt_tables: local.rt_tables.clone(),
                    userns_ids,
                },
            }),
        });
    }
    for r in remote {
        if r.endpoint.tls.is_none() {
            log::warn!(
                target: "interface-factory",
                "router {}: the RouterOS API password for user {} goes to {}:{} in plain text; in its [[routers]] entry set tls = true and tls_fingerprint = \"<SHA-256 of the router's certificate>\" (API-SSL, port 8729)",
                r.id, r.endpoint.user, r.endpoint.host, r.endpoint.port
            );
        }
        out.push(Router {
            id: r.id.clone(),
            pool: r.pool,
            subnet_base: local.subnet_base,
            backend: Backend::RouterOs(super::routeros::RouterOs::new(
                r.id.clone(),
                r.endpoint.clone(),
                r.parent.clone(),
            )),
        });
    }
    out
}
