//! The Linux backend: one routable segment per instance, made with rtnetlink.
//!
//! For VLAN id N (names stay within Linux's 15 bytes; the long name `nnc-{feature}-{name}`
//! and the tag `nnc:{instance}` go in the bridge's alias):
//!
//! ```text
//!   parent ── nnc{N}v (VLAN N) ──┐
//!                                ├─ nnc{N} (bridge, 10.99.N.1/24) ── table 1000+N: default via .2
//!   netns nnc-{id}: eth0 ═ veth ═ nnc{N}h
//!                   10.99.N.2/24, default via .1
//!
//!   ip rule  pref 5000+2N  fwmark N<<16/0xff0000 lookup 1000+N
//!   ip rule  pref 5001+2N  fwmark N<<16/0xff0000 prohibit
//! ```
//!
//! The two rules are the fail-closed half of device routing (`routing`): packets of a device
//! routed through the instance carry its mark and look up its table; when that table has no
//! route (flushed, the segment gone) the next rule refuses them instead of letting them fall
//! through to the main table. They match nothing until a device is marked. `routing` also
//! keeps per-device source rules here (`DEVICE_RULE_PREFS`, `sync_rules`).
//!
//! A bridge with a veth into the service's network namespace, rather than macvlan: a macvlan
//! child cannot talk to its parent, so the router's own address could not reach the service.
//! With the bridge, the router (.1), the service (.2) and LAN devices tagged N share one
//! segment. In `veth` segment mode (for kernels without 8021q, e.g. test hosts) the VLAN
//! device is a veth pair whose other end, `nnc{N}l`, stands for the LAN side.
//!
//! Network namespaces are named the way `ip netns` names them: a bind mount of the namespace
//! under `/run/netns`, so `ip netns exec nnc-{id} ...` works for a user debugging a service.
//! Each is made inside a user namespace of its own (where the system allows them): that user
//! namespace owns the network namespace, so a capability the service holds in it (CAP_NET_ADMIN
//! for a TUN device) works on the service's own network and on nothing of the router's. The
//! agent, root in the initial user namespace, still configures it freely.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use netlink_sys::{
    Socket, SocketAddr,
    protocols::{NETLINK_NETFILTER, NETLINK_ROUTE},
};

use super::rtnl::{self, Msg, Reply};
use super::{Plan, Rollback, VifError};
use crate::util::Locked;

const RT_TABLE_BASE: u32 = 1000;
const RULE_PREF_BASE: u32 = 5000;
/// `ip rule` preferences of device routing's source rules: a routed IPv4 device's address
/// block looks up its instance's table at the first and is refused at the second, so its
/// traffic is fail-closed even without the nftables marks (before the segment's mark rules
/// and the main table).
pub(crate) const DEVICE_RULE_PREFS: [u32; 2] = [4000, 4001];

/// The routing table of the segment with this VLAN id.
pub(crate) fn table(vlan_id: u16) -> u32 {
    RT_TABLE_BASE + u32::from(vlan_id)
}
/// The bits of the packet mark that name an instance's segment (`routing` sets them).
pub(crate) const MARK_MASK: u32 = 0x00ff_0000;

/// The packet mark of segment `vlan_id` (the pool fits one octet, so it fits the mask).
pub(crate) fn mark(vlan_id: u16) -> u32 {
    (u32::from(vlan_id) << 16) & MARK_MASK
}

/// How the segment device is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// A VLAN device on this parent interface (production).
    Vlan { parent: String },
    /// A veth pair standing in for the VLAN (kernels without 8021q).
    Veth,
}

/// Paths and modes of the Linux backend (from config/board).
#[derive(Debug, Clone)]
pub(crate) struct LinuxConfig {
    pub segment: Segment,
    pub netns_dir: PathBuf,
    pub rt_tables: PathBuf,
    /// Make each network namespace inside a user namespace of its own that maps these ids
    /// (the service uid range) one to one; `None` where user namespaces are refused.
    pub userns_ids: Option<[u32; 2]>,
}

/// Names of one instance's Linux objects, all derived from the VLAN id and the instance id.
pub(crate) struct Names {
    pub bridge: String,
    pub segment: String,
    pub lan_peer: String,
    pub veth_host: String,
    pub netns: String,
    pub table: u32,
    /// `ip rule` preference of the lookup rule; the refusing rule is the next one.
    pub rule_pref: u32,
    pub mark: u32,
}

pub(crate) fn names(vlan_id: u16, instance_id: &str) -> Names {
    Names {
        bridge: format!("nnc{vlan_id}"),
        segment: format!("nnc{vlan_id}v"),
        lan_peer: format!("nnc{vlan_id}l"),
        veth_host: format!("nnc{vlan_id}h"),
        netns: format!("nnc-{instance_id}"),
        table: table(vlan_id),
        rule_pref: RULE_PREF_BASE + 2 * u32::from(vlan_id),
        mark: mark(vlan_id),
    }
}

/// A netlink error with the operation it answered.
fn nl_err(op: &str, errno: i32) -> VifError {
    let e = std::io::Error::from_raw_os_error(errno);
    VifError::Backend(format!("{op}: {e}"))
}

/// A request/acknowledge netlink socket on NETLINK_ROUTE (or NETLINK_NETFILTER's ctnetlink).
pub(crate) struct Netlink {
    socket: Socket,
    seq: u32,
    /// The error the kernel answered last (an errno), for callers that expect one.
    errno: i32,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub(crate) fn open() -> Result<Netlink, VifError> {
        Netlink::open_protocol(NETLINK_ROUTE)
    }

    /// NETLINK_NETFILTER, for the conntrack table.
    pub(crate) fn open_netfilter() -> Result<Netlink, VifError> {
        Netlink::open_protocol(NETLINK_NETFILTER)
    }

    fn open_protocol(protocol: isize) -> Result<Netlink, VifError> {
        let mut socket =
            Socket::new(protocol).map_err(|e| VifError::Backend(format!("netlink socket: {e}")))?;
        socket
            .bind_auto()
            .and_then(|_| socket.connect(&SocketAddr::new(0, 0)))
            .map_err(|e| VifError::Backend(format!("netlink bind: {e}")))?;
        Ok(Netlink {
            socket,
            seq: 0,
            errno: 0,
        })
    }

    /// A socket in the network namespace at `ns` (it stays there whatever thread uses it).
    pub(crate) fn open_in(ns: &Path) -> Result<Netlink, VifError> {
        let file =
            File::open(ns).map_err(|e| VifError::Backend(format!("{}: {e}", ns.display())))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| VifError::Backend(format!("setns {}: {e}", ns.display())))?;
                Netlink::open()
            })
            .join()
            .unwrap_or_else(|_| Err(VifError::Backend("netns thread panicked".into())))
        })
    }

    /// Sends `msg` and reads the answers until its ACK (or the end of a dump).
    fn exchange(&mut self, msg: Msg, op: &str) -> Result<Vec<Reply>, VifError> {
        self.exchange_keeping(msg, op, &mut |_| true)
    }

    /// `exchange` that keeps only the answers `keep` wants (a dump of a large table).
    fn exchange_keeping(
        &mut self,
        msg: Msg,
        op: &str,
        keep: &mut dyn FnMut(&Reply) -> bool,
    ) -> Result<Vec<Reply>, VifError> {
        self.seq = self.seq.wrapping_add(1);
        self.errno = 0;
        let seq = self.seq;
        self.socket
            .send(&msg.finish(seq), 0)
            .map_err(|e| VifError::Backend(format!("netlink send: {e}")))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .socket
                .recv(&mut &mut buf[..], 0)
                .map_err(|e| VifError::Backend(format!("netlink recv: {e}")))?;
            for (reply_seq, reply) in rtnl::parse(&buf[..n]) {
                if reply_seq != seq {
                    continue;
                }
                match reply {
                    Reply::Ack(0) | Reply::Done => return Ok(out),
                    Reply::Ack(code) => {
                        self.errno = -code;
                        return Err(nl_err(op, -code));
                    }
                    other if keep(&other) => out.push(other),
                    _ => {}
                }
            }
        }
    }

    fn request(&mut self, msg: Msg, op: &str) -> Result<(), VifError> {
        self.exchange(msg, op).map(|_| ())
    }

    /// Every link: (index, name, alias).
    pub(crate) fn links(&mut self) -> Result<Vec<(u32, String, Option<String>)>, VifError> {
        let msg = Msg::new(rtnl::RTM_GETLINK, rtnl::NLM_F_DUMP).ifinfo(0, 0, 0);
        Ok(self
            .exchange(msg, "list links")?
            .into_iter()
            .filter_map(|r| match r {
                Reply::Link { index, name, alias } => Some((index, name, alias)),
                _ => None,
            })
            .collect())
    }

    pub(crate) fn index(&mut self, name: &str) -> Result<Option<u32>, VifError> {
        Ok(self
            .links()?
            .into_iter()
            .find(|(_, n, _)| n == name)
            .map(|(i, _, _)| i))
    }

    fn need_index(&mut self, name: &str) -> Result<u32, VifError> {
        self.index(name)?
            .ok_or_else(|| VifError::Backend(format!("interface {name} does not exist")))
    }

    fn new_link() -> Msg {
        Msg::new(
            rtnl::RTM_NEWLINK,
            rtnl::NLM_F_ACK | rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL,
        )
        .ifinfo(0, 0, 0)
    }

    pub(crate) fn add_vlan(&mut self, name: &str, parent: &str, id: u16) -> Result<(), VifError> {
        let parent_index = self.need_index(parent)?;
        let op = format!("create VLAN {name} (id {id}) on {parent}");
        let msg = Self::new_link()
            .attr_str(rtnl::IFLA_IFNAME, name)
            .attr_u32(rtnl::IFLA_LINK, parent_index)
            .nest(rtnl::IFLA_LINKINFO, |m| {
                m.attr_str(rtnl::IFLA_INFO_KIND, "vlan")
                    .nest(rtnl::IFLA_INFO_DATA, |m| {
                        m.attr(rtnl::IFLA_VLAN_ID, &id.to_ne_bytes())
                    })
            });
        self.request(msg, &op).map_err(|e| match e {
            VifError::Backend(m) if m.contains("os error 95") => VifError::Backend(format!(
                "{op}: this kernel has no 802.1Q VLAN support (load the 8021q module, or use vlan mode \"veth\" for testing)"
            )),
            other => other,
        })
    }

    /// A veth pair; the peer is created directly in `peer_netns` when given.
    pub(crate) fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<&File>,
    ) -> Result<(), VifError> {
        let msg =
            Self::new_link()
                .attr_str(rtnl::IFLA_IFNAME, name)
                .nest(rtnl::IFLA_LINKINFO, |m| {
                    m.attr_str(rtnl::IFLA_INFO_KIND, "veth")
                        .nest(rtnl::IFLA_INFO_DATA, |m| {
                            m.nest_ifinfo(rtnl::VETH_INFO_PEER, |m| {
                                let m = m.attr_str(rtnl::IFLA_IFNAME, peer);
                                match peer_netns {
                                    // The fd is valid while `peer_netns` lives; fds are non-negative.
                                    Some(ns) => m.attr_u32(
                                        rtnl::IFLA_NET_NS_FD,
                                        u32::try_from(ns.as_raw_fd()).unwrap_or(0),
                                    ),
                                    None => m,
                                }
                            })
                        })
                });
        self.request(msg, &format!("create veth {name}/{peer}"))
    }

    pub(crate) fn add_bridge(&mut self, name: &str, alias: &str) -> Result<(), VifError> {
        let msg = Self::new_link()
            .attr_str(rtnl::IFLA_IFNAME, name)
            .nest(rtnl::IFLA_LINKINFO, |m| {
                m.attr_str(rtnl::IFLA_INFO_KIND, "bridge")
            });
        self.request(msg, &format!("create bridge {name}"))?;
        let index = self.need_index(name)?;
        let msg = Msg::new(rtnl::RTM_SETLINK, rtnl::NLM_F_ACK)
            .ifinfo(index, 0, 0)
            .attr(rtnl::IFLA_IFALIAS, alias.as_bytes());
        self.request(msg, &format!("set alias of {name}"))
    }

    pub(crate) fn up(&mut self, name: &str) -> Result<(), VifError> {
        let i = self.need_index(name)?;
        let msg =
            Msg::new(rtnl::RTM_SETLINK, rtnl::NLM_F_ACK).ifinfo(i, rtnl::IFF_UP, rtnl::IFF_UP);
        self.request(msg, &format!("set {name} up"))
    }

    pub(crate) fn set_master(&mut self, name: &str, master: &str) -> Result<(), VifError> {
        let (i, m) = (self.need_index(name)?, self.need_index(master)?);
        let msg = Msg::new(rtnl::RTM_SETLINK, rtnl::NLM_F_ACK)
            .ifinfo(i, 0, 0)
            .attr_u32(rtnl::IFLA_MASTER, m);
        self.request(msg, &format!("put {name} in {master}"))
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub(crate) fn del_link(&mut self, name: &str) -> Result<(), VifError> {
        let Some(index) = self.index(name)? else {
            return Ok(());
        };
        let msg = Msg::new(rtnl::RTM_DELLINK, rtnl::NLM_F_ACK).ifinfo(index, 0, 0);
        match self.request(msg, &format!("delete {name}")) {
            Err(VifError::Backend(e)) if e.contains("os error 19") => Ok(()),
            other => other,
        }
    }

    fn addr_msg(kind: u16, flags: u16, index: u32, ip: Ipv4Addr, prefix: u8) -> Msg {
        Msg::new(kind, rtnl::NLM_F_ACK | flags)
            .ifaddr(prefix, index)
            .attr(rtnl::IFA_LOCAL, &ip.octets())
            .attr(rtnl::IFA_ADDRESS, &ip.octets())
    }

    pub(crate) fn add_addr(
        &mut self,
        name: &str,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), VifError> {
        let i = self.need_index(name)?;
        let msg = Self::addr_msg(
            rtnl::RTM_NEWADDR,
            rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL,
            i,
            ip,
            prefix,
        );
        self.request(msg, &format!("add {ip}/{prefix} to {name}"))
    }

    pub(crate) fn del_addr(
        &mut self,
        name: &str,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), VifError> {
        let Some(i) = self.index(name)? else {
            return Ok(());
        };
        let msg = Self::addr_msg(rtnl::RTM_DELADDR, 0, i, ip, prefix);
        match self.request(msg, &format!("delete {ip}/{prefix} from {name}")) {
            Err(VifError::Backend(e)) if e.contains("os error 99") => Ok(()),
            other => other,
        }
    }

    fn route_msg(kind: u16, flags: u16, table: u32, gateway: Ipv4Addr) -> Msg {
        let compat = u8::try_from(table).unwrap_or(rtnl::RT_TABLE_COMPAT);
        Msg::new(kind, rtnl::NLM_F_ACK | flags)
            .rtmsg(0, compat)
            .attr_u32(rtnl::RTA_TABLE, table)
            .attr(rtnl::RTA_GATEWAY, &gateway.octets())
    }

    /// `default via gateway dev DEV table T`
    pub(crate) fn add_default_route(
        &mut self,
        table: u32,
        gateway: Ipv4Addr,
        dev: &str,
    ) -> Result<(), VifError> {
        let oif = self.need_index(dev)?;
        let msg = Self::route_msg(
            rtnl::RTM_NEWROUTE,
            rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL,
            table,
            gateway,
        )
        .attr_u32(rtnl::RTA_OIF, oif);
        self.request(
            msg,
            &format!("add default via {gateway} dev {dev} table {table}"),
        )
    }

    pub(crate) fn del_default_route(
        &mut self,
        table: u32,
        gateway: Ipv4Addr,
    ) -> Result<(), VifError> {
        let msg = Self::route_msg(rtnl::RTM_DELROUTE, 0, table, gateway);
        match self.request(msg, &format!("delete default via {gateway} table {table}")) {
            Err(VifError::Backend(e)) if e.contains("os error 3)") => Ok(()),
            other => other,
        }
    }

    /// Whether table `table` has a default route via `gateway`.
    pub(crate) fn has_default_route(
        &mut self,
        table: u32,
        gateway: Ipv4Addr,
    ) -> Result<bool, VifError> {
        let msg = Msg::new(rtnl::RTM_GETROUTE, rtnl::NLM_F_DUMP).rtmsg(0, 0);
        Ok(self.exchange(msg, "list routes")?.into_iter().any(|r| {
            matches!(r, Reply::Route { dst_len: 0, table: t, gateway: Some(g), .. }
                if t == table && g == gateway.octets())
        }))
    }

    /// The neighbour table (IPv4 and IPv6): (address, link-layer address).
    pub(crate) fn neighbours(&mut self) -> Result<Vec<(IpAddr, [u8; 6])>, VifError> {
        let msg = Msg::new(rtnl::RTM_GETNEIGH, rtnl::NLM_F_DUMP).ndmsg();
        Ok(self
            .exchange(msg, "list neighbours")?
            .into_iter()
            .filter_map(|r| match r {
                Reply::Neigh { ip, mac } => Some((ip, mac)),
                _ => None,
            })
            .collect())
    }

    /// Deletes the tracked connections `select` picks (on a NETLINK_NETFILTER socket),
    /// `BATCH` per dump of the table, so a large table never sits in memory; returns how
    /// many were deleted and how many the kernel would not delete. One that ended meanwhile
    /// is not an error; one in a flowtable is refused (EBUSY) by kernels before 5.10.182,
    /// 5.15.115 and 6.1.32, which is counted and skipped.
    pub(crate) fn delete_connections(
        &mut self,
        select: &dyn Fn(&Reply) -> bool,
    ) -> Result<(usize, usize), VifError> {
        const BATCH: usize = 1024;
        const ROUNDS: usize = 64;
        // Routing waits meanwhile: a device that floods the table does not hold it for long.
        const BUDGET: std::time::Duration = std::time::Duration::from_secs(3);
        let started = std::time::Instant::now();
        let (mut deleted, mut refused) = (0, 0);
        for round in 0..ROUNDS {
            let before = deleted;
            if started.elapsed() > BUDGET {
                log::warn!(target: "routing", "stopped ending connections after {deleted} (3 s): the rest keep their path until they end");
                break;
            }
            let dump = Msg::new(rtnl::CT_GET, rtnl::NLM_F_DUMP).nfgen(rtnl::AF_UNSPEC);
            let mut picked = 0;
            let found = self.exchange_keeping(dump, "list connections", &mut |r| {
                let keep = picked < BATCH && select(r);
                picked += usize::from(keep);
                keep
            })?;
            for r in &found {
                let Reply::Conntrack {
                    family,
                    tuple,
                    zone,
                    ..
                } = r
                else {
                    continue;
                };
                let mut msg = Msg::new(rtnl::CT_DELETE, rtnl::NLM_F_ACK)
                    .nfgen(*family)
                    .nest(rtnl::CTA_TUPLE_ORIG | rtnl::NLA_F_NESTED, |m| m.raw(tuple));
                if let Some(z) = zone {
                    msg = msg.attr(rtnl::CTA_ZONE, z);
                }
                match self.request(msg, "delete a connection") {
                    Ok(()) => deleted += 1,
                    Err(_) if self.errno == libc::ENOENT => {}
                    // Counted once: later rounds find it again.
                    Err(_) if self.errno == libc::EBUSY => refused += usize::from(round == 0),
                    Err(e) => return Err(e),
                }
            }
            // The refused ones are found again by the next round: a round that deleted none
            // would find only them.
            if found.len() < BATCH || deleted == before {
                break;
            }
        }
        Ok((deleted, refused))
    }

    /// The router's own IPv4 addresses (the `local` routes of table `local`).
    pub(crate) fn local_addresses(&mut self) -> Result<Vec<Ipv4Addr>, VifError> {
        const RT_TABLE_LOCAL: u32 = 255;
        const RTN_LOCAL: u8 = 2;
        let msg = Msg::new(rtnl::RTM_GETROUTE, rtnl::NLM_F_DUMP).rtmsg(0, 0);
        Ok(self
            .exchange(msg, "list routes")?
            .into_iter()
            .filter_map(|r| match r {
                Reply::Route {
                    table: RT_TABLE_LOCAL,
                    kind: RTN_LOCAL,
                    dst: Some(d),
                    ..
                } => Some(Ipv4Addr::from(d)),
                _ => None,
            })
            .collect())
    }
}

impl Netlink {
    fn rule_msg(kind: u16, flags: u16, r: &Rule) -> Msg {
        let (table, action) = match r.table {
            Some(t) => (
                u8::try_from(t).unwrap_or(rtnl::RT_TABLE_COMPAT),
                rtnl::FR_ACT_TO_TBL,
            ),
            None => (0, rtnl::FR_ACT_PROHIBIT),
        };
        let src_len = match r.select {
            Select::From(_, len) => len,
            Select::Mark(_) => 0,
        };
        let m = Msg::new(kind, rtnl::NLM_F_ACK | flags)
            .rulemsg(src_len, table, action)
            .attr_u32(rtnl::FRA_PRIORITY, r.pref);
        let m = match r.select {
            Select::Mark(mark) => m
                .attr_u32(rtnl::FRA_FWMARK, mark)
                .attr_u32(rtnl::FRA_FWMASK, MARK_MASK),
            Select::From(ip, _) => m.attr(rtnl::FRA_SRC, &ip.octets()),
        };
        match r.table {
            Some(t) => m.attr_u32(rtnl::FRA_TABLE, t),
            None => m,
        }
    }

    pub(crate) fn add_rule(&mut self, r: &Rule) -> Result<(), VifError> {
        let msg = Self::rule_msg(rtnl::RTM_NEWRULE, rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL, r);
        self.request(msg, &format!("add rule {r}"))
    }

    /// Deletes a rule; one that is already gone is not an error.
    pub(crate) fn del_rule(&mut self, r: &Rule) -> Result<(), VifError> {
        let msg = Self::rule_msg(rtnl::RTM_DELRULE, 0, r);
        match self.request(msg, &format!("delete rule {r}")) {
            Err(VifError::Backend(e)) if e.contains("os error 2)") => Ok(()),
            other => other,
        }
    }

    /// The IPv4 rules this backend can express (lookup or prohibit, by mark or by source).
    fn rules(&mut self) -> Result<Vec<Rule>, VifError> {
        let msg = Msg::new(rtnl::RTM_GETRULE, rtnl::NLM_F_DUMP).rulemsg(0, 0, 0);
        Ok(self
            .exchange(msg, "list rules")?
            .into_iter()
            .filter_map(|x| {
                let Reply::Rule {
                    priority,
                    fwmark,
                    src,
                    other: false,
                    action,
                    table,
                } = x
                else {
                    return None;
                };
                let table = match action {
                    rtnl::FR_ACT_TO_TBL => Some(table),
                    rtnl::FR_ACT_PROHIBIT => None,
                    _ => return None,
                };
                let select = match src {
                    Some((a, len)) => Select::From(Ipv4Addr::from(a), len),
                    None => Select::Mark(fwmark),
                };
                Some(Rule {
                    pref: priority,
                    select,
                    table,
                })
            })
            .collect())
    }

    pub(crate) fn has_rule(&mut self, r: &Rule) -> Result<bool, VifError> {
        Ok(self.rules()?.contains(r))
    }

    /// Makes the rules at preferences `prefs` exactly `want`: the missing ones are added
    /// first (after any rule of the same preference, so a device moved to another table keeps
    /// its old rule until the new one is there), then the others at those preferences go.
    pub(crate) fn sync_rules(&mut self, prefs: &[u32], want: &[Rule]) -> Result<(), VifError> {
        let have: Vec<Rule> = self
            .rules()?
            .into_iter()
            .filter(|r| prefs.contains(&r.pref))
            .collect();
        for r in want.iter().filter(|r| !have.contains(r)) {
            self.add_rule(r)?;
        }
        for r in have.iter().filter(|r| !want.contains(r)) {
            self.del_rule(r)?;
        }
        Ok(())
    }
}

/// What an IPv4 `ip rule` matches: the segment's mark, or a source address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Select {
    Mark(u32),
    From(Ipv4Addr, u8),
}

/// An IPv4 `ip rule`: look up `table`, or refuse (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub pref: u32,
    pub select: Select,
    pub table: Option<u32>,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pref {} ", self.pref)?;
        match self.select {
            Select::Mark(m) => write!(f, "fwmark {m:#x}/{MARK_MASK:#x} ")?,
            Select::From(ip, len) => write!(f, "from {ip}/{len} ")?,
        }
        match self.table {
            Some(t) => write!(f, "lookup {t}"),
            None => f.write_str("prohibit"),
        }
    }
}

impl Names {
    /// The lookup rule and the refusing rule after it.
    pub(crate) fn rules(&self) -> [Rule; 2] {
        [
            Rule {
                pref: self.rule_pref,
                select: Select::Mark(self.mark),
                table: Some(self.table),
            },
            Rule {
                pref: self.rule_pref + 1,
                select: Select::Mark(self.mark),
                table: None,
            },
        ]
    }
}

/// Creates `dir` and, when it is a mount point (as `/run/netns` is once `ip netns` has used
/// it), makes it shared so namespaces bound under it are seen by every mount namespace.
fn prepare_netns_dir(dir: &Path) -> Result<(), VifError> {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir_all(dir)
        .map_err(|e| VifError::Backend(format!("{}: {e}", dir.display())))?;
    // EINVAL: not a mount point. The bind mounts below work all the same in our own mount
    // namespace, which is where the services are started.
    let _ = mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    );
    Ok(())
}

/// Creates a named network namespace (a bind mount at `dir/name`, like `ip netns add`).
pub(crate) fn create_netns(
    dir: &Path,
    name: &str,
    userns_ids: Option<[u32; 2]>,
) -> Result<PathBuf, VifError> {
    prepare_netns_dir(dir)?;
    let path = dir.join(name);
    File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| VifError::Backend(format!("create {}: {e}", path.display())))?;
    if let Some(ids) = userns_ids {
        let result = netns_in_own_userns(&path, ids);
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        return result.map(|()| path);
    }
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| VifError::Backend(format!("unshare(CLONE_NEWNET): {e}")))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| VifError::Backend(format!("bind-mount netns at {}: {e}", path.display())))
        })
        .join()
        .unwrap_or_else(|_| Err(VifError::Backend("netns thread panicked".into())))
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// A network namespace made together with a user namespace that maps `ids` to themselves,
/// bound at `path`. The user namespace lives as long as the network namespace it owns.
fn netns_in_own_userns(path: &Path, ids: [u32; 2]) -> Result<(), VifError> {
    let holder = crate::supervisor::Holder::new(libc::CLONE_NEWUSER | libc::CLONE_NEWNET)
        .map_err(|e| VifError::Backend(format!("clone(CLONE_NEWUSER | CLONE_NEWNET): {e}")))?;
    let map = format!("{} {} {}\n", ids[0], ids[0], ids[1] - ids[0] + 1);
    for file in ["uid_map", "gid_map"] {
        let at = format!("/proc/{}/{file}", holder.pid);
        std::fs::write(&at, &map).map_err(|e| VifError::Backend(format!("write {at}: {e}")))?;
    }
    nix::mount::mount(
        Some(Path::new(&format!("/proc/{}/ns/net", holder.pid))),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| VifError::Backend(format!("bind-mount netns at {}: {e}", path.display())))
}

/// Removes a named network namespace; an absent one is not an error.
pub(crate) fn delete_netns(path: &Path) -> Result<(), VifError> {
    if !path.exists() {
        return Ok(());
    }
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    std::fs::remove_file(path)
        .map_err(|e| VifError::Backend(format!("remove {}: {e}", path.display())))
}

/// The `rt_tables.d` file naming our tables (`1105 nnc-tor-home`), rewritten whole.
fn set_table_name(file: &Path, table: u32, name: Option<&str>) -> Result<(), VifError> {
    // Read, change, write back through one temp file: two instances provisioned at once
    // must take turns, or one's rename finds the other's temp file gone.
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.locked();
    let fail = |e: std::io::Error| VifError::Backend(format!("{}: {e}", file.display()));
    let mut entries: BTreeMap<u32, String> = std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (id, n) = l.trim().split_once(char::is_whitespace)?;
            Some((id.parse().ok()?, n.trim().to_owned()))
        })
        .collect();
    match name {
        Some(n) => entries.insert(table, n.to_owned()),
        None => entries.remove(&table),
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = file.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(fail)?;
    writeln!(
        f,
        "# routing tables of nnc-agent instances (managed by the agent)"
    )
    .map_err(fail)?;
    for (id, n) in &entries {
        writeln!(f, "{id}\t{n}").map_err(fail)?;
    }
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, file).map_err(fail)
}

/// One step's undo.
pub(crate) enum Undo {
    Link(String),
    Addr(String, Ipv4Addr, u8),
    Netns(PathBuf),
    Route(u32, Ipv4Addr),
    TableName(u32),
    Rule(Rule),
}

pub(crate) struct Linux {
    pub cfg: LinuxConfig,
}

impl Linux {
    /// Makes every object of `plan`, pushing an undo for each onto `rollback` as it goes.
    pub(crate) fn create(
        &self,
        plan: &Plan,
        rollback: &mut Rollback<Undo>,
    ) -> Result<(), VifError> {
        let n = names(plan.vlan_id, &plan.instance_id);
        let mut nl = Netlink::open()?;
        plan.step(1)?;
        match &self.cfg.segment {
            Segment::Vlan { parent } => nl.add_vlan(&n.segment, parent, plan.vlan_id)?,
            Segment::Veth => nl.add_veth(&n.segment, &n.lan_peer, None)?,
        }
        rollback.push(
            format!("segment {}", n.segment),
            Undo::Link(n.segment.clone()),
        );

        plan.step(2)?;
        nl.add_bridge(&n.bridge, &plan.alias_tag())?;
        rollback.push(format!("bridge {}", n.bridge), Undo::Link(n.bridge.clone()));
        nl.set_master(&n.segment, &n.bridge)?;
        nl.up(&n.segment)?;
        if self.cfg.segment == Segment::Veth {
            nl.up(&n.lan_peer)?;
        }
        nl.up(&n.bridge)?;
        // Replies of the service's transparent inbound come back on the bridge with the
        // addresses the device asked for as their source: strict reverse-path filtering
        // would drop them. Loose (2) wins over any `all` setting (the kernel takes the max).
        let rp = format!("/proc/sys/net/ipv4/conf/{}/rp_filter", n.bridge);
        std::fs::write(&rp, "2").map_err(|e| VifError::Backend(format!("{rp}: {e}")))?;

        plan.step(3)?;
        nl.add_addr(&n.bridge, plan.router_addr, 24)?;
        rollback.push(
            format!("address {}/24", plan.router_addr),
            Undo::Addr(n.bridge.clone(), plan.router_addr, 24),
        );

        plan.step(4)?;
        let ns_path = create_netns(&self.cfg.netns_dir, &n.netns, self.cfg.userns_ids)?;
        rollback.push(format!("netns {}", n.netns), Undo::Netns(ns_path.clone()));

        plan.step(5)?;
        let ns_file = File::open(&ns_path)
            .map_err(|e| VifError::Backend(format!("{}: {e}", ns_path.display())))?;
        nl.add_veth(&n.veth_host, "eth0", Some(&ns_file))?;
        rollback.push(
            format!("veth {}", n.veth_host),
            Undo::Link(n.veth_host.clone()),
        );
        nl.set_master(&n.veth_host, &n.bridge)?;
        nl.up(&n.veth_host)?;
        let mut inside = Netlink::open_in(&ns_path)?;
        inside.up("lo")?;
        inside.add_addr("eth0", plan.service_addr, 24)?;
        inside.up("eth0")?;
        inside.add_default_route(254, plan.router_addr, "eth0")?;

        plan.step(6)?;
        nl.add_default_route(n.table, plan.service_addr, &n.bridge)?;
        rollback.push(
            format!("route table {}", n.table),
            Undo::Route(n.table, plan.service_addr),
        );
        set_table_name(&self.cfg.rt_tables, n.table, Some(&plan.alias))?;
        rollback.push(format!("table name {}", n.table), Undo::TableName(n.table));

        plan.step(7)?;
        for rule in n.rules() {
            nl.add_rule(&rule)?;
            rollback.push(format!("rule {rule}"), Undo::Rule(rule));
        }
        Ok(())
    }

    pub(crate) fn undo(&self, undo: &Undo) -> Result<(), VifError> {
        match undo {
            Undo::Link(name) => Netlink::open()?.del_link(name),
            Undo::Addr(dev, ip, p) => Netlink::open()?.del_addr(dev, *ip, *p),
            Undo::Netns(path) => delete_netns(path),
            Undo::Route(table, gw) => Netlink::open()?.del_default_route(*table, *gw),
            Undo::TableName(table) => set_table_name(&self.cfg.rt_tables, *table, None),
            Undo::Rule(rule) => Netlink::open()?.del_rule(rule),
        }
    }

    /// Removes everything an instance may have, whatever state it is in (idempotent).
    pub(crate) fn remove(&self, plan: &Plan) -> Result<(), VifError> {
        let n = names(plan.vlan_id, &plan.instance_id);
        let mut errors = Vec::new();
        let mut attempt = |r: Result<(), VifError>| {
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        };
        for rule in n.rules().iter().rev() {
            attempt(Netlink::open().and_then(|mut nl| nl.del_rule(rule)));
        }
        attempt(set_table_name(&self.cfg.rt_tables, n.table, None));
        attempt(
            Netlink::open().and_then(|mut nl| nl.del_default_route(n.table, plan.service_addr)),
        );
        attempt(Netlink::open().and_then(|mut nl| nl.del_link(&n.veth_host)));
        attempt(delete_netns(&self.cfg.netns_dir.join(&n.netns)));
        attempt(Netlink::open().and_then(|mut nl| nl.del_link(&n.bridge)));
        attempt(Netlink::open().and_then(|mut nl| nl.del_link(&n.segment)));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(VifError::Backend(errors.join("; ")))
        }
    }

    /// Whether every object of an ACTIVE instance is still there.
    pub(crate) fn intact(&self, plan: &Plan) -> Result<bool, VifError> {
        let n = names(plan.vlan_id, &plan.instance_id);
        let mut nl = Netlink::open()?;
        let links = nl.links()?;
        let has = |name: &str| links.iter().any(|(_, l, _)| l == name);
        Ok(has(&n.bridge)
            && has(&n.segment)
            && has(&n.veth_host)
            && self.cfg.netns_dir.join(&n.netns).exists()
            && nl.has_default_route(n.table, plan.service_addr)?
            && nl.has_rule(&n.rules()[0])?
            && nl.has_rule(&n.rules()[1])?)
    }

    /// Instance ids found in bridge aliases (`nnc:{id}`) and namespace names, with the VLAN id
    /// when a bridge shows it.
    pub(crate) fn tagged(&self) -> Result<Vec<(String, Option<u16>)>, VifError> {
        let mut found = Vec::new();
        for (_, name, alias) in Netlink::open()?.links()? {
            let vlan = name.strip_prefix("nnc").and_then(|v| v.parse::<u16>().ok());
            if let (Some(vlan), Some(id)) = (vlan, alias.as_deref().and_then(super::tag_in)) {
                found.push((id.to_owned(), Some(vlan)));
            }
        }
        if let Ok(dir) = std::fs::read_dir(&self.cfg.netns_dir) {
            for entry in dir.flatten() {
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("nnc-"))
                {
                    if !found.iter().any(|(f, _)| f == id) {
                        found.push((id.to_owned(), None));
                    }
                }
            }
        }
        Ok(found)
    }
}
