//! Replay read-ahead. A reader catching up pages through a table: it asks
//! for the page after the one it just got, as soon as it has taken that one
//! in. So after serving a full page the relay reads the next one from the
//! store at once, while the page travels and the reader parses it, and the
//! reader's next request finds it read.
//!
//! What a reader gets is what a read at the moment of the read-ahead gave:
//! a full page after `after` does not change later (new events go above
//! the stream's last), and the trim check is made as for any read. A page
//! read ahead is used only while it is full and fresh ([`FRESH`]); a short
//! one (the table's end) is read again, so a reader that polls for new
//! events never gets an older answer than it would have. At most [`SLOTS`]
//! pages, and [`BUDGET`] bytes of records, wait at once; the oldest page
//! goes first, and a page nobody asked for is let go once it is stale.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::{
    events::{Event, StreamId},
    store::{Store, StoreResult, Table},
};

/// How long a page read ahead stays usable.
const FRESH: Duration = Duration::from_secs(2);

/// Pages waiting at once, over every table and reader.
const SLOTS: usize = 64;

/// Bytes of records the waiting pages hold at most, over every table and
/// reader: a page that would take more is not kept (its reader reads it
/// when it asks).
const BUDGET: usize = 64 << 20;

/// A page read, and the last ID retention removed if the read skipped it
/// (`positions::read_checked`).
pub(super) type Checked = (Vec<Event>, Option<StreamId>);

/// What identifies a read: the same table, position, size and reading of 0.
#[derive(PartialEq, Eq)]
struct Key {
    t: Table,
    after: StreamId,
    limit: usize,
    oldest_kept: bool,
}

struct Slot {
    key: Key,
    /// Tells this slot from a later one of the same key.
    n: u64,
    at: Instant,
    page: oneshot::Receiver<StoreResult<Held>>,
}

/// A page waiting, counted against the budget until it is taken or dropped.
struct Held {
    read: Option<Checked>,
    bytes: usize,
    held: Arc<AtomicUsize>,
}

impl Held {
    /// Counts `read` against the budget; none when it does not fit.
    fn within(read: Checked, held: &Arc<AtomicUsize>, budget: usize) -> Option<Held> {
        let bytes = read.0.iter().map(|e| e.data.len()).sum();
        held.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |now| {
            (now + bytes <= budget).then_some(now + bytes)
        })
        .ok()?;
        Some(Held {
            read: Some(read),
            bytes,
            held: held.clone(),
        })
    }

    fn take(mut self) -> Checked {
        self.read.take().unwrap_or_default()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The pages read ahead and not yet asked for.
pub struct ReadAhead {
    slots: Mutex<VecDeque<Slot>>,
    next: AtomicU64,
    /// Bytes of records the waiting pages hold.
    held: Arc<AtomicUsize>,
    budget: usize,
}

impl Default for ReadAhead {
    fn default() -> ReadAhead {
        ReadAhead::with_budget(BUDGET)
    }
}

impl ReadAhead {
    fn with_budget(budget: usize) -> ReadAhead {
        ReadAhead {
            slots: Mutex::default(),
            next: AtomicU64::new(0),
            held: Arc::default(),
            budget,
        }
    }

    /// Starts reading `limit` events after `after` for the reader's next
    /// request.
    pub(super) fn start(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        t: &Table,
        after: StreamId,
        limit: usize,
        oldest_kept: bool,
    ) {
        let (tx, rx) = oneshot::channel();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let key = Key {
            t: t.clone(),
            after,
            limit,
            oldest_kept,
        };
        {
            let mut slots = self.slots.lock().expect("read-ahead lock");
            slots.retain(|s| s.at.elapsed() < FRESH && s.key != key);
            if slots.len() >= SLOTS {
                slots.pop_front();
            }
            slots.push_back(Slot {
                key,
                n,
                at: Instant::now(),
                page: rx,
            });
        }
        let (t, this) = (t.clone(), self.clone());
        tokio::spawn(async move {
            let read =
                super::positions::read_checked(store.as_ref(), &t, after, limit, oldest_kept).await;
            let kept = match read {
                Ok(read) => match Held::within(read, &this.held, this.budget) {
                    Some(held) => Ok(held),
                    None => return this.drop_slot(n),
                },
                Err(e) => Err(e),
            };
            // The reader may not come back; then nobody receives it.
            if tx.send(kept).is_ok() {
                tokio::time::sleep(FRESH).await;
                this.drop_slot(n);
            }
        });
    }

    /// Lets slot `n` go, with its page, if nobody took it.
    fn drop_slot(&self, n: u64) {
        let mut slots = self.slots.lock().expect("read-ahead lock");
        slots.retain(|s| s.n != n);
    }

    /// The page read ahead for this request, when one is fresh and full;
    /// otherwise the caller reads it.
    pub(super) async fn take(
        &self,
        t: &Table,
        after: StreamId,
        limit: usize,
        oldest_kept: bool,
    ) -> Option<Checked> {
        let key = Key {
            t: t.clone(),
            after,
            limit,
            oldest_kept,
        };
        let slot = {
            let mut slots = self.slots.lock().expect("read-ahead lock");
            let i = slots.iter().position(|s| s.key == key)?;
            slots.remove(i)?
        };
        if slot.at.elapsed() >= FRESH {
            return None;
        }
        match slot.page.await {
            Ok(Ok(held)) => Some(held.take()).filter(|read| read.0.len() == limit),
            // Short (the table's end, which may have grown since), over the
            // budget, or the read failed: read again now, and report that
            // read's error.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    /// Table `s/r` in an embedded store of its own, holding events stamped
    /// `1..=n` written straight into the file (the folder lives as long as
    /// the answer's first part).
    async fn table_of(n: u64) -> (tempfile::TempDir, Arc<dyn Store>, Table) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let t = Table::new("s", "r");
        store.last_id(&t).await.unwrap();
        let c = rusqlite::Connection::open(dir.path().join("stamp-relay.sqlite3")).unwrap();
        for s in 1..=n {
            c.execute(
                "INSERT INTO events (source, resource, stamp, seq, op, record, record_stamp, snapshot, observed, data)
                 VALUES ('s', 'r', ?1, 0, 'created', ?2, ?1, 0, 0, '{}')",
                rusqlite::params![s as i64, format!("rec-{s}")],
            )
            .unwrap();
        }
        (dir, store, t)
    }

    fn stamps(read: &Checked) -> Vec<u64> {
        read.0.iter().map(|e| e.id.stamp).collect()
    }

    /// A full page read ahead is handed to the request that asks for it,
    /// once; a request for another position or size reads for itself.
    #[tokio::test]
    async fn a_full_page_read_ahead_serves_the_next_request_once() {
        let (_dir, store, t) = table_of(5).await;
        let ahead = Arc::new(ReadAhead::default());
        ahead.start(store.clone(), &t, StreamId::new(1, 0), 3, false);
        assert!(
            ahead
                .take(&t, StreamId::new(1, 0), 2, false)
                .await
                .is_none()
        );
        assert!(
            ahead
                .take(&t, StreamId::new(2, 0), 3, false)
                .await
                .is_none()
        );
        let read = ahead.take(&t, StreamId::new(1, 0), 3, false).await.unwrap();
        assert_eq!(stamps(&read), [2, 3, 4]);
        assert_eq!(read.1, None);
        assert!(
            ahead
                .take(&t, StreamId::new(1, 0), 3, false)
                .await
                .is_none(),
            "a page read ahead is served once"
        );
    }

    /// A page read ahead that reached the table's end is not served: the
    /// table may grow meanwhile, so the request reads what is there then.
    #[tokio::test]
    async fn a_short_page_read_ahead_is_not_served() {
        let (_dir, store, t) = table_of(2).await;
        let ahead = Arc::new(ReadAhead::default());
        ahead.start(store.clone(), &t, StreamId::ZERO, 3, false);
        assert!(ahead.take(&t, StreamId::ZERO, 3, false).await.is_none());
    }

    /// A page that would take the waiting pages past the budget is not
    /// kept; a kept page counts until it is taken or dropped.
    #[tokio::test]
    async fn pages_past_the_budget_are_not_kept() {
        let (_dir, store, t) = table_of(6).await;
        // Each event's data is `{}`: a page of 3 holds 6 bytes.
        let small = Arc::new(ReadAhead::with_budget(5));
        small.start(store.clone(), &t, StreamId::ZERO, 3, false);
        assert!(small.take(&t, StreamId::ZERO, 3, false).await.is_none());

        let ahead = ReadAhead::with_budget(6);
        let page = || {
            let events =
                (1..=3).map(|s| Event::sample(s, &format!("rec-{s}"), crate::events::Op::Created));
            (events.collect::<Vec<_>>(), None)
        };
        let kept = Held::within(page(), &ahead.held, ahead.budget).unwrap();
        assert_eq!(ahead.held.load(Ordering::Relaxed), 6);
        assert!(Held::within(page(), &ahead.held, ahead.budget).is_none());
        drop(kept);
        assert_eq!(ahead.held.load(Ordering::Relaxed), 0);
        let again = Held::within(page(), &ahead.held, ahead.budget).unwrap();
        assert_eq!(again.take().0.len(), 3);
        assert_eq!(
            ahead.held.load(Ordering::Relaxed),
            0,
            "taken, it counts no more"
        );
    }
}
