//! Puts the agent's nftables table back when another program deletes or changes it (a
//! `nft flush ruleset`, `fw4 flush`, a script's `delete table`): without it, MAC-routed
//! devices would go out directly, and every routed device would lose its DNS redirect and
//! its IPv6 guard, until the agent's next change or start.
//!
//! The kernel tells every member of the `NFNLGRP_NFTABLES` netlink group about each change
//! of each committed transaction, then `NEWGEN` at its end. A transaction that deleted or
//! changed `table inet nnc_agent` without making it anew is not the agent's (the agent's
//! replace the table whole: delete, then `NEWTABLE`), so its `NEWGEN` starts a repair: the
//! routes as redb holds them, applied again (the table, the source rules, the service
//! namespaces' tables). Set elements are not watched: the packet path adds them to the
//! `seen` sets all the time. A repair loses what those sets learned: an IPv4-routed
//! device's IPv6 is refused again once it next sends IPv4.

use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::Routing;

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_INET: u8 = 1;
const NFT_MSG_NEWTABLE: u8 = 0;
const NFT_MSG_NEWGEN: u8 = 15;
/// NEWSETELEM, GETSETELEM, DELSETELEM, DESTROYSETELEM, GETSETELEM_RESET.
const SETELEM_MSGS: [u8; 5] = [12, 13, 14, 30, 33];
/// The table's name is attribute 1 of every object's message (NFTA_TABLE_NAME,
/// NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
const NFTA_TABLE: u16 = 1;
const TABLE: &[u8] = b"nnc_agent";
/// Repairs at most this often: a program deleting the table in a loop gets one a second.
const MIN_GAP: Duration = Duration::from_secs(1);

/// What the messages of one transaction did to the agent's table.
#[derive(Default, Debug)]
pub(super) struct Transaction {
    made: bool,
    touched: bool,
}

impl Transaction {
    /// Takes one datagram (any number of netlink messages); true when a transaction ended
    /// that changed the agent's table without making it anew.
    pub(super) fn feed(&mut self, mut datagram: &[u8]) -> bool {
        let mut repair = false;
        while datagram.len() >= 16 {
            let len =
                u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]) as usize;
            if len < 16 || len > datagram.len() {
                break;
            }
            let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
            repair |= self.message(kind, &datagram[16..len]);
            datagram = datagram.get((len + 3) & !3..).unwrap_or_default();
        }
        repair
    }

    fn message(&mut self, kind: u16, body: &[u8]) -> bool {
        if kind >> 8 != NFNL_SUBSYS_NFTABLES {
            return false;
        }
        let msg = (kind & 0xff) as u8;
        if msg == NFT_MSG_NEWGEN {
            let done = std::mem::take(self);
            return done.touched && !done.made;
        }
        // nfgenmsg: family, version, resource id; then the attributes.
        if body.len() < 4 || body[0] != NFPROTO_INET || SETELEM_MSGS.contains(&msg) {
            return false;
        }
        if table_name(&body[4..]) != Some(TABLE) {
            return false;
        }
        if msg == NFT_MSG_NEWTABLE {
            self.made = true;
        } else {
            self.touched = true;
        }
        false
    }
}

/// The value of attribute `NFTA_TABLE` without its NUL.
fn table_name(mut attrs: &[u8]) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NFTA_TABLE {
            let v = &attrs[4..len];
            return Some(v.strip_suffix(&[0]).unwrap_or(v));
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
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            log::warn!(target: "routing", "cannot watch nftables for changes to the agent's table ({e}): a `nft flush ruleset` stays undone until the next change of the routes");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("nnc-nft-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || watch(&socket, &routing));
    if let Err(e) = spawned {
        log::warn!(target: "routing", "cannot start the nftables watch: {e}");
    }
}

fn watch(socket: &Socket, routing: &Routing) {
    // Each notification is a datagram of its own, a few hundred bytes (a rule's, up to a few
    // KiB); a longer one is cut, and the parser drops what is cut.
    let mut buf = vec![0u8; 16 * 1024];
    let mut tx = Transaction::default();
    let mut last: Option<Instant> = None;
    loop {
        let repair = match socket.recv_from(&mut &mut buf[..], 0) {
            // Only the kernel's (port 0): sending to this socket takes CAP_NET_ADMIN anyway.
            Ok((n, from)) if from.port_number() == 0 => tx.feed(&buf[..n.min(buf.len())]),
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
        routing.repair();
        last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u8, family: u8, table: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let name = format!("{table}\0");
        attr.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
        attr.extend_from_slice(&NFTA_TABLE.to_ne_bytes());
        attr.extend_from_slice(name.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = Vec::new();
        let len = 16 + 4 + attr.len();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | u16::from(kind)).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[family, 0, 0, 0]);
        m.extend_from_slice(&attr);
        m
    }

    fn gen_end() -> Vec<u8> {
        msg(NFT_MSG_NEWGEN, 0, "")
    }

    #[test]
    fn someone_elses_delete_of_the_table_asks_for_a_repair_at_its_end() {
        let mut t = Transaction::default();
        assert!(!t.feed(&msg(2, NFPROTO_INET, "nnc_agent")));
        assert!(t.feed(&gen_end()));
        // One datagram holding the whole transaction.
        let mut all = msg(8, NFPROTO_INET, "nnc_agent");
        all.extend(gen_end());
        assert!(t.feed(&all));
    }

    #[test]
    fn the_agents_own_replacement_and_other_tables_do_not() {
        let mut t = Transaction::default();
        let mut own = msg(2, NFPROTO_INET, "nnc_agent");
        own.extend(msg(NFT_MSG_NEWTABLE, NFPROTO_INET, "nnc_agent"));
        own.extend(msg(3, NFPROTO_INET, "nnc_agent"));
        own.extend(gen_end());
        assert!(!t.feed(&own));
        for other in [
            msg(2, NFPROTO_INET, "fw4"),
            msg(2, 2, "nnc_agent"), // `table ip nnc_agent`: the service namespaces' name
            msg(12, NFPROTO_INET, "nnc_agent"), // the packet path's set elements
        ] {
            assert!(!t.feed(&other));
            assert!(!t.feed(&gen_end()));
        }
    }

    #[test]
    fn truncated_messages_are_ignored() {
        let mut t = Transaction::default();
        let m = msg(2, NFPROTO_INET, "nnc_agent");
        for cut in 0..m.len() {
            assert!(!t.feed(&m[..cut]));
        }
        assert!(!t.feed(&[0xff; 40]));
    }
}
