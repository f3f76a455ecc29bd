//! Failed logins slowed per client address: after `api.max_failed_logins`
//! requests with a missing or wrong token within `WINDOW`, the address gets 429 until the
//! window ends, before any token is checked, so guessing stops there.
//! Requests with a valid token never count, so clients that authenticate
//! are not slowed (unless they share an address with the guesser, e.g.
//! behind one proxy). Pure bookkeeping: the caller passes the time.

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// How long failures are counted, and how long an address is refused.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it the expired ones are forgotten
/// (then all, which only lets a guesser start a new burst).
const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug)]
pub struct Failures {
    /// Failed requests from one address that pass before it is refused.
    pub burst: u32,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Failures {
    pub fn new(burst: u32) -> Failures {
        Failures {
            burst,
            seen: Mutex::default(),
        }
    }

    /// How long `ip` must still wait, if it has failed too often.
    pub fn refused_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (start, n) = *map.get(&ip)?;
        let end = start + WINDOW;
        (n >= self.burst && now < end).then(|| end - now)
    }

    /// Counts one failed request from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ADDRESSES {
            map.retain(|_, (start, _)| now < *start + WINDOW);
            if map.len() >= MAX_ADDRESSES {
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now >= entry.0 + WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_refuses_the_address_until_the_window_ends() {
        let f = Failures::new(10);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..9 {
            f.failed(a, t0);
        }
        assert_eq!(f.refused_for(a, t0), None, "below the burst");
        f.failed(a, t0);
        assert_eq!(
            f.refused_for(a, t0 + Duration::from_secs(1)),
            Some(WINDOW - Duration::from_secs(1))
        );
        assert_eq!(f.refused_for(b, t0), None, "other addresses are not slowed");
        assert_eq!(f.refused_for(a, t0 + WINDOW), None, "the window ended");
        f.failed(a, t0 + WINDOW);
        assert_eq!(
            f.refused_for(a, t0 + WINDOW),
            None,
            "a new window counts afresh"
        );
    }
}
