//! The agent's nftables rules, as `nft -f` text, replaced whole in one transaction.
//!
//! On the router, `table inet nnc_agent` (the agent never touches another table):
//! - `mark_devices` (prerouting, before routing): a routed device's packets get its instance's
//!   mark (`vif` turned that mark into "look up the instance's table, else refuse"). Devices
//!   named by IPv4 address also teach a set their MAC address, so that their IPv6 is known.
//! - `dns_to_service` (dstnat): every DNS query of a marked device, to any address, the
//!   router's own included, goes to the service (`.2`, port 53) instead.
//! - `input_guard` / `forward_guard`: a marked packet leaves only through its instance's
//!   bridge; IPv6 of a marked device (which the service cannot carry) is refused, as are its
//!   DNS queries to the router over IPv6. This holds with the policy rules or the instance's
//!   routing table gone (not with this table gone: it sets the marks).
//!
//! In each service's network namespace, `table ip nnc_agent`: TCP arriving from the segment
//! for any other address is redirected to the service's transparent inbound, DNS to its DNS
//! inbound. The namespace does not forward (forwarding off, and a forward chain that drops:
//! a namespace inherits the router's `ip_forward=1`), so anything else from a device is
//! dropped there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use super::device::Device;
use crate::configgen::{DNS_PORT, TRANSPARENT_PORT};

/// The mark bits that name an instance (the rest of a packet's mark is kept).
use crate::vif::MARK_MASK;

/// One instance's share of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub vlan: u16,
    pub mark: u32,
    pub bridge: String,
    pub service: Ipv4Addr,
    pub devices: Vec<Device>,
    /// `onServiceDown: DIRECT` and the service is down: its devices are not marked.
    pub direct: bool,
}

/// The router's ruleset for `groups`; `refused` are devices whose instance has no segment
/// (they are refused outright). With nothing to route, the table is deleted.
/// `learned`: the MAC addresses each instance's `seen` set holds now (kept across the
/// replacement, so a routed device's IPv6 stays marked).
pub(crate) fn router_ruleset(
    groups: &[Group],
    refused: &[Device],
    learned: &BTreeMap<u16, Vec<Device>>,
) -> String {
    let mut t = String::from("table inet nnc_agent {}\ndelete table inet nnc_agent\n");
    if groups.is_empty() && refused.is_empty() {
        return t;
    }
    t.push_str("table inet nnc_agent {\n");
    let mut sets = |name: &str, devices: &[Device]| {
        set(
            &mut t,
            &format!("{name}_v4"),
            "ipv4_addr; flags interval",
            devices.iter().filter(|d| matches!(d, Device::V4 { .. })),
        );
        set(
            &mut t,
            &format!("{name}_mac"),
            "ether_addr",
            devices.iter().filter(|d| matches!(d, Device::Mac(_))),
        );
    };
    for g in groups {
        sets(&format!("i{}", g.vlan), &g.devices);
    }
    sets("refused", refused);
    for g in groups {
        let macs: Vec<String> = learned
            .get(&g.vlan)
            .map(|m| m.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        let _ = write!(
            t,
            "  set i{}_seen {{ type ether_addr; size 1024; flags dynamic,timeout; timeout 1d;",
            g.vlan
        );
        if !macs.is_empty() {
            let _ = write!(t, " elements = {{ {} }};", macs.join(", "));
        }
        t.push_str(" }\n");
    }

    t.push_str("  chain mark_devices {\n    type filter hook prerouting priority mangle - 10; policy accept;\n");
    for g in groups.iter().filter(|g| !g.direct) {
        let (n, set_mark) = (
            g.vlan,
            format!(
                "meta mark set meta mark & {:#010x} | {:#010x}",
                !MARK_MASK, g.mark
            ),
        );
        let _ = writeln!(t, "    ip saddr @i{n}_v4 {set_mark}");
        let _ = writeln!(t, "    ether saddr @i{n}_mac {set_mark}");
        let _ = writeln!(t, "    meta nfproto ipv6 ether saddr @i{n}_seen {set_mark}");
        // A separate rule: on a link without an Ethernet header this one stops, not the mark.
        let _ = writeln!(
            t,
            "    ip saddr @i{n}_v4 update @i{n}_seen {{ ether saddr }}"
        );
    }
    t.push_str("  }\n");

    t.push_str("  chain dns_to_service {\n    type nat hook prerouting priority dstnat - 10; policy accept;\n");
    for g in groups.iter().filter(|g| !g.direct) {
        let _ = writeln!(
            t,
            "    meta mark & {MARK_MASK:#010x} == {:#010x} meta nfproto ipv4 meta l4proto {{ tcp, udp }} th dport 53 dnat ip to {}",
            g.mark, g.service
        );
    }
    t.push_str("  }\n");

    let refuse = "reject with icmpx admin-prohibited";
    t.push_str(
        "  chain input_guard {\n    type filter hook input priority filter - 10; policy accept;\n",
    );
    for g in groups.iter().filter(|g| !g.direct) {
        let _ = writeln!(
            t,
            "    meta mark & {MARK_MASK:#010x} == {:#010x} meta nfproto ipv6 meta l4proto {{ tcp, udp }} th dport 53 {refuse}",
            g.mark
        );
    }
    t.push_str("    ip saddr @refused_v4 meta l4proto { tcp, udp } th dport 53 ");
    t.push_str(refuse);
    t.push_str("\n    ether saddr @refused_mac meta l4proto { tcp, udp } th dport 53 ");
    t.push_str(refuse);
    t.push_str("\n  }\n");

    t.push_str("  chain forward_guard {\n    type filter hook forward priority filter - 10; policy accept;\n");
    for g in groups.iter().filter(|g| !g.direct) {
        // By mark and by the device sets themselves: another tool rewriting the mark (pbr,
        // mwan3) must not turn this guard off.
        let (n, bridge) = (g.vlan, &g.bridge);
        let m = format!("meta mark & {MARK_MASK:#010x} == {:#010x}", g.mark);
        for from in [
            m,
            format!("ip saddr @i{n}_v4"),
            format!("ether saddr @i{n}_mac"),
        ] {
            let _ = writeln!(t, "    {from} oifname != \"{bridge}\" {refuse}");
        }
        let _ = writeln!(
            t,
            "    meta mark & {MARK_MASK:#010x} == {:#010x} meta nfproto ipv6 {refuse}",
            g.mark
        );
        for set in ["mac", "seen"] {
            let _ = writeln!(t, "    meta nfproto ipv6 ether saddr @i{n}_{set} {refuse}");
        }
    }
    let _ = writeln!(t, "    ip saddr @refused_v4 {refuse}");
    let _ = writeln!(t, "    ether saddr @refused_mac {refuse}");
    t.push_str("  }\n}\n");
    t
}

fn set<'a>(t: &mut String, name: &str, ty: &str, devices: impl Iterator<Item = &'a Device>) {
    let elements: Vec<String> = devices.map(ToString::to_string).collect();
    let _ = write!(t, "  set {name} {{ type {ty};");
    if !elements.is_empty() {
        let _ = write!(t, " elements = {{ {} }};", elements.join(", "));
    }
    t.push_str(" }\n");
}

/// The service namespace's table: the segment's TCP to the transparent inbound, DNS to the
/// DNS inbound (the router already sent every DNS query of a device to `service`). What was
/// redirected reaches the service from `.1`, the router's side of the segment: the original
/// destination stays what the service reads (SO_ORIGINAL_DST), and a service with a source
/// policy (Tor's SocksPolicy: private addresses only) serves a LAN numbered from any range.
/// The counters say how much was redirected (`ip netns exec nnc-{id} nft list table ip nnc_agent`).
pub(crate) fn service_ruleset(service: Ipv4Addr) -> String {
    let [a, b, c, _] = service.octets();
    let router = Ipv4Addr::new(a, b, c, 1);
    format!(
        "table ip nnc_agent {{}}\ndelete table ip nnc_agent\ntable ip nnc_agent {{
  chain transparent {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"eth0\" ip daddr {service} meta l4proto {{ tcp, udp }} th dport 53 counter redirect to :{DNS_PORT}
    iifname \"eth0\" ip daddr != {service} meta l4proto tcp counter redirect to :{TRANSPARENT_PORT}
  }}
  chain from_router {{
    type nat hook input priority 100; policy accept;
    iifname \"eth0\" ct status dnat snat ip to {router}
  }}
  chain no_forward {{
    type filter hook forward priority filter; policy drop;
  }}
}}\n"
    )
}

/// Runs `nft -f -` with `text`, in the network namespace at `netns` when given (a service's:
/// its IPv4 forwarding is turned off there first). nft is the operator's tool (Debian's
/// `nftables`, OpenWrt's fw4 ships it), not a service's.
pub(crate) fn apply(text: &str, netns: Option<&Path>) -> Result<(), String> {
    let run = || nft(&["-f", "-"], Some(text)).map(drop);
    match netns {
        None => run(),
        Some(ns) => {
            let file = std::fs::File::open(ns).map_err(|e| format!("{}: {e}", ns.display()))?;
            // A thread of its own enters the namespace; nft, forked from it, starts there.
            std::thread::scope(|s| {
                s.spawn(|| {
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("setns {}: {e}", ns.display()))?;
                    // A new namespace copies the router's IPv4 settings, ip_forward=1 among
                    // them; /proc/sys/net is this thread's namespace's.
                    let fwd = "/proc/sys/net/ipv4/conf/all/forwarding";
                    std::fs::write(fwd, "0")
                        .map_err(|e| format!("{fwd} in {}: {e}", ns.display()))?;
                    run()
                })
                .join()
                .unwrap_or_else(|_| Err("nft thread panicked".into()))
            })
        }
    }
}

/// The MAC addresses the router's `i{N}_seen` sets hold now (none when there is no table).
pub(crate) fn learned() -> BTreeMap<u16, Vec<Device>> {
    let mut out: BTreeMap<u16, Vec<Device>> = BTreeMap::new();
    let Ok(json) = nft(&["-j", "list", "table", "inet", "nnc_agent"], None) else {
        return out;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) else {
        return out;
    };
    for item in v["nftables"].as_array().into_iter().flatten() {
        let set = &item["set"];
        let Some(vlan) = set["name"].as_str().and_then(|n| {
            n.strip_prefix('i')?
                .strip_suffix("_seen")?
                .parse::<u16>()
                .ok()
        }) else {
            continue;
        };
        for e in set["elem"].as_array().into_iter().flatten() {
            // `"02:..."`, or `{"elem": {"val": "02:...", "timeout": ..., "expires": ...}}`.
            let mac = e.as_str().or_else(|| e["elem"]["val"].as_str());
            if let Some(Ok(d @ Device::Mac(_))) = mac.map(Device::parse) {
                out.entry(vlan).or_default().push(d);
            }
        }
    }
    out
}

/// The process ids of the agent's last `nft` runs: the kernel names the committing process
/// of each nftables transaction, and `watch` tells the agent's own from others' by them.
static OURS: std::sync::Mutex<[u32; 8]> = std::sync::Mutex::new([0; 8]);

/// Whether the process `pid` was one of the agent's recent `nft` runs.
pub(crate) fn is_ours(pid: u32) -> bool {
    use crate::util::Locked;
    pid != 0 && OURS.locked().contains(&pid)
}

/// `nft ARGS` with `input` on its stdin; its stdout, or its words when it refuses.
fn nft(args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "nft is not installed (package nftables): device routing needs it".to_owned()
            }
            _ => format!("cannot run nft: {e}"),
        })?;
    {
        use crate::util::Locked;
        let mut ours = OURS.locked();
        ours.rotate_right(1);
        ours[0] = child.id();
    }
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.unwrap_or_default().as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err: String = err.trim().chars().take(2048).collect();
    Err(format!("nft refused the agent's rules: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_routed_deletes_the_table() {
        let t = router_ruleset(&[], &[], &BTreeMap::new());
        assert_eq!(t, "table inet nnc_agent {}\ndelete table inet nnc_agent\n");
    }

    #[test]
    fn a_group_marks_guards_and_sends_dns_to_its_service() {
        let g = Group {
            vlan: 105,
            mark: 105 << 16,
            bridge: "nnc105".into(),
            service: Ipv4Addr::new(10, 99, 105, 2),
            devices: vec![
                Device::parse("192.0.2.10").unwrap(),
                Device::parse("02:00:5e:10:00:0a").unwrap(),
            ],
            direct: false,
        };
        let mac = Device::parse("02:00:5e:10:00:0b").unwrap();
        let t = router_ruleset(
            std::slice::from_ref(&g),
            &[],
            &BTreeMap::from([(105, vec![mac])]),
        );
        assert!(t.contains("set i105_seen { type ether_addr; size 1024; flags dynamic,timeout; timeout 1d; elements = { 02:00:5e:10:00:0b }; }"), "{t}");
        assert!(
            t.contains(
                "set i105_v4 { type ipv4_addr; flags interval; elements = { 192.0.2.10 }; }"
            ),
            "{t}"
        );
        assert!(
            t.contains("set i105_mac { type ether_addr; elements = { 02:00:5e:10:00:0a }; }"),
            "{t}"
        );
        assert!(
            t.contains("ip saddr @i105_v4 meta mark set meta mark & 0xff00ffff | 0x00690000"),
            "{t}"
        );
        assert!(t.contains("th dport 53 dnat ip to 10.99.105.2"), "{t}");
        assert!(t.contains("oifname != \"nnc105\" reject"), "{t}");
        let direct = router_ruleset(&[Group { direct: true, ..g }], &[], &BTreeMap::new());
        assert!(!direct.contains("meta mark set"), "{direct}");
        assert!(!direct.contains("dnat"), "{direct}");
        assert!(
            direct.contains("elements = { 192.0.2.10 }"),
            "the routes are kept: {direct}"
        );
    }
}
