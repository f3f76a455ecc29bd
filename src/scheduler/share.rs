//! This instance's share of the tables: every instance writes a heartbeat
//! (`Store::heartbeat`) that lives half the lease TTL every sixth of it,
//! and holds at most
//! its fair part of the polled tables (tables / live instances, rounded
//! up) plus a tenth. Over that cap it releases tables, which the others
//! take at their next poll; below its fair part it takes free ones. In
//! between it takes none: a poll lease lapses between polls whenever the
//! interval is longer than the lease TTL, and an instance that kept
//! trying the tables others hold would take each one in turn, so every
//! table would be polled once per instance and interval. A table whose
//! lease lapses between polls and that another instance polled last is
//! taken only well below the fair part ([`settled`]). When an
//! instance's heartbeat expires, a takeover window of the lease TTL plus a
//! few seconds opens, in which the tables this instance does not hold are
//! tried every second, so a dead instance's tables move within the lease
//! TTL plus a few seconds whatever the poll interval. The heartbeat lives
//! only half the lease TTL so that the window opens while the dead
//! instance's last leases still run: each of its tables is taken about a
//! second after its lease lapses, at most the lease TTL after the death,
//! rather than half a TTL or more later.

use std::time::Duration;

use tokio::time::Instant;

use crate::store::Heartbeat;

/// How long after an instance vanished its tables are tried every
/// [`TAKEOVER_RETRY`], beyond the lease TTL.
const TAKEOVER_SLACK: Duration = Duration::from_secs(5);
const TAKEOVER_RETRY: Duration = Duration::from_secs(1);

/// How long a heartbeat lives: half the lease TTL (see above), but not
/// under two seconds (the whole TTL when that is shorter): a process
/// stalled a moment on a busy machine is not taken for dead.
pub(super) fn beat_ttl(lease_ttl: Duration) -> Duration {
    (lease_ttl / 2).max(lease_ttl.min(BEAT_FLOOR))
}

const BEAT_FLOOR: Duration = Duration::from_secs(2);

/// How often the heartbeat is written: three times in its life.
pub(super) fn beat_every(lease_ttl: Duration) -> Duration {
    (beat_ttl(lease_ttl) / 3).max(Duration::from_millis(10))
}

pub(super) struct Share {
    /// New at every start: a heartbeat of this instance's name carrying
    /// another means a second process runs under the same name.
    pub nonce: String,
    beats: u64,
    live: usize,
    pub next_beat: Instant,
    takeover_until: Option<Instant>,
}

impl Share {
    pub fn new(now: Instant) -> Share {
        Share {
            nonce: uuid::Uuid::new_v4().simple().to_string(),
            beats: 0,
            live: 1,
            next_beat: now,
            takeover_until: None,
        }
    }

    /// The most tables this instance holds, of `tables` polled ones;
    /// `lapsing` when some tables' leases lapse between polls (share.rs).
    pub fn cap(&self, tables: usize, lapsing: bool) -> usize {
        let cap = cap(tables, self.live);
        let fair = fair(tables, self.live);
        if lapsing {
            cap.max(fair + fair / 20 + 2)
        } else {
            cap
        }
    }

    /// The tables this instance takes free ones up to, of `tables`.
    pub fn part(&self, tables: usize) -> usize {
        fair(tables, self.live)
    }

    /// Notes a heartbeat's answer at `now`; true when an instance vanished
    /// since the last one (a takeover window opens).
    pub fn observe(&mut self, hb: &Heartbeat, holder: &str, now: Instant, ttl: Duration) -> bool {
        if self.beats > 0
            && let Some(other) = hb.previous.as_deref().filter(|n| *n != self.nonce)
        {
            tracing::error!(instance_id = %holder, other_start = %other,
                "another process runs under this instance_id on the same store; give each instance its own store.instance_id");
        }
        self.beats += 1;
        self.next_beat = now + beat_every(ttl);
        let live = hb.live.len().max(1);
        let shrank = live < self.live;
        self.live = live;
        if shrank {
            self.takeover_until = Some(now + ttl + TAKEOVER_SLACK);
        }
        shrank
    }

    /// Whether a takeover window is open at `now`.
    pub fn taking_over(&self, now: Instant) -> bool {
        self.takeover_until.is_some_and(|until| now < until)
    }

    /// When a table this instance does not hold is tried again: after its
    /// interval, or within a second during a takeover window.
    pub fn retry(&self, now: Instant, interval: Duration) -> Duration {
        match self.takeover_until {
            Some(until) if now < until => interval.min(TAKEOVER_RETRY),
            _ => interval,
        }
    }
}

/// The fair part of `tables` over `live` instances, rounded up.
fn fair(tables: usize, live: usize) -> usize {
    tables.div_ceil(live.max(1))
}

/// How many tables an instance takes another live instance's tables up
/// to: its part less a twentieth (and one). A table another instance
/// polled is taken only this far below the part, so a move leaves the
/// other instance above its own limit: were it the part itself, every move
/// would leave the other a table short, to take one back at once, and a
/// shortfall after the load would hop between the instances for good.
/// Free tables (new ones, or ones no instance polled) are taken up to the
/// part; the cap is then at least the part plus a twentieth and two, so
/// the peers of an instance that releases tables over it are below this
/// mark and take them all.
pub(super) fn settled(part: usize) -> usize {
    part.saturating_sub(part / 20 + 1)
}

/// The fair part plus a tenth.
fn cap(tables: usize, live: usize) -> usize {
    let fair = fair(tables, live);
    fair + fair / 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_the_fair_part_plus_a_tenth() {
        assert_eq!(cap(10, 1), 10 + 1);
        assert_eq!(cap(10, 2), 5);
        assert_eq!(cap(10, 3), 4);
        assert_eq!(cap(10_000, 4), 2_750);
        assert_eq!(cap(0, 2), 0);
        assert_eq!(cap(7, 0), 7);
    }

    #[test]
    fn released_tables_fall_below_the_settled_mark() {
        assert_eq!((settled(500), settled(5), settled(0)), (474, 4, 0));
        let mut share = Share::new(Instant::now());
        share.live = 2;
        for tables in [10, 11, 51, 100, 1000, 1001] {
            let cap = share.cap(tables, true);
            assert!(tables - cap <= settled(share.part(tables)), "{tables}");
        }
        assert_eq!((share.cap(10, false), share.cap(10, true)), (5, 7));
    }

    #[test]
    fn a_heartbeat_lives_half_the_lease_ttl_but_not_under_two_seconds() {
        let s = Duration::from_secs;
        assert_eq!(beat_ttl(s(30)), s(15));
        assert_eq!(beat_every(s(30)), s(5));
        assert_eq!(beat_ttl(s(3)), s(2));
        assert_eq!(beat_ttl(s(1)), s(1));
        assert_eq!(beat_ttl(Duration::ZERO), Duration::ZERO);
        assert_eq!(beat_every(Duration::ZERO), Duration::from_millis(10));
    }

    #[test]
    fn a_vanished_instance_opens_a_takeover_window() {
        let now = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut share = Share::new(now);
        let beat = |live: &[&str]| Heartbeat {
            live: live.iter().map(|s| s.to_string()).collect(),
            previous: None,
        };
        assert!(!share.observe(&beat(&["a", "b"]), "a", now, ttl));
        assert_eq!((share.part(10), share.cap(10, false)), (5, 5));
        assert_eq!((share.part(100), share.cap(100, true)), (50, 55));
        let every = Duration::from_secs(60);
        assert_eq!(share.retry(now, every), every);
        assert!(share.observe(&beat(&["a"]), "a", now, ttl));
        assert_eq!((share.part(10), share.cap(10, false)), (10, 11));
        assert_eq!(share.retry(now, every), TAKEOVER_RETRY);
        assert!(share.taking_over(now));
        let later = now + ttl + TAKEOVER_SLACK;
        assert_eq!(share.retry(later, every), every, "the window closes");
        assert!(!share.taking_over(later));
    }
}
