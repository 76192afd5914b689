//! Puts the agent's nftables table back when another program deletes or changes it (a
//! `nft flush ruleset`, `fw4 flush`, a script's `delete table`): without it, MAC-routed
//! devices would go out directly, and every routed device would lose its DNS redirect and
//! its IPv6 guard, until the agent's next change or start.
//!
//! The kernel tells every member of the `NFNLGRP_NFTABLES` netlink group about each change
//! of each committed transaction, then `NEWGEN` at its end, which names the process that
//! committed it (`NFTA_GEN_PROC_PID`). A transaction that touched `table inet nnc_agent` and
//! was not committed by one of the agent's own `nft` runs (`nft::is_ours`) starts a repair:
//! the routes as redb holds them, applied again (the table, the source rules, the service
//! namespaces' tables). So a deletion, a `flags dormant`, or an old dump loaded over it
//! (`nft -f saved.conf`) are all undone; fw4 loading the agent's boot copy costs one repair. Set elements are not watched: the packet path adds them to the
//! `seen` sets all the time. A repair loses what those sets learned: an IPv4-routed
//! device's IPv6 is refused again once it next sends IPv4.

use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::Routing;

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_INET: u8 = 1;
const NFT_MSG_NEWGEN: u8 = 15;
/// NEWGEN's attribute naming the committing process.
const NFTA_GEN_PROC_PID: u16 = 2;
/// NEWSETELEM, GETSETELEM, DELSETELEM, DESTROYSETELEM, GETSETELEM_RESET.
const SETELEM_MSGS: [u8; 5] = [12, 13, 14, 30, 33];
/// The table's name is attribute 1 of every object's message (NFTA_TABLE_NAME,
/// NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
const NFTA_TABLE: u16 = 1;
const TABLE: &[u8] = b"nnc_agent";
/// Repairs at most this often: a program deleting the table in a loop gets one a second.
const MIN_GAP: Duration = Duration::from_secs(1);
/// This many repairs within `BURST_WINDOW` and the watch stops: the agent's own `nft` runs
/// are not recognised (its process ids are not the kernel's: a PID namespace), and every
/// repair would start the next.
const BURST: usize = 5;
const BURST_WINDOW: Duration = Duration::from_secs(30);

/// Whether the messages of one transaction touched the agent's table.
#[derive(Default, Debug)]
pub(super) struct Transaction {
    touched: bool,
}

impl Transaction {
    /// Takes one datagram (any number of netlink messages); true when a transaction ended
    /// that touched the agent's table and was committed by a process `ours` does not know.
    pub(super) fn feed(&mut self, mut datagram: &[u8], ours: impl Fn(u32) -> bool) -> bool {
        let mut repair = false;
        while datagram.len() >= 16 {
            let len =
                u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]) as usize;
            if len < 16 || len > datagram.len() {
                break;
            }
            let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
            repair |= self.message(kind, &datagram[16..len], &ours);
            datagram = datagram.get((len + 3) & !3..).unwrap_or_default();
        }
        repair
    }

    fn message(&mut self, kind: u16, body: &[u8], ours: &impl Fn(u32) -> bool) -> bool {
        if kind >> 8 != NFNL_SUBSYS_NFTABLES || body.len() < 4 {
            return false;
        }
        // nfgenmsg: family, version, resource id; then the attributes.
        let (family, attrs) = (body[0], &body[4..]);
        let msg = (kind & 0xff) as u8;
        if msg == NFT_MSG_NEWGEN {
            let touched = std::mem::take(self).touched;
            // A NEWGEN without the attribute (pid 0) is not ours either.
            let pid = attr(attrs, NFTA_GEN_PROC_PID)
                .and_then(|v| v.try_into().ok())
                .map_or(0, u32::from_be_bytes);
            return touched && !ours(pid);
        }
        if family == NFPROTO_INET
            && !SETELEM_MSGS.contains(&msg)
            && attr(attrs, NFTA_TABLE).map(|v| v.strip_suffix(&[0]).unwrap_or(v)) == Some(TABLE)
        {
            self.touched = true;
        }
        false
    }
}

/// The value of the first attribute of type `want`.
fn attr(mut attrs: &[u8], want: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == want {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

/// Starts the watch on a thread of its own (a blocking read of a kernel socket; nothing a
/// service controls). Without nf_tables there is nothing to watch: logged, not fatal.
pub(super) fn start(routing: Arc<Routing>) {
    let socket = match Socket::new(NETLINK_NETFILTER).and_then(|mut s| {
        s.bind_auto()?;
        s.add_membership(NFNLGRP_NFTABLES)?;
        // Room for what the agent's own replacement of its table announces while a repair
        // runs (nobody reads then): kernel memory, used only while it is queued.
        force_rcvbuf(&s, 1 << 20);
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            log::warn!(target: "routing", "cannot watch nftables for changes to the agent's table ({e}): a `nft flush ruleset` stays undone until the next change of the routes");
            return;
        }
    };
    // The default stack: a repair runs here (nft, redb, RouterOS over TLS).
    let spawned = std::thread::Builder::new()
        .name("nnc-nft-watch".into())
        .spawn(move || watch(&socket, &routing));
    if let Err(e) = spawned {
        log::warn!(target: "routing", "cannot start the nftables watch: {e}");
    }
}

/// SO_RCVBUFFORCE (root may go past `rmem_max`); advice: the default stays if refused.
fn force_rcvbuf(socket: &Socket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket this function borrows, with a c_int it points to.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn watch(socket: &Socket, routing: &Routing) {
    // A datagram holds one or more notifications, at most NLMSG_GOODSIZE (a page, or 8 KiB).
    let mut buf = vec![0u8; 16 * 1024];
    let mut tx = Transaction::default();
    let mut last: Option<Instant> = None;
    let mut recent: Vec<Instant> = Vec::with_capacity(BURST);
    loop {
        let repair = match socket.recv_from(&mut &mut buf[..], 0) {
            // Only the kernel's (port 0): sending to this socket takes CAP_NET_ADMIN anyway.
            Ok((n, from)) if from.port_number() == 0 => {
                tx.feed(&buf[..n.min(buf.len())], super::nft::is_ours)
            }
            Ok(_) => false,
            // Messages were lost (a big ruleset loaded at once): whether the table was
            // touched is unknown, so it is put back anyway.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tx = Transaction::default();
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
            Err(e) => {
                log::error!(target: "routing", "the nftables watch stopped: {e}");
                return;
            }
        };
        if !repair {
            continue;
        }
        if let Some(gap) = last.map(|t| MIN_GAP.saturating_sub(t.elapsed())) {
            std::thread::sleep(gap);
        }
        recent.retain(|t| t.elapsed() < BURST_WINDOW);
        if recent.len() >= BURST {
            log::error!(target: "routing", "the nftables watch stops: {BURST} repairs in {} s (are the agent's own nft runs seen as another program's, as in a PID namespace?)", BURST_WINDOW.as_secs());
            return;
        }
        routing.repair();
        last = Some(Instant::now());
        recent.push(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr_bytes(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn msg(kind: u8, family: u8, attrs: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + 4 + attrs.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | u16::from(kind)).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[family, 0, 0, 0]);
        m.extend_from_slice(attrs);
        m
    }

    fn on(kind: u8, family: u8, table: &str) -> Vec<u8> {
        msg(
            kind,
            family,
            &attr_bytes(NFTA_TABLE, format!("{table}\0").as_bytes()),
        )
    }

    fn gen_end(pid: u32) -> Vec<u8> {
        let mut attrs = attr_bytes(1, &7u32.to_be_bytes());
        attrs.extend(attr_bytes(NFTA_GEN_PROC_PID, &pid.to_be_bytes()));
        attrs.extend(attr_bytes(3, b"nft\0"));
        msg(NFT_MSG_NEWGEN, 0, &attrs)
    }

    const AGENT_NFT: u32 = 4242;
    fn ours(pid: u32) -> bool {
        pid == AGENT_NFT
    }

    #[test]
    fn another_process_touching_the_table_asks_for_a_repair_at_the_end() {
        let mut t = Transaction::default();
        // A deletion; a `flags dormant` update (a NEWTABLE); an old dump loaded over it.
        for kind in [2, 0, 6] {
            assert!(!t.feed(&on(kind, NFPROTO_INET, "nnc_agent"), ours));
            assert!(t.feed(&gen_end(777), ours));
        }
        // One datagram holding the whole transaction.
        let mut all = on(8, NFPROTO_INET, "nnc_agent");
        all.extend(gen_end(777));
        assert!(t.feed(&all, ours));
    }

    #[test]
    fn the_agents_own_transactions_and_other_tables_do_not() {
        let mut t = Transaction::default();
        let mut own = on(2, NFPROTO_INET, "nnc_agent");
        own.extend(on(0, NFPROTO_INET, "nnc_agent"));
        own.extend(on(3, NFPROTO_INET, "nnc_agent"));
        own.extend(gen_end(AGENT_NFT));
        assert!(!t.feed(&own, ours));
        for other in [
            on(2, NFPROTO_INET, "fw4"),
            on(2, 2, "nnc_agent"), // `table ip nnc_agent`: the service namespaces' name
            on(12, NFPROTO_INET, "nnc_agent"), // the packet path's set elements
        ] {
            assert!(!t.feed(&other, ours));
            assert!(!t.feed(&gen_end(777), ours));
        }
    }

    #[test]
    fn truncated_messages_are_ignored_and_a_pidless_end_is_not_ours() {
        let mut t = Transaction::default();
        let m = on(2, NFPROTO_INET, "nnc_agent");
        for cut in 0..m.len() {
            assert!(!t.feed(&m[..cut], ours));
        }
        assert!(!t.feed(&[0xff; 40], ours));
        assert!(!t.feed(&m, ours));
        assert!(t.feed(&msg(NFT_MSG_NEWGEN, 0, &[]), super::super::nft::is_ours));
    }
}
