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
//! pages wait at once; the oldest goes first.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::{
    events::{Event, StreamId},
    store::{Store, StoreResult, Target},
};

/// How long a page read ahead stays usable.
const FRESH: Duration = Duration::from_secs(2);

/// Pages waiting at once, over every table and reader.
const SLOTS: usize = 64;

/// A page read, and the last ID retention removed if the read skipped it
/// (`positions::read_checked`).
pub(super) type Checked = (Vec<Event>, Option<StreamId>);

/// What identifies a read: the same table, position, size and reading of 0.
#[derive(PartialEq, Eq)]
struct Key {
    t: Target,
    after: StreamId,
    limit: usize,
    oldest_kept: bool,
}

struct Slot {
    key: Key,
    at: Instant,
    page: oneshot::Receiver<StoreResult<Checked>>,
}

/// The pages read ahead and not yet asked for.
#[derive(Default)]
pub struct ReadAhead {
    slots: Mutex<VecDeque<Slot>>,
}

impl ReadAhead {
    /// Starts reading `limit` events after `after` for the reader's next
    /// request.
    pub(super) fn start(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        t: &Target,
        after: StreamId,
        limit: usize,
        oldest_kept: bool,
    ) {
        let (tx, rx) = oneshot::channel();
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
                at: Instant::now(),
                page: rx,
            });
        }
        let t = t.clone();
        tokio::spawn(async move {
            let read =
                super::positions::read_checked(store.as_ref(), &t, after, limit, oldest_kept).await;
            // The reader may not come back; then nobody receives it.
            let _ = tx.send(read);
        });
    }

    /// The page read ahead for this request, when one is fresh and full;
    /// otherwise the caller reads it.
    pub(super) async fn take(
        &self,
        t: &Target,
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
            Ok(Ok(read)) if read.0.len() == limit => Some(read),
            // Short (the table's end, which may have grown since), or the
            // read failed: read again now, and report that read's error.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    /// Writes events stamped `from..=to` straight into the embedded file.
    fn put_events(dir: &std::path::Path, from: u64, to: u64) {
        let c = rusqlite::Connection::open(dir.join("stamp-relay.sqlite3")).unwrap();
        for s in from..=to {
            c.execute(
                "INSERT INTO events (source, resource, stamp, seq, op, record, record_stamp, snapshot, observed, data)
                 VALUES ('s', 'r', ?1, 0, 'created', ?2, ?1, 0, 0, '{}')",
                rusqlite::params![s as i64, format!("rec-{s}")],
            )
            .unwrap();
        }
    }

    fn stamps(read: &Checked) -> Vec<u64> {
        read.0.iter().map(|e| e.id.stamp).collect()
    }

    /// A full page read ahead is handed to the request that asks for it,
    /// once; a request for another position or size reads for itself.
    #[tokio::test]
    async fn a_full_page_read_ahead_serves_the_next_request_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let t = Target::new("s", "r");
        store.last_id(&t).await.unwrap();
        put_events(dir.path(), 1, 5);
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
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let t = Target::new("s", "r");
        store.last_id(&t).await.unwrap();
        put_events(dir.path(), 1, 2);
        let ahead = Arc::new(ReadAhead::default());
        ahead.start(store.clone(), &t, StreamId::ZERO, 3, false);
        assert!(ahead.take(&t, StreamId::ZERO, 3, false).await.is_none());
    }
}
