//! Connection slots: every open connection holds one of `api.max_connections` slots and one of
//! its peer address's `api.max_connections_per_address`, so one LAN client cannot take them
//! all; a connection refused at its address's limit takes no global slot. A connection must
//! make an authenticated request before its deadline (`api.unauthenticated_timeout_secs`
//! after it was accepted) or it is closed, so idle or dripping clients give their slots back.
//!
//! The per-address table holds only addresses with connections open: it is never larger than
//! `max_connections` (plus the one being refused at that moment), small enough to scan (a
//! `Vec` costs fewer bytes of binary than another `HashMap`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::util::Locked;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// (address, connections open from it).
type Table = Arc<Mutex<Vec<(IpAddr, usize)>>>;

/// Which limit refused a connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    PerAddress,
    Global,
}

pub(super) struct Slots {
    global: Arc<Semaphore>,
    per_address: Table,
    per_address_max: usize,
}

impl Slots {
    pub(super) fn new(max: usize, per_address_max: usize) -> Slots {
        Slots {
            global: Arc::new(Semaphore::new(max)),
            per_address: Arc::default(),
            per_address_max,
        }
    }

    /// A slot for a connection from `ip` that must authenticate before `deadline`.
    pub(super) fn take(&self, ip: IpAddr, deadline: Instant) -> Result<Slot, Refused> {
        {
            let mut table = self.per_address.locked();
            match table.iter_mut().find(|(a, _)| *a == ip) {
                Some((_, open)) if *open >= self.per_address_max => {
                    return Err(Refused::PerAddress);
                }
                Some((_, open)) => *open += 1,
                None => table.push((ip, 1)),
            }
        }
        // From here on, dropping `address` gives the address's place back.
        let address = AddressPlace {
            table: Arc::clone(&self.per_address),
            ip,
        };
        let global = Arc::clone(&self.global)
            .try_acquire_owned()
            .map_err(|_| Refused::Global)?;
        Ok(Arc::new(Connection {
            _global: global,
            _address: address,
            deadline,
            authenticated: AtomicBool::new(false),
        }))
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.per_address.locked().len()
    }
}

/// One connection's place in its address's count.
struct AddressPlace {
    table: Table,
    ip: IpAddr,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut table = self.table.locked();
        if let Some(i) = table.iter().position(|(a, _)| *a == self.ip) {
            table[i].1 -= 1;
            if table[i].1 == 0 {
                table.swap_remove(i);
            }
        }
    }
}

/// What an open connection holds; shared by its requests and by its WebSocket once upgraded.
pub(super) struct Connection {
    _global: OwnedSemaphorePermit,
    _address: AddressPlace,
    deadline: Instant,
    authenticated: AtomicBool,
}

/// Held by a connection (and by its WebSocket once upgraded) for as long as it is open.
pub(super) type Slot = Arc<Connection>;

impl Connection {
    /// When the connection is closed unless it has authenticated by then.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    pub(super) fn authenticate(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }

    pub(super) fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_share_and_gives_it_back() {
        let slots = Slots::new(4, 2);
        let at = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let a1 = slots.take(a, at).unwrap();
        let a2 = slots.take(a, at).unwrap();
        assert_eq!(slots.take(a, at).err(), Some(Refused::PerAddress));
        // The refusal took no global slot: two more addresses' connections still fit.
        let b1 = slots.take(b, at).unwrap();
        let b2 = slots.take(b, at).unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        assert_eq!(slots.take(c, at).err(), Some(Refused::Global));
        assert_eq!(
            slots.addresses(),
            2,
            "a globally refused address is not kept"
        );
        drop((a1, b1, b2));
        assert!(slots.take(c, at).is_ok());
        let a3 = slots.take(a, at).unwrap();
        drop((a2, a3));
        assert_eq!(
            slots.addresses(),
            0,
            "only addresses with open connections are kept"
        );
    }

    #[test]
    fn memory_stays_bounded_under_many_addresses() {
        let slots = Slots::new(8, 16);
        let at = Instant::now();
        let mut held = Vec::new();
        for i in 0..10_000u32 {
            if let Ok(s) = slots.take(IpAddr::from(i.to_be_bytes()), at) {
                held.push(s);
            }
        }
        assert_eq!(held.len(), 8);
        assert_eq!(slots.addresses(), 8);
        let slot = held.pop().unwrap();
        assert!(!slot.authenticated());
        slot.authenticate();
        assert!(slot.authenticated());
        drop((held, slot));
        assert_eq!(slots.addresses(), 0);
    }
}
