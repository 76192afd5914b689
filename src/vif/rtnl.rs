//! The few rtnetlink messages the Linux backend sends, encoded by hand, and the few replies it
//! reads. A general netlink library parses every attribute of every message family; this
//! agent needs links, addresses, routes and rules only, and the difference is hundreds of KB of flash.
//!
//! Layout (all integers in host byte order, everything padded to 4 bytes):
//! `nlmsghdr {len u32, type u16, flags u16, seq u32, pid u32}`, then the family header
//! (`ifinfomsg` 16 bytes, `ifaddrmsg` 8, `rtmsg` 12, `fib_rule_hdr` 12, `ndmsg` 12; on
//! NETLINK_NETFILTER `nfgenmsg` 4), then attributes `{len u16, type u16, data}`.

use std::net::IpAddr;

pub(crate) const RTM_NEWLINK: u16 = 16;
pub(crate) const RTM_DELLINK: u16 = 17;
pub(crate) const RTM_GETLINK: u16 = 18;
pub(crate) const RTM_SETLINK: u16 = 19;
pub(crate) const RTM_NEWADDR: u16 = 20;
pub(crate) const RTM_DELADDR: u16 = 21;
pub(crate) const RTM_NEWROUTE: u16 = 24;
pub(crate) const RTM_DELROUTE: u16 = 25;
pub(crate) const RTM_GETROUTE: u16 = 26;
pub(crate) const RTM_NEWRULE: u16 = 32;
pub(crate) const RTM_DELRULE: u16 = 33;
pub(crate) const RTM_GETRULE: u16 = 34;
pub(crate) const RTM_NEWNEIGH: u16 = 28;
pub(crate) const RTM_GETNEIGH: u16 = 30;
/// ctnetlink (NETLINK_NETFILTER, subsystem 1): a connection (a dump's entries), dump, delete.
pub(crate) const CT_NEW: u16 = 1 << 8;
pub(crate) const CT_GET: u16 = (1 << 8) | 1;
pub(crate) const CT_DELETE: u16 = (1 << 8) | 2;
pub(crate) const CTA_TUPLE_ORIG: u16 = 1;
pub(crate) const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_DUMP: u16 = 0x300;

pub(crate) const IFLA_IFNAME: u16 = 3;
pub(crate) const IFLA_LINK: u16 = 5;
pub(crate) const IFLA_MASTER: u16 = 10;
pub(crate) const IFLA_LINKINFO: u16 = 18;
pub(crate) const IFLA_IFALIAS: u16 = 20;
pub(crate) const IFLA_NET_NS_FD: u16 = 28;
pub(crate) const IFLA_INFO_KIND: u16 = 1;
pub(crate) const IFLA_INFO_DATA: u16 = 2;
pub(crate) const IFLA_VLAN_ID: u16 = 1;
pub(crate) const VETH_INFO_PEER: u16 = 1;
pub(crate) const IFA_ADDRESS: u16 = 1;
pub(crate) const IFA_LOCAL: u16 = 2;
pub(crate) const RTA_DST: u16 = 1;
pub(crate) const RTA_OIF: u16 = 4;
pub(crate) const RTA_GATEWAY: u16 = 5;
pub(crate) const RTA_TABLE: u16 = 15;
pub(crate) const FRA_SRC: u16 = 2;
pub(crate) const FRA_PRIORITY: u16 = 6;
pub(crate) const FRA_FWMARK: u16 = 10;
pub(crate) const FRA_TABLE: u16 = 15;
pub(crate) const FRA_FWMASK: u16 = 16;
pub(crate) const FR_ACT_TO_TBL: u8 = 1;
pub(crate) const FR_ACT_PROHIBIT: u8 = 8;

pub(crate) const AF_UNSPEC: u8 = 0;
pub(crate) const AF_INET: u8 = 2;
pub(crate) const IFF_UP: u32 = 1;
pub(crate) const RTPROT_STATIC: u8 = 4;
pub(crate) const RTN_UNICAST: u8 = 1;
/// `rtm_table` when the real table id is in `RTA_TABLE` (ids above 255).
pub(crate) const RT_TABLE_COMPAT: u8 = 252;

const HEADER: usize = 16;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A request under construction.
pub(crate) struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    pub(crate) fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = vec![0u8; HEADER];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        Msg { buf }
    }

    /// `struct ifinfomsg`.
    pub(crate) fn ifinfo(mut self, index: u32, flags: u32, change: u32) -> Msg {
        self.ifinfo_into(index, flags, change);
        self
    }

    fn ifinfo_into(&mut self, index: u32, flags: u32, change: u32) {
        self.buf.extend_from_slice(&[AF_UNSPEC, 0, 0, 0]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
    }

    /// `struct ifaddrmsg` for IPv4.
    pub(crate) fn ifaddr(mut self, prefix_len: u8, index: u32) -> Msg {
        self.buf.extend_from_slice(&[AF_INET, prefix_len, 0, 0]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self
    }

    /// `struct rtmsg` for an IPv4 unicast route.
    pub(crate) fn rtmsg(mut self, dst_len: u8, table: u8) -> Msg {
        // family, dst_len, src_len, tos, table, protocol, scope (universe), type; flags u32
        self.buf
            .extend_from_slice(&[AF_INET, dst_len, 0, 0, table, RTPROT_STATIC, 0, RTN_UNICAST]);
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self
    }

    /// `struct fib_rule_hdr` for an IPv4 rule (`ip rule`); `src_len` with an `FRA_SRC`.
    pub(crate) fn rulemsg(mut self, src_len: u8, table: u8, action: u8) -> Msg {
        // family, dst_len, src_len, tos, table, res1, res2, action; flags u32
        self.buf
            .extend_from_slice(&[AF_INET, 0, src_len, 0, table, 0, 0, action]);
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self
    }

    /// `struct ndmsg` (neighbours) of any family.
    pub(crate) fn ndmsg(mut self) -> Msg {
        self.buf.extend_from_slice(&[0; 12]);
        self
    }

    /// `struct nfgenmsg`: family, NFNETLINK_V0, resource id 0.
    pub(crate) fn nfgen(mut self, family: u8) -> Msg {
        self.buf.extend_from_slice(&[family, 0, 0, 0]);
        self
    }

    pub(crate) fn attr(mut self, kind: u16, data: &[u8]) -> Msg {
        self.put_attr(kind, data);
        self
    }

    fn put_attr(&mut self, kind: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
    }

    /// Bytes already laid out as attributes (a payload read from the kernel, sent back).
    pub(crate) fn raw(mut self, attrs: &[u8]) -> Msg {
        self.buf.extend_from_slice(attrs);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    pub(crate) fn attr_str(self, kind: u16, s: &str) -> Msg {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    pub(crate) fn attr_u32(self, kind: u16, v: u32) -> Msg {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// A nested attribute whose payload `inner` builds.
    pub(crate) fn nest(mut self, kind: u16, inner: impl FnOnce(Msg) -> Msg) -> Msg {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        let mut m = inner(Msg {
            buf: std::mem::take(&mut self.buf),
        });
        let len = u16::try_from(m.buf.len() - start).unwrap_or(u16::MAX);
        m.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        m.buf.resize(align(m.buf.len()), 0);
        m
    }

    /// A nested `ifinfomsg` (a veth peer) with its own attributes.
    pub(crate) fn nest_ifinfo(self, kind: u16, inner: impl FnOnce(Msg) -> Msg) -> Msg {
        self.nest(kind, |mut m| {
            m.ifinfo_into(0, 0, 0);
            inner(m)
        })
    }

    pub(crate) fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes following a family header of `fixed` bytes: (type, payload).
fn attrs(body: &[u8], fixed: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = fixed;
    while let (Some(len), Some(kind)) = (u16_at(body, at), u16_at(body, at + 2)) {
        let len = usize::from(len);
        if len < 4 || at + len > body.len() {
            break;
        }
        // Strip NLA_F_NESTED / NLA_F_NET_BYTEORDER flags from the type.
        out.push((kind & 0x3fff, &body[at + 4..at + len]));
        at += align(len);
    }
    out
}

/// One message of a reply, by what we need from it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// NLMSG_ERROR: 0 for an ACK, else a negative errno.
    Ack(i32),
    Done,
    Link {
        index: u32,
        name: String,
        alias: Option<String>,
    },
    Route {
        dst_len: u8,
        table: u32,
        gateway: Option<[u8; 4]>,
        /// `rtm_type` (`RTN_LOCAL` = 2 for the router's own addresses) and the destination.
        kind: u8,
        dst: Option<[u8; 4]>,
    },
    Rule {
        priority: u32,
        fwmark: u32,
        /// `from` address and prefix length, when the rule has one.
        src: Option<([u8; 4], u8)>,
        /// It also selects by something this backend never sets (destination, tos,
        /// interfaces, ports, protocol, uid): another tool's rule.
        other: bool,
        action: u8,
        table: u32,
    },
    /// A neighbour (ARP / NDP entry) with a link-layer address.
    Neigh {
        ip: IpAddr,
        mac: [u8; 6],
    },
    /// A tracked connection: its original direction's source, destination and destination
    /// port, and what a delete of it sends back (the tuple's payload, the zone's).
    Conntrack {
        family: u8,
        src: Option<IpAddr>,
        dst: Option<IpAddr>,
        dport: Option<u16>,
        tuple: Vec<u8>,
        zone: Option<Vec<u8>>,
    },
    Other,
}

fn ip_of(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
        _ => None,
    }
}

fn conntrack(body: &[u8]) -> Reply {
    let (mut src, mut dst, mut dport, mut tuple, mut zone) = (None, None, None, None, None);
    for (t, v) in attrs(body, 4) {
        match t {
            CTA_TUPLE_ORIG => {
                tuple = Some(v.to_vec());
                for (t, v) in attrs(v, 0) {
                    match t {
                        CTA_TUPLE_IP => {
                            for (t, v) in attrs(v, 0) {
                                // CTA_IP_V4_SRC, _DST, CTA_IP_V6_SRC, _DST
                                match t {
                                    1 | 3 => src = ip_of(v),
                                    2 | 4 => dst = ip_of(v),
                                    _ => {}
                                }
                            }
                        }
                        CTA_TUPLE_PROTO => {
                            dport = attrs(v, 0)
                                .into_iter()
                                .find(|(t, _)| *t == CTA_PROTO_DST_PORT)
                                .and_then(|(_, v)| v.try_into().ok())
                                .map(u16::from_be_bytes);
                        }
                        _ => {}
                    }
                }
            }
            CTA_ZONE => zone = Some(v.to_vec()),
            _ => {}
        }
    }
    match tuple {
        Some(tuple) => Reply::Conntrack {
            family: body.first().copied().unwrap_or(0),
            src,
            dst,
            dport,
            tuple,
            zone,
        },
        None => Reply::Other,
    }
}

fn cstr(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or(b)).into_owned()
}

/// Splits a datagram into (sequence number, reply) pairs; malformed tails are dropped.
pub(crate) fn parse(buf: &[u8]) -> Vec<(u32, Reply)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind), Some(seq)) =
        (u32_at(buf, at), u16_at(buf, at + 4), u32_at(buf, at + 8))
    {
        let len = len as usize;
        if len < HEADER || at + len > buf.len() {
            break;
        }
        let body = &buf[at + HEADER..at + len];
        let reply = match kind {
            NLMSG_ERROR => Reply::Ack(u32_at(body, 0).map_or(-1, |e| e as i32)),
            NLMSG_DONE => Reply::Done,
            RTM_NEWLINK => {
                let mut name = None;
                let mut alias = None;
                for (t, v) in attrs(body, 16) {
                    match t {
                        IFLA_IFNAME => name = Some(cstr(v)),
                        IFLA_IFALIAS => alias = Some(cstr(v)),
                        _ => {}
                    }
                }
                match (u32_at(body, 4), name) {
                    (Some(index), Some(name)) => Reply::Link { index, name, alias },
                    _ => Reply::Other,
                }
            }
            RTM_NEWROUTE => {
                let dst_len = body.get(1).copied().unwrap_or(0);
                let kind = body.get(7).copied().unwrap_or(0);
                let mut table = u32::from(body.get(4).copied().unwrap_or(0));
                let (mut gateway, mut dst) = (None, None);
                for (t, v) in attrs(body, 12) {
                    match t {
                        RTA_TABLE => table = u32_at(v, 0).unwrap_or(table),
                        RTA_GATEWAY => gateway = v.try_into().ok(),
                        RTA_DST => dst = v.try_into().ok(),
                        _ => {}
                    }
                }
                Reply::Route {
                    dst_len,
                    table,
                    gateway,
                    kind,
                    dst,
                }
            }
            RTM_NEWRULE => {
                let action = body.get(7).copied().unwrap_or(0);
                let src_len = body.get(2).copied().unwrap_or(0);
                let mut table = u32::from(body.get(4).copied().unwrap_or(0));
                let (mut priority, mut fwmark, mut src) = (0, 0, None);
                // dst_len, tos; then FRA_DST, FRA_IIFNAME, FRA_OIFNAME, FRA_UID_RANGE,
                // FRA_IP_PROTO, FRA_SPORT_RANGE, FRA_DPORT_RANGE.
                let mut other =
                    body.get(1).is_some_and(|l| *l != 0) || body.get(3).is_some_and(|t| *t != 0);
                for (t, v) in attrs(body, 12) {
                    other |= matches!(t, 1 | 3 | 17 | 20 | 22 | 23 | 24);
                    match t {
                        FRA_PRIORITY => priority = u32_at(v, 0).unwrap_or(0),
                        FRA_FWMARK => fwmark = u32_at(v, 0).unwrap_or(0),
                        FRA_SRC => src = v.try_into().ok().map(|a| (a, src_len)),
                        FRA_TABLE => table = u32_at(v, 0).unwrap_or(table),
                        _ => {}
                    }
                }
                Reply::Rule {
                    priority,
                    fwmark,
                    src,
                    other,
                    action,
                    table,
                }
            }
            RTM_NEWNEIGH => {
                let mut ip = None;
                let mut mac = None;
                for (t, v) in attrs(body, 12) {
                    match t {
                        NDA_DST => ip = ip_of(v),
                        NDA_LLADDR => mac = <[u8; 6]>::try_from(v).ok(),
                        _ => {}
                    }
                }
                match (ip, mac) {
                    (Some(ip), Some(mac)) => Reply::Neigh { ip, mac },
                    _ => Reply::Other,
                }
            }
            CT_NEW => conntrack(body),
            _ => Reply::Other,
        };
        out.push((seq, reply));
        at += align(len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vlan_request_is_laid_out_as_the_kernel_expects() {
        let m = Msg::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .ifinfo(0, 0, 0)
            .attr_str(IFLA_IFNAME, "nnc100v")
            .attr_u32(IFLA_LINK, 2)
            .nest(IFLA_LINKINFO, |m| {
                m.attr_str(IFLA_INFO_KIND, "vlan")
                    .nest(IFLA_INFO_DATA, |m| {
                        m.attr(IFLA_VLAN_ID, &100u16.to_ne_bytes())
                    })
            })
            .finish(7);
        assert_eq!(u32_at(&m, 0).unwrap() as usize, m.len());
        assert_eq!(m.len() % 4, 0);
        assert_eq!(u32_at(&m, 8), Some(7));
        let body = &m[HEADER..];
        let top = attrs(body, 16);
        assert_eq!(top[0], (IFLA_IFNAME, &b"nnc100v\0"[..]));
        assert_eq!(top[1], (IFLA_LINK, &2u32.to_ne_bytes()[..]));
        let info = attrs(top[2].1, 0);
        assert_eq!(info[0], (IFLA_INFO_KIND, &b"vlan\0"[..]));
        let data = attrs(info[1].1, 0);
        assert_eq!(data, [(IFLA_VLAN_ID, &100u16.to_ne_bytes()[..])]);
    }

    #[test]
    fn replies_parse_and_garbage_does_not_panic() {
        let mut ack = Msg::new(NLMSG_ERROR, 0).finish(3);
        ack.extend_from_slice(&(-17i32).to_ne_bytes());
        let len = u32::try_from(ack.len()).unwrap();
        ack[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse(&ack), [(3, Reply::Ack(-17))]);
        let link = Msg::new(RTM_NEWLINK, 0)
            .ifinfo(9, 0, 0)
            .attr_str(IFLA_IFNAME, "nnc1")
            .attr_str(IFLA_IFALIAS, "x nnc:1")
            .finish(4);
        assert_eq!(
            parse(&link),
            [(
                4,
                Reply::Link {
                    index: 9,
                    name: "nnc1".into(),
                    alias: Some("x nnc:1".into())
                }
            )]
        );
        for junk in [&[][..], &[1, 2, 3], &[0xff; 40], &link[..20]] {
            let _ = parse(junk);
        }
    }
}
