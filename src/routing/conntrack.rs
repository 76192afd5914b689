//! Ends the connections a device had before it was routed (or moved to another instance).
//!
//! Routing decides per packet, but a tracked connection can outlive the decision: a router's
//! flowtable (OpenWrt fw4's `flow_offloading`, on by default on many boards) forwards an
//! offloaded connection at ingress, before the marks and the policy rules, along the route it
//! was given when it started: out of the WAN, directly. Deleting the connection from the
//! conntrack table removes its offload too, so its next packet takes the routing path and
//! goes to the service (which, not knowing the connection, ends it). Connections to the
//! router itself are kept (the owner's session in the web page), except DNS, which must not
//! go on being answered by the router's resolver.

use std::net::IpAddr;

use super::device::Device;
use crate::vif::netlink::Netlink;
use crate::vif::rtnl::Reply;

/// Which connections belong to the devices: by original source address.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Sources {
    /// IPv4 blocks (`Device::V4`).
    blocks: Vec<Device>,
    /// Single addresses the neighbour table has for the devices' MAC addresses (IPv6 too).
    addrs: Vec<IpAddr>,
}

impl Sources {
    /// The devices' addresses: IPv4 blocks as given; for MAC devices, and for the MAC
    /// addresses the neighbour table has for addresses in the blocks, every address the
    /// neighbour table has for that MAC (a device's IPv6 among them).
    pub(super) fn of(devices: &[Device], neighbours: &[(IpAddr, [u8; 6])]) -> Sources {
        let mut s = Sources::default();
        let mut macs = Vec::new();
        for d in devices {
            match *d {
                Device::V4 { .. } => s.blocks.push(*d),
                Device::Mac(m) => macs.push(m),
            }
        }
        for (ip, mac) in neighbours {
            if s.in_blocks(*ip) && !macs.contains(mac) {
                macs.push(*mac);
            }
        }
        for (ip, mac) in neighbours {
            if macs.contains(mac) && !s.in_blocks(*ip) && !s.addrs.contains(ip) {
                s.addrs.push(*ip);
            }
        }
        s
    }

    fn in_blocks(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(a) if self.blocks.iter().any(|b| b.holds(a)))
    }

    pub(super) fn holds(&self, ip: IpAddr) -> bool {
        self.in_blocks(ip) || self.addrs.contains(&ip)
    }

    /// Whether the connection `r` is one to end: from one of these sources, and not to one
    /// of the router's own addresses `local` (DNS excepted).
    pub(super) fn ends(&self, r: &Reply, local: &[IpAddr]) -> bool {
        let Reply::Conntrack {
            src: Some(src),
            dst,
            dport,
            ..
        } = r
        else {
            return false;
        };
        self.holds(*src) && (dst.is_none_or(|d| !local.contains(&d)) || *dport == Some(53))
    }
}

/// Ends the tracked connections of `devices` (see the module); returns how many it ended
/// and how many the kernel would not (offloaded, on kernels before 5.10.182/5.15.115/6.1.32).
pub(super) fn end_connections(devices: &[Device]) -> Result<(usize, usize), String> {
    let mut rt = Netlink::open().map_err(|e| e.to_string())?;
    let neighbours = rt.neighbours().map_err(|e| e.to_string())?;
    let local: Vec<IpAddr> = rt
        .local_addresses()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    let sources = Sources::of(devices, &neighbours);
    let mut nf = Netlink::open_netfilter().map_err(|e| e.to_string())?;
    nf.delete_connections(&|r| sources.ends(r, &local))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(src: &str, dst: &str, dport: u16) -> Reply {
        Reply::Conntrack {
            family: 2,
            src: src.parse().ok(),
            dst: dst.parse().ok(),
            dport: Some(dport),
            tuple: Vec::new(),
            zone: None,
        }
    }

    #[test]
    fn a_devices_addresses_come_from_its_block_and_its_macs_neighbours() {
        let a_mac = [2, 0, 0x5e, 0x10, 0, 0x0a];
        let b_mac = [2, 0, 0x5e, 0x10, 0, 0x14];
        let neighbours: Vec<(IpAddr, [u8; 6])> = vec![
            ("192.0.2.10".parse().unwrap(), a_mac),
            ("2001:db8:1::10".parse().unwrap(), a_mac),
            ("192.0.2.20".parse().unwrap(), b_mac),
            ("2001:db8:1::20".parse().unwrap(), b_mac),
        ];
        let by_ip = Sources::of(&[Device::parse("192.0.2.10").unwrap()], &neighbours);
        let by_mac = Sources::of(&[Device::Mac(b_mac)], &neighbours);
        let local: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap()];
        assert!(by_ip.ends(&ct("192.0.2.10", "198.51.100.2", 80), &local));
        assert!(by_ip.ends(&ct("2001:db8:1::10", "2001:db8:2::2", 443), &local));
        assert!(!by_ip.ends(&ct("192.0.2.20", "198.51.100.2", 80), &local));
        assert!(!by_ip.ends(&ct("2001:db8:1::20", "2001:db8:2::2", 80), &local));
        // The router's web page stays; its resolver does not.
        assert!(!by_ip.ends(&ct("192.0.2.10", "192.0.2.1", 443), &local));
        assert!(by_ip.ends(&ct("192.0.2.10", "192.0.2.1", 53), &local));
        assert!(by_mac.ends(&ct("192.0.2.20", "198.51.100.2", 80), &local));
        assert!(by_mac.ends(&ct("2001:db8:1::20", "2001:db8:2::2", 80), &local));
        assert!(!by_mac.ends(&ct("192.0.2.10", "198.51.100.2", 80), &local));
        let block = Sources::of(&[Device::parse("192.0.2.0/24").unwrap()], &neighbours);
        assert!(block.ends(&ct("192.0.2.77", "198.51.100.2", 80), &local));
        assert!(block.ends(&ct("2001:db8:1::20", "2001:db8:2::2", 80), &local));
        assert!(!block.ends(&ct("198.51.100.7", "192.0.2.10", 80), &local));
        assert!(!block.ends(&Reply::Other, &local));
    }
}
