//! Failed-authentication lockout: an address that presents a wrong token `limit` times within
//! `window` (counted from its first failure) gets 429 on every authenticated request until
//! the window ends, whatever token it presents then, so guessing cannot go faster than
//! `limit` tries per window. A success clears the address's count. `/health` is never
//! locked.

use crate::util::Locked;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses remembered at most; beyond it the oldest count is forgotten first, so a flood
/// of source addresses costs bounded memory (and each of them still gets only `limit` tries).
const MAX_PEERS: usize = 1024;

struct Strikes {
    count: u32,
    since: Instant,
}

pub(super) struct AuthGuard {
    limit: u32,
    window: Duration,
    peers: Mutex<HashMap<IpAddr, Strikes>>,
}

impl AuthGuard {
    pub(super) fn new(limit: u32, window: Duration) -> AuthGuard {
        AuthGuard {
            limit,
            window,
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Strikes>> {
        self.peers.locked()
    }

    /// How long `ip` must still wait, when it is locked out.
    pub(super) fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut peers = self.peers();
        let strikes = peers.get(&ip)?;
        let ends = strikes.since + self.window;
        if ends <= now {
            peers.remove(&ip);
            None
        } else if strikes.count >= self.limit {
            Some(ends - now)
        } else {
            None
        }
    }

    /// Counts a wrong or missing token from `ip`.
    pub(super) fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut peers = self.peers();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
            peers.retain(|_, s| s.since + self.window > now);
            if peers.len() >= MAX_PEERS {
                let oldest = peers.iter().min_by_key(|(_, s)| s.since).map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    peers.remove(&oldest);
                }
            }
        }
        let strikes = peers.entry(ip).or_insert(Strikes {
            count: 0,
            since: now,
        });
        if strikes.since + self.window <= now {
            *strikes = Strikes {
                count: 0,
                since: now,
            };
        }
        strikes.count += 1;
        if strikes.count == self.limit {
            log::warn!(
                target: "api",
                "{ip}: {} failed authentications; refusing it for {} s",
                self.limit,
                (strikes.since + self.window - now).as_secs_f64().ceil()
            );
        }
    }

    pub(super) fn succeeded(&self, ip: IpAddr) {
        self.peers().remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_out_after_the_limit_and_forgets_after_the_window() {
        let guard = AuthGuard::new(3, Duration::from_millis(200));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        for _ in 0..2 {
            guard.failed(ip);
            assert!(guard.locked(ip).is_none());
        }
        guard.failed(ip);
        let wait = guard.locked(ip).expect("locked after 3 failures");
        assert!(wait <= Duration::from_millis(200));
        assert!(guard.locked(other).is_none(), "only the guessing address");
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            guard.locked(ip).is_none(),
            "the lockout ends with the window"
        );
    }

    #[test]
    fn a_success_clears_the_count() {
        let guard = AuthGuard::new(2, Duration::from_secs(60));
        let ip: IpAddr = "::1".parse().unwrap();
        guard.failed(ip);
        guard.succeeded(ip);
        guard.failed(ip);
        assert!(guard.locked(ip).is_none());
    }

    #[test]
    fn memory_stays_bounded_under_many_addresses() {
        let guard = AuthGuard::new(2, Duration::from_secs(60));
        for i in 0..(MAX_PEERS as u32 + 500) {
            guard.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(guard.peers().len() <= MAX_PEERS);
    }
}
