//! What a user may name as a device: an IPv4 address, an IPv4 CIDR or a MAC address, in one
//! canonical spelling (`192.0.2.10`, `192.0.2.0/24`, `02:00:5e:10:00:01`) so that the same
//! device is never two routes.

use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Device {
    /// An address block; a single address is a /32.
    V4 {
        net: Ipv4Addr,
        prefix: u8,
    },
    Mac([u8; 6]),
}

impl Device {
    /// Parses and normalises; the error says what is wrong with the text.
    pub(crate) fn parse(text: &str) -> Result<Device, String> {
        let t = text.trim();
        if t.is_empty() || t.len() > 64 {
            return Err(format!(
                "{text:?} is not an IPv4 address, IPv4 CIDR or MAC address"
            ));
        }
        if let Some(mac) = parse_mac(t) {
            if mac[0] & 1 == 1 {
                return Err(format!(
                    "{t:?} is a group (multicast or broadcast) MAC address, not a device"
                ));
            }
            if mac == [0; 6] {
                return Err(format!("{t:?} is the all-zero MAC address, not a device"));
            }
            return Ok(Device::Mac(mac));
        }
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => {
                let prefix = p
                    .parse::<u8>()
                    .ok()
                    .filter(|v| *v <= 32 && v.to_string() == p)
                    .ok_or_else(|| format!("{t:?}: the prefix length must be 0 to 32"))?;
                (a, prefix)
            }
            None => (t, 32),
        };
        let ip: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IPv4 address, IPv4 CIDR or MAC address"))?;
        let net = Ipv4Addr::from(u32::from(ip) & mask(prefix));
        if net != ip {
            return Err(format!(
                "{t:?} has host bits set: the block is {net}/{prefix}"
            ));
        }
        if prefix < 8 {
            return Err(format!(
                "{t:?} is wider than a /8: route devices or LAN blocks, not the internet"
            ));
        }
        let first = net.octets()[0];
        if first == 0 || first == 127 || first >= 224 {
            return Err(format!(
                "{t:?} is not a unicast block a LAN device can have"
            ));
        }
        Ok(Device::V4 { net, prefix })
    }

    /// Whether two devices can be the same packet's source (overlapping blocks).
    pub(crate) fn overlaps(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::V4 { net: a, prefix: p }, Device::V4 { net: b, prefix: q }) => {
                let m = mask((*p).min(*q));
                u32::from(*a) & m == u32::from(*b) & m
            }
            (Device::Mac(a), Device::Mac(b)) => a == b,
            _ => false,
        }
    }

    /// Whether the IPv4 block holds `ip` (a MAC device holds no address).
    pub(crate) fn holds(&self, ip: std::net::Ipv4Addr) -> bool {
        matches!(*self, Device::V4 { net, prefix } if u32::from(ip) & mask(prefix) == u32::from(net))
    }

    /// Whether the block covers any address of `net/prefix`.
    pub(crate) fn overlaps_block(&self, net: Ipv4Addr, prefix: u8) -> bool {
        self.overlaps(&Device::V4 { net, prefix })
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::V4 { net, prefix: 32 } => write!(f, "{net}"),
            Device::V4 { net, prefix } => write!(f, "{net}/{prefix}"),
            Device::Mac(m) => write!(
                f,
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
        }
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, either case.
fn parse_mac(t: &str) -> Option<[u8; 6]> {
    let sep = if t.contains(':') { ':' } else { '-' };
    let mut out = [0u8; 6];
    let mut parts = t.split(sep);
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(t: &str) -> String {
        Device::parse(t).unwrap().to_string()
    }

    #[test]
    fn devices_are_normalised() {
        assert_eq!(canon("192.0.2.10"), "192.0.2.10");
        assert_eq!(canon(" 192.0.2.10/32 "), "192.0.2.10");
        assert_eq!(canon("192.0.2.0/24"), "192.0.2.0/24");
        assert_eq!(canon("02-00-5E-10-00-0A"), "02:00:5e:10:00:0a");
        assert_eq!(canon("02:00:5e:10:00:0a"), "02:00:5e:10:00:0a");
    }

    #[test]
    fn bad_devices_say_what_is_wrong() {
        for (t, says) in [
            ("", "not an IPv4"),
            ("phone", "not an IPv4"),
            ("192.0.2.300", "not an IPv4"),
            ("192.0.2.5/24", "host bits set: the block is 192.0.2.0/24"),
            ("192.0.2.0/33", "prefix length"),
            ("192.0.2.0/024", "prefix length"),
            ("192.0.2.0/", "prefix length"),
            ("0.0.0.0/0", "wider than a /8"),
            ("127.0.0.1", "not a unicast block"),
            ("224.0.0.1", "not a unicast block"),
            ("ff:ff:ff:ff:ff:ff", "group"),
            ("01:00:5e:00:00:01", "group"),
            ("00:00:00:00:00:00", "all-zero"),
            ("02:00:5e:10:00", "not an IPv4"),
            ("02:00:5e:10:00:0a:0b", "not an IPv4"),
            ("02:00:5e:10:00:zz", "not an IPv4"),
            ("2001:db8::1", "not an IPv4"),
        ] {
            let e = Device::parse(t).unwrap_err();
            assert!(e.contains(says), "{t:?}: {e}");
        }
    }

    #[test]
    fn overlaps_are_found() {
        let d = |t| Device::parse(t).unwrap();
        assert!(d("192.0.2.0/24").overlaps(&d("192.0.2.10")));
        assert!(d("192.0.2.10").overlaps(&d("192.0.2.0/24")));
        assert!(!d("192.0.2.0/25").overlaps(&d("192.0.2.128/25")));
        assert!(!d("192.0.2.10").overlaps(&d("02:00:5e:10:00:0a")));
        assert!(d("10.99.105.0/24").overlaps_block(Ipv4Addr::new(10, 99, 0, 0), 16));
    }
}
