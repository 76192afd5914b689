//! The LAN devices this router knows, offered as choices for `routeDevices`: the DHCP
//! server's leases (dnsmasq's lease file: OpenWrt `/tmp/dhcp.leases`, Debian
//! `/var/lib/misc/dnsmasq.leases`) and the kernel's IPv4 neighbour table (`/proc/net/arp`).
//! Both are read bounded, never through a link; a line that does not parse is left out.

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

/// `/tmp` is writable by anyone on the router: the lease file is opened without following a
/// link and without blocking (a FIFO there must not hold a thread), and read only if
/// `trusted`. (A local user who plants a well-formed file before dnsmasq starts can still
/// offer false names as choices; the owner picks, and the device's MAC is what is routed.)
fn read(path: &str) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    if let Ok(f) = opened
        && f.metadata().is_ok_and(|m| trusted(&m))
    {
        let mut bytes = Vec::new();
        let _ = f.take(MAX_BYTES).read_to_end(&mut bytes);
        // A cut last line is left out, not read as a shorter address.
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        text = String::from_utf8_lossy(&bytes[..whole]).into_owned();
    }
    text
}

/// A regular file with one name that only its owner may write: not a hard link to a file
/// root reads, not a list anyone could edit.
fn trusted(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    m.is_file() && m.nlink() == 1 && m.mode() & 0o022 == 0
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
    fn a_link_or_fifo_in_place_of_the_lease_file_is_not_read() {
        let dir = std::env::temp_dir().join(format!("nnc-lan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("leases");
        std::fs::write(
            &file,
            "1 02:00:5e:10:00:01 192.0.2.5 tv *\n1 02:00:5e:10:00:02 19",
        )
        .unwrap();
        let mode = |m: u32| {
            let p = std::os::unix::fs::PermissionsExt::from_mode(m);
            std::fs::set_permissions(&file, p).unwrap();
        };
        mode(0o664);
        assert_eq!(
            read(file.to_str().unwrap()),
            "",
            "group-writable: not trusted"
        );
        mode(0o644);
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            read(file.to_str().unwrap()),
            "1 02:00:5e:10:00:01 192.0.2.5 tv *\n"
        );
        let hard = dir.join("hard");
        let _ = std::fs::remove_file(&hard);
        std::fs::hard_link(&file, &hard).unwrap();
        assert_eq!(read(file.to_str().unwrap()), "", "two names: not trusted");
        std::fs::remove_file(&hard).unwrap();
        assert_eq!(read(link.to_str().unwrap()), "");
        assert_eq!(read(fifo.to_str().unwrap()), "", "and it returned at once");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
