//! The LAN devices this router knows, offered as choices for `routeDevices`: the DHCP
//! server's leases (dnsmasq's lease file: OpenWrt `/tmp/dhcp.leases`, Debian
//! `/var/lib/misc/dnsmasq.leases`) and the kernel's IPv4 neighbour table (`/proc/net/arp`).
//! Both are read bounded; a line that does not parse is left out.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::Ipv4Addr;

use super::device::Device;

const LEASE_FILES: [&str; 2] = ["/tmp/dhcp.leases", "/var/lib/misc/dnsmasq.leases"];
const NEIGHBOURS: &str = "/proc/net/arp";
/// Enough for thousands of entries; a bigger file is read up to here.
const MAX_BYTES: u64 = 256 << 10;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LanDevice {
    pub address: Ipv4Addr,
    /// Canonical spelling, as `routeDevices` takes it.
    pub mac: String,
    pub hostname: Option<String>,
    /// `dhcp` or `neighbour`.
    pub source: &'static str,
    pub interface: Option<String>,
}

fn read(path: &str) -> String {
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_BYTES).read_to_string(&mut text);
    }
    text
}

fn mac(text: &str) -> Option<String> {
    match Device::parse(text) {
        Ok(d @ Device::Mac(_)) => Some(d.to_string()),
        _ => None,
    }
}

/// dnsmasq: `EXPIRY MAC IP HOSTNAME CLIENT-ID`, hostname `*` when the client gave none.
pub(crate) fn parse_leases(text: &str, into: &mut BTreeMap<String, LanDevice>) {
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(m), Some(Ok(address))) =
            (f.get(1).and_then(|m| mac(m)), f.get(2).map(|a| a.parse()))
        else {
            continue;
        };
        let hostname = f
            .get(3)
            .filter(|h| **h != "*" && h.len() <= 64 && h.chars().all(|c| c.is_ascii_graphic()))
            .map(|h| (*h).to_owned());
        into.insert(
            m.clone(),
            LanDevice {
                address,
                mac: m,
                hostname,
                source: "dhcp",
                interface: None,
            },
        );
    }
}

/// `/proc/net/arp`: `IP HWTYPE FLAGS MAC MASK DEVICE`; flags without 0x2 are incomplete.
pub(crate) fn parse_neighbours(text: &str, into: &mut BTreeMap<String, LanDevice>) {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [ip, _, flags, hw, _, dev] = f[..] else {
            continue;
        };
        let complete =
            u32::from_str_radix(flags.trim_start_matches("0x"), 16).is_ok_and(|v| v & 2 != 0);
        let (Some(m), Ok(address), true) = (mac(hw), ip.parse(), complete) else {
            continue;
        };
        let e = into.entry(m.clone()).or_insert(LanDevice {
            address,
            mac: m,
            hostname: None,
            source: "neighbour",
            interface: None,
        });
        e.interface = Some(dev.to_owned());
    }
}

/// What the lease files and the neighbour table hold now, by address.
pub(crate) fn devices() -> Vec<LanDevice> {
    let mut by_mac = BTreeMap::new();
    for f in LEASE_FILES {
        parse_leases(&read(f), &mut by_mac);
    }
    parse_neighbours(&read(NEIGHBOURS), &mut by_mac);
    let mut all: Vec<LanDevice> = by_mac.into_values().collect();
    all.sort_by_key(|d| d.address);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_and_neighbours_merge_by_mac() {
        let mut m = BTreeMap::new();
        parse_leases(
            "1764640000 A4:83:E7:12:34:56 192.168.1.23 phone 01:a4:83:e7:12:34:56\n\
             1764640000 02:00:5e:10:00:01 192.168.1.24 * *\n\
             garbage line\n\
             1764640000 ff:ff:ff:ff:ff:ff 192.168.1.99 bcast *\n",
            &mut m,
        );
        parse_neighbours(
            "IP address       HW type     Flags       HW address            Mask     Device\n\
             192.168.1.23     0x1         0x2         a4:83:e7:12:34:56     *        br-lan\n\
             192.168.1.30     0x1         0x2         02:00:5e:10:00:02     *        br-lan\n\
             192.168.1.31     0x1         0x0         00:00:00:00:00:00     *        br-lan\n",
            &mut m,
        );
        let v: Vec<_> = m.values().cloned().collect();
        assert_eq!(v.len(), 3, "{v:?}");
        let phone = &m["a4:83:e7:12:34:56"];
        assert_eq!(phone.hostname.as_deref(), Some("phone"));
        assert_eq!(
            (phone.source, phone.interface.as_deref()),
            ("dhcp", Some("br-lan"))
        );
        assert_eq!(m["02:00:5e:10:00:01"].hostname, None);
        assert_eq!(m["02:00:5e:10:00:02"].source, "neighbour");
    }
}
